//! The Fréchet distance between two Gaussians, in f64, through symmetric eigendecompositions:
//! `tr sqrt(S1·S2) = Σ sqrt(eig(R·S2·R))` with `R = sqrt(S1)`. Tiny eigenvalues are zeroed
//! relative to the largest, which keeps rank-deficient (N ≤ D) covariances exact.

use crate::error::{Error, Result};
use crate::stats::Stats;
use faer::{Mat, MatRef, Side};

/// Eigenvalues at or below this fraction of the largest are rounding noise.
const REL_THRESHOLD: f64 = 1e-12;

fn thresholded(w: impl Iterator<Item = f64> + Clone) -> impl Iterator<Item = f64> {
    let max = w.clone().fold(0.0f64, f64::max);
    w.map(move |v| if v <= REL_THRESHOLD * max { 0.0 } else { v })
}

/// `tr sqrt(S1·S2)` for symmetric positive semi-definite `dims × dims` row-major matrices.
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], dims: usize) -> Result<f64> {
    let a = MatRef::from_row_major_slice(s1, dims, dims);
    let b = MatRef::from_row_major_slice(s2, dims, dims);
    let eig = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Invalid(format!("eigh(sigma1) failed: {e:?}")))?;
    let (u, w) = (eig.U(), eig.S().column_vector());
    let sqrt_w: Vec<f64> = thresholded((0..dims).map(|i| w[i]))
        .map(f64::sqrt)
        .collect();
    let us = Mat::from_fn(dims, dims, |i, j| u[(i, j)] * sqrt_w[j]);
    let r = &us * u.transpose();
    let m = &r * b * &r;
    let m = Mat::from_fn(dims, dims, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let e = m
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| Error::Invalid(format!("eigvalsh failed: {e:?}")))?;
    Ok(thresholded(e.into_iter()).map(f64::sqrt).sum())
}

/// `|mu1 − mu2|² + tr S1 + tr S2 − 2·tr sqrt(S1·S2)`.
pub fn frechet_distance(a: &Stats, b: &Stats) -> Result<f64> {
    if a.dims != b.dims {
        return Err(Error::Invalid(format!(
            "statistics have different dims ({} vs {}); compute both with the same --dims",
            a.dims, b.dims
        )));
    }
    let d = a.dims;
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    Ok(diff + tr(&a.sigma) + tr(&b.sigma) - 2.0 * trace_sqrt_product(&a.sigma, &b.sigma, d)?)
}
