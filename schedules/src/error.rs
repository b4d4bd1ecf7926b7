//! Error type of the crate: every failure is a one-line message that names its origin.

/// Error a model callback may return; solvers pass it through unchanged.
pub type ModelError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong when building or running a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A scheduler configuration is malformed, contradictory or asks for something unsupported.
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },
    /// A configuration file could not be read. The I/O error is part of the message (not a
    /// `source`), so chained reports print it once.
    #[error("{path}: cannot read scheduler config: {reason}")]
    Io {
        path: String,
        reason: std::io::Error,
    },
    /// Arguments that do not fit the scheduler (step count, buffer length, …).
    #[error("{0}")]
    Invalid(String),
    /// The model callback failed (its error is part of the message, as for `Io`).
    #[error("model evaluation {index} failed: {reason}")]
    Model { index: usize, reason: ModelError },
    /// A noise source could not deliver (e.g. a replay ran out of recorded draws).
    #[error("noise source: {0}")]
    Noise(String),
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            origin: origin.into(),
            message: message.into(),
        }
    }
}
