//! The noise schedule and time convention a model was trained with (and the presets naming
//! those of the official checkpoints, [`TrainedWith`]), and how a scheduler's evaluation times
//! map onto the model's time input.
//!
//! Solvers report each evaluation's time in their own convention (diffusers timestep index,
//! U-ViT's `1000·t` on a discrete schedule, or `999·t` on the continuous VP-linear SDE). A network
//! only understands the labels it was trained on, so mixing conventions silently shifts every
//! step; here it is either converted exactly or refused.

use deediff_schedules::{BetaConfig, BetaSchedule, ModelTime, SchedulerConfig, TimeConvention};

use crate::error::{Error, Result};

/// How a model was trained: which forward process, and what time label it was fed.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingSchedule {
    /// Discrete ᾱ table; the network saw the diffusers timestep index `n ∈ [0, T)`.
    Diffusers(BetaConfig),
    /// Discrete ᾱ table; the network saw U-ViT's label `n + 1 ∈ [1, T]` (`eval_ldm_discrete.py`).
    UvitDiscrete(BetaConfig),
    /// Continuous VP-linear SDE (β₀, β₁); the network saw `999·t` (U-ViT `ScoreModel`).
    UvitContinuous { beta_0: f64, beta_1: f64 },
}

impl TrainingSchedule {
    /// The discrete betas scheduler presets are built on; for the continuous VP-linear SDE, the
    /// DDPM linear betas whose continuous limit it is (the presets derive β₀ = T·β_start).
    pub fn betas(&self) -> BetaConfig {
        match self {
            Self::Diffusers(b) | Self::UvitDiscrete(b) => b.clone(),
            Self::UvitContinuous { .. } => BetaConfig::ddpm_linear(1000),
        }
    }

    /// The training process a diffusers scheduler config describes (a model file records the
    /// config it was trained with); U-ViT solver configs describe no training and are refused.
    pub fn of_diffusers(config: &SchedulerConfig) -> Result<Self> {
        match config.time_convention() {
            TimeConvention::Diffusers(b) => Ok(Self::Diffusers(b)),
            _ => Err(Error::Request(
                "the training schedule must be a diffusers scheduler config".into(),
            )),
        }
    }
}

/// The noise processes of the official checkpoints (U-ViT, AdaDiff), which — unlike deediff
/// model files — do not record their own; a CLI flag names one (`clap` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TrainedWith {
    /// DDPM linear betas 1e-4…0.02, diffusers timestep labels 0…999.
    DdpmLinear,
    /// Stable Diffusion's scaled-linear betas, U-ViT labels 1…1000 (latent ImageNet / MS-COCO).
    SdDiscrete,
    /// Continuous VP-linear SDE β 0.1→20, labels 999·t (U-ViT's CIFAR-10 / CelebA checkpoints).
    VpLinear,
}

impl TrainedWith {
    /// The training schedule of the preset.
    pub fn schedule(self) -> TrainingSchedule {
        match self {
            Self::DdpmLinear => TrainingSchedule::Diffusers(BetaConfig::ddpm_linear(1000)),
            Self::SdDiscrete => TrainingSchedule::UvitDiscrete(BetaConfig {
                schedule: BetaSchedule::ScaledLinear {
                    start: 0.00085,
                    end: 0.012,
                },
                num_train_timesteps: 1000,
                rescale_betas_zero_snr: false,
            }),
            Self::VpLinear => TrainingSchedule::UvitContinuous {
                beta_0: 0.1,
                beta_1: 20.0,
            },
        }
    }
}

/// Converts a scheduler's evaluation times into the model's time input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeLabel {
    /// Added to the scheduler's label: ±1 between diffusers indices and U-ViT's labels.
    offset: f64,
}

impl TimeLabel {
    /// Checks that `scheduler` integrates the process `training` describes and returns the label
    /// conversion; a different beta schedule or a discrete/continuous mix is a mismatch error.
    pub fn new(training: &TrainingSchedule, scheduler: &SchedulerConfig) -> Result<Self> {
        let mismatch = |what: String| Err(Error::Mismatch(what));
        let same_betas = |m: &BetaConfig, s: &BetaConfig| {
            if m == s {
                Ok(())
            } else {
                Err(Error::Mismatch(format!(
                    "the model was trained with betas {m:?}, the scheduler uses {s:?}"
                )))
            }
        };
        let offset = match (training, scheduler.time_convention()) {
            (TrainingSchedule::Diffusers(m), TimeConvention::Diffusers(s)) => {
                same_betas(m, &s)?;
                0.0
            }
            (TrainingSchedule::Diffusers(m), TimeConvention::UvitDiscrete(s)) => {
                same_betas(m, &s)?;
                -1.0
            }
            (TrainingSchedule::UvitDiscrete(m), TimeConvention::Diffusers(s)) => {
                same_betas(m, &s)?;
                1.0
            }
            (TrainingSchedule::UvitDiscrete(m), TimeConvention::UvitDiscrete(s)) => {
                same_betas(m, &s)?;
                0.0
            }
            (
                TrainingSchedule::UvitContinuous { beta_0, beta_1 },
                TimeConvention::Continuous {
                    beta_0: b0,
                    beta_1: b1,
                },
            ) => {
                if (beta_0, beta_1) != (&b0, &b1) {
                    return mismatch(format!(
                        "the model was trained on the VP-linear SDE β₀={beta_0}, β₁={beta_1}, the scheduler uses β₀={b0}, β₁={b1}"
                    ));
                }
                0.0
            }
            (TrainingSchedule::UvitContinuous { .. }, _) => {
                return mismatch(
                    "the model was trained on a continuous-time SDE; use a U-ViT scheduler on the linear schedule (uvit-em, or uvit-dpm with a continuous schedule)".into(),
                )
            }
            (_, TimeConvention::Continuous { .. }) => {
                return mismatch(
                    "the model was trained on a discrete schedule; a continuous-time scheduler would feed it times it never saw".into(),
                )
            }
        };
        Ok(Self { offset })
    }

    /// The time input for one evaluation.
    pub fn label(&self, time: &ModelTime) -> f64 {
        time.t + self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deediff_schedules::Scheduler;

    fn ddpm() -> BetaConfig {
        BetaConfig::ddpm_linear(1000)
    }

    #[test]
    fn diffusers_labels_pass_through_and_uvit_labels_shift_by_one() {
        let model = TrainingSchedule::Diffusers(ddpm());
        let ddim = SchedulerConfig::by_name("ddim", ddpm()).unwrap();
        let map = TimeLabel::new(&model, &ddim).unwrap();
        let s = Scheduler::new(&ddim, 10).unwrap();
        let first = s.model_times()[0];
        assert_eq!(map.label(&first), first.t);

        let uvit = SchedulerConfig::by_name("uvit-dpm", ddpm()).unwrap();
        let map = TimeLabel::new(&model, &uvit).unwrap();
        let s = Scheduler::new(&uvit, 12).unwrap();
        // U-ViT's first evaluation is at t = 1 → label 1000, i.e. diffusers index 999.
        assert!((map.label(&s.model_times()[0]) - 999.0).abs() < 1e-9);
    }

    #[test]
    fn other_betas_or_a_continuous_scheduler_are_mismatches() {
        let model = TrainingSchedule::Diffusers(ddpm());
        let other = SchedulerConfig::by_name("ddim", BetaConfig::ddpm_linear(500)).unwrap();
        assert!(matches!(
            TimeLabel::new(&model, &other),
            Err(Error::Mismatch(_))
        ));
        let em = SchedulerConfig::by_name("uvit-em", ddpm()).unwrap();
        assert!(matches!(
            TimeLabel::new(&model, &em),
            Err(Error::Mismatch(_))
        ));
    }
}
