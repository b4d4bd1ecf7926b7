//! Euler ancestral as diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to σ_down,
//! then fresh noise of scale σ_up (drawn at every step, also the last where σ_up = 0).

use crate::betas::BetaConfig;
use crate::error::Result;
use crate::euler::VeSchedule;
use crate::noise::{draw, NoiseSource};
use crate::prediction::PredictionType;
use crate::solver::{Evaluation, Solver, StepInfo};
use crate::spacing::{FinalSigmas, Spacing};
use std::sync::Arc;

/// `EulerAncestralDiscreteScheduler` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EulerAncestralConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub timestep_spacing: Spacing,
    pub steps_offset: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct EulerAncestral {
    prediction_type: PredictionType,
    pub(crate) schedule: VeSchedule,
}

impl EulerAncestral {
    pub(crate) fn new(config: &EulerAncestralConfig, n: usize) -> Result<Self> {
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
        })
    }

    pub(crate) fn start(self: &Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(EulerAncestralRun {
            input: self.schedule.scale_input(&x, 0),
            plan: self.clone(),
            x,
            i: 0,
        })
    }
}

struct EulerAncestralRun {
    plan: Arc<EulerAncestral>,
    x: Vec<f64>,
    input: Vec<f64>,
    i: usize,
}

impl Solver for EulerAncestralRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        (self.i < self.plan.schedule.timesteps.len()).then(|| Evaluation {
            x: &self.input,
            time: self.plan.schedule.model_time(self.i),
        })
    }

    fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let sch = &self.plan.schedule;
        let i = self.i;
        let x0 = self
            .plan
            .prediction_type
            .to_x0_ve(out, &self.x, sch.sigmas[i]);
        let (from, to) = (sch.sigmas[i], sch.sigmas[i + 1]);
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - from;
        let z = draw(noise, self.x.len())?;
        for ((x, x0), z) in self.x.iter_mut().zip(&x0).zip(&z) {
            let derivative = (*x - x0) / from;
            *x = (*x + derivative * dt) + z * sigma_up;
        }
        self.i += 1;
        if self.i < sch.timesteps.len() {
            self.input = sch.scale_input(&self.x, self.i);
        }
        Ok(Some(StepInfo {
            index: i,
            order: 1,
            pred_x0: Some(x0),
            t: None,
        }))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
