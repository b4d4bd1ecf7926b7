//! The step-by-step protocol every solver implements: ask for a model evaluation, feed the
//! model output back, observe completed steps. The k-diffusion style [`crate::sample`] loop and
//! callers that drive a network themselves (early exiting, caching) both sit on top of it.

use crate::error::Result;
use crate::noise::NoiseSource;

/// The noise level at which the model is evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelTime {
    /// The time label the network is conditioned on: the diffusers timestep (integer valued,
    /// fractional for Euler linspace/Karras), or U-ViT's time input 1000·t (discrete) / 999·t
    /// (continuous).
    pub t: f64,
    /// VP signal scale α of the model input (x_in = α x₀ + σ ε).
    pub alpha: f64,
    /// VP noise scale σ of the model input.
    pub sigma: f64,
}

impl ModelTime {
    /// An integer diffusers timestep: α = √ᾱ_t, σ = √(1 − ᾱ_t) (the model sees the
    /// timestep, even where a solver works with a fractional Karras σ).
    pub fn discrete(alphas_cumprod: &[f64], t: f64) -> Self {
        let ac = alphas_cumprod[t as usize];
        Self {
            t,
            alpha: ac.sqrt(),
            sigma: (1.0 - ac).sqrt(),
        }
    }
}

/// One pending model evaluation: the model input and its time.
#[derive(Debug, Clone, Copy)]
pub struct Evaluation<'a> {
    /// Model input (already scaled for the Euler family), same flat layout as the sample.
    pub x: &'a [f64],
    pub time: ModelTime,
}

/// A schedule's model times, one per step; the evaluations a solver asks for come from it.
pub(crate) trait StepTimes {
    /// Number of steps (model evaluations).
    fn steps(&self) -> usize;

    /// The model time of step `i`.
    fn model_time(&self, i: usize) -> ModelTime;

    fn model_times(&self) -> Vec<ModelTime> {
        (0..self.steps()).map(|i| self.model_time(i)).collect()
    }

    /// The evaluation of step `i` with model input `x`, or `None` past the last step.
    fn evaluation<'a>(&self, i: usize, x: &'a [f64]) -> Option<Evaluation<'a>> {
        (i < self.steps()).then(|| Evaluation {
            x,
            time: self.model_time(i),
        })
    }
}

/// Reported after every completed solver step (one trajectory row).
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// 0-based step index.
    pub index: usize,
    /// Solver order used by this step.
    pub order: usize,
    /// `pred_original_sample` where the diffusers scheduler returns one (DDIM, DDPM, Euler family).
    pub pred_x0: Option<Vec<f64>>,
    /// U-ViT: continuous time reached by this step.
    pub t: Option<f64>,
}

impl StepInfo {
    /// A step of a multistep or singlestep solver, which returns neither x₀ nor a time.
    pub(crate) fn of_order(index: usize, order: usize) -> Self {
        Self {
            index,
            order,
            pred_x0: None,
            t: None,
        }
    }

    /// A first-order diffusers step that returns its `pred_original_sample`.
    pub(crate) fn with_x0(index: usize, x0: Vec<f64>) -> Self {
        Self {
            index,
            order: 1,
            pred_x0: Some(x0),
            t: None,
        }
    }

    /// A U-ViT step, which reports the continuous time it reached.
    pub(crate) fn at_time(index: usize, order: usize, t: f64) -> Self {
        Self {
            index,
            order,
            pred_x0: None,
            t: Some(t),
        }
    }
}

/// A solver in flight (internal; wrapped by [`crate::Run`]).
pub(crate) trait Solver: Send {
    /// The next evaluation the solver needs, or `None` when it is finished.
    fn next_eval(&self) -> Option<Evaluation<'_>>;
    /// Consume the model output of the pending evaluation.
    fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>>;
    /// The current sample: after the last step, the final output.
    fn sample(&self) -> &[f64];
}
