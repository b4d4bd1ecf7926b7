//! The crate's error type: every failure to load or configure a model, as one line that names
//! the file, value or prompt involved. Tensor errors of the forward pass stay candle's.

use std::path::{Path, PathBuf};

/// Everything the crate refuses, grouped by where it arises.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An official checkpoint that cannot be opened or its tensors not read.
    #[error("{path}: cannot read checkpoint: {reason}")]
    CheckpointRead { path: PathBuf, reason: String },
    /// Checkpoint tensors whose names or shapes do not fit the U-ViT config.
    #[error("{path}: tensors do not match the U-ViT config ({summary}): {details}")]
    CheckpointMismatch {
        path: PathBuf,
        summary: String,
        details: String,
    },
    /// A checkpoint whose U-ViT config neither its shapes nor the hints and side JSON settle.
    #[error("{path}: cannot determine the U-ViT config: {reason}")]
    CheckpointConfig { path: PathBuf, reason: String },
    /// A U-ViT config that is inconsistent or implausibly large ([`crate::UVitConfig::validate`]).
    #[error("{0}")]
    Config(String),
    /// A model file whose content is unusable, or that cannot be written; `origin` names it.
    #[error("{origin}: {reason}")]
    ModelFile { origin: String, reason: String },
    /// A file or folder that cannot be read or created.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A helper network's file that exists but is unusable (unreadable, wrong tensors, bad
    /// config).
    #[error("{path}: {reason}")]
    Pretrained { path: PathBuf, reason: String },
    /// No helper-network weights were given and none were found in the cache.
    #[error("{0}")]
    WeightsNotFound(String),
    /// A published tokenizer refused a prompt.
    #[error("{0}")]
    Tokenizer(String),
    /// A prompt without a word of the model's vocabulary.
    #[error("prompt {prompt:?} has no word this model knows; try e.g. {}", .examples.join(", "))]
    NoKnownWord {
        prompt: String,
        examples: Vec<String>,
    },
    /// A prompt without a word naming something the model can draw.
    #[error("prompt {prompt:?} names nothing this model can draw; try e.g. {}", .examples.join(", "))]
    NothingToDraw {
        prompt: String,
        examples: Vec<String>,
    },
    /// A prompt whose drawable words all come after the context the model reads.
    #[error(
        "prompt {prompt:?}: what to draw comes after the first {max_tokens} known words, which \
         is all the model reads; put the subject first or shorten the prompt"
    )]
    SubjectPastContext { prompt: String, max_tokens: usize },
    /// bf16 tile products were asked for on a CPU or OS without AMX; says what is missing.
    #[error("--dtype bf16 needs Intel AMX-BF16 (Xeon Sapphire Rapids or newer) with AVX-512 enabled; this CPU/OS has {0}")]
    Bf16Unavailable(&'static str),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn pretrained(path: &Path, reason: impl Into<String>) -> Self {
        Self::Pretrained {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
