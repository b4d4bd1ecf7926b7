//! DDIM (Song et al. 2021) as diffusers' `DDIMScheduler`, with η ≥ 0.
//!
//! Quirk Q2: the previous timestep is always t − T//N, whatever the spacing; below 0 it is
//! `final_alpha_cumprod` (1 with `set_alpha_to_one`, else ᾱ₀).

use crate::betas::BetaConfig;
use crate::config::{Reader, THRESHOLD};
use crate::error::{Error, Result};
use crate::noise::{add_noise, NoiseSource};
use crate::ops::{clamp, lincomb};
use crate::prediction::PredictionType;
use crate::registry::{DiffusersClass, Preset, Registration};
use crate::scheduler::{Plan, SchedulerConfig};
use crate::solver::{Evaluation, Solver, StepInfo, StepTimes};
use crate::spacing::{DiscreteSchedule, Spacing};
use std::sync::Arc;

/// Preset `ddim` (η = 0, leading spacing, no clipping) and `DDIMScheduler`.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[Preset {
        name: "ddim",
        build: |betas| {
            Ok(SchedulerConfig::new(DdimConfig {
                betas,
                prediction_type: PredictionType::Epsilon,
                clip_sample: None,
                set_alpha_to_one: true,
                steps_offset: 0,
                timestep_spacing: Spacing::Leading,
                eta: 0.0,
            }))
        },
    }],
    diffusers: Some(DiffusersClass {
        name: "DDIMScheduler",
        fields: &[
            THRESHOLD,
            &[
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "steps_offset",
                "timestep_spacing",
                "rescale_betas_zero_snr",
            ],
        ],
        read,
    }),
};

/// `eta` is a `step()` argument in diffusers, not a config field: it starts at 0.
fn read(r: &Reader) -> Result<SchedulerConfig, String> {
    Ok(SchedulerConfig::new(DdimConfig {
        betas: r.betas()?,
        prediction_type: r.prediction()?,
        clip_sample: r.clip(true),
        set_alpha_to_one: r.raw.set_alpha_to_one.unwrap_or(true),
        steps_offset: r.raw.steps_offset.unwrap_or(0),
        timestep_spacing: r.spacing("leading")?,
        eta: 0.0,
    }))
}

/// `DDIMScheduler` settings (plus the `eta` that diffusers passes to `step`).
#[derive(Debug, Clone, PartialEq)]
pub struct DdimConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    /// `Some(range)` clamps x̂₀ to ±range (`clip_sample` + `clip_sample_range`).
    pub clip_sample: Option<f64>,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub timestep_spacing: Spacing,
    /// η: 0 is deterministic DDIM, 1 matches DDPM's posterior variance.
    pub eta: f64,
}

/// A DDIM schedule for a fixed number of steps.
#[derive(Debug, Clone)]
pub(crate) struct Ddim {
    config: DdimConfig,
    pub(crate) schedule: DiscreteSchedule,
    final_alpha_cumprod: f64,
    step_ratio: i64,
}

impl Ddim {
    pub(crate) fn new(config: &DdimConfig, n: usize) -> Result<Self> {
        if !(config.eta >= 0.0 && config.eta.is_finite()) {
            return Err(Error::Invalid(format!(
                "DDIM eta must be finite and >= 0, got {}",
                config.eta
            )));
        }
        let schedule = DiscreteSchedule::new(
            &config.betas,
            config.timestep_spacing,
            config.steps_offset,
            n,
        )?;
        Ok(Self {
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                schedule.alphas_cumprod[0]
            },
            schedule,
            step_ratio: (config.betas.num_train_timesteps / n) as i64,
            config: config.clone(),
        })
    }

}

diffusers_solver_config!(DdimConfig, Ddim::new);

impl Plan for Ddim {
    schedule_accessors!(alphas_cumprod);

    fn is_stochastic(&self) -> bool {
        self.config.eta > 0.0
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(DdimRun { plan: self, x, i: 0 })
    }
}

struct DdimRun {
    plan: Arc<Ddim>,
    x: Vec<f64>,
    i: usize,
}

impl Solver for DdimRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        self.plan.schedule.evaluation(self.i, &self.x)
    }

    fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let p = &self.plan;
        let cfg = &p.config;
        let (timesteps, ac) = (&p.schedule.timesteps, &p.schedule.alphas_cumprod);
        let t = timesteps[self.i] as i64;
        let prev_t = t - p.step_ratio;
        let a_t = ac[t as usize];
        let a_prev = if prev_t >= 0 {
            ac[prev_t as usize]
        } else {
            p.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let mut x0 = cfg.prediction_type.to_x0(out, &self.x, sa, sb);
        let eps = cfg.prediction_type.to_eps(out, &self.x, sa, sb);
        if let Some(range) = cfg.clip_sample {
            clamp(&mut x0, range);
        }
        let variance = ((1.0 - a_prev) / b_t) * (1.0 - a_t / a_prev);
        let std_dev = cfg.eta * variance.sqrt();
        let dir = (1.0 - a_prev - std_dev * std_dev).sqrt();
        let mut prev = lincomb(&[(a_prev.sqrt(), &x0), (dir, &eps)]);
        if cfg.eta > 0.0 {
            add_noise(noise, &mut prev, std_dev)?;
        }
        self.x = prev;
        self.i += 1;
        Ok(Some(StepInfo::with_x0(self.i - 1, x0)))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
