//! The sampling pipeline: a scheduler, a U-ViT with certainty heads and an exit policy composed
//! into images, with a report of what the early exits saved.
//!
//! * [`Pipeline`] — built from an [`EarlyExitUVit`](deediff_uem::EarlyExitUVit), the schedule the
//!   model was trained on ([`TrainingSchedule`]) and a scheduler config (diffusers JSON or a
//!   preset name); set the [`ExitPolicy`](deediff_uem::ExitPolicy) (`per-sample` by default),
//!   [`Guidance`], or a compute budget ([`Pipeline::calibrate_budget`]); timesteps in a
//!   [`TimestepBand`] follow the band's own policy ([`Pipeline::set_timestep_bands`]).
//! * Latent models decode through the Stable Diffusion autoencoder
//!   ([`Pipeline::set_decoder`], or [`ModelBundle::decoder`]); pixel models are untouched.
//! * Image `k` of a run uses seed `base + k` for all its noise ([`PerImageNoise`]), so any
//!   shard or subset of a run reproduces the same images.
//! * Every run returns a [`RunReport`]: blocks executed per evaluation (mean and histogram by
//!   timestep), MACs against full depth, seconds and images/s.

mod budget;
mod bundle;
mod conditioning;
mod error;
mod guidance;
mod imagenet_classes;
mod images;
mod noise;
mod pipeline;
mod report;
mod sampling_defaults;
mod timestep_bands;
mod training_schedule;

pub use budget::{threshold_for_budget, Calibration};
pub use bundle::ModelBundle;
#[cfg(feature = "default-model")]
pub use bundle::DEFAULT_MODEL;
pub use conditioning::{Condition, Conditioner, TextEncoder};
pub use error::{Error, Result};
pub use guidance::Guidance;
pub use imagenet_classes::{imagenet_class, imagenet_class_name};
pub use images::{to_images, GridSheet};
pub use noise::PerImageNoise;
pub use pipeline::{Generated, Hooks, Pipeline, Progress, DEFAULT_THRESHOLD};
pub use report::{EvalReport, RunReport};
pub use sampling_defaults::SamplingDefaults;
pub use timestep_bands::{policy_at, TimestepBand};
pub use training_schedule::{TimeLabel, TrainedWith, TrainingSchedule};
