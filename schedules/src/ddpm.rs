//! DDPM ancestral sampling (Ho et al. 2020) as diffusers' `DDPMScheduler`.
//!
//! Unlike DDIM, the previous timestep is the next entry of the schedule (ᾱ_prev = 1 after the
//! last one), and noise is drawn whenever t > 0 (README Q2, Q10).

use crate::betas::BetaConfig;
use crate::config::{choice, Reader, THRESHOLD};
use crate::error::Result;
use crate::noise::{add_noise, NoiseSource};
use crate::ops::{clamp, lincomb};
use crate::prediction::PredictionType;
use crate::registry::{DiffusersClass, Preset, Registration};
use crate::scheduler::{Plan, SchedulerConfig};
use crate::solver::{Evaluation, Solver, StepInfo, StepTimes};
use crate::spacing::{DiscreteSchedule, Spacing};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Preset `ddpm` (fixed_small, leading spacing, no clipping) and `DDPMScheduler`.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[Preset {
        name: "ddpm",
        build: |betas| {
            Ok(SchedulerConfig::new(DdpmConfig {
                betas,
                prediction_type: PredictionType::Epsilon,
                variance_type: VarianceType::FixedSmall,
                clip_sample: None,
                steps_offset: 0,
                timestep_spacing: Spacing::Leading,
            }))
        },
    }],
    diffusers: Some(DiffusersClass {
        name: "DDPMScheduler",
        fields: &[
            THRESHOLD,
            &[
                "variance_type",
                "clip_sample",
                "clip_sample_range",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
            ],
        ],
        read,
    }),
};

fn read(r: &Reader) -> Result<SchedulerConfig, String> {
    Ok(SchedulerConfig::new(DdpmConfig {
        betas: r.betas()?,
        prediction_type: r.prediction()?,
        variance_type: choice(
            "variance_type",
            r.raw.variance_type.as_deref().unwrap_or("fixed_small"),
            "fixed_small, fixed_small_log, fixed_large",
        )?,
        clip_sample: r.clip(true),
        steps_offset: r.raw.steps_offset.unwrap_or(0),
        timestep_spacing: r.spacing("leading")?,
    }))
}

/// The fixed posterior variances DDPM supports (learned variances need a split network output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t)·β_t, clamped below at 1e-20.
    FixedSmall,
    /// The same variance, applied through exp(½ log β̃_t).
    FixedSmallLog,
    /// β_t = 1 − ᾱ_t/ᾱ_prev.
    FixedLarge,
}

/// `DDPMScheduler` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DdpmConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub variance_type: VarianceType,
    /// `Some(range)` clamps x̂₀ to ±range.
    pub clip_sample: Option<f64>,
    pub steps_offset: usize,
    pub timestep_spacing: Spacing,
}

#[derive(Debug, Clone)]
pub(crate) struct Ddpm {
    config: DdpmConfig,
    pub(crate) schedule: DiscreteSchedule,
}

impl Ddpm {
    pub(crate) fn new(config: &DdpmConfig, n: usize) -> Result<Self> {
        Ok(Self {
            schedule: DiscreteSchedule::new(
                &config.betas,
                config.timestep_spacing,
                config.steps_offset,
                n,
            )?,
            config: config.clone(),
        })
    }
}

diffusers_solver_config!(DdpmConfig, Ddpm::new);

impl Plan for Ddpm {
    schedule_accessors!(alphas_cumprod);

    fn is_stochastic(&self) -> bool {
        true
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(DdpmRun { plan: self, x, i: 0 })
    }
}

struct DdpmRun {
    plan: Arc<Ddpm>,
    x: Vec<f64>,
    i: usize,
}

impl Solver for DdpmRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        self.plan.schedule.evaluation(self.i, &self.x)
    }

    fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let p = &self.plan;
        let cfg = &p.config;
        let (timesteps, ac) = (&p.schedule.timesteps, &p.schedule.alphas_cumprod);
        let t = timesteps[self.i];
        let a_t = ac[t as usize];
        let a_prev = match timesteps.get(self.i + 1) {
            Some(&prev) => ac[prev as usize],
            None => 1.0,
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let mut x0 = cfg
            .prediction_type
            .to_x0(out, &self.x, a_t.sqrt(), b_t.sqrt());
        if let Some(range) = cfg.clip_sample {
            clamp(&mut x0, range);
        }
        let c_x0 = (a_prev.sqrt() * cur_beta) / b_t;
        let c_x = cur_alpha.sqrt() * b_prev / b_t;
        let mut prev = lincomb(&[(c_x0, &x0), (c_x, &self.x)]);
        if t > 0.0 {
            let small = (b_prev / b_t * cur_beta).max(1e-20);
            let std = match cfg.variance_type {
                VarianceType::FixedSmall => small.sqrt(),
                VarianceType::FixedSmallLog => (0.5 * small.ln()).exp(),
                VarianceType::FixedLarge => cur_beta.sqrt(),
            };
            add_noise(noise, &mut prev, std)?;
        }
        self.x = prev;
        self.i += 1;
        Ok(Some(StepInfo::with_x0(self.i - 1, x0)))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
