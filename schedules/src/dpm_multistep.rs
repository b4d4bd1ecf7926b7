//! DPM-Solver(++) multistep, orders 1–3, and SDE-DPM-Solver++, as diffusers'
//! `DPMSolverMultistepScheduler` (README Q5–Q7).

use crate::betas::BetaConfig;
use crate::config::{Reader, THRESHOLD};
use crate::error::{Error, Result};
use crate::exp_integrator::{check_solver_order, multistep_update, push_history, D1Weight, Form};
use crate::noise::{draw, NoiseSource};
use crate::prediction::PredictionType;
use crate::registry::{DiffusersClass, Preset, Registration};
use crate::scheduler::{Plan, SchedulerConfig};
use crate::solver::{Evaluation, Solver, StepInfo, StepTimes};
use crate::spacing::{
    last_timestep, multistep_timesteps, FinalSigmas, KarrasRule, SigmaSchedule, Spacing,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Presets `dpmpp-2m`, `dpmpp-3m` (DPM-Solver++, midpoint, linspace spacing, σ_final = 0) and
/// `dpmpp-2m-sde` (SDE-DPM-Solver++), and `DPMSolverMultistepScheduler`.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[
        Preset {
            name: "dpmpp-2m",
            build: |betas| preset(betas, 2, AlgorithmType::DpmSolverPp),
        },
        Preset {
            name: "dpmpp-3m",
            build: |betas| preset(betas, 3, AlgorithmType::DpmSolverPp),
        },
        Preset {
            name: "dpmpp-2m-sde",
            build: |betas| preset(betas, 2, AlgorithmType::SdeDpmSolverPp),
        },
    ],
    diffusers: Some(DiffusersClass {
        name: "DPMSolverMultistepScheduler",
        fields: &[
            THRESHOLD,
            &[
                "solver_order",
                "algorithm_type",
                "solver_type",
                "lower_order_final",
                "euler_at_final",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
                "use_flow_sigmas",
                "flow_shift",
                "final_sigmas_type",
                "lambda_min_clipped",
                "variance_type",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
                "use_dynamic_shifting",
                "time_shift_type",
            ],
        ],
        read,
    }),
};

fn preset(betas: BetaConfig, order: usize, algorithm_type: AlgorithmType) -> Result<SchedulerConfig> {
    Ok(SchedulerConfig::new(DpmMultistepConfig {
        betas,
        solver_order: order,
        prediction_type: PredictionType::Epsilon,
        algorithm_type,
        solver_type: DpmSolverType::Midpoint,
        lower_order_final: true,
        euler_at_final: false,
        use_karras_sigmas: false,
        final_sigmas_type: FinalSigmas::Zero,
        lambda_min_clipped: f64::NEG_INFINITY,
        timestep_spacing: Spacing::Linspace,
        steps_offset: 0,
    }))
}

fn read(r: &Reader) -> Result<SchedulerConfig, String> {
    let final_sigmas_type = r.final_sigmas()?;
    let (algorithm_type, solver_type) = r.dpm_kind(final_sigmas_type)?;
    Ok(SchedulerConfig::new(DpmMultistepConfig {
        betas: r.betas()?,
        solver_order: r.order()?,
        prediction_type: r.prediction()?,
        algorithm_type,
        solver_type,
        lower_order_final: r.raw.lower_order_final.unwrap_or(true),
        euler_at_final: r.raw.euler_at_final.unwrap_or(false),
        use_karras_sigmas: r.karras_only()?,
        final_sigmas_type,
        lambda_min_clipped: r.raw.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
        timestep_spacing: r.spacing("linspace")?,
        steps_offset: r.raw.steps_offset.unwrap_or(0),
    }))
}

/// diffusers `algorithm_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlgorithmType {
    /// Data-prediction ODE solver (DPM-Solver++).
    #[serde(rename = "dpmsolver++")]
    DpmSolverPp,
    /// Noise-prediction ODE solver (the original DPM-Solver).
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// Data-prediction SDE solver (SDE-DPM-Solver++).
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPp,
}

impl AlgorithmType {
    pub(crate) fn form(self) -> Form {
        match self {
            Self::DpmSolverPp => Form::Data,
            Self::DpmSolver => Form::Noise,
            Self::SdeDpmSolverPp => Form::DataSde,
        }
    }
}

/// diffusers `solver_type` of the DPM solvers: how the first difference is weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpmSolverType {
    Midpoint,
    Heun,
}

impl DpmSolverType {
    pub(crate) fn d1_weight(self) -> D1Weight {
        match self {
            Self::Midpoint => D1Weight::Midpoint,
            Self::Heun => D1Weight::Taylor,
        }
    }
}

/// `DPMSolverMultistepScheduler` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DpmMultistepConfig {
    pub betas: BetaConfig,
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    pub algorithm_type: AlgorithmType,
    pub solver_type: DpmSolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub use_karras_sigmas: bool,
    pub final_sigmas_type: FinalSigmas,
    pub lambda_min_clipped: f64,
    pub timestep_spacing: Spacing,
    pub steps_offset: usize,
}

impl DpmMultistepConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        check_solver_order("solver_order", self.solver_order)?;
        check_final_sigmas(self.algorithm_type, self.final_sigmas_type).map_err(Error::Invalid)
    }
}

/// diffusers rejects the noise-prediction solver with σ_final = 0 (README Q7): its last step
/// would divide by σ = 0.
pub(crate) fn check_final_sigmas(
    algorithm: AlgorithmType,
    final_sigmas: FinalSigmas,
) -> std::result::Result<(), String> {
    if algorithm == AlgorithmType::DpmSolver && final_sigmas == FinalSigmas::Zero {
        return Err(
            "algorithm_type \"dpmsolver\" contradicts final_sigmas_type \"zero\" (use \"sigma_min\")"
                .into(),
        );
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub(crate) struct DpmMultistep {
    config: DpmMultistepConfig,
    pub(crate) schedule: SigmaSchedule,
    orders: Vec<usize>,
}

impl DpmMultistep {
    pub(crate) fn new(config: &DpmMultistepConfig, n: usize) -> Result<Self> {
        config.validate()?;
        let ac = config.betas.alphas_cumprod_finite()?;
        let t = config.betas.num_train_timesteps;
        let last = last_timestep(&ac, config.lambda_min_clipped);
        let spaced = multistep_timesteps(
            config.timestep_spacing,
            t,
            last,
            n,
            config.steps_offset,
            config.use_karras_sigmas,
        )?;
        let karras = config.use_karras_sigmas.then_some(KarrasRule {
            sigma_min: None,
            sigma_max: None,
            round: !matches!(
                config.betas.schedule,
                crate::betas::BetaSchedule::SquaredCosCapV2
            ),
        });
        let final_type = config.final_sigmas_type;
        let schedule = SigmaSchedule::new(ac, spaced, karras, |ac, _| final_type.table_sigma(ac));
        let n = schedule.timesteps.len();
        let orders = (0..n).map(|i| order_at(config, i, n)).collect();
        Ok(Self {
            config: config.clone(),
            schedule,
            orders,
        })
    }

}

diffusers_solver_config!(DpmMultistepConfig, DpmMultistep::new);

impl Plan for DpmMultistep {
    schedule_accessors!(sigmas);

    fn orders(&self) -> Vec<usize> {
        self.orders.clone()
    }

    fn is_stochastic(&self) -> bool {
        self.config.algorithm_type == AlgorithmType::SdeDpmSolverPp
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(DpmMultistepRun {
            plan: self,
            x,
            i: 0,
            history: Vec::new(),
        })
    }
}

/// diffusers' order at step `i` of `n` (warm-up, `lower_order_final`, Q5).
fn order_at(c: &DpmMultistepConfig, i: usize, n: usize) -> usize {
    let done = i.min(c.solver_order);
    let final_first = i == n - 1
        && (c.euler_at_final
            || (c.lower_order_final && n < 15)
            || c.final_sigmas_type == FinalSigmas::Zero);
    let second_capped = n >= 2 && i == n - 2 && c.lower_order_final && n < 15;
    if c.solver_order == 1 || done < 1 || final_first {
        1
    } else if c.solver_order == 2 || done < 2 || second_capped {
        2
    } else {
        3
    }
}

struct DpmMultistepRun {
    plan: Arc<DpmMultistep>,
    x: Vec<f64>,
    i: usize,
    /// Converted model outputs, oldest first (at most `solver_order`).
    history: Vec<Vec<f64>>,
}

impl Solver for DpmMultistepRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        self.plan.schedule.evaluation(self.i, &self.x)
    }

    fn feed(&mut self, out: &[f64], noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let p = &self.plan;
        let cfg = &p.config;
        let sch = &p.schedule;
        let i = self.i;
        let s0 = sch.level(i);
        let form = cfg.algorithm_type.form();
        let m = cfg
            .prediction_type
            .to_term(form.is_data(), out, &self.x, s0.alpha, s0.sigma);
        push_history(&mut self.history, m, cfg.solver_order);
        let z = match form {
            Form::DataSde => Some(draw(noise, self.x.len())?),
            _ => None,
        };
        let order = p.orders[i];
        let k = self.history.len();
        let history: Vec<(&[f64], f64)> = (0..order)
            .map(|j| {
                let m = self.history[k - order + j].as_slice();
                (m, sch.level(i + 1 + j - order).lambda)
            })
            .collect();
        let weight = cfg.solver_type.d1_weight();
        let t = sch.level(i + 1);
        self.x = multistep_update(form, &self.x, s0, t, &history, weight, z.as_deref());
        self.i += 1;
        Ok(Some(StepInfo::of_order(i, order)))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
