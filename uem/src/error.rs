//! The crate's error type: a rejected exit policy or reuse schedule, as one line.

/// Everything the crate refuses (tensor errors of the forward pass are candle's).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("exit threshold {0} must be in (0, 1]")]
    Threshold(f32),
    #[error("static exit depth {0} must be at least 1")]
    StaticDepth(usize),
    #[error("{what} {value} must be at least 1")]
    Count { what: &'static str, value: usize },
    #[error(
        "unknown exit policy {0:?}: expected official:T, per-sample:T, T, full, static:K, \
         cached:T[:R], cached-trunc:T[:R], deepcache:N[:M] or l2c"
    )]
    Syntax(String),
    /// A reuse-schedule file that cannot be read or parsed.
    #[error("{path}: {reason}")]
    ScheduleFile { path: String, reason: String },
    /// A reuse schedule that does not describe a valid run.
    #[error("reuse schedule: {0}")]
    Schedule(String),
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
