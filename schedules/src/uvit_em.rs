//! U-ViT's Euler–Maruyama sampler (`sde.euler_maruyama`) for the reverse VP-SDE or the
//! probability-flow ODE, on the grid [0, linspace(ε, T, steps)] traversed downwards.

use crate::error::{Error, Result};
use crate::noise::{add_noise, NoiseSource};
use crate::solver::{Evaluation, ModelTime, Solver, StepInfo, StepTimes};
use crate::spacing::linspace;
use crate::uvit_schedule::{UvitSchedule, UvitScheduleConfig};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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

    pub(crate) fn step_times(&self) -> &[f64] {
        &self.grid
    }

    pub(crate) fn is_stochastic(&self) -> bool {
        self.config.reverse == ReverseProcess::Sde
    }

    pub(crate) fn start(self: &Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(UvitEmRun {
            plan: self.clone(),
            x,
            k: 0,
        })
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
        Ok(Some(StepInfo {
            index: self.k - 1,
            order: 1,
            pred_x0: None,
            t: Some(s),
        }))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
