//! Element-wise row kernels (layer-norm, bias + GELU-erf, the online-softmax step of attention,
//! bias/residual initialisation), each compiled for baseline x86-64, AVX2 and AVX-512 by
//! [`multiversion!`](crate::isa::multiversion) and written as plain loops that auto-vectorise to
//! the width of the target (8 or 16 lanes): `exp` and `erf` are branch-free polynomials for that
//! reason.

use crate::isa::multiversion;

/// `exp(x)` for f32 with ~1 ulp error, written branch-free so loops over it vectorise
/// (Cephes `expf`: range reduction by ln 2, degree-6 polynomial, exponent by bit shift).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.0);
    // Round-to-nearest of x·log2(e) via the 1.5·2^23 trick (vectorises, unlike `round`): `t`'s
    // low mantissa bits then hold the integer itself, read by a bit cast. (An `as i32` cast is
    // saturating in Rust and compiled to scalar code per lane, which made this 3× slower.)
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((ni + 127) << 23) as u32)
}

/// `erf(x)` by Abramowitz–Stegun 7.1.26 (abs. error ≤ 1.5e-7), the formula PyTorch's vectorised
/// CPU `erf` uses.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (0.327_591_1 * a + 1.0);
    let r = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    (1.0 - r * exp_f32(-a * a)).copysign(x)
}

/// Independent accumulators of the reductions: one AVX-512 register, two AVX2 registers.
const LANES: usize = 16;

/// Sum of `f(x)` with [`LANES`] independent accumulators, so the loop vectorises (a single f32
/// accumulator is a serial dependency the compiler may not reorder).
#[inline(always)]
fn sum_lanes(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum with [`LANES`] independent lanes (see [`sum_lanes`]).
#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

multiversion! {
    /// `out[r, j] = gelu(x[r, j] + bias[j])` for whole rows.
    pub(crate) fn bias_gelu_rows(x: &[f32], bias: &[f32], out: &mut [f32]) {
        for (xr, or) in x.chunks_exact(bias.len()).zip(out.chunks_exact_mut(bias.len())) {
            for ((o, &v), &b) in or.iter_mut().zip(xr).zip(bias) {
                let v = v + b;
                *o = 0.5 * v * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

multiversion! {
    /// Row-wise layer-norm of whole rows of width `w.len()`.
    pub(crate) fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
        let d = w.len();
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean = sum_lanes(xr, |v| v) / d as f32;
            let var = sum_lanes(xr, |v| (v - mean) * (v - mean)) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &v), &wi), &bi) in or.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (v - mean) * inv * wi + bi;
            }
        }
    }
}

multiversion! {
    /// One key tile of the online softmax. Row `r` of `scores` (width `scores.len() / max.len()`)
    /// becomes `exp(score - m)` for the running row maximum `m` (updated in `max`); the running
    /// sum `sum[r]` and the accumulated output row `acc[r]` (width `acc.len() / max.len()`) are
    /// rescaled by `exp(m_old - m)` before the tile's share is added.
    pub(crate) fn online_softmax_rows(
        scores: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        acc: &mut [f32]
    ) {
        let rows = max.len();
        let (width, dh) = (scores.len() / rows, acc.len() / rows);
        let tiles = scores.chunks_exact_mut(width).zip(acc.chunks_exact_mut(dh));
        for ((row, acc), (m, l)) in tiles.zip(max.iter_mut().zip(sum.iter_mut())) {
            let m_new = m.max(max_lanes(row));
            let corr = exp_f32(*m - m_new);
            for v in row.iter_mut() {
                *v = exp_f32(*v - m_new);
            }
            *l = *l * corr + sum_lanes(row, |v| v);
            for a in acc.iter_mut() {
                *a *= corr;
            }
            *m = m_new;
        }
    }
}

multiversion! {
    /// `Σ sigmoid(x)` over `xs`.
    pub(crate) fn sigmoid_sum(xs: &[f32]) -> f32 {
        sum_lanes(xs, |v| 1.0 / (1.0 + exp_f32(-v)))
    }
}

multiversion! {
    /// `dst = src · scale`, element-wise.
    pub(crate) fn scale_into(src: &[f32], scale: f32, dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s * scale;
        }
    }
}

multiversion! {
    /// Each row of `out` (width `bias.len()` or `residual`'s row width) becomes
    /// `residual_row + bias`; either may be absent (an absent one contributes zero).
    pub(crate) fn bias_residual_rows(bias: Option<&[f32]>, residual: Option<&[f32]>, out: &mut [f32]) {
        match (bias, residual) {
            (Some(b), Some(r)) => {
                for (or, rr) in out.chunks_exact_mut(b.len()).zip(r.chunks_exact(b.len())) {
                    for ((o, &r), &b) in or.iter_mut().zip(rr).zip(b) {
                        *o = r + b;
                    }
                }
            }
            (None, Some(r)) => out.copy_from_slice(r),
            (Some(b), None) => out.chunks_exact_mut(b.len()).for_each(|row| row.copy_from_slice(b)),
            (None, None) => out.fill(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let e = exp_f32(x);
            let want = (x as f64).exp();
            assert!(
                ((e as f64 - want) / want).abs() < 3e-7,
                "exp({x}) = {e} vs {want}"
            );
            let erf = erf_f32(x);
            let want = libm_erf(x as f64);
            assert!(
                (erf as f64 - want).abs() < 3e-7,
                "erf({x}) = {erf} vs {want}"
            );
        }
    }

    /// erf in f64 for the test: Taylor series for |x| ≤ 4 (cancellation stays below 1e-9),
    /// ±1 beyond (1 - erf(4) = 1.5e-8).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// Two tiles through the online softmax equal one softmax over the whole row.
    #[test]
    fn online_softmax_equals_softmax() {
        let row: Vec<f32> = (0..40)
            .map(|i| ((i * 17 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let (mut max, mut sum, mut acc) = ([f32::NEG_INFINITY], [0f32], [0f32]);
        const TILE: usize = 24;
        for (t, tile) in row.chunks(TILE).enumerate() {
            let mut p = tile.to_vec();
            online_softmax_rows(&mut p, &mut max, &mut sum, &mut acc);
            // acc plays the role of Σ p·v with v = the key's index.
            acc[0] += p
                .iter()
                .enumerate()
                .map(|(j, p)| p * (t * TILE + j) as f32)
                .sum::<f32>();
        }
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        let want: f64 = row
            .iter()
            .enumerate()
            .map(|(j, &v)| (v as f64 - m).exp() / z * j as f64)
            .sum();
        assert!(((sum[0] as f64) - z).abs() < 1e-5 * z, "{} vs {z}", sum[0]);
        assert!(
            (acc[0] as f64 / sum[0] as f64 - want).abs() < 1e-4,
            "{} vs {want}",
            acc[0]
        );
    }
}
