//! The crate's error type: every failure of training or of reading its data, as one line that
//! names the file involved.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A checkpoint or model file that cannot be read, written or configured.
    #[error(transparent)]
    Unet(#[from] deediff_unet::Error),
    /// A checkpoint or pretrained file whose content does not fit the trainer.
    #[error("{path}: {msg}")]
    Load { path: PathBuf, msg: String },
    /// A checkpoint or model file that cannot be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A data file that cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A data file in the wrong format.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Image and label files that do not belong together.
    #[error("{images} and {labels}: {msg}")]
    Mismatch {
        images: PathBuf,
        labels: PathBuf,
        msg: String,
    },
    #[error("{msg}")]
    Invalid { msg: String },
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Read {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
