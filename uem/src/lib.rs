//! Uncertainty estimation modules (certainty heads), exit policies, DeeDiff losses and the trainer.

pub mod backbone;
pub mod data;
pub mod early_exit;
pub mod ema;
pub mod head;
pub mod loss;
pub mod optim;
pub mod policy;
pub mod reuse_schedule;
pub mod run_state;
pub mod trainer;

pub use backbone::Backbone;
pub use early_exit::{EarlyExit, EarlyExitUVit, ExitOutput, Guided, Passes, SampleExit};
pub use head::CertaintyHeads;
pub use policy::{ExitPolicy, ExitRule, PolicyError, DEFAULT_REFRESH};
pub use reuse_schedule::{ReuseSchedule, ScheduleError};
pub use run_state::RunState;
