//! The sampler's error type: one line that says what is wrong and with which input.

/// Everything that can stop a sampling run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("scheduler: {0}")]
    Scheduler(#[from] deediff_schedules::Error),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("exit policy: {0}")]
    Policy(#[from] deediff_uem::Error),
    /// The scheduler's noise schedule or time convention does not fit the model's training.
    #[error("model/scheduler mismatch: {0}")]
    Mismatch(String),
    /// A model file that cannot be read or does not hold what a model file must (or another
    /// refusal of `deediff-unet`, which names the file or value itself).
    #[error(transparent)]
    Unet(#[from] deediff_unet::Error),
    /// A condition the model cannot take (wrong kind, unknown class, no text encoder).
    #[error("{0}")]
    Condition(String),
    /// Samples that cannot become images, or images that do not fit a grid.
    #[error("{0}")]
    Image(String),
    /// A compute budget or reuse fraction that cannot be calibrated.
    #[error("{0}")]
    Budget(String),
    /// Timestep bands that are malformed or overlap.
    #[error("{0}")]
    Band(String),
    /// Recommended sampling defaults (model-file metadata) that do not parse or check.
    #[error("{0}")]
    Defaults(String),
    /// A request the pipeline cannot serve (batch sizes, guidance, seeds, …).
    #[error("{0}")]
    Request(String),
    #[error("text encoder: {0}")]
    Text(String),
    #[error("cancelled")]
    Cancelled,
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
