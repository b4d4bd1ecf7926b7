//! The sampler's error type: one line that says what is wrong and with which input.

/// Everything that can stop a sampling run.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("scheduler: {0}")]
    Scheduler(#[from] deediff_schedules::Error),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("exit policy: {0}")]
    Policy(#[from] deediff_uem::PolicyError),
    /// The scheduler's noise schedule or time convention does not fit the model's training.
    #[error("model/scheduler mismatch: {0}")]
    Mismatch(String),
    /// A request the model cannot serve (wrong conditioning kind, bad guidance, …).
    #[error("{0}")]
    Request(String),
    #[error("text encoder: {0}")]
    Text(String),
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = SamplerError> = std::result::Result<T, E>;
