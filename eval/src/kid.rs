//! Kernel Inception Distance as torch-fidelity computes it: the unbiased MMD² with the cubic
//! polynomial kernel `k(x, y) = (xᵀy/d + 1)³`, averaged over random subsets.

use crate::error::{Error, Result};
use crate::hashinit::SplitMix64;
use crate::inception::Features;
use gemm::Parallelism;

/// Subset sampling options; defaults are torch-fidelity's (1000, 100, seed 2020).
#[derive(Debug, Clone, Copy)]
pub struct KidOptions {
    pub subset_size: usize,
    pub subsets: usize,
    pub seed: u64,
}

impl KidOptions {
    /// Whether these subsets can be drawn from sets of at least `images` images (the smaller
    /// set's size): callers with only file lists check before computing any features.
    pub fn check(&self, images: usize) -> Result<()> {
        let m = self.subset_size;
        if m < 2 || m > images || self.subsets == 0 {
            return Err(Error::Invalid(format!(
                "KID subset size {m} must be between 2 and the smaller set's {images} images \
                 (and subsets ≥ 1); pass a smaller --kid-subset-size"
            )));
        }
        Ok(())
    }
}

impl Default for KidOptions {
    fn default() -> Self {
        KidOptions {
            subset_size: 1000,
            subsets: 100,
            seed: 2020,
        }
    }
}

/// Mean and (population) standard deviation of the per-subset MMD².
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
}

/// `m` distinct indices below `n` (partial Fisher–Yates).
fn sample(rng: &mut SplitMix64, n: usize, m: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..m {
        let j = i + ((rng.next_u64() as u128 * (n - i) as u128) >> 64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(m);
    idx
}

/// `A·Bᵀ` for row-major `A` [m, k] and `B` [n, k] (f32, like torch-fidelity's numpy features).
fn gram(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    // SAFETY: a is m×k and b is n×k row-major (b read as k×n with column stride k); out is m×n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
    out
}

/// Unbiased MMD² between two equally sized feature subsets.
pub fn mmd2(x: &[f32], y: &[f32], m: usize, d: usize) -> f64 {
    let kernel = |v: f32| (v as f64 / d as f64 + 1.0).powi(3);
    let off_diagonal_sum = |g: &[f32]| -> f64 {
        (0..m * m)
            .filter(|k| k / m != k % m)
            .map(|k| kernel(g[k]))
            .sum()
    };
    let kxx = off_diagonal_sum(&gram(x, x, m, m, d));
    let kyy = off_diagonal_sum(&gram(y, y, m, m, d));
    let kxy: f64 = gram(x, y, m, m, d).iter().map(|&v| kernel(v)).sum();
    let m = m as f64;
    (kxx + kyy) / (m * (m - 1.0)) - 2.0 * kxy / (m * m)
}

/// KID between two feature sets.
pub fn kid(a: &Features, b: &Features, opts: &KidOptions) -> Result<Kid> {
    if a.dims != b.dims {
        return Err(Error::Invalid(format!(
            "KID features have different dims ({} vs {})",
            a.dims, b.dims
        )));
    }
    opts.check(a.n.min(b.n))?;
    let (m, d) = (opts.subset_size, a.dims);
    let mut rng = SplitMix64(opts.seed);
    let gather = |f: &Features, idx: &[usize]| -> Vec<f32> {
        idx.iter().flat_map(|&i| f.row(i).iter().copied()).collect()
    };
    let values: Vec<f64> = (0..opts.subsets)
        .map(|_| {
            let x = gather(a, &sample(&mut rng, a.n, m));
            let y = gather(b, &sample(&mut rng, b.n, m));
            mmd2(&x, &y, m, d)
        })
        .collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    Ok(Kid { mean, std })
}
