//! The unified front: one configuration enum, one built [`Scheduler`], one [`Run`] protocol and
//! the k-diffusion style [`sample`] loop over a model callback.

use crate::betas::{BetaConfig, BetaSchedule};
use crate::config::parse_diffusers;
use crate::ddim::{Ddim, DdimConfig};
use crate::ddpm::{Ddpm, DdpmConfig, VarianceType};
use crate::dpm_multistep::{AlgorithmType, DpmMultistep, DpmMultistepConfig, DpmSolverType};
use crate::dpm_singlestep::{DpmSinglestep, DpmSinglestepConfig};
use crate::error::{Error, ModelError, Result};
use crate::euler::{Euler, EulerConfig};
use crate::euler_ancestral::EulerAncestralConfig;
use crate::noise::NoiseSource;
use crate::prediction::PredictionType;
use crate::solver::{Evaluation, ModelTime, Solver, StepInfo};
use crate::spacing::{FinalSigmas, Spacing};
use crate::unipc::{UniPc, UniPcConfig, UniPcSolverType};
use crate::uvit_dpm::{SkipType, UvitDpm, UvitDpmConfig, UvitMethod, UvitSolverType};
use crate::uvit_em::{ReverseProcess, UvitEm, UvitEmConfig};
use crate::uvit_schedule::UvitScheduleConfig;
use std::path::Path;
use std::sync::Arc;

/// Any supported scheduler, fully configured except for the number of steps.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerConfig {
    Ddim(DdimConfig),
    Ddpm(DdpmConfig),
    DpmMultistep(DpmMultistepConfig),
    DpmSinglestep(DpmSinglestepConfig),
    Euler(EulerConfig),
    EulerAncestral(EulerAncestralConfig),
    UniPc(UniPcConfig),
    UvitDpm(UvitDpmConfig),
    UvitEm(UvitEmConfig),
}

/// Names accepted by [`SchedulerConfig::by_name`].
pub const SCHEDULER_NAMES: &[&str] = &[
    "ddim",
    "ddpm",
    "dpmpp-2m",
    "dpmpp-3m",
    "dpmpp-2m-sde",
    "dpm-2s",
    "dpm-3s",
    "euler",
    "euler-a",
    "unipc",
    "uvit-dpm",
    "uvit-em",
];

impl SchedulerConfig {
    /// Parse a diffusers `scheduler_config.json` text (bare `-Infinity` tokens allowed).
    pub fn from_diffusers_json(text: &str) -> Result<Self> {
        parse_diffusers(text, "scheduler config")
    }

    /// Read and parse a diffusers `scheduler_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|reason| Error::Io {
            path: path.display().to_string(),
            reason,
        })?;
        parse_diffusers(&text, &path.display().to_string())
    }

    /// A preset for a model trained with the discrete schedule `betas` and ε-prediction, with
    /// diffusers' defaults otherwise (no clipping). `name` is one of [`SCHEDULER_NAMES`].
    /// `uvit-dpm` is U-ViT's default sampler (fast, order 3, time-uniform, data prediction,
    /// input 1000·t) on the discrete schedule; `uvit-em` is U-ViT's CIFAR Euler–Maruyama SDE on
    /// the continuous VP-linear equivalent of linear betas (β₀ = T·β_start, β₁ = T·β_end).
    pub fn by_name(name: &str, betas: BetaConfig) -> Result<Self> {
        let eps = PredictionType::Epsilon;
        let dpm = |order: usize, algorithm_type: AlgorithmType| {
            Self::DpmMultistep(DpmMultistepConfig {
                betas: betas.clone(),
                solver_order: order,
                prediction_type: eps,
                algorithm_type,
                solver_type: DpmSolverType::Midpoint,
                lower_order_final: true,
                euler_at_final: false,
                use_karras_sigmas: false,
                final_sigmas_type: FinalSigmas::Zero,
                lambda_min_clipped: f64::NEG_INFINITY,
                timestep_spacing: Spacing::Linspace,
                steps_offset: 0,
            })
        };
        let single = |order: usize| {
            Self::DpmSinglestep(DpmSinglestepConfig {
                betas: betas.clone(),
                solver_order: order,
                prediction_type: eps,
                algorithm_type: AlgorithmType::DpmSolverPp,
                solver_type: DpmSolverType::Midpoint,
                lower_order_final: true,
                use_karras_sigmas: false,
                final_sigmas_type: FinalSigmas::Zero,
                lambda_min_clipped: f64::NEG_INFINITY,
            })
        };
        Ok(match name {
            "ddim" => Self::Ddim(DdimConfig {
                betas,
                prediction_type: eps,
                clip_sample: None,
                set_alpha_to_one: true,
                steps_offset: 0,
                timestep_spacing: Spacing::Leading,
                eta: 0.0,
            }),
            "ddpm" => Self::Ddpm(DdpmConfig {
                betas,
                prediction_type: eps,
                variance_type: VarianceType::FixedSmall,
                clip_sample: None,
                steps_offset: 0,
                timestep_spacing: Spacing::Leading,
            }),
            "dpmpp-2m" => dpm(2, AlgorithmType::DpmSolverPp),
            "dpmpp-3m" => dpm(3, AlgorithmType::DpmSolverPp),
            "dpmpp-2m-sde" => dpm(2, AlgorithmType::SdeDpmSolverPp),
            "dpm-2s" => single(2),
            "dpm-3s" => single(3),
            "euler" => Self::Euler(EulerConfig {
                betas,
                prediction_type: eps,
                use_karras_sigmas: false,
                sigma_min: None,
                sigma_max: None,
                timestep_spacing: Spacing::Linspace,
                steps_offset: 0,
                final_sigmas_type: FinalSigmas::Zero,
            }),
            "euler-a" => Self::EulerAncestral(EulerAncestralConfig {
                betas,
                prediction_type: eps,
                timestep_spacing: Spacing::Linspace,
                steps_offset: 0,
            }),
            "unipc" => Self::UniPc(UniPcConfig {
                betas,
                solver_order: 2,
                prediction_type: eps,
                solver_type: UniPcSolverType::Bh2,
                predict_x0: true,
                lower_order_final: true,
                disable_corrector: vec![],
                use_karras_sigmas: false,
                sigma_min: None,
                sigma_max: None,
                timestep_spacing: Spacing::Linspace,
                steps_offset: 0,
                final_sigmas_type: FinalSigmas::Zero,
            }),
            "uvit-dpm" => Self::UvitDpm(UvitDpmConfig {
                schedule: UvitScheduleConfig::Discrete(betas),
                time_input_scale: 1000.0,
                predict_x0: true,
                method: UvitMethod::Fast,
                order: 3,
                skip_type: SkipType::TimeUniform,
                solver_type: UvitSolverType::DpmSolver,
                eps: 1e-3,
                t_end: 1.0,
                denoise: false,
            }),
            "uvit-em" => {
                let BetaSchedule::Linear { start, end } = betas.schedule else {
                    return Err(Error::Invalid(
                        "uvit-em needs linear betas (it integrates their continuous VP-linear limit)"
                            .into(),
                    ));
                };
                let t = betas.num_train_timesteps as f64;
                Self::UvitEm(UvitEmConfig {
                    beta_min: start * t,
                    beta_max: end * t,
                    reverse: ReverseProcess::Sde,
                    eps: 1e-3,
                    t_end: 1.0,
                    time_input_scale: 999.0,
                })
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unknown scheduler {other:?} (known: {})",
                    SCHEDULER_NAMES.join(", ")
                )))
            }
        })
    }
}

#[derive(Debug)]
enum Plan {
    Ddim(Arc<Ddim>),
    Ddpm(Arc<Ddpm>),
    DpmMultistep(Arc<DpmMultistep>),
    DpmSinglestep(Arc<DpmSinglestep>),
    Euler(Arc<Euler>),
    EulerAncestral(Arc<Euler>),
    UniPc(Arc<UniPc>),
    UvitDpm(Arc<UvitDpm>),
    UvitEm(Arc<UvitEm>),
}

/// A scheduler built for a fixed number of steps: its schedule, and runs over it.
#[derive(Debug, Clone)]
pub struct Scheduler {
    plan: Arc<Plan>,
    model_times: Arc<[ModelTime]>,
}

impl Scheduler {
    /// Build `config` for `steps` inference steps (U-ViT DPM-Solver: `steps` = NFE budget as
    /// in `DPM_Solver.sample(steps=…)`).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let plan = match config {
            SchedulerConfig::Ddim(c) => Plan::Ddim(Arc::new(Ddim::new(c, steps)?)),
            SchedulerConfig::Ddpm(c) => Plan::Ddpm(Arc::new(Ddpm::new(c, steps)?)),
            SchedulerConfig::DpmMultistep(c) => {
                Plan::DpmMultistep(Arc::new(DpmMultistep::new(c, steps)?))
            }
            SchedulerConfig::DpmSinglestep(c) => {
                Plan::DpmSinglestep(Arc::new(DpmSinglestep::new(c, steps)?))
            }
            SchedulerConfig::Euler(c) => Plan::Euler(Arc::new(Euler::new(c, steps)?)),
            SchedulerConfig::EulerAncestral(c) => {
                Plan::EulerAncestral(Arc::new(Euler::ancestral(c, steps)?))
            }
            SchedulerConfig::UniPc(c) => Plan::UniPc(Arc::new(UniPc::new(c, steps)?)),
            SchedulerConfig::UvitDpm(c) => Plan::UvitDpm(Arc::new(UvitDpm::new(c, steps)?)),
            SchedulerConfig::UvitEm(c) => Plan::UvitEm(Arc::new(UvitEm::new(c, steps)?)),
        };
        let model_times = match &plan {
            Plan::Ddim(p) => p.model_times(),
            Plan::Ddpm(p) => p.model_times(),
            Plan::DpmMultistep(p) => p.schedule.model_times(),
            Plan::DpmSinglestep(p) => p.schedule.model_times(),
            Plan::Euler(p) => p.schedule.model_times(),
            Plan::EulerAncestral(p) => p.schedule.model_times(),
            Plan::UniPc(p) => p.schedule.model_times(),
            Plan::UvitDpm(p) => p.model_times(),
            Plan::UvitEm(p) => p.model_times(),
        };
        Ok(Self {
            plan: Arc::new(plan),
            model_times: model_times.into(),
        })
    }

    /// Build from a diffusers `scheduler_config.json` file.
    pub fn from_config_file(path: impl AsRef<Path>, steps: usize) -> Result<Self> {
        Self::new(&SchedulerConfig::from_file(path)?, steps)
    }

    /// A named preset (see [`SchedulerConfig::by_name`]) for DDPM linear betas over 1000 steps.
    pub fn by_name(name: &str, steps: usize) -> Result<Self> {
        Self::new(
            &SchedulerConfig::by_name(name, BetaConfig::ddpm_linear(1000))?,
            steps,
        )
    }

    /// diffusers: `scheduler.timesteps`. U-ViT: the continuous times bounding the steps
    /// (T first, then the time after each step).
    pub fn timesteps(&self) -> Vec<f64> {
        match &*self.plan {
            Plan::Ddim(p) => p.timesteps().to_vec(),
            Plan::Ddpm(p) => p.timesteps().to_vec(),
            Plan::DpmMultistep(p) => p.schedule.timesteps.clone(),
            Plan::DpmSinglestep(p) => p.schedule.timesteps.clone(),
            Plan::Euler(p) => p.schedule.timesteps.clone(),
            Plan::EulerAncestral(p) => p.schedule.timesteps.clone(),
            Plan::UniPc(p) => p.schedule.timesteps.clone(),
            Plan::UvitDpm(p) => p.step_times(),
            Plan::UvitEm(p) => p.step_times().to_vec(),
        }
    }

    /// The VE sigmas (N + 1, last = final sigma) of the DPM, UniPC and Euler families.
    pub fn sigmas(&self) -> Option<&[f64]> {
        match &*self.plan {
            Plan::DpmMultistep(p) => Some(&p.schedule.sigmas),
            Plan::DpmSinglestep(p) => Some(&p.schedule.sigmas),
            Plan::UniPc(p) => Some(&p.schedule.sigmas),
            Plan::Euler(p) => Some(&p.schedule.sigmas),
            Plan::EulerAncestral(p) => Some(&p.schedule.sigmas),
            _ => None,
        }
    }

    /// ᾱ of DDIM/DDPM (with an exact 0 under zero terminal SNR).
    pub fn alphas_cumprod(&self) -> Option<&[f64]> {
        match &*self.plan {
            Plan::Ddim(p) => Some(p.alphas_cumprod()),
            Plan::Ddpm(p) => Some(p.alphas_cumprod()),
            _ => None,
        }
    }

    /// Every model evaluation of a run, in order (length = NFE).
    pub fn model_times(&self) -> &[ModelTime] {
        &self.model_times
    }

    /// Number of model evaluations per run.
    pub fn nfe(&self) -> usize {
        self.model_times.len()
    }

    /// The solver order of every step.
    pub fn orders(&self) -> Vec<usize> {
        match &*self.plan {
            Plan::DpmMultistep(p) => p.orders().to_vec(),
            Plan::DpmSinglestep(p) => p.effective_orders(),
            Plan::UniPc(p) => p.orders().to_vec(),
            Plan::UvitDpm(p) => p.orders(),
            _ => vec![1; self.num_steps()],
        }
    }

    /// Number of solver steps (trajectory rows after the initial one).
    pub fn num_steps(&self) -> usize {
        match &*self.plan {
            Plan::UvitDpm(p) => p.orders().len(),
            Plan::UvitEm(p) => p.step_times().len() - 1,
            _ => self.timesteps().len(),
        }
    }

    /// Scale of the initial noise: x_T = z · init_noise_sigma (σ_max-based for Euler).
    pub fn init_noise_sigma(&self) -> f64 {
        match &*self.plan {
            Plan::Euler(p) => p.schedule.init_noise_sigma,
            Plan::EulerAncestral(p) => p.schedule.init_noise_sigma,
            _ => 1.0,
        }
    }

    /// Whether a run draws noise (then it needs a real [`NoiseSource`]).
    pub fn is_stochastic(&self) -> bool {
        match &*self.plan {
            Plan::Ddim(p) => p.is_stochastic(),
            Plan::Ddpm(_) | Plan::EulerAncestral(_) => true,
            Plan::DpmMultistep(p) => p.is_stochastic(),
            Plan::UvitEm(p) => p.is_stochastic(),
            _ => false,
        }
    }

    /// Start a run from standard-normal noise `z` (scaled by [`Self::init_noise_sigma`]).
    pub fn start(&self, z: &[f64]) -> Run {
        let s = self.init_noise_sigma();
        let x: Vec<f64> = z.iter().map(|v| v * s).collect();
        let solver = match &*self.plan {
            Plan::Ddim(p) => p.start(x),
            Plan::Ddpm(p) => p.start(x),
            Plan::DpmMultistep(p) => p.start(x),
            Plan::DpmSinglestep(p) => p.start(x),
            Plan::Euler(p) => p.start(x),
            Plan::EulerAncestral(p) => p.start(x),
            Plan::UniPc(p) => p.start(x),
            Plan::UvitDpm(p) => p.start(x),
            Plan::UvitEm(p) => p.start(x),
        };
        Run { solver, evals: 0 }
    }
}

/// A run in flight, driven one model evaluation at a time:
///
/// ```text
/// let mut run = scheduler.start(&z);
/// while let Some(ev) = run.next_eval() { let out = net(ev.x, ev.time); run.feed(&out, &mut noise)?; }
/// let x0 = run.into_sample();
/// ```
pub struct Run {
    solver: Box<dyn Solver>,
    evals: usize,
}

impl Run {
    /// The next model evaluation, or `None` when the run is finished.
    pub fn next_eval(&self) -> Option<Evaluation<'_>> {
        self.solver.next_eval()
    }

    /// Feed the model output of the pending evaluation; returns the completed step, if any.
    pub fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let expected = self.solver.sample().len();
        if out.len() != expected {
            return Err(Error::Invalid(format!(
                "model evaluation {} returned {} values, the sample has {expected}",
                self.evals,
                out.len()
            )));
        }
        if out.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "model evaluation {} returned a non-finite value",
                self.evals
            )));
        }
        self.evals += 1;
        self.solver.feed(out, noise)
    }

    /// The current sample (after the last step: the output).
    pub fn sample(&self) -> &[f64] {
        self.solver.sample()
    }

    /// The final sample.
    pub fn into_sample(self) -> Vec<f64> {
        self.solver.sample().to_vec()
    }
}

/// What [`sample`] returns.
#[derive(Debug, Clone)]
pub struct SampleOutput {
    /// The final sample (after U-ViT's `denoise` where enabled).
    pub x: Vec<f64>,
    /// The time of every model evaluation, in order.
    pub model_times: Vec<ModelTime>,
    /// The order of every step.
    pub orders: Vec<usize>,
}

/// Run `scheduler` from noise `z` over `model` (k-diffusion style). `on_step` sees every
/// completed step and the sample after it.
pub fn sample<F>(
    scheduler: &Scheduler,
    z: &[f64],
    mut model: F,
    noise: &mut dyn NoiseSource,
    mut on_step: impl FnMut(&StepInfo, &[f64]),
) -> Result<SampleOutput>
where
    F: FnMut(&[f64], ModelTime) -> std::result::Result<Vec<f64>, ModelError>,
{
    let mut run = scheduler.start(z);
    let mut model_times = Vec::with_capacity(scheduler.nfe());
    let mut orders = Vec::with_capacity(scheduler.num_steps());
    while let Some(ev) = run.next_eval() {
        let index = model_times.len();
        model_times.push(ev.time);
        let out = model(ev.x, ev.time).map_err(|reason| Error::Model { index, reason })?;
        if let Some(step) = run.feed(&out, noise)? {
            orders.push(step.order);
            on_step(&step, run.sample());
        }
    }
    Ok(SampleOutput {
        x: run.into_sample(),
        model_times,
        orders,
    })
}
