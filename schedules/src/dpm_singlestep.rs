//! DPM-Solver(++) singlestep, orders 1–3, as diffusers' `DPMSolverSinglestepScheduler`
//! (README Q8): the order list is [1,2,1,2,…] or [1,2,3,…] with a lower-order tail, and a
//! higher-order step restarts from the sample saved at the last order-1 step, so the
//! intermediate outputs are auxiliary points.

use crate::betas::BetaConfig;
use crate::config::{Reader, THRESHOLD};
use crate::dpm_multistep::{check_final_sigmas, AlgorithmType, DpmSolverType};
use crate::error::{Error, Result};
use crate::exp_integrator::{
    check_solver_order, push_history, taylor_diffs, update, D1Weight, Terms,
};
use crate::noise::NoiseSource;
use crate::ops::scaled_diff;
use crate::prediction::PredictionType;
use crate::registry::{DiffusersClass, Preset, Registration};
use crate::scheduler::{Plan, SchedulerConfig};
use crate::solver::{Evaluation, Solver, StepInfo, StepTimes};
use crate::spacing::{
    last_timestep, timesteps, Family, FinalSigmas, KarrasRule, SigmaSchedule, Spacing,
};
use std::sync::Arc;

/// Presets `dpm-2s`, `dpm-3s` (DPM-Solver++, midpoint, σ_final = 0) and
/// `DPMSolverSinglestepScheduler`.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[
        Preset {
            name: "dpm-2s",
            build: |betas| preset(betas, 2),
        },
        Preset {
            name: "dpm-3s",
            build: |betas| preset(betas, 3),
        },
    ],
    diffusers: Some(DiffusersClass {
        name: "DPMSolverSinglestepScheduler",
        fields: &[
            THRESHOLD,
            &[
                "solver_order",
                "algorithm_type",
                "solver_type",
                "lower_order_final",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_flow_sigmas",
                "flow_shift",
                "final_sigmas_type",
                "lambda_min_clipped",
                "variance_type",
                "use_dynamic_shifting",
                "time_shift_type",
            ],
        ],
        read,
    }),
};

fn preset(betas: BetaConfig, order: usize) -> Result<SchedulerConfig> {
    Ok(SchedulerConfig::new(DpmSinglestepConfig {
        betas,
        solver_order: order,
        prediction_type: PredictionType::Epsilon,
        algorithm_type: AlgorithmType::DpmSolverPp,
        solver_type: DpmSolverType::Midpoint,
        lower_order_final: true,
        use_karras_sigmas: false,
        final_sigmas_type: FinalSigmas::Zero,
        lambda_min_clipped: f64::NEG_INFINITY,
    }))
}

fn read(r: &Reader) -> Result<SchedulerConfig, String> {
    let final_sigmas_type = r.final_sigmas()?;
    let (algorithm_type, solver_type) = r.dpm_kind(final_sigmas_type)?;
    if algorithm_type == AlgorithmType::SdeDpmSolverPp {
        return Err(
            "algorithm_type \"sde-dpmsolver++\" is not supported for DPMSolverSinglestepScheduler"
                .into(),
        );
    }
    Ok(SchedulerConfig::new(DpmSinglestepConfig {
        betas: r.betas()?,
        solver_order: r.order()?,
        prediction_type: r.prediction()?,
        algorithm_type,
        solver_type,
        lower_order_final: r.raw.lower_order_final.unwrap_or(false),
        use_karras_sigmas: r.karras_only()?,
        final_sigmas_type,
        lambda_min_clipped: r.raw.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
    }))
}

/// `DPMSolverSinglestepScheduler` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DpmSinglestepConfig {
    pub betas: BetaConfig,
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    /// `dpmsolver++` or `dpmsolver` (the SDE variant is not supported here).
    pub algorithm_type: AlgorithmType,
    pub solver_type: DpmSolverType,
    pub lower_order_final: bool,
    pub use_karras_sigmas: bool,
    pub final_sigmas_type: FinalSigmas,
    pub lambda_min_clipped: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct DpmSinglestep {
    config: DpmSinglestepConfig,
    pub(crate) schedule: SigmaSchedule,
    /// Scheduled order per step (diffusers `order_list`).
    orders: Vec<usize>,
}

impl DpmSinglestep {
    pub(crate) fn new(config: &DpmSinglestepConfig, n: usize) -> Result<Self> {
        check_solver_order("solver_order", config.solver_order)?;
        if config.algorithm_type == AlgorithmType::SdeDpmSolverPp {
            return Err(Error::Invalid(
                "DPMSolverSinglestepScheduler with algorithm_type \"sde-dpmsolver++\" is not supported".into(),
            ));
        }
        check_final_sigmas(config.algorithm_type, config.final_sigmas_type)
            .map_err(Error::Invalid)?;
        let ac = config.betas.alphas_cumprod_finite()?;
        let t = config.betas.num_train_timesteps;
        let last = last_timestep(&ac, config.lambda_min_clipped);
        // Singlestep has no spacing option: always the DPM linspace rule (README Q3).
        let spaced = timesteps(Family::Dpm, Spacing::Linspace, t, last, n, 0)?;
        let karras = config.use_karras_sigmas.then_some(KarrasRule {
            sigma_min: None,
            sigma_max: None,
            round: true,
        });
        let final_type = config.final_sigmas_type;
        let schedule = SigmaSchedule::new(ac, spaced, karras, |ac, _| final_type.table_sigma(ac));
        // diffusers switches lower_order_final on for uneven step counts and for σ_final = 0.
        let lower_order_final = config.lower_order_final
            || !n.is_multiple_of(config.solver_order)
            || config.final_sigmas_type == FinalSigmas::Zero;
        let mut orders = order_list(config.solver_order, n, lower_order_final);
        if config.final_sigmas_type == FinalSigmas::Zero {
            if let Some(last) = orders.last_mut() {
                *last = 1;
            }
        }
        Ok(Self {
            config: config.clone(),
            schedule,
            orders,
        })
    }

}

diffusers_solver_config!(DpmSinglestepConfig, DpmSinglestep::new);

impl Plan for DpmSinglestep {
    schedule_accessors!(sigmas);

    /// Orders actually used (the scheduled order, reduced while outputs are missing).
    fn orders(&self) -> Vec<usize> {
        self.orders
            .iter()
            .enumerate()
            .map(|(i, &o)| o.min(i + 1))
            .collect()
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(DpmSinglestepRun {
            plan: self,
            restart: x.clone(),
            x,
            i: 0,
            history: Vec::new(),
        })
    }
}

fn order_list(order: usize, steps: usize, lower_order_final: bool) -> Vec<usize> {
    let cycle: Vec<usize> = (1..=order).collect();
    let repeat = |k: usize| cycle.iter().copied().cycle().take(k * order);
    let mut v: Vec<usize> = if lower_order_final {
        match (order, steps % order) {
            (1, _) => vec![1; steps],
            (_, 0) => repeat(steps / order - 1)
                .chain(1..order)
                .chain([1])
                .collect(),
            (_, rem) => repeat(steps / order).chain(1..=rem).collect(),
        }
    } else {
        repeat(steps / order).collect()
    };
    v.truncate(steps);
    v
}

struct DpmSinglestepRun {
    plan: Arc<DpmSinglestep>,
    x: Vec<f64>,
    /// The sample at the last order-1 step: higher orders restart from it.
    restart: Vec<f64>,
    i: usize,
    history: Vec<Vec<f64>>,
}

impl Solver for DpmSinglestepRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        self.plan.schedule.evaluation(self.i, &self.x)
    }

    fn feed(&mut self, out: &[f64], _noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
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
        let order = p.orders[i].min(self.history.len());
        if order == 1 {
            self.restart = self.x.clone();
        }
        let t = sch.level(i + 1);
        let k = self.history.len();
        let (m0, heun) = (&self.history[k - 1], cfg.solver_type == DpmSolverType::Heun);
        let (d1, d2);
        let x = match order {
            1 => update(
                form,
                &self.restart,
                s0,
                t,
                t.lambda - s0.lambda,
                &Terms::first(m0),
            ),
            2 => {
                let (s1, m1) = (sch.level(i - 1), &self.history[k - 2]);
                let h = t.lambda - s1.lambda;
                let r0 = (s0.lambda - s1.lambda) / h;
                d1 = scaled_diff(1.0 / r0, m0, m1);
                let mut terms = Terms::first(m1);
                terms.d1 = Some((cfg.solver_type.d1_weight(), &d1));
                update(form, &self.restart, s1, t, h, &terms)
            }
            _ => {
                let (s1, s2) = (sch.level(i - 1), sch.level(i - 2));
                let (m1, m2) = (&self.history[k - 2], &self.history[k - 3]);
                let h = t.lambda - s2.lambda;
                let r0 = (s0.lambda - s2.lambda) / h;
                let r1 = (s1.lambda - s2.lambda) / h;
                let d1_0 = scaled_diff(1.0 / r1, m1, m2);
                let d1_1 = scaled_diff(1.0 / r0, m0, m2);
                let mut terms = Terms::first(m2);
                if heun {
                    (d1, d2) = taylor_diffs(r1, &d1_0, r0, &d1_1);
                    terms.d1 = Some((D1Weight::Taylor, &d1));
                    terms.d2 = Some(&d2);
                } else {
                    terms.d1 = Some((D1Weight::Taylor, &d1_1));
                }
                update(form, &self.restart, s2, t, h, &terms)
            }
        };
        self.x = x;
        self.i += 1;
        Ok(Some(StepInfo::of_order(i, order)))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
