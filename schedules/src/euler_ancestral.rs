//! Euler ancestral as diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to σ_down,
//! then fresh noise of scale σ_up (drawn at every step, also the last where σ_up = 0).

use crate::betas::BetaConfig;
use crate::config::Reader;
use crate::error::Result;
use crate::euler::{Euler, VeSchedule};
use crate::prediction::PredictionType;
use crate::registry::{DiffusersClass, Preset, Registration};
use crate::scheduler::SchedulerConfig;
use crate::spacing::{FinalSigmas, Spacing};

/// Preset `euler-a` (linspace spacing) and `EulerAncestralDiscreteScheduler`.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[Preset {
        name: "euler-a",
        build: |betas| {
            Ok(SchedulerConfig::new(EulerAncestralConfig {
                betas,
                prediction_type: PredictionType::Epsilon,
                timestep_spacing: Spacing::Linspace,
                steps_offset: 0,
            }))
        },
    }],
    diffusers: Some(DiffusersClass {
        name: "EulerAncestralDiscreteScheduler",
        fields: &[&["timestep_spacing", "steps_offset", "rescale_betas_zero_snr"]],
        read,
    }),
};

fn read(r: &Reader) -> Result<SchedulerConfig, String> {
    let prediction_type = r.prediction()?;
    if prediction_type == PredictionType::Sample {
        return Err(
            "prediction_type \"sample\" is not implemented by EulerAncestralDiscreteScheduler"
                .into(),
        );
    }
    Ok(SchedulerConfig::new(EulerAncestralConfig {
        betas: r.betas()?,
        prediction_type,
        timestep_spacing: r.spacing("linspace")?,
        steps_offset: r.raw.steps_offset.unwrap_or(0),
    }))
}

/// `EulerAncestralDiscreteScheduler` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EulerAncestralConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub timestep_spacing: Spacing,
    pub steps_offset: usize,
}

diffusers_solver_config!(EulerAncestralConfig, Euler::ancestral);

impl Euler {
    /// The ancestral variant: no Karras sigmas, σ_final = 0.
    pub(crate) fn ancestral(config: &EulerAncestralConfig, n: usize) -> Result<Self> {
        Ok(Self {
            prediction_type: config.prediction_type,
            schedule: VeSchedule::new(
                &config.betas,
                config.timestep_spacing,
                config.steps_offset,
                n,
                None,
                FinalSigmas::Zero,
            )?,
            ancestral: true,
        })
    }
}

/// One ancestral step of `x` from σ `from` to σ `to` given x̂₀ and the noise draw `z`.
pub(crate) fn ancestral_step(x: &mut [f64], x0: &[f64], from: f64, to: f64, z: &[f64]) {
    let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
    let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
    let dt = sigma_down - from;
    for ((x, x0), z) in x.iter_mut().zip(x0).zip(z) {
        let derivative = (*x - x0) / from;
        *x = (*x + derivative * dt) + z * sigma_up;
    }
}
