//! The unified front: [`SchedulerConfig`] holds any registered solver's settings (a
//! [`SolverConfig`]), which build a [`Scheduler`] for a number of steps; runs follow the
//! [`Run`] protocol, and [`sample`] is the k-diffusion style loop over a model callback.

use crate::betas::BetaConfig;
use crate::config::parse_diffusers;
use crate::error::{Error, ModelError, Result};
use crate::noise::NoiseSource;
use crate::registry::{presets, SCHEDULER_NAMES};
use crate::solver::{Evaluation, ModelTime, Solver, StepInfo};
use std::any::Any;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

/// The settings of one solver: a registered scheduler type (`DdimConfig`, `DpmMultistepConfig`,
/// …). It knows the time convention of the model times its runs report and builds the solver
/// for a number of steps; [`SchedulerConfig`] holds any of them.
pub trait SolverConfig: AnyConfig + Debug + Send + Sync {
    /// What the [`ModelTime::t`] labels of this solver mean, and on which noise process.
    fn time_convention(&self) -> TimeConvention;

    /// The solver for `steps` inference steps (U-ViT DPM-Solver: `steps` = NFE budget as in
    /// `DPM_Solver.sample(steps=…)`).
    fn build(&self, steps: usize) -> Result<Scheduler>;
}

/// Cloning, comparing and downcasting a boxed [`SolverConfig`]; implemented for every
/// `Clone + PartialEq` config, so a solver only writes [`SolverConfig`] itself.
pub trait AnyConfig: 'static {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn clone_box(&self) -> Box<dyn SolverConfig>;
    fn eq_dyn(&self, other: &dyn Any) -> bool;
}

impl<T: SolverConfig + Clone + PartialEq> AnyConfig for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn clone_box(&self) -> Box<dyn SolverConfig> {
        Box::new(self.clone())
    }

    fn eq_dyn(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<T>() == Some(self)
    }
}

/// The forward process a solver integrates and the unit of its [`ModelTime::t`]: what a caller
/// needs to feed a network the labels it was trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeConvention {
    /// A discrete ᾱ table; `t` is the diffusers timestep index in `[0, T)` (fractional for the
    /// Euler family's interpolated times).
    Diffusers(BetaConfig),
    /// A discrete ᾱ table integrated in continuous time; `t` is U-ViT's `1000·t` (label n + 1
    /// for diffusers index n).
    UvitDiscrete(BetaConfig),
    /// The continuous VP-linear SDE with β(t) = β₀ + t(β₁ − β₀); `t` is `999·t`.
    Continuous { beta_0: f64, beta_1: f64 },
}

/// [`SolverConfig`] for a diffusers-family settings type (a `betas` field, timestep labels on
/// its ᾱ table) whose solver `$build(&config, steps)` constructs.
macro_rules! diffusers_solver_config {
    ($config:ty, $build:path) => {
        impl $crate::scheduler::SolverConfig for $config {
            fn time_convention(&self) -> $crate::scheduler::TimeConvention {
                $crate::scheduler::TimeConvention::Diffusers(self.betas.clone())
            }

            fn build(&self, steps: usize) -> $crate::error::Result<$crate::scheduler::Scheduler> {
                Ok($crate::scheduler::Scheduler::from_plan($build(
                    self, steps,
                )?))
            }
        }
    };
}

/// The [`Plan`] accessors of a solver whose `schedule` field is a `StepTimes` with
/// `timesteps` and the table `$table` (`sigmas` or `alphas_cumprod`).
macro_rules! schedule_accessors {
    ($table:ident) => {
        fn model_times(&self) -> Vec<$crate::solver::ModelTime> {
            $crate::solver::StepTimes::model_times(&self.schedule)
        }

        fn timesteps(&self) -> Vec<f64> {
            self.schedule.timesteps.clone()
        }

        fn $table(&self) -> Option<&[f64]> {
            Some(&self.schedule.$table)
        }
    };
}

/// Any supported scheduler, fully configured except for the number of steps.
#[derive(Debug)]
pub struct SchedulerConfig(Box<dyn SolverConfig>);

impl Clone for SchedulerConfig {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl PartialEq for SchedulerConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_dyn(other.0.as_any())
    }
}

impl<T: SolverConfig> From<T> for SchedulerConfig {
    fn from(config: T) -> Self {
        Self(Box::new(config))
    }
}

impl SchedulerConfig {
    /// Wrap the settings of one solver.
    pub fn new(config: impl SolverConfig) -> Self {
        config.into()
    }

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
    /// diffusers' defaults otherwise (no clipping). `name` is one of [`SCHEDULER_NAMES`];
    /// each solver file documents its presets.
    pub fn by_name(name: &str, betas: BetaConfig) -> Result<Self> {
        let preset = presets().find(|p| p.name == name).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown scheduler {name:?} (known: {})",
                SCHEDULER_NAMES.join(", ")
            ))
        })?;
        (preset.build)(betas)
    }

    /// What the model times of this scheduler mean (see [`TimeConvention`]).
    pub fn time_convention(&self) -> TimeConvention {
        self.0.time_convention()
    }

    /// The solver settings, if they are a `T`.
    pub fn get<T: SolverConfig>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// The solver settings for editing, if they are a `T`.
    pub fn get_mut<T: SolverConfig>(&mut self) -> Option<&mut T> {
        self.0.as_any_mut().downcast_mut()
    }
}

/// A built solver's schedule: what [`Scheduler`] reports, and the runs over it. The defaults
/// are those of a first-order solver without VE scaling or noise.
pub(crate) trait Plan: Debug + Send + Sync + 'static {
    /// Every model evaluation of a run, in order.
    fn model_times(&self) -> Vec<ModelTime>;
    /// See [`Scheduler::timesteps`].
    fn timesteps(&self) -> Vec<f64>;
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }
    fn alphas_cumprod(&self) -> Option<&[f64]> {
        None
    }
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }
    fn orders(&self) -> Vec<usize> {
        vec![1; self.num_steps()]
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn is_stochastic(&self) -> bool {
        false
    }
    /// A run from the (already scaled) initial sample `x`.
    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver>;
}

/// A scheduler built for a fixed number of steps: its schedule, and runs over it.
#[derive(Debug, Clone)]
pub struct Scheduler {
    plan: Arc<dyn Plan>,
    model_times: Arc<[ModelTime]>,
}

impl Scheduler {
    /// Build `config` for `steps` inference steps (U-ViT DPM-Solver: `steps` = NFE budget as
    /// in `DPM_Solver.sample(steps=…)`).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        config.0.build(steps)
    }

    /// The scheduler over a solver's built schedule (what [`SolverConfig::build`] returns).
    pub(crate) fn from_plan(plan: impl Plan) -> Self {
        Self {
            model_times: plan.model_times().into(),
            plan: Arc::new(plan),
        }
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
        self.plan.timesteps()
    }

    /// The VE sigmas (N + 1, last = final sigma) of the DPM, UniPC and Euler families.
    pub fn sigmas(&self) -> Option<&[f64]> {
        self.plan.sigmas()
    }

    /// ᾱ of DDIM/DDPM (with an exact 0 under zero terminal SNR).
    pub fn alphas_cumprod(&self) -> Option<&[f64]> {
        self.plan.alphas_cumprod()
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
        self.plan.orders()
    }

    /// Number of solver steps (trajectory rows after the initial one).
    pub fn num_steps(&self) -> usize {
        self.plan.num_steps()
    }

    /// Scale of the initial noise: x_T = z · init_noise_sigma (σ_max-based for Euler).
    pub fn init_noise_sigma(&self) -> f64 {
        self.plan.init_noise_sigma()
    }

    /// Whether a run draws noise (then it needs a real [`NoiseSource`]).
    pub fn is_stochastic(&self) -> bool {
        self.plan.is_stochastic()
    }

    /// Start a run from standard-normal noise `z` (scaled by [`Self::init_noise_sigma`]).
    pub fn start(&self, z: &[f64]) -> Run {
        let s = self.init_noise_sigma();
        let x: Vec<f64> = z.iter().map(|v| v * s).collect();
        Run {
            solver: self.plan.clone().start(x),
            evals: 0,
        }
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
