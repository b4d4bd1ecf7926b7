//! Uncertainty estimation modules (certainty heads), exit policies, DeeDiff losses and the trainer.

pub mod data;
pub mod early_exit;
pub mod ema;
pub mod head;
pub mod loss;
pub mod optim;
pub mod policy;
pub mod trainer;

pub use early_exit::{EarlyExitUVit, ExitOutput, SampleExit};
pub use head::CertaintyHeads;
pub use policy::{ExitPolicy, ExitRule, PolicyError};
