//! The exponential-integrator update shared by every DPM-Solver variant (diffusers multistep and
//! singlestep, U-ViT's `dpm_solver_pp`/`dpm_solver_pytorch`): from a base point to a target
//! point over a step h in half log-SNR, with a zeroth-order term m, an optional first
//! difference D1 and an optional second difference D2.

use crate::error::{Error, Result};
use crate::ops::{lincomb, scaled_diff};
use crate::prediction::lambda;

/// A VP noise level: α, σ and λ = log α − log σ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Level {
    pub alpha: f64,
    pub sigma: f64,
    pub lambda: f64,
}

impl Level {
    pub(crate) fn new(alpha: f64, sigma: f64) -> Self {
        Self {
            alpha,
            sigma,
            lambda: lambda(alpha, sigma),
        }
    }
}

/// The diffusers multistep, singlestep and UniPC solvers implement orders 1 to 3; `setting`
/// names the offending setting in the error.
pub(crate) fn check_solver_order(setting: &str, order: usize) -> Result<()> {
    if (1..=3).contains(&order) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{setting} must be 1, 2 or 3, got {order}"
        )))
    }
}

/// Appends the newest converted model output to a multistep history (oldest first), dropping
/// the oldest once `cap` (the solver order) are kept.
pub(crate) fn push_history(history: &mut Vec<Vec<f64>>, m: Vec<f64>, cap: usize) {
    if history.len() == cap {
        history.remove(0);
    }
    history.push(m);
}

/// Which ODE/SDE is integrated, i.e. what the model terms are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Data prediction, ODE (DPM-Solver++ / `predict_x0=True`).
    Data,
    /// Noise prediction, ODE (DPM-Solver / `predict_x0=False`).
    Noise,
    /// Data prediction, SDE (SDE-DPM-Solver++); needs a noise draw.
    DataSde,
}

impl Form {
    /// Whether the model term is the data prediction x̂₀ (else the noise prediction ε̂).
    pub(crate) fn is_data(self) -> bool {
        self != Self::Noise
    }
}

/// The weight given to the first difference D1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum D1Weight {
    /// ½·φ₁ ("midpoint", U-ViT `dpm_solver`).
    Midpoint,
    /// φ₂ ("heun", U-ViT `taylor`).
    Taylor,
}

/// Terms of one update.
pub(crate) struct Terms<'a> {
    pub m: &'a [f64],
    pub d1: Option<(D1Weight, &'a [f64])>,
    pub d2: Option<&'a [f64]>,
    pub noise: Option<&'a [f64]>,
}

impl<'a> Terms<'a> {
    /// First order: the model term only.
    pub(crate) fn first(m: &'a [f64]) -> Self {
        Self {
            m,
            d1: None,
            d2: None,
            noise: None,
        }
    }
}

/// x at `target` from x at `base` over the step `h` (normally λ_target − λ_base).
pub(crate) fn update(
    form: Form,
    x: &[f64],
    base: Level,
    target: Level,
    h: f64,
    terms: &Terms<'_>,
) -> Vec<f64> {
    let (a_t, s_t) = (target.alpha, target.sigma);
    let mut parts: Vec<(f64, &[f64])> = Vec::with_capacity(5);
    match form {
        Form::Data => {
            let em1 = (-h).exp_m1();
            parts.push((s_t / base.sigma, x));
            parts.push((-(a_t * em1), terms.m));
            if let Some((w, d1)) = terms.d1 {
                let c = match w {
                    D1Weight::Midpoint => -0.5 * (a_t * em1),
                    D1Weight::Taylor => a_t * (em1 / h + 1.0),
                };
                parts.push((c, d1));
            }
            if let Some(d2) = terms.d2 {
                parts.push((-(a_t * ((em1 + h) / (h * h) - 0.5)), d2));
            }
        }
        Form::Noise => {
            let em1 = h.exp_m1();
            parts.push((a_t / base.alpha, x));
            parts.push((-(s_t * em1), terms.m));
            if let Some((w, d1)) = terms.d1 {
                let c = match w {
                    D1Weight::Midpoint => -0.5 * (s_t * em1),
                    D1Weight::Taylor => -(s_t * (em1 / h - 1.0)),
                };
                parts.push((c, d1));
            }
            if let Some(d2) = terms.d2 {
                parts.push((-(s_t * ((em1 - h) / (h * h) - 0.5)), d2));
            }
        }
        Form::DataSde => {
            let one_m = -(-2.0 * h).exp_m1();
            parts.push((s_t / base.sigma * (-h).exp(), x));
            parts.push((a_t * one_m, terms.m));
            if let Some((w, d1)) = terms.d1 {
                let c = match w {
                    D1Weight::Midpoint => 0.5 * (a_t * one_m),
                    D1Weight::Taylor => a_t * (one_m / (-2.0 * h) + 1.0),
                };
                parts.push((c, d1));
            }
            if let Some(d2) = terms.d2 {
                let c = a_t * ((one_m - 2.0 * h) / (2.0 * h * (2.0 * h)) - 0.5);
                parts.push((c, d2));
            }
            if let Some(z) = terms.noise {
                parts.push((s_t * one_m.sqrt(), z));
            }
        }
    }
    lincomb(&parts)
}

/// A multistep update of order `ms.len()` (1–3) from the newest output's point `base` to
/// `target`. `history` holds the last model outputs with their half log-SNRs, oldest first.
/// Order 2 weighs D1 with `d1_weight`; order 3 always uses the Taylor weights (as both
/// diffusers and U-ViT do).
pub(crate) fn multistep_update(
    form: Form,
    x: &[f64],
    base: Level,
    target: Level,
    history: &[(&[f64], f64)],
    d1_weight: D1Weight,
    noise: Option<&[f64]>,
) -> Vec<f64> {
    let h = target.lambda - base.lambda;
    let (ms, lambdas): (Vec<&[f64]>, Vec<f64>) = history.iter().copied().unzip();
    let n = ms.len();
    let mut terms = Terms::first(ms[n - 1]);
    terms.noise = noise;
    let (d1, d2);
    match n {
        1 => {}
        2 => {
            let r0 = (lambdas[1] - lambdas[0]) / h;
            d1 = scaled_diff(1.0 / r0, ms[1], ms[0]);
            terms.d1 = Some((d1_weight, &d1));
        }
        _ => {
            let r0 = (lambdas[2] - lambdas[1]) / h;
            let r1 = (lambdas[1] - lambdas[0]) / h;
            let d1_0 = scaled_diff(1.0 / r0, ms[2], ms[1]);
            let d1_1 = scaled_diff(1.0 / r1, ms[1], ms[0]);
            let diff: Vec<f64> = d1_0.iter().zip(&d1_1).map(|(a, b)| a - b).collect();
            d1 = lincomb(&[(1.0, &d1_0), (r0 / (r0 + r1), &diff)]);
            d2 = diff
                .iter()
                .map(|v| (1.0 / (r0 + r1)) * v)
                .collect::<Vec<f64>>();
            terms.d1 = Some((D1Weight::Taylor, &d1));
            terms.d2 = Some(&d2);
        }
    }
    update(form, x, base, target, h, &terms)
}

/// Taylor differences from two intermediate points at step fractions `ra` and `rb` with first
/// differences `da`, `db` (each (m − m_base)/r): D1 = (rb·da − ra·db)/(rb − ra) and
/// D2 = 2(db − da)/(rb − ra). Used by the third-order singlestep solvers.
pub(crate) fn taylor_diffs(ra: f64, da: &[f64], rb: f64, db: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let d1 = lincomb(&[(rb / (rb - ra), da), (-ra / (rb - ra), db)]);
    let d2 = scaled_diff(2.0 / (rb - ra), db, da);
    (d1, d2)
}
