//! Uncertainty estimation modules (certainty heads), exit policies, DeeDiff losses and the trainer.

pub mod data;
pub mod ema;
pub mod loss;
pub mod optim;
pub mod trainer;
