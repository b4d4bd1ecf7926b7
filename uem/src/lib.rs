//! Uncertainty estimation modules (certainty heads), exit policies, the early-exit forward, per-run
//! exit state and reuse schedules: what sampling with early exits needs. Training lives in
//! `deediff-train`.

pub mod backbone;
pub mod early_exit;
pub mod error;
pub mod fill_record;
pub mod head;
pub mod policy;
pub mod reuse_schedule;
pub mod run_state;

pub use backbone::Backbone;
pub use early_exit::{EarlyExit, EarlyExitUVit, ExitOutput, Guided, Passes, SampleExit};
pub use error::{Error, Result};
pub use fill_record::{FillRecords, FillSample};
pub use head::CertaintyHeads;
pub use policy::{ExitPolicy, ExitRule, FillHeads, DEFAULT_REFRESH};
pub use reuse_schedule::ReuseSchedule;
pub use run_state::RunState;
