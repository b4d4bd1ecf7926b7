//! DPM-Solver++(2S) ancestral as k-diffusion's `sample_dpmpp_2s_ancestral` ("DPM++ 2S a"),
//! on k-diffusion's `DiscreteEpsDDPMDenoiser` schedule: N sigmas at t = linspace(T − 1, 0, N)
//! interpolated in log σ, then σ = 0. Each step goes from σ_i to σ_down with a second-order
//! singlestep (one extra evaluation at the log-σ midpoint), then adds fresh noise of scale
//! σ_up; the last step, where σ_down = 0, is a plain Euler step. diffusers has no equivalent.
//!
//! Samples live in the VE scale like the Euler family: the model sees x/√(σ² + 1) at the
//! fractional diffusers timestep of its σ (k-diffusion's `sigma_to_t`).

use crate::betas::BetaConfig;
use crate::error::{Error, Result};
use crate::noise::{draw, NoiseSource};
use crate::prediction::{vp_from_ve, PredictionType};
use crate::registry::{Preset, Registration};
use crate::scheduler::{Plan, SchedulerConfig};
use crate::solver::{Evaluation, ModelTime, Solver, StepInfo};
use crate::spacing::{linspace, sigma_to_t, ve_sigmas};
use std::sync::Arc;

/// Preset `dpmpp-2s-a` (η = 1).
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[Preset {
        name: "dpmpp-2s-a",
        build: |betas| {
            Ok(SchedulerConfig::new(Dpmpp2sAncestralConfig {
                betas,
                prediction_type: PredictionType::Epsilon,
                eta: 1.0,
            }))
        },
    }],
    diffusers: None,
};

/// `sample_dpmpp_2s_ancestral(model, x, sigmas, eta)` over `model.get_sigmas(N)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dpmpp2sAncestralConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    /// η: 0 is the deterministic DPM-Solver++(2S), 1 the full ancestral noise.
    pub eta: f64,
}

diffusers_solver_config!(Dpmpp2sAncestralConfig, Dpmpp2sAncestral::new);

/// k-diffusion `get_ancestral_step`: (σ_down, σ_up) from `from` to `to`.
fn ancestral_step(from: f64, to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (to, 0.0);
    }
    let up = to.min(eta * (to.powi(2) * (from.powi(2) - to.powi(2)) / from.powi(2)).sqrt());
    ((to.powi(2) - up.powi(2)).sqrt(), up)
}

/// One step's plan: where it lands before the noise, the noise scale, and the midpoint σ of
/// its second evaluation (none for the final Euler step).
#[derive(Debug, Clone, Copy)]
struct Step {
    down: f64,
    up: f64,
    mid: Option<f64>,
}

/// k-diffusion's log-σ times of a 2S step from σ to σ_down: t = −log σ, t_next = −log σ_down
/// and h = t_next − t; the midpoint is s = t + h/2.
fn log_times(sigma: f64, down: f64) -> (f64, f64, f64) {
    let (t, t_next) = (-sigma.ln(), -down.ln());
    (t, t_next, t_next - t)
}

/// k-diffusion's model input x·c_in with c_in = 1/√(σ² + 1).
fn scale(x: &[f64], sigma: f64) -> Vec<f64> {
    let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
    x.iter().map(|v| v * c_in).collect()
}

#[derive(Debug, Clone)]
struct Dpmpp2sAncestral {
    prediction_type: PredictionType,
    /// N + 1 sigmas, the last 0.
    sigmas: Vec<f64>,
    steps: Vec<Step>,
    /// The schedule's log σ table (for the model's fractional timesteps).
    log_sigmas: Vec<f64>,
}

impl Dpmpp2sAncestral {
    fn new(config: &Dpmpp2sAncestralConfig, n: usize) -> Result<Self> {
        if n == 0 || !(config.eta >= 0.0 && config.eta.is_finite()) {
            return Err(Error::Invalid(format!(
                "DPM++ 2S ancestral needs steps >= 1 and a finite eta >= 0, got {n} steps, eta {}",
                config.eta
            )));
        }
        let table = ve_sigmas(&config.betas.alphas_cumprod_finite()?);
        let log_sigmas: Vec<f64> = table.iter().map(|s| s.ln()).collect();
        let t_max = (table.len() - 1) as f64;
        // k-diffusion `DiscreteSchedule.t_to_sigma`: linear in log σ between table entries.
        let mut sigmas: Vec<f64> = linspace(t_max, 0.0, n)
            .into_iter()
            .map(|t| {
                let (lo, hi, w) = (t.floor() as usize, t.ceil() as usize, t.fract());
                ((1.0 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()
            })
            .collect();
        sigmas.push(0.0);
        let steps = sigmas
            .windows(2)
            .map(|w| {
                let (down, up) = ancestral_step(w[0], w[1], config.eta);
                let mid = (down != 0.0).then(|| {
                    let (t, _, h) = log_times(w[0], down);
                    (-(t + 0.5 * h)).exp()
                });
                Step { down, up, mid }
            })
            .collect();
        Ok(Self {
            prediction_type: config.prediction_type,
            sigmas,
            steps,
            log_sigmas,
        })
    }

    fn time(&self, sigma: f64) -> ModelTime {
        let (alpha, s) = vp_from_ve(sigma);
        ModelTime {
            t: sigma_to_t(sigma, &self.log_sigmas),
            alpha,
            sigma: s,
        }
    }
}

impl Plan for Dpmpp2sAncestral {
    fn model_times(&self) -> Vec<ModelTime> {
        self.steps
            .iter()
            .zip(&self.sigmas)
            .flat_map(|(step, &sigma)| std::iter::once(sigma).chain(step.mid))
            .map(|sigma| self.time(sigma))
            .collect()
    }

    /// The model timestep of each step's first evaluation.
    fn timesteps(&self) -> Vec<f64> {
        let starts = &self.sigmas[..self.steps.len()];
        starts.iter().map(|&s| sigma_to_t(s, &self.log_sigmas)).collect()
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn orders(&self) -> Vec<usize> {
        self.steps.iter().map(Step::order).collect()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.sigmas[0]
    }

    fn is_stochastic(&self) -> bool {
        self.steps.iter().any(|s| s.up > 0.0)
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(Run {
            input: scale(&x, self.sigmas[0]),
            plan: self,
            x,
            i: 0,
            midpoint: None,
        })
    }
}

impl Step {
    fn order(&self) -> usize {
        1 + self.mid.is_some() as usize
    }
}

struct Run {
    plan: Arc<Dpmpp2sAncestral>,
    /// The sample at σ_i.
    x: Vec<f64>,
    /// The pending evaluation's model input.
    input: Vec<f64>,
    i: usize,
    /// Between a 2S step's two evaluations: x₂ at the midpoint σ.
    midpoint: Option<(f64, Vec<f64>)>,
}

impl Solver for Run {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        let sigma = match &self.midpoint {
            Some((mid, _)) => *mid,
            None => *self.plan.sigmas[..self.plan.steps.len()].get(self.i)?,
        };
        Some(Evaluation {
            x: &self.input,
            time: self.plan.time(sigma),
        })
    }

    fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let p = self.plan.clone();
        let (i, step) = (self.i, p.steps[self.i]);
        let sigma = p.sigmas[i];
        let (t, t_next, h) = log_times(sigma, step.down);
        match (step.mid, self.midpoint.take()) {
            (Some(mid), None) => {
                let denoised = p.prediction_type.to_x0_ve(out, &self.x, sigma);
                let (c_x, c_d) = ((-(t + 0.5 * h)).exp() / (-t).exp(), (-h * 0.5).exp_m1());
                let x2: Vec<f64> = (self.x.iter().zip(&denoised))
                    .map(|(x, d)| c_x * x - c_d * d)
                    .collect();
                self.input = scale(&x2, mid);
                self.midpoint = Some((mid, x2));
                return Ok(None);
            }
            (_, Some((mid, x2))) => {
                let denoised = p.prediction_type.to_x0_ve(out, &x2, mid);
                let (c_x, c_d) = ((-t_next).exp() / (-t).exp(), (-h).exp_m1());
                for (x, d) in self.x.iter_mut().zip(&denoised) {
                    *x = c_x * *x - c_d * d;
                }
            }
            (None, None) => {
                let denoised = p.prediction_type.to_x0_ve(out, &self.x, sigma);
                let dt = step.down - sigma;
                for (x, d) in self.x.iter_mut().zip(&denoised) {
                    *x += (*x - d) / sigma * dt;
                }
            }
        }
        if p.sigmas[i + 1] > 0.0 {
            let z = draw(noise, self.x.len())?;
            for (x, z) in self.x.iter_mut().zip(&z) {
                *x += z * step.up;
            }
        }
        self.i += 1;
        self.input = scale(&self.x, p.sigmas[self.i]);
        Ok(Some(StepInfo::of_order(i, step.order())))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
