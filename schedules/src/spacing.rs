//! Inference timestep spacing exactly as diffusers computes it, plus Karras sigmas and the
//! σ → t inverse. The rules differ per scheduler family (README quirks Q2–Q4), so each family
//! has its own entry point here rather than a flag hidden inside the solvers.

use crate::betas::BetaConfig;
use crate::error::{Error, Result};
use crate::exp_integrator::Level;
use crate::prediction::vp_from_ve;
use crate::solver::{ModelTime, StepTimes};
use serde::{Deserialize, Serialize};

/// diffusers `timestep_spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// numpy `linspace(a, b, n)`: `a + i·step`, with the last element exactly `b`.
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + a).collect();
            v[n - 1] = b;
            v
        }
    }
}

/// numpy `arange(start, stop, step)` for a float step (length `ceil((stop − start)/step)`;
/// element i is `start + i·(start + step − start)`).
fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// Which family's spacing conventions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// DDIM and DDPM: N timesteps, linspace rounded.
    Ddim,
    /// Euler and Euler ancestral: like DDIM, but linspace stays fractional.
    Euler,
    /// DPM-Solver multistep and UniPC: built from N + 1 points, the final 0 dropped.
    Dpm,
}

/// Inference timesteps (descending) for `n` steps out of `t_train`.
///
/// `last_timestep` is diffusers' `num_train_timesteps − clipped_idx` for the DPM family
/// (`lambda_min_clipped`); it equals `t_train` otherwise.
pub(crate) fn timesteps(
    family: Family,
    spacing: Spacing,
    t_train: usize,
    last_timestep: usize,
    n: usize,
    steps_offset: usize,
) -> Result<Vec<f64>> {
    if n == 0 || n > t_train {
        return Err(Error::Invalid(format!(
            "number of inference steps must be in 1..={t_train}, got {n}"
        )));
    }
    let tf = t_train as f64;
    let offset = steps_offset as f64;
    let ts: Vec<f64> = match (family, spacing) {
        (Family::Dpm, Spacing::Linspace) => {
            let v = linspace(0.0, last_timestep as f64 - 1.0, n + 1);
            v[1..].iter().rev().map(|x| x.round_ties_even()).collect()
        }
        (Family::Dpm, Spacing::Leading) => {
            let ratio = (last_timestep / (n + 1)) as f64;
            (1..=n).rev().map(|i| i as f64 * ratio + offset).collect()
        }
        (Family::Dpm, Spacing::Trailing) => arange(last_timestep as f64, 0.0, -(tf / n as f64))
            .iter()
            .map(|x| x.round_ties_even() - 1.0)
            .collect(),
        (_, Spacing::Linspace) => {
            let v = linspace(0.0, tf - 1.0, n);
            let round = family == Family::Ddim;
            v.iter()
                .rev()
                .map(|&x| if round { x.round_ties_even() } else { x })
                .collect()
        }
        (_, Spacing::Leading) => {
            let ratio = (t_train / n) as f64;
            (0..n).rev().map(|i| i as f64 * ratio + offset).collect()
        }
        (_, Spacing::Trailing) => arange(tf, 0.0, -(tf / n as f64))
            .iter()
            .map(|x| x.round_ties_even() - 1.0)
            .collect(),
    };
    if let Some(bad) = ts.iter().find(|&&t| t < 0.0 || t > tf - 1.0) {
        return Err(Error::Invalid(format!(
            "timestep {bad} lies outside 0..{t_train} (steps_offset {steps_offset} too large?)"
        )));
    }
    Ok(ts)
}

/// Timesteps of the multistep DPM-family solvers (DPM-Solver multistep, UniPC), whose updates
/// divide by the λ step between consecutive points. Near N = T the DPM rules repeat a timestep
/// (linspace at N = 1000: 499.5 and 500.499 both round to 500) and the next multistep update
/// divides by h = 0: diffusers 0.42.1 returns NaN there. The repeats are dropped, first
/// occurrence kept — diffusers' own fix (PR #2969, `np.unique`) before it was lost — so such a
/// run has fewer steps than asked. With Karras sigmas the σ are distinct and nothing is dropped.
pub(crate) fn multistep_timesteps(
    spacing: Spacing,
    t_train: usize,
    last_timestep: usize,
    n: usize,
    steps_offset: usize,
    karras: bool,
) -> Result<Vec<f64>> {
    let mut ts = timesteps(
        Family::Dpm,
        spacing,
        t_train,
        last_timestep,
        n,
        steps_offset,
    )?;
    if !karras {
        // Descending, so repeats are adjacent.
        ts.dedup();
    }
    Ok(ts)
}

/// VE sigmas σ = √((1 − ᾱ)/ᾱ) of a ᾱ table.
pub fn ve_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// Karras et al. (2022) sigmas with ρ = 7, from `sigma_max` down to `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv = sigma_min.powf(1.0 / RHO);
    let max_inv = sigma_max.powf(1.0 / RHO);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(RHO))
        .collect()
}

/// diffusers `_sigma_to_t`: interpolate linearly in log σ between neighbouring table entries
/// (`log_sigmas` ascending with t), clamped to the table's range.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let low = log_sigmas
        .iter()
        .rposition(|&ls| log_sigma - ls >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// numpy `interp(x, arange(len), table)` for x inside the table.
pub fn interp_table(x: f64, table: &[f64]) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0];
    }
    if x >= last as f64 {
        return table[last];
    }
    let i = x.floor() as usize;
    let frac = x - i as f64;
    if frac == 0.0 {
        table[i]
    } else {
        (table[i + 1] - table[i]) * frac + table[i]
    }
}

/// Karras settings of the DPM family: bounds (default: the ends of the full training table)
/// and whether the resulting timesteps are rounded before the cast to integers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KarrasRule {
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub round: bool,
}

/// DPM-family schedule (DPM-Solver multistep/singlestep, UniPC): integer model timesteps and
/// the solver's VE sigmas for them (without the final sigma). With Karras sigmas the spacing is
/// ignored: σ comes from the Karras ramp over the full table and the timestep is its
/// log-σ interpolated position, rounded (or not) and then truncated as diffusers' int64 cast.
pub(crate) fn dpm_schedule(
    alphas_cumprod: &[f64],
    spaced: Vec<f64>,
    karras: Option<KarrasRule>,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let table = ve_sigmas(alphas_cumprod);
    match karras {
        None => {
            let sigmas = spaced.iter().map(|&t| interp_table(t, &table)).collect();
            (spaced, sigmas)
        }
        Some(rule) => {
            let log_sigmas: Vec<f64> = table.iter().map(|s| s.ln()).collect();
            let sigma_min = rule.sigma_min.unwrap_or(table[0]);
            let sigma_max = rule.sigma_max.unwrap_or(table[table.len() - 1]);
            let sigmas = karras_sigmas(sigma_min, sigma_max, n);
            let ts = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    if rule.round {
                        t.round_ties_even()
                    } else {
                        t.trunc()
                    }
                })
                .collect();
            (ts, sigmas)
        }
    }
}

/// diffusers' `lambda_min_clipped` cut: the last usable timestep count
/// `T − searchsorted(flip(λ_t), lambda_min_clipped)`.
pub(crate) fn last_timestep(alphas_cumprod: &[f64], lambda_min_clipped: f64) -> usize {
    let clipped = alphas_cumprod
        .iter()
        .rev()
        .map(|a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
        .take_while(|&l| l < lambda_min_clipped)
        .count();
    alphas_cumprod.len() - clipped
}

/// diffusers `final_sigmas_type`: where the last step lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    /// σ = 0: a fully denoised output.
    Zero,
    /// σ(t = 0) of the training table.
    SigmaMin,
}

impl FinalSigmas {
    /// The final σ of a DPM-family schedule over the ᾱ table `alphas_cumprod`.
    pub(crate) fn table_sigma(self, alphas_cumprod: &[f64]) -> f64 {
        match self {
            Self::Zero => 0.0,
            Self::SigmaMin => SigmaSchedule::table_sigma_min(alphas_cumprod),
        }
    }
}

/// The DDIM/DDPM schedule: integer timesteps on the ᾱ table, the model input unscaled.
#[derive(Debug, Clone)]
pub(crate) struct DiscreteSchedule {
    pub alphas_cumprod: Vec<f64>,
    pub timesteps: Vec<f64>,
}

impl DiscreteSchedule {
    pub(crate) fn new(
        betas: &BetaConfig,
        spacing: Spacing,
        steps_offset: usize,
        n: usize,
    ) -> Result<Self> {
        let alphas_cumprod = betas.alphas_cumprod()?;
        let t = betas.num_train_timesteps;
        Ok(Self {
            alphas_cumprod,
            timesteps: timesteps(Family::Ddim, spacing, t, t, n, steps_offset)?,
        })
    }
}

impl StepTimes for DiscreteSchedule {
    fn steps(&self) -> usize {
        self.timesteps.len()
    }

    fn model_time(&self, i: usize) -> ModelTime {
        ModelTime::discrete(&self.alphas_cumprod, self.timesteps[i])
    }
}

/// The DPM-family schedule shared by multistep, singlestep and UniPC: integer model timesteps,
/// N + 1 VE sigmas and the ᾱ table the model times come from.
#[derive(Debug, Clone)]
pub(crate) struct SigmaSchedule {
    pub alphas_cumprod: Vec<f64>,
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
}

impl SigmaSchedule {
    /// `karras` replaces the spaced sigmas; `final_sigma` is appended.
    pub(crate) fn new(
        alphas_cumprod: Vec<f64>,
        spaced: Vec<f64>,
        karras: Option<KarrasRule>,
        final_sigma: impl FnOnce(&[f64], &[f64]) -> f64,
    ) -> Self {
        let n = spaced.len();
        let (timesteps, mut sigmas) = dpm_schedule(&alphas_cumprod, spaced, karras, n);
        let last = final_sigma(&alphas_cumprod, &sigmas);
        sigmas.push(last);
        Self {
            alphas_cumprod,
            timesteps,
            sigmas,
        }
    }

    /// σ(t = 0) of the table: the `sigma_min` final sigma.
    pub(crate) fn table_sigma_min(alphas_cumprod: &[f64]) -> f64 {
        ((1.0 - alphas_cumprod[0]) / alphas_cumprod[0]).sqrt()
    }

    pub(crate) fn level(&self, k: usize) -> Level {
        let (a, s) = vp_from_ve(self.sigmas[k]);
        Level::new(a, s)
    }
}

impl StepTimes for SigmaSchedule {
    fn steps(&self) -> usize {
        self.timesteps.len()
    }

    fn model_time(&self, i: usize) -> ModelTime {
        ModelTime::discrete(&self.alphas_cumprod, self.timesteps[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy round-half-to-even: linspace(0, 999, 31) holds 166.5, which becomes 166.
    #[test]
    fn dpm_linspace_rounds_half_to_even() {
        let ts = timesteps(Family::Dpm, Spacing::Linspace, 1000, 1000, 30, 0).unwrap();
        let expected = [
            999, 966, 932, 899, 866, 832, 799, 766, 733, 699, 666, 633, 599, 566, 533, 499, 466,
            433, 400, 366, 333, 300, 266, 233, 200, 166, 133, 100, 67, 33,
        ];
        assert_eq!(ts, expected.map(f64::from));
    }

    /// At N = T the DPM linspace rule holds 500 twice; the multistep timesteps drop the repeat.
    #[test]
    fn multistep_timesteps_drop_the_repeat_at_n_equal_t() {
        let raw = timesteps(Family::Dpm, Spacing::Linspace, 1000, 1000, 1000, 0).unwrap();
        assert_eq!(raw[498..502], [501.0, 500.0, 500.0, 499.0]);
        let ts = multistep_timesteps(Spacing::Linspace, 1000, 1000, 1000, 0, false).unwrap();
        assert_eq!(ts.len(), 999);
        assert_eq!(ts[498..501], [501.0, 500.0, 499.0]);
        let karras = multistep_timesteps(Spacing::Linspace, 1000, 1000, 1000, 0, true).unwrap();
        assert_eq!(karras, raw);
    }

    #[test]
    fn trailing_uses_numpy_arange() {
        let ts = timesteps(Family::Ddim, Spacing::Trailing, 1000, 1000, 7, 0).unwrap();
        assert_eq!(ts, [999, 856, 713, 570, 428, 285, 142].map(f64::from));
        // numpy's arange(1000, 0, -1000/61) has 62 elements, the last one rounding to t = -1:
        // diffusers would index ᾱ[-1]; here it is an error.
        let err = timesteps(Family::Ddim, Spacing::Trailing, 1000, 1000, 61, 0).unwrap_err();
        assert!(err.to_string().contains("timestep -1"), "{err}");
    }

    #[test]
    fn euler_linspace_stays_fractional() {
        let ts = timesteps(Family::Euler, Spacing::Linspace, 1000, 1000, 7, 0).unwrap();
        assert_eq!(ts, [999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]);
    }

    #[test]
    fn sigma_to_t_inverts_the_table_and_clamps() {
        let log_sigmas: Vec<f64> = [0.1f64, 0.2, 0.4, 0.8].iter().map(|s| s.ln()).collect();
        assert!((sigma_to_t(0.2, &log_sigmas) - 1.0).abs() < 1e-15);
        let mid = (0.2f64.ln() + 0.4f64.ln()) / 2.0;
        assert!((sigma_to_t(mid.exp(), &log_sigmas) - 1.5).abs() < 1e-12);
        assert_eq!(sigma_to_t(0.01, &log_sigmas), 0.0);
        assert_eq!(sigma_to_t(5.0, &log_sigmas), 3.0);
    }
}
