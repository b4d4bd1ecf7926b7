//! Discrete beta schedules (T training steps) and their cumulative products ᾱ, as diffusers
//! builds them, but in f64 throughout.

use crate::error::{Error, Result};
use crate::spacing::linspace;

/// How the training betas are generated.
#[derive(Debug, Clone, PartialEq)]
pub enum BetaSchedule {
    /// β = linspace(start, end, T).
    Linear { start: f64, end: f64 },
    /// β = linspace(√start, √end, T)² (Stable Diffusion).
    ScaledLinear { start: f64, end: f64 },
    /// Improved-DDPM cosine: β_i = min(1 − f((i+1)/T)/f(i/T), 0.999).
    SquaredCosCapV2,
    /// Betas given explicitly (`trained_betas`).
    Trained(Vec<f64>),
}

/// A discrete schedule: betas, ᾱ = cumprod(1 − β), optionally rescaled to zero terminal SNR.
#[derive(Debug, Clone, PartialEq)]
pub struct BetaConfig {
    pub schedule: BetaSchedule,
    pub num_train_timesteps: usize,
    /// Rescale to zero terminal SNR (Lin et al. 2023, Algorithm 1).
    pub rescale_betas_zero_snr: bool,
}

impl BetaConfig {
    /// DDPM's linear schedule 1e-4 … 0.02 over `t` steps.
    pub fn ddpm_linear(t: usize) -> Self {
        Self {
            schedule: BetaSchedule::Linear {
                start: 1e-4,
                end: 0.02,
            },
            num_train_timesteps: t,
            rescale_betas_zero_snr: false,
        }
    }

    /// The betas (after the zero-SNR rescale when enabled).
    pub fn betas(&self) -> Result<Vec<f64>> {
        let t = self.num_train_timesteps;
        if t < 2 {
            return Err(Error::Invalid(format!(
                "num_train_timesteps must be at least 2, got {t}"
            )));
        }
        let betas = match &self.schedule {
            BetaSchedule::Linear { start, end } => linspace(*start, *end, t),
            BetaSchedule::ScaledLinear { start, end } => linspace(start.sqrt(), end.sqrt(), t)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::SquaredCosCapV2 => cosine_betas(t),
            BetaSchedule::Trained(b) => {
                if b.len() != t {
                    return Err(Error::Invalid(format!(
                        "trained_betas has {} entries but num_train_timesteps is {t}",
                        b.len()
                    )));
                }
                b.clone()
            }
        };
        Ok(if self.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        })
    }

    /// ᾱ as DDIM/DDPM hold it: with zero-SNR rescaling the last entry is exactly 0.
    pub fn alphas_cumprod(&self) -> Result<Vec<f64>> {
        Ok(cumprod_one_minus(&self.betas()?))
    }

    /// ᾱ as the σ-based schedulers (DPM-Solver, Euler, UniPC) hold it: they replace a zero
    /// terminal ᾱ by 2⁻²⁴ so that σ = √((1−ᾱ)/ᾱ) stays finite.
    pub fn alphas_cumprod_finite(&self) -> Result<Vec<f64>> {
        let mut ac = self.alphas_cumprod()?;
        if self.rescale_betas_zero_snr {
            if let Some(last) = ac.last_mut() {
                *last = 2f64.powi(-24);
            }
        }
        Ok(ac)
    }
}

/// ᾱ = cumprod(1 − β).
pub fn cumprod_one_minus(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

fn cosine_betas(t: usize) -> Vec<f64> {
    let f = |u: f64| {
        ((u + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..t)
        .map(|i| {
            let t1 = i as f64 / t as f64;
            let t2 = (i + 1) as f64 / t as f64;
            (1.0 - f(t2) / f(t1)).min(0.999)
        })
        .collect()
}

/// Shift √ᾱ so its last value is 0, rescale so its first value is unchanged, convert back.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let sqrt_ac: Vec<f64> = cumprod_one_minus(betas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_ac[0], sqrt_ac[sqrt_ac.len() - 1]);
    let ac: Vec<f64> = sqrt_ac
        .iter()
        .map(|s| {
            let v = (s - last) * (first / (first - last));
            v * v
        })
        .collect();
    let mut out = Vec::with_capacity(ac.len());
    out.push(1.0 - ac[0]);
    out.extend(ac.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}
