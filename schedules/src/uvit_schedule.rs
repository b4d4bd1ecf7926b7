//! U-ViT's continuous-time VP noise schedules (`NoiseScheduleVP` of `dpm_solver_pp.py` /
//! `dpm_solver_pytorch.py`) and the network time-input mapping.

use crate::betas::BetaConfig;
use crate::error::Result;
use crate::exp_integrator::Level;
use crate::solver::ModelTime;
use crate::spacing::linspace;

/// Which VP schedule the solver integrates.
#[derive(Debug, Clone, PartialEq)]
pub enum UvitScheduleConfig {
    /// `NoiseScheduleVP('discrete', betas)`: log α piecewise linear in t through the knots
    /// (n/T, ½Σ_{i≤n} log(1 − β_i)), n = 1..T, extended linearly outside.
    Discrete(BetaConfig),
    /// `NoiseScheduleVP('linear')`: β(t) = β₀ + t(β₁ − β₀), log α = −¼t²(β₁−β₀) − ½tβ₀.
    Linear { beta_0: f64, beta_1: f64 },
}

impl UvitScheduleConfig {
    /// The continuous VP-linear schedule of DDPM/score-SDE (β₀ = 0.1, β₁ = 20).
    pub fn vp_linear() -> Self {
        Self::Linear {
            beta_0: 0.1,
            beta_1: 20.0,
        }
    }
}

/// A built schedule: log α(t), σ(t), λ(t) and the inverse λ → t.
#[derive(Debug, Clone)]
pub(crate) enum UvitSchedule {
    Discrete {
        t: Vec<f64>,
        log_alpha: Vec<f64>,
        /// The knots flipped to ascending log α, for `inverse_lambda`.
        flipped: (Vec<f64>, Vec<f64>),
    },
    Linear {
        beta_0: f64,
        beta_1: f64,
    },
}

/// numpy-free `interpolate_fn`: piecewise-linear through ascending knots, the outermost
/// segments extended.
fn interpolate(x: f64, xp: &[f64], yp: &[f64]) -> f64 {
    let below = xp.iter().take_while(|&&k| k < x).count();
    let j = below.saturating_sub(1).min(xp.len() - 2);
    let (x0, x1, y0, y1) = (xp[j], xp[j + 1], yp[j], yp[j + 1]);
    y0 + (x - x0) * (y1 - y0) / (x1 - x0)
}

/// log(eᵃ + eᵇ) without overflow.
fn logaddexp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    m + (-(a - b).abs()).exp().ln_1p()
}

impl UvitSchedule {
    pub(crate) fn new(config: &UvitScheduleConfig) -> Result<Self> {
        Ok(match config {
            UvitScheduleConfig::Discrete(betas) => {
                let b = betas.betas()?;
                let n = b.len();
                let mut acc = 0.0;
                let log_alpha: Vec<f64> = b
                    .iter()
                    .map(|b| {
                        acc += (1.0 - b).ln();
                        0.5 * acc
                    })
                    .collect();
                let t = linspace(1.0 / n as f64, 1.0, n);
                let flipped = (
                    log_alpha.iter().rev().copied().collect(),
                    t.iter().rev().copied().collect(),
                );
                Self::Discrete {
                    t,
                    log_alpha,
                    flipped,
                }
            }
            UvitScheduleConfig::Linear { beta_0, beta_1 } => Self::Linear {
                beta_0: *beta_0,
                beta_1: *beta_1,
            },
        })
    }

    pub(crate) fn log_alpha(&self, t: f64) -> f64 {
        match self {
            Self::Discrete {
                t: knots,
                log_alpha,
                ..
            } => interpolate(t, knots, log_alpha),
            Self::Linear { beta_0, beta_1 } => -0.25 * t * t * (beta_1 - beta_0) - 0.5 * t * beta_0,
        }
    }

    /// α, σ = √(1 − α²), λ = log α − ½ log(1 − α²) at continuous time t.
    pub(crate) fn level(&self, t: f64) -> Level {
        let la = self.log_alpha(t);
        let one_m = 1.0 - (2.0 * la).exp();
        Level {
            alpha: la.exp(),
            sigma: one_m.sqrt(),
            lambda: la - 0.5 * one_m.ln(),
        }
    }

    pub(crate) fn inverse_lambda(&self, lambda: f64) -> f64 {
        match self {
            Self::Linear { beta_0, beta_1 } => {
                let tmp = 2.0 * (beta_1 - beta_0) * logaddexp(-2.0 * lambda, 0.0);
                let delta = beta_0 * beta_0 + tmp;
                tmp / (delta.sqrt() + beta_0) / (beta_1 - beta_0)
            }
            Self::Discrete {
                flipped: (xp, yp), ..
            } => interpolate(-0.5 * logaddexp(0.0, -2.0 * lambda), xp, yp),
        }
    }

    /// The model time of continuous t when the network receives `scale`·t (1000 for U-ViT's
    /// discrete models, 999 for its continuous ones); the noise level is that of t_in/scale.
    pub(crate) fn model_time(&self, t: f64, scale: f64) -> ModelTime {
        let t_in = scale * t;
        let level = self.level(t_in / scale);
        ModelTime {
            t: t_in,
            alpha: level.alpha,
            sigma: level.sigma,
        }
    }
}
