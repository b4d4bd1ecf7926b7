//! Training and fine-tuning of U-ViTs with certainty heads under the DeeDiff losses: the trainer
//! (seeded, exactly resumable), AdamW, the EMA of the weights, the losses, and the data loaders
//! with the caption vocabulary of the default model. Kept apart from `deediff-uem`, which holds
//! only what sampling needs (heads, exit policies, the early-exit forward).

pub mod data;
pub mod ema;
pub mod error;
pub mod filled_heads;
pub mod loss;
pub mod optim;
pub mod trainer;

pub use error::{Error, Result};
