//! Euler (Karras et al. 2022, Algorithm 2 without churn) as diffusers' `EulerDiscreteScheduler`.
//! Samples live in the VE scale x_ve = x_vp·√(1 + σ²); the model sees x/√(σ² + 1) (README Q9).

use crate::betas::BetaConfig;
use crate::config::Reader;
use crate::error::Result;
use crate::euler_ancestral::ancestral_step;
use crate::noise::{draw, NoiseSource};
use crate::prediction::{vp_from_ve, PredictionType};
use crate::registry::{DiffusersClass, Preset, Registration};
use crate::scheduler::{Plan, SchedulerConfig};
use crate::solver::{Evaluation, ModelTime, Solver, StepInfo, StepTimes};
use crate::spacing::{
    interp_table, karras_sigmas, sigma_to_t, timesteps, ve_sigmas, Family, FinalSigmas, Spacing,
};
use std::sync::Arc;

/// Preset `euler` (linspace spacing, σ_final = 0) and `EulerDiscreteScheduler`.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[Preset {
        name: "euler",
        build: |betas| {
            Ok(SchedulerConfig::new(EulerConfig {
                betas,
                prediction_type: PredictionType::Epsilon,
                use_karras_sigmas: false,
                sigma_min: None,
                sigma_max: None,
                timestep_spacing: Spacing::Linspace,
                steps_offset: 0,
                final_sigmas_type: FinalSigmas::Zero,
            }))
        },
    }],
    diffusers: Some(DiffusersClass {
        name: "EulerDiscreteScheduler",
        fields: &[&[
            "interpolation_type",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "sigma_min",
            "sigma_max",
            "timestep_spacing",
            "timestep_type",
            "steps_offset",
            "rescale_betas_zero_snr",
            "final_sigmas_type",
        ]],
        read,
    }),
};

fn read(r: &Reader) -> Result<SchedulerConfig, String> {
    if let Some(t) = r.raw.interpolation_type.as_deref().filter(|t| *t != "linear") {
        return Err(format!(
            "unsupported interpolation_type {t:?} (supported: linear)"
        ));
    }
    if let Some(t) = r.raw.timestep_type.as_deref().filter(|t| *t != "discrete") {
        return Err(format!(
            "unsupported timestep_type {t:?} (supported: discrete)"
        ));
    }
    Ok(SchedulerConfig::new(EulerConfig {
        betas: r.betas()?,
        prediction_type: r.prediction()?,
        use_karras_sigmas: r.karras_only()?,
        sigma_min: r.raw.sigma_min,
        sigma_max: r.raw.sigma_max,
        timestep_spacing: r.spacing("linspace")?,
        steps_offset: r.raw.steps_offset.unwrap_or(0),
        final_sigmas_type: r.final_sigmas()?,
    }))
}

/// `EulerDiscreteScheduler` settings (`interpolation_type` linear, `timestep_type` discrete).
#[derive(Debug, Clone, PartialEq)]
pub struct EulerConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub use_karras_sigmas: bool,
    /// Karras bounds; default: the ends of the spaced sigmas (README Q4).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_spacing: Spacing,
    pub steps_offset: usize,
    pub final_sigmas_type: FinalSigmas,
}

/// The Euler family's VE schedule: fractional timesteps, N + 1 sigmas, initial noise scale.
#[derive(Debug, Clone)]
pub(crate) struct VeSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
}

impl VeSchedule {
    /// Spaced sigmas by linear interpolation of the table, optionally replaced by Karras sigmas
    /// bounded by the spaced ones, then the final sigma.
    pub(crate) fn new(
        betas: &BetaConfig,
        spacing: Spacing,
        steps_offset: usize,
        n: usize,
        karras: Option<(Option<f64>, Option<f64>)>,
        final_sigmas_type: FinalSigmas,
    ) -> Result<Self> {
        let ac = betas.alphas_cumprod_finite()?;
        let t = betas.num_train_timesteps;
        let mut ts = timesteps(Family::Euler, spacing, t, t, n, steps_offset)?;
        let table = ve_sigmas(&ac);
        let mut sigmas: Vec<f64> = ts.iter().map(|&x| interp_table(x, &table)).collect();
        if let Some((lo, hi)) = karras {
            let sigma_min = lo.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = hi.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, n);
            let log_sigmas: Vec<f64> = table.iter().map(|s| s.ln()).collect();
            ts = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        sigmas.push(match final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => table[0],
        });
        let max = sigmas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        };
        Ok(Self {
            timesteps: ts,
            sigmas,
            init_noise_sigma,
        })
    }

    /// x/√(σ_i² + 1): what the network receives at step i.
    pub(crate) fn scale_input(&self, x: &[f64], i: usize) -> Vec<f64> {
        let s = self.sigmas[i];
        let c = (s * s + 1.0).sqrt();
        x.iter().map(|v| v / c).collect()
    }
}

impl StepTimes for VeSchedule {
    fn steps(&self) -> usize {
        self.timesteps.len()
    }

    fn model_time(&self, i: usize) -> ModelTime {
        let (alpha, sigma) = vp_from_ve(self.sigmas[i]);
        ModelTime {
            t: self.timesteps[i],
            alpha,
            sigma,
        }
    }
}

/// Euler or Euler ancestral: both take x̂₀ on the same VE schedule and differ only in the step.
#[derive(Debug, Clone)]
pub(crate) struct Euler {
    pub(crate) prediction_type: PredictionType,
    pub(crate) schedule: VeSchedule,
    /// Step to σ_down and add noise of scale σ_up ([`ancestral_step`]).
    pub(crate) ancestral: bool,
}

impl Euler {
    pub(crate) fn new(config: &EulerConfig, n: usize) -> Result<Self> {
        let karras = config
            .use_karras_sigmas
            .then_some((config.sigma_min, config.sigma_max));
        Ok(Self {
            prediction_type: config.prediction_type,
            schedule: VeSchedule::new(
                &config.betas,
                config.timestep_spacing,
                config.steps_offset,
                n,
                karras,
                config.final_sigmas_type,
            )?,
            ancestral: false,
        })
    }
}

diffusers_solver_config!(EulerConfig, Euler::new);

impl Plan for Euler {
    schedule_accessors!(sigmas);

    fn init_noise_sigma(&self) -> f64 {
        self.schedule.init_noise_sigma
    }

    fn is_stochastic(&self) -> bool {
        self.ancestral
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(EulerRun {
            input: self.schedule.scale_input(&x, 0),
            plan: self,
            x,
            i: 0,
        })
    }
}

struct EulerRun {
    plan: Arc<Euler>,
    x: Vec<f64>,
    input: Vec<f64>,
    i: usize,
}

impl Solver for EulerRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        self.plan.schedule.evaluation(self.i, &self.input)
    }

    fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let sch = &self.plan.schedule;
        let i = self.i;
        let x0 = self
            .plan
            .prediction_type
            .to_x0_ve(out, &self.x, sch.sigmas[i]);
        let (sigma, next) = (sch.sigmas[i], sch.sigmas[i + 1]);
        if self.plan.ancestral {
            let z = draw(noise, self.x.len())?;
            ancestral_step(&mut self.x, &x0, sigma, next, &z);
        } else {
            let dt = next - sigma;
            for (x, x0) in self.x.iter_mut().zip(&x0) {
                let derivative = (*x - x0) / sigma;
                *x += derivative * dt;
            }
        }
        self.i += 1;
        if self.i < sch.timesteps.len() {
            self.input = sch.scale_input(&self.x, self.i);
        }
        Ok(Some(StepInfo::with_x0(i, x0)))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
