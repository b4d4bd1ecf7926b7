//! Trainer errors that are not plain tensor errors; each names the file involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Checkpoint(#[from] deediff_unet::CheckpointError),
    #[error(transparent)]
    ModelFile(#[from] deediff_unet::model_file::ModelFileError),
    #[error("{path}: {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
