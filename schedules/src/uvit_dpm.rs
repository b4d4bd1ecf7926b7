//! U-ViT's DPM-Solver (`dpm_solver_pp.py`, and the CIFAR path of `dpm_solver_pytorch.py`):
//! methods `fast`, `singlestep` and `multistep` over a continuous-time VP schedule, in data
//! (`predict_x0`) or noise form, with the network fed 1000·t or 999·t.
//!
//! Faithful to U-ViT, including its `fast` variant (k grid intervals per order-k step, r1/r2
//! from λ ratios on the grid) and the `denoise` quirk: the final x₀ = (x − σ·m)/α uses the
//! *converted* model output m, which is a data prediction when `predict_x0` is set.

use crate::betas::BetaConfig;
use crate::error::{Error, Result};
use crate::exp_integrator::{multistep_update, taylor_diffs, update, D1Weight, Form, Terms};
use crate::noise::NoiseSource;
use crate::ops::scaled_diff;
use crate::registry::{Preset, Registration};
use crate::scheduler::{Plan, Scheduler, SchedulerConfig, SolverConfig, TimeConvention};
use crate::solver::{Evaluation, ModelTime, Solver, StepInfo};
use crate::spacing::linspace;
use crate::uvit_schedule::{UvitSchedule, UvitScheduleConfig};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Preset `uvit-dpm`: U-ViT's default sampler (fast, order 3, time-uniform, data prediction,
/// input 1000·t) on the discrete schedule. U-ViT has no config file format.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[Preset {
        name: "uvit-dpm",
        build: |betas: BetaConfig| {
            Ok(SchedulerConfig::new(UvitDpmConfig {
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
            }))
        },
    }],
    diffusers: None,
};

/// `DPM_Solver.sample(method=…)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UvitMethod {
    /// `dpm_solver_pp.py` fast: `steps` NFE as order-3 (or 2) steps over a grid of steps + 1.
    Fast,
    /// steps // order steps of fixed order, r1 = ½ or (⅓, ⅔).
    Singlestep,
    /// Multistep with warm-up, one NFE per step.
    Multistep,
    /// `dpm_solver_pytorch.py` fast (U-ViT CIFAR `eval.py`): steps // 3 + 1 logSNR-uniform
    /// steps, r1 = ⅓, r2 = ⅔, noise form; `order` and `skip_type` are ignored.
    PytorchFast,
}

/// `skip_type`: how the time grid is spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipType {
    #[serde(rename = "logSNR")]
    LogSnr,
    #[serde(rename = "time_uniform")]
    TimeUniform,
}

/// U-ViT `solver_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UvitSolverType {
    DpmSolver,
    Taylor,
}

impl UvitSolverType {
    fn d1_weight(self) -> D1Weight {
        match self {
            Self::DpmSolver => D1Weight::Midpoint,
            Self::Taylor => D1Weight::Taylor,
        }
    }
}

/// Arguments of U-ViT's `DPM_Solver(model_fn, ns, predict_x0).sample(x, steps, …)`.
#[derive(Debug, Clone, PartialEq)]
pub struct UvitDpmConfig {
    pub schedule: UvitScheduleConfig,
    /// Network time input per unit of continuous time: 1000 (discrete) or 999 (continuous).
    pub time_input_scale: f64,
    pub predict_x0: bool,
    pub method: UvitMethod,
    pub order: usize,
    pub skip_type: SkipType,
    pub solver_type: UvitSolverType,
    /// Final time ε.
    pub eps: f64,
    /// Start time T.
    pub t_end: f64,
    pub denoise: bool,
}

/// One singlestep-style step from `s` to `t` with intermediate times `s1`, `s2`.
#[derive(Debug, Clone, Copy)]
struct OuterStep {
    s: f64,
    t: f64,
    order: usize,
    r1: f64,
    r2: f64,
    s1: f64,
    s2: f64,
}

#[derive(Debug, Clone)]
enum Steps {
    Single(Vec<OuterStep>),
    /// Grid of steps + 1 times; orders of the steps.
    Multi {
        grid: Vec<f64>,
        orders: Vec<usize>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct UvitDpm {
    config: UvitDpmConfig,
    ns: UvitSchedule,
    steps: Steps,
}

impl UvitDpm {
    pub(crate) fn new(config: &UvitDpmConfig, steps: usize) -> Result<Self> {
        let ns = UvitSchedule::new(&config.schedule)?;
        let bad = |m: String| Err(Error::Invalid(m));
        if steps == 0 {
            return bad("U-ViT DPM-Solver needs at least 1 step".into());
        }
        if !(config.eps > 0.0 && config.eps < config.t_end) {
            return bad(format!(
                "U-ViT DPM-Solver needs 0 < eps < T, got eps {} and T {}",
                config.eps, config.t_end
            ));
        }
        let grid = |skip: SkipType, n: usize| time_grid(&ns, skip, config.t_end, config.eps, n);
        let plan = match config.method {
            UvitMethod::Multistep => {
                if !(1..=3).contains(&config.order) || steps < config.order {
                    return bad(format!(
                        "multistep needs order 1..=3 and steps >= order, got order {} and {steps} steps",
                        config.order
                    ));
                }
                Steps::Multi {
                    grid: grid(config.skip_type, steps),
                    orders: (1..=steps).map(|k| k.min(config.order)).collect(),
                }
            }
            UvitMethod::Singlestep => {
                if !(1..=3).contains(&config.order) || steps < config.order {
                    return bad(format!(
                        "singlestep needs order 1..=3 and steps >= order, got order {} and {steps} steps",
                        config.order
                    ));
                }
                let n = steps / config.order;
                let ts = grid(config.skip_type, n);
                let orders = vec![config.order; n];
                Steps::Single(outer_steps(&ns, &ts, &orders, false))
            }
            UvitMethod::Fast => {
                let orders = match config.order {
                    3 => fast_orders(steps),
                    2 => {
                        let mut o = vec![2; steps / 2];
                        if steps % 2 == 1 {
                            o.push(1);
                        }
                        o
                    }
                    o => return bad(format!("method fast needs order 2 or 3, got {o}")),
                };
                let ts = grid(config.skip_type, steps);
                Steps::Single(outer_steps(&ns, &ts, &orders, true))
            }
            UvitMethod::PytorchFast => {
                if config.predict_x0
                    || config.denoise
                    || config.solver_type != UvitSolverType::DpmSolver
                {
                    return bad("dpm_solver_pytorch fast is a noise-prediction dpm_solver without denoise: set predict_x0 = false, denoise = false, solver_type = dpm_solver".into());
                }
                let orders = fast_orders(steps);
                let ts = grid(SkipType::LogSnr, steps / 3 + 1);
                Steps::Single(outer_steps(&ns, &ts, &orders, false))
            }
        };
        Ok(Self {
            config: config.clone(),
            ns,
            steps: plan,
        })
    }

    fn form(&self) -> Form {
        if self.config.predict_x0 {
            Form::Data
        } else {
            Form::Noise
        }
    }

    fn time(&self, t: f64) -> ModelTime {
        self.ns.model_time(t, self.config.time_input_scale)
    }

    /// The continuous times bounding the steps: T, then the time after each step.
    fn step_times(&self) -> Vec<f64> {
        match &self.steps {
            Steps::Single(v) => std::iter::once(v[0].s)
                .chain(v.iter().map(|o| o.t))
                .collect(),
            Steps::Multi { grid, .. } => grid.clone(),
        }
    }

    fn step_orders(&self) -> Vec<usize> {
        match &self.steps {
            Steps::Single(v) => v.iter().map(|o| o.order).collect(),
            Steps::Multi { orders, .. } => orders.clone(),
        }
    }

    /// Continuous times of all model evaluations, in order.
    fn eval_times(&self) -> Vec<f64> {
        let mut v: Vec<f64> = match &self.steps {
            Steps::Single(steps) => steps
                .iter()
                .flat_map(|o| [o.s, o.s1, o.s2].into_iter().take(o.order))
                .collect(),
            Steps::Multi { grid, .. } => grid[..grid.len() - 1].to_vec(),
        };
        if self.config.denoise {
            v.push(self.config.eps);
        }
        v
    }


    /// `DPM_Solver.model_fn`: ε from the network, turned into x̂₀ when `predict_x0`.
    fn convert(&self, out: &[f64], x: &[f64], t: f64) -> Vec<f64> {
        if self.config.predict_x0 {
            let l = self.ns.level(t);
            x.iter()
                .zip(out)
                .map(|(x, e)| (x - l.sigma * e) / l.alpha)
                .collect()
        } else {
            out.to_vec()
        }
    }
}

impl SolverConfig for UvitDpmConfig {
    fn time_convention(&self) -> TimeConvention {
        match &self.schedule {
            UvitScheduleConfig::Discrete(b) => TimeConvention::UvitDiscrete(b.clone()),
            &UvitScheduleConfig::Linear { beta_0, beta_1 } => {
                TimeConvention::Continuous { beta_0, beta_1 }
            }
        }
    }

    fn build(&self, steps: usize) -> Result<Scheduler> {
        Ok(Scheduler::from_plan(UvitDpm::new(self, steps)?))
    }
}

impl Plan for UvitDpm {
    fn model_times(&self) -> Vec<ModelTime> {
        self.eval_times()
            .into_iter()
            .map(|t| self.time(t))
            .collect()
    }

    fn timesteps(&self) -> Vec<f64> {
        self.step_times()
    }

    fn num_steps(&self) -> usize {
        self.step_orders().len()
    }

    fn orders(&self) -> Vec<usize> {
        self.step_orders()
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(UvitDpmRun {
            plan: self,
            pending: None,
            x,
            k: 0,
            phase: 0,
            outputs: Vec::new(),
            denoised: false,
        })
    }
}

/// `get_time_steps`: N + 1 times from T down to ε.
fn time_grid(ns: &UvitSchedule, skip: SkipType, t_end: f64, eps: f64, n: usize) -> Vec<f64> {
    match skip {
        SkipType::TimeUniform => linspace(t_end, eps, n + 1),
        SkipType::LogSnr => {
            let (l_t, l_0) = (ns.level(t_end).lambda, ns.level(eps).lambda);
            linspace(l_t, l_0, n + 1)
                .into_iter()
                .map(|l| ns.inverse_lambda(l))
                .collect()
        }
    }
}

/// DPM-Solver-fast orders for `steps` NFE: [3,…,3,2,1], [3,…,3,1] or [3,…,3,2].
fn fast_orders(steps: usize) -> Vec<usize> {
    let k = steps / 3 + 1;
    match steps % 3 {
        0 => [vec![3; k - 2], vec![2, 1]].concat(),
        1 => [vec![3; k - 1], vec![1]].concat(),
        _ => [vec![3; k - 1], vec![2]].concat(),
    }
}

/// Steps over `ts`. With `spread` (dpm_solver_pp fast) an order-k step spans k grid intervals
/// and takes r1, r2 from the grid's λ; otherwise each step spans one interval with the default
/// r1 = ½ (order 2) or (⅓, ⅔) (order 3).
fn outer_steps(ns: &UvitSchedule, ts: &[f64], orders: &[usize], spread: bool) -> Vec<OuterStep> {
    let mut i = 0;
    orders
        .iter()
        .map(|&order| {
            let width = if spread { order } else { 1 };
            let (s, t) = (ts[i], ts[i + width]);
            let (ls, lt) = (ns.level(s).lambda, ns.level(t).lambda);
            let h = lt - ls;
            let (r1, r2) = if spread {
                let r = |j: usize| (ns.level(ts[i + j]).lambda - ls) / h;
                (
                    if order > 1 { r(1) } else { 0.5 },
                    if order > 2 { r(2) } else { 2.0 / 3.0 },
                )
            } else if order == 2 {
                (0.5, 2.0 / 3.0)
            } else {
                (1.0 / 3.0, 2.0 / 3.0)
            };
            i += width;
            OuterStep {
                s,
                t,
                order,
                r1,
                r2,
                s1: ns.inverse_lambda(ls + r1 * h),
                s2: ns.inverse_lambda(ls + r2 * h),
            }
        })
        .collect()
}

struct UvitDpmRun {
    plan: Arc<UvitDpm>,
    x: Vec<f64>,
    /// Model input of an intermediate evaluation (x_s1 or x_s2).
    pending: Option<Vec<f64>>,
    /// Outer step (singlestep) or step (multistep) index.
    k: usize,
    /// Evaluations done within the current singlestep step.
    phase: usize,
    /// Singlestep: m_s, m_s1, … of the current step; multistep: the last `order` outputs.
    outputs: Vec<Vec<f64>>,
    denoised: bool,
}

impl UvitDpmRun {
    fn steps_done(&self) -> bool {
        match &self.plan.steps {
            Steps::Single(v) => self.k >= v.len(),
            Steps::Multi { orders, .. } => self.k >= orders.len(),
        }
    }

    /// Continuous time of the pending evaluation.
    fn eval_time(&self) -> Option<f64> {
        if self.steps_done() {
            return (self.plan.config.denoise && !self.denoised).then_some(self.plan.config.eps);
        }
        Some(match &self.plan.steps {
            Steps::Single(v) => [v[self.k].s, v[self.k].s1, v[self.k].s2][self.phase],
            Steps::Multi { grid, .. } => grid[self.k],
        })
    }

    fn single(&mut self, m: Vec<f64>, step: OuterStep) -> Option<StepInfo> {
        let p = &self.plan;
        let (form, ns) = (p.form(), &p.ns);
        let (ls, lt) = (ns.level(step.s), ns.level(step.t));
        let h = lt.lambda - ls.lambda;
        self.outputs.push(m);
        let ms = &self.outputs;
        let weight = p.config.solver_type.d1_weight();
        if self.phase + 1 < step.order {
            // Build the next intermediate point x_s1 or x_s2.
            let next = if self.phase == 0 {
                update(
                    form,
                    &self.x,
                    ls,
                    ns.level(step.s1),
                    step.r1 * h,
                    &Terms::first(&ms[0]),
                )
            } else {
                let d1 = scaled_diff(step.r2 / step.r1, &ms[1], &ms[0]);
                let mut terms = Terms::first(&ms[0]);
                terms.d1 = Some((D1Weight::Taylor, &d1));
                update(form, &self.x, ls, ns.level(step.s2), step.r2 * h, &terms)
            };
            self.pending = Some(next);
            self.phase += 1;
            return None;
        }
        let (d1, d2);
        let mut terms = Terms::first(&ms[0]);
        match step.order {
            1 => {}
            2 => {
                d1 = scaled_diff(1.0 / step.r1, &ms[1], &ms[0]);
                terms.d1 = Some((weight, &d1));
            }
            _ if weight == D1Weight::Midpoint => {
                d1 = scaled_diff(1.0 / step.r2, &ms[2], &ms[0]);
                terms.d1 = Some((D1Weight::Taylor, &d1));
            }
            _ => {
                let (r1, r2) = (step.r1, step.r2);
                let d1_0 = scaled_diff(1.0 / r1, &ms[1], &ms[0]);
                let d1_1 = scaled_diff(1.0 / r2, &ms[2], &ms[0]);
                (d1, d2) = taylor_diffs(r1, &d1_0, r2, &d1_1);
                terms.d1 = Some((D1Weight::Taylor, &d1));
                terms.d2 = Some(&d2);
            }
        }
        self.x = update(form, &self.x, ls, lt, h, &terms);
        self.outputs.clear();
        self.pending = None;
        self.phase = 0;
        self.k += 1;
        Some(StepInfo::at_time(self.k - 1, step.order, step.t))
    }

    fn multi(&mut self, m: Vec<f64>, grid: &[f64], order: usize, max_order: usize) -> StepInfo {
        let p = &self.plan;
        let (form, ns) = (p.form(), &p.ns);
        if self.outputs.len() == max_order {
            self.outputs.remove(0);
        }
        self.outputs.push(m);
        let k = self.k;
        let n = self.outputs.len();
        let history: Vec<(&[f64], f64)> = (0..order)
            .map(|j| {
                let m = self.outputs[n - order + j].as_slice();
                (m, ns.level(grid[k + 1 + j - order]).lambda)
            })
            .collect();
        let (l0, lt) = (ns.level(grid[k]), ns.level(grid[k + 1]));
        let weight = p.config.solver_type.d1_weight();
        self.x = multistep_update(form, &self.x, l0, lt, &history, weight, None);
        self.k += 1;
        StepInfo::at_time(k, order, grid[k + 1])
    }
}

impl Solver for UvitDpmRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        let t = self.eval_time()?;
        Some(Evaluation {
            x: self.pending.as_deref().unwrap_or(&self.x),
            time: self.plan.time(t),
        })
    }

    fn feed(&mut self, out: &[f64], _noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let t = self
            .eval_time()
            .ok_or_else(|| Error::Invalid("U-ViT DPM-Solver fed after it finished".into()))?;
        let plan = self.plan.clone();
        let input = self.pending.as_deref().unwrap_or(&self.x);
        let m = plan.convert(out, input, t);
        if self.steps_done() {
            // The denoise step (README §5.2 quirk): x₀ = (x − σ·m)/α with the converted m.
            let l = plan.ns.level(t);
            self.x = self
                .x
                .iter()
                .zip(&m)
                .map(|(x, m)| (x - l.sigma * m) / l.alpha)
                .collect();
            self.denoised = true;
            return Ok(None);
        }
        Ok(match &plan.steps {
            Steps::Single(v) => self.single(m, v[self.k]),
            Steps::Multi { grid, orders } => {
                Some(self.multi(m, grid, orders[self.k], plan.config.order))
            }
        })
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
