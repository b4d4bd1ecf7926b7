//! Euler ancestral as diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to σ_down,
//! then fresh noise of scale σ_up (drawn at every step, also the last where σ_up = 0).

use crate::betas::BetaConfig;
use crate::error::Result;
use crate::euler::{Euler, VeSchedule};
use crate::prediction::PredictionType;
use crate::spacing::{FinalSigmas, Spacing};

/// `EulerAncestralDiscreteScheduler` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EulerAncestralConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub timestep_spacing: Spacing,
    pub steps_offset: usize,
}

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
