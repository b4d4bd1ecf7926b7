//! UniPC (Zhao et al. 2023), B(h) = bh1/bh2, as diffusers' `UniPCMultistepScheduler` (README
//! Q11): the corrector UniC for step i − 1 runs at the start of step i with the new model
//! output, then the predictor UniP. Order-2 predictors use the fixed weight ρ = ½.

use crate::betas::BetaConfig;
use crate::config::{choice, Reader, THRESHOLD};
use crate::error::Result;
use crate::exp_integrator::{check_solver_order, push_history, Level};
use crate::noise::NoiseSource;
use crate::prediction::PredictionType;
use crate::registry::{DiffusersClass, Preset, Registration};
use crate::scheduler::{Plan, SchedulerConfig};
use crate::solver::{Evaluation, Solver, StepInfo, StepTimes};
use crate::spacing::{multistep_timesteps, FinalSigmas, KarrasRule, SigmaSchedule, Spacing};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Preset `unipc` (bh2, order 2, data prediction, linspace spacing) and
/// `UniPCMultistepScheduler`.
pub(crate) const REGISTRATION: Registration = Registration {
    presets: &[Preset {
        name: "unipc",
        build: |betas| {
            Ok(SchedulerConfig::new(UniPcConfig {
                betas,
                solver_order: 2,
                prediction_type: PredictionType::Epsilon,
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
            }))
        },
    }],
    diffusers: Some(DiffusersClass {
        name: "UniPCMultistepScheduler",
        fields: &[
            THRESHOLD,
            &[
                "solver_order",
                "solver_type",
                "lower_order_final",
                "disable_corrector",
                "solver_p",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_flow_sigmas",
                "flow_shift",
                "timestep_spacing",
                "steps_offset",
                "final_sigmas_type",
                "rescale_betas_zero_snr",
                "use_dynamic_shifting",
                "time_shift_type",
                "sigma_min",
                "sigma_max",
                "shift_terminal",
                "predict_x0",
            ],
        ],
        read,
    }),
};

fn read(r: &Reader) -> Result<SchedulerConfig, String> {
    let raw = &r.raw;
    if raw.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
        return Err("solver_p (an external predictor scheduler) is not supported".into());
    }
    if raw.shift_terminal.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(
            "shift_terminal is only used with flow sigmas, which are not supported".into(),
        );
    }
    Ok(SchedulerConfig::new(UniPcConfig {
        betas: r.betas()?,
        solver_order: r.order()?,
        prediction_type: r.prediction()?,
        solver_type: choice(
            "solver_type",
            raw.solver_type.as_deref().unwrap_or("bh2"),
            "bh1, bh2",
        )?,
        predict_x0: raw.predict_x0.unwrap_or(true),
        lower_order_final: raw.lower_order_final.unwrap_or(true),
        disable_corrector: raw.disable_corrector.clone().unwrap_or_default(),
        use_karras_sigmas: r.karras_only()?,
        sigma_min: raw.sigma_min,
        sigma_max: raw.sigma_max,
        timestep_spacing: r.spacing("linspace")?,
        steps_offset: raw.steps_offset.unwrap_or(0),
        final_sigmas_type: r.final_sigmas()?,
    }))
}

/// diffusers UniPC `solver_type`: the B(h) of the UniPC family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UniPcSolverType {
    /// B(h) = h.
    Bh1,
    /// B(h) = e^h − 1.
    Bh2,
}

/// `UniPCMultistepScheduler` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UniPcConfig {
    pub betas: BetaConfig,
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    pub solver_type: UniPcSolverType,
    /// Solve in data prediction (UniPC default) or noise prediction.
    pub predict_x0: bool,
    pub lower_order_final: bool,
    /// Steps whose corrector is skipped.
    pub disable_corrector: Vec<usize>,
    pub use_karras_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_spacing: Spacing,
    pub steps_offset: usize,
    pub final_sigmas_type: FinalSigmas,
}

#[derive(Debug, Clone)]
pub(crate) struct UniPc {
    config: UniPcConfig,
    pub(crate) schedule: SigmaSchedule,
    orders: Vec<usize>,
}

impl UniPc {
    pub(crate) fn new(config: &UniPcConfig, n: usize) -> Result<Self> {
        check_solver_order("UniPC solver_order", config.solver_order)?;
        let ac = config.betas.alphas_cumprod_finite()?;
        let t = config.betas.num_train_timesteps;
        let spaced = multistep_timesteps(
            config.timestep_spacing,
            t,
            t,
            n,
            config.steps_offset,
            config.use_karras_sigmas,
        )?;
        let karras = config.use_karras_sigmas.then_some(KarrasRule {
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            round: true,
        });
        let (final_type, with_karras) = (config.final_sigmas_type, config.use_karras_sigmas);
        let schedule = SigmaSchedule::new(ac, spaced, karras, |ac, sigmas| match final_type {
            // diffusers: with Karras sigmas "sigma_min" repeats the last Karras sigma.
            FinalSigmas::SigmaMin if with_karras => sigmas[sigmas.len() - 1],
            other => other.table_sigma(ac),
        });
        let n = schedule.timesteps.len();
        let orders = (0..n)
            .map(|i| {
                let o = if config.lower_order_final {
                    config.solver_order.min(n - i)
                } else {
                    config.solver_order
                };
                o.min(i.min(config.solver_order) + 1)
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            schedule,
            orders,
        })
    }


    fn level(&self, k: usize) -> Level {
        self.schedule.level(k)
    }

    /// The UniP/UniC building blocks at target `t` from base `s0`: h·φ₁, B(h), the ratios rₖ of
    /// earlier points and the right-hand side b of the order conditions.
    fn coefficients(&self, s0: Level, t: Level, earlier: &[Level], order: usize) -> Coeffs {
        let h = t.lambda - s0.lambda;
        let hh = if self.config.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.config.solver_type {
            UniPcSolverType::Bh1 => hh,
            UniPcSolverType::Bh2 => hh.exp_m1(),
        };
        let mut rks: Vec<f64> = earlier.iter().map(|l| (l.lambda - s0.lambda) / h).collect();
        rks.push(1.0);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        Coeffs {
            h_phi_1,
            b_h,
            rks,
            b,
        }
    }

    /// x_t = (σ_t/σ_s0)·x − α_t·hφ₁·m0 − α_t·B(h)·res (data form) or the noise-form analogue.
    fn base_update(
        &self,
        x: &[f64],
        s0: Level,
        t: Level,
        c: &Coeffs,
        m0: &[f64],
        res: &[f64],
    ) -> Vec<f64> {
        let (cx, cm, cr) = if self.config.predict_x0 {
            (t.sigma / s0.sigma, t.alpha * c.h_phi_1, t.alpha * c.b_h)
        } else {
            (t.alpha / s0.alpha, t.sigma * c.h_phi_1, t.sigma * c.b_h)
        };
        x.iter()
            .zip(m0)
            .zip(res)
            .map(|((x, m), r)| (cx * x - cm * m) - cr * r)
            .collect()
    }
}

diffusers_solver_config!(UniPcConfig, UniPc::new);

impl Plan for UniPc {
    schedule_accessors!(sigmas);

    fn orders(&self) -> Vec<usize> {
        self.orders.clone()
    }

    fn start(self: Arc<Self>, x: Vec<f64>) -> Box<dyn Solver> {
        Box::new(UniPcRun {
            plan: self,
            x,
            i: 0,
            history: Vec::new(),
            last_sample: None,
        })
    }
}

struct Coeffs {
    h_phi_1: f64,
    b_h: f64,
    rks: Vec<f64>,
    b: Vec<f64>,
}

impl Coeffs {
    /// The Vandermonde-like matrix `R[i][k] = r_k^i`, restricted to `n × n`.
    fn solve(&self, n: usize) -> Vec<f64> {
        let a: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|k| self.rks[k].powi(i as i32)).collect())
            .collect();
        solve_linear(a, self.b[..n].to_vec())
    }
}

/// Gaussian elimination with partial pivoting (what LAPACK `gesv` does for these tiny systems).
fn solve_linear(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, bottom) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (offset, row) in bottom.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (r, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *r -= f * p;
            }
            b[col + 1 + offset] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// Σ_k ρ_k·D_k with D_k = (m_k − m0)/r_k.
fn weighted_diffs(rhos: &[f64], ms: &[&[f64]], m0: &[f64], rks: &[f64]) -> Vec<f64> {
    let mut res = vec![0.0; m0.len()];
    for ((rho, m), rk) in rhos.iter().zip(ms).zip(rks) {
        for ((r, mi), m0) in res.iter_mut().zip(*m).zip(m0) {
            *r += rho * ((mi - m0) / rk);
        }
    }
    res
}

struct UniPcRun {
    plan: Arc<UniPc>,
    x: Vec<f64>,
    i: usize,
    /// Converted model outputs, oldest first (at most `solver_order`).
    history: Vec<Vec<f64>>,
    /// The sample the previous predictor started from (the corrector restarts from it).
    last_sample: Option<Vec<f64>>,
}

impl Solver for UniPcRun {
    fn next_eval(&self) -> Option<Evaluation<'_>> {
        self.plan.schedule.evaluation(self.i, &self.x)
    }

    fn feed(&mut self, out: &[f64], _noise: &mut dyn NoiseSource) -> Result<Option<StepInfo>> {
        let p = self.plan.clone();
        let cfg = &p.config;
        let i = self.i;
        let s_i = p.level(i);
        let m_new = cfg
            .prediction_type
            .to_term(cfg.predict_x0, out, &self.x, s_i.alpha, s_i.sigma);
        if let Some(last) = self
            .last_sample
            .as_ref()
            .filter(|_| i > 0 && !cfg.disable_corrector.contains(&(i - 1)))
        {
            // UniC for step i − 1: from x_{i−1} to x_i with the fresh output at x_i.
            let order = p.orders[i - 1];
            let s0 = p.level(i - 1);
            let k = self.history.len();
            let earlier: Vec<Level> = (1..order).map(|j| p.level(i - 1 - j)).collect();
            let ms: Vec<&[f64]> = (1..order)
                .map(|j| self.history[k - 1 - j].as_slice())
                .collect();
            let c = p.coefficients(s0, s_i, &earlier, order);
            let rhos = if order == 1 {
                vec![0.5]
            } else {
                c.solve(order)
            };
            let m0 = &self.history[k - 1];
            let mut res = weighted_diffs(&rhos[..order - 1], &ms, m0, &c.rks);
            let rho_t = rhos[order - 1];
            for ((r, mt), m0) in res.iter_mut().zip(&m_new).zip(m0) {
                *r += rho_t * (mt - m0);
            }
            self.x = p.base_update(last, s0, s_i, &c, m0, &res);
        }
        push_history(&mut self.history, m_new, cfg.solver_order);
        let order = p.orders[i];
        let t = p.level(i + 1);
        let k = self.history.len();
        let earlier: Vec<Level> = (1..order).map(|j| p.level(i - j)).collect();
        let ms: Vec<&[f64]> = (1..order)
            .map(|j| self.history[k - 1 - j].as_slice())
            .collect();
        let c = p.coefficients(s_i, t, &earlier, order);
        let m0 = &self.history[k - 1];
        let res = match order {
            1 => vec![0.0; m0.len()],
            2 => weighted_diffs(&[0.5], &ms, m0, &c.rks),
            _ => weighted_diffs(&c.solve(order - 1), &ms, m0, &c.rks),
        };
        let next = p.base_update(&self.x, s_i, t, &c, m0, &res);
        self.last_sample = Some(std::mem::replace(&mut self.x, next));
        self.i += 1;
        Ok(Some(StepInfo::of_order(i, order)))
    }

    fn sample(&self) -> &[f64] {
        &self.x
    }
}
