//! Uncertainty estimation modules (certainty heads), exit policies, DeeDiff losses and the trainer.

pub mod early_exit;
pub mod head;
pub mod policy;

pub use early_exit::{EarlyExitUVit, ExitOutput, SampleExit};
pub use head::CertaintyHeads;
pub use policy::{ExitPolicy, ExitRule, PolicyError};
