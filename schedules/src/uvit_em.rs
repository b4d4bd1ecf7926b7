//! U-ViT's Euler–Maruyama sampler (`sde.euler_maruyama`) for the reverse VP-SDE or the
//! probability-flow ODE, on the grid [0, linspace(ε, T, steps)] traversed downwards.

use crate::betas::{BetaConfig, BetaSchedule};
use crate::error::{Error, Result};
use crate::noise::{add_noise, NoiseSource};
use crate::registry::{Preset, Registration};
use crate::scheduler::{Plan, Scheduler, SchedulerConfig, SolverConfig, TimeConvention};
use crate::solver::{Evaluation, ModelTime, Solver, StepInfo, StepTimes};
use crate::spacing::linspace;
use crate::uvit_schedule::{UvitSchedule, UvitScheduleConfig};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Preset `uvit-em`: U-ViT's CIFAR Euler–Maruyama SDE on the continuous VP-linear equivalent
/// of linear betas (β₀ = T·β_start, β₁ = T·β_end). U-ViT has no config file format.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[Preset {
        name: "uvit-em",
        build: preset,
    }],
    diffusers: None,
};

fn preset(betas: BetaConfig) -> Result<SchedulerConfig> {
    let BetaSchedule::Linear { start, end } = betas.schedule else {
        return Err(Error::Invalid(
            "uvit-em needs linear betas (it integrates their continuous VP-linear limit)".into(),
        ));
    };
    let t = betas.num_train_timesteps as f64;
    Ok(SchedulerConfig::new(UvitEmConfig {
        beta_min: start * t,
        beta_max: end * t,
        reverse: ReverseProcess::Sde,
        eps: 1e-3,
        t_end: 1.0,
        time_input_scale: 999.0,
    }))
}

/// Which reverse-time process is integrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReverseProcess {
    /// dx = [f − g²∇log p] dt + g dw̄ (`sde.ReverseSDE`).
    Sde,
    /// dx = [f − ½g²∇log p] dt (`sde.ODE`).
    Ode,
}

/// `euler_maruyama(rsde, x, sample_steps, eps, T)` with `VPSDE(beta_min, beta_max)`.
#[derive(Debug, Clone, PartialEq)]
pub struct UvitEmConfig {
    pub beta_min: f64,
    pub beta_max: f64,
    pub reverse: ReverseProcess,
    pub eps: f64,
    pub t_end: f64,
    /// Network time input per unit time (`ScoreModel.predict` feeds 999·t).
    pub time_input_scale: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct UvitEm {
    config: UvitEmConfig,
    ns: UvitSchedule,
    /// Descending times: `T = grid[0] > … > grid[steps] = 0`.
    grid: Vec<f64>,
}

impl UvitEm {
    pub(crate) fn new(config: &UvitEmConfig, steps: usize) -> Result<Self> {
        if steps == 0 || !(config.eps > 0.0 && config.eps < config.t_end) {
            return Err(Error::Invalid(format!(
                "Euler-Maruyama needs steps >= 1 and 0 < eps < T, got {steps} steps, eps {}, T {}",
                config.eps, config.t_end
            )));
        }
        let mut grid = linspace(config.eps, config.t_end, steps);
        grid.insert(0, 0.0);
        grid.reverse();
        Ok(Self {
            ns: UvitSchedule::new(&UvitScheduleConfig::Linear {
                beta_0: config.beta_min,
                beta_1: config.beta_max,
            })?,
            config: config.clone(),
            grid,
        })
    }

}

impl SolverConfig for UvitEmConfig {
    fn time_convention(&self) -> TimeConvention {
        TimeConvention::Continuous {
            beta_0: self.beta_min,
            beta_1: self.beta_max,
        }
    }

    fn build(&self, steps: usize) -> Result<Scheduler> {
        Ok(Scheduler::from_plan(UvitEm::new(self, steps)?))
    }
}

impl Plan for UvitEm {
    fn model_times(&self) -> Vec<ModelTime> {
        StepTimes::model_times(self)
    }

    /// The grid T > … > 0.
    fn timesteps(&self) -> Vec<f64> {
        self.grid.clone()
    }

    fn num_steps(&self) -> usize {
        self.grid.len() - 1
    }

    fn is_stochastic(&self) -> bool {
        self.config.reverse == ReverseProcess::Sde
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(UvitEmRun { plan: self, x, k: 0 })
    }
}

/// One evaluation per grid interval, at its start.
impl StepTimes for UvitEm {
    fn steps(&self) -> usize {
        self.grid.len() - 1
    }

    fn model_time(&self, i: usize) -> ModelTime {
        self.ns
            .model_time(self.grid[i], self.config.time_input_scale)
    }
}

struct UvitEmRun {
    plan: Arc<UvitEm>,
    x: Vec<f64>,
    k: usize,
}

impl Solver for UvitEmRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        self.plan.evaluation(self.k, &self.x)
    }

    fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let c = &self.plan.config;
        let (t, s) = (self.plan.grid[self.k], self.plan.grid[self.k + 1]);
        let beta = c.beta_min + t * (c.beta_max - c.beta_min);
        let cum_beta = 1.0 - (-(c.beta_min * t + (c.beta_max - c.beta_min) * (t * t) * 0.5)).exp();
        let score_scale = -1.0 / cum_beta.sqrt();
        let g2 = match c.reverse {
            ReverseProcess::Sde => beta,
            ReverseProcess::Ode => 0.5 * beta,
        };
        let dt = s - t;
        let mut x: Vec<f64> = self
            .x
            .iter()
            .zip(out)
            .map(|(x, e)| {
                let drift = -0.5 * beta * x - g2 * (score_scale * e);
                x + drift * dt
            })
            .collect();
        if c.reverse == ReverseProcess::Sde && s != 0.0 {
            let sigma = beta.sqrt() * (-dt).sqrt();
            add_noise(noise, &mut x, sigma)?;
        }
        self.x = x;
        self.k += 1;
        Ok(Some(StepInfo::at_time(self.k - 1, 1, s)))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
