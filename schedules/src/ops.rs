//! Elementwise arithmetic on flat `f64` buffers. Solvers never care about layout, so every
//! update is a linear combination of equally long slices.

/// `Σ_k c_k · v_k`, accumulated left to right (the order the reference formulas use).
pub(crate) fn lincomb(terms: &[(f64, &[f64])]) -> Vec<f64> {
    let (c0, v0) = terms[0];
    let mut out: Vec<f64> = v0.iter().map(|v| c0 * v).collect();
    for &(c, v) in &terms[1..] {
        debug_assert_eq!(v.len(), out.len());
        for (o, x) in out.iter_mut().zip(v) {
            *o += c * x;
        }
    }
    out
}

/// `c · (a − b)`: the scaled differences of model outputs that multistep solvers build.
pub(crate) fn scaled_diff(c: f64, a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| c * (x - y)).collect()
}

/// Clamp every element to `[-range, range]` (diffusers `clip_sample`).
pub(crate) fn clamp(v: &mut [f64], range: f64) {
    for x in v.iter_mut() {
        *x = x.clamp(-range, range);
    }
}
