//! Feature statistics: pytorch-fid's mean and ddof-1 covariance in f64, their `.npz` files, and
//! mergeable moments (count, Σx, Σxxᵀ) so shards from several machines combine exactly.

use crate::error::{Error, Result};
use crate::inception::Features;
use crate::npz::{read_npz, write_npz, Array};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use std::path::Path;

/// `mu` and `sigma` of a feature set, as pytorch-fid computes and stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub dims: usize,
    pub mu: Vec<f64>,
    /// `dims × dims`, row-major.
    pub sigma: Vec<f64>,
}

/// Features as an f64 matrix (pytorch-fid stores activations in a float64 array).
fn to_f64(f: &Features) -> Vec<f64> {
    f.data.iter().map(|&v| v as f64).collect()
}

fn gram_into(dst: &mut Mat<f64>, accum: Accum, x: MatRef<f64>) {
    matmul(dst.as_mut(), accum, x.transpose(), x, 1.0, Par::rayon(0));
}

impl Stats {
    /// `np.mean(x, 0)` and `np.cov(x, rowvar=False)` of `n` rows of `dims` values.
    pub fn from_rows(x: &[f64], n: usize, dims: usize) -> Result<Self> {
        if n < 2 {
            return Err(Error::Invalid(format!(
                "statistics need at least 2 images, got {n}"
            )));
        }
        assert_eq!(x.len(), n * dims, "rows × dims");
        let mut mu = vec![0.0; dims];
        x.chunks_exact(dims)
            .for_each(|r| mu.iter_mut().zip(r).for_each(|(m, &v)| *m += v));
        mu.iter_mut().for_each(|m| *m /= n as f64);
        let centred = Mat::from_fn(n, dims, |i, j| x[i * dims + j] - mu[j]);
        let mut cov = Mat::zeros(dims, dims);
        gram_into(&mut cov, Accum::Replace, centred.as_ref());
        let inv = 1.0 / (n - 1) as f64;
        let sigma = (0..dims * dims)
            .map(|k| cov[(k / dims, k % dims)] * inv)
            .collect();
        Ok(Stats { dims, mu, sigma })
    }

    /// Statistics of extracted features.
    pub fn from_features(f: &Features) -> Result<Self> {
        Self::from_rows(&to_f64(f), f.n, f.dims)
    }

    /// Reads a pytorch-fid `.npz` (`mu`, `sigma`); extra keys are ignored.
    pub fn load(path: &Path) -> Result<Self> {
        let arrays = read_npz(path)?;
        let get = |k: &str| {
            arrays
                .get(k)
                .ok_or_else(|| Error::file(path, format!("no '{k}' array in statistics file")))
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let dims = mu.data.len();
        if mu.shape.len() != 1 || sigma.shape != [dims, dims] {
            return Err(Error::file(
                path,
                format!(
                    "'mu' has shape {:?} and 'sigma' {:?}; expected (D,) and (D, D)",
                    mu.shape, sigma.shape
                ),
            ));
        }
        check_finite(path, &[("mu", mu), ("sigma", sigma)])?;
        Ok(Stats {
            dims,
            mu: mu.data.clone(),
            sigma: sigma.data.clone(),
        })
    }

    /// Writes `mu` and `sigma` as float64 like `np.savez_compressed(path, mu=…, sigma=…)`.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_npz(
            path,
            &[("mu", &self.mu_array()), ("sigma", &self.sigma_array())],
        )
    }

    fn mu_array(&self) -> Array {
        Array {
            shape: vec![self.dims],
            data: self.mu.clone(),
        }
    }

    fn sigma_array(&self) -> Array {
        Array {
            shape: vec![self.dims, self.dims],
            data: self.sigma.clone(),
        }
    }
}

/// Mergeable raw moments in f64. Sums commute, so any split of a set into shards gives the
/// statistics of the whole set (up to f64 summation order).
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub dims: usize,
    pub n: u64,
    pub sum: Vec<f64>,
    /// Σxxᵀ, `dims × dims` row-major.
    pub sum_outer: Vec<f64>,
}

impl Moments {
    pub fn new(dims: usize) -> Self {
        Moments {
            dims,
            n: 0,
            sum: vec![0.0; dims],
            sum_outer: vec![0.0; dims * dims],
        }
    }

    /// Adds `n` rows of `dims` values.
    pub fn add_rows(&mut self, x: &[f64], n: usize) {
        assert_eq!(x.len(), n * self.dims, "rows × dims");
        let d = self.dims;
        x.chunks_exact(d)
            .for_each(|r| self.sum.iter_mut().zip(r).for_each(|(s, &v)| *s += v));
        let mut outer = Mat::from_fn(d, d, |i, j| self.sum_outer[i * d + j]);
        gram_into(
            &mut outer,
            Accum::Add,
            MatRef::from_row_major_slice(x, n, d),
        );
        (0..d * d).for_each(|k| self.sum_outer[k] = outer[(k / d, k % d)]);
        self.n += n as u64;
    }

    pub fn add_features(&mut self, f: &Features) -> Result<()> {
        self.check_dims(f.dims, "features")?;
        self.add_rows(&to_f64(f), f.n);
        Ok(())
    }

    /// Adds another shard's moments.
    pub fn merge(&mut self, other: &Moments) -> Result<()> {
        self.check_dims(other.dims, "moments")?;
        self.n += other.n;
        self.sum
            .iter_mut()
            .zip(&other.sum)
            .for_each(|(a, b)| *a += b);
        self.sum_outer
            .iter_mut()
            .zip(&other.sum_outer)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// SHA-256 of the count and sums: equal for the same shard given twice (merging it twice
    /// would count its images twice), different for any two real shards.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.n.to_le_bytes());
        self.sum
            .iter()
            .chain(&self.sum_outer)
            .for_each(|v| h.update(v.to_le_bytes()));
        h.finalize().into()
    }

    fn check_dims(&self, dims: usize, what: &str) -> Result<()> {
        if dims != self.dims {
            return Err(Error::Invalid(format!(
                "cannot combine {dims}-d {what} with {}-d moments",
                self.dims
            )));
        }
        Ok(())
    }

    /// Mean and ddof-1 covariance: `(Σxxᵀ − Σx Σxᵀ / n) / (n − 1)`.
    pub fn stats(&self) -> Result<Stats> {
        if self.n < 2 {
            return Err(Error::Invalid(format!(
                "statistics need at least 2 images, got {}",
                self.n
            )));
        }
        let (d, n) = (self.dims, self.n as f64);
        let mu: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let sigma = (0..d * d)
            .map(|k| (self.sum_outer[k] - self.sum[k / d] * self.sum[k % d] / n) / (n - 1.0))
            .collect();
        Ok(Stats { dims: d, mu, sigma })
    }

    /// Writes a pytorch-fid-compatible `.npz` (`mu`, `sigma`) that also carries the moments
    /// (`n`, `sum`, `sum_outer`), so it can be merged later.
    pub fn save(&self, path: &Path) -> Result<()> {
        let stats = self.stats()?;
        let n = Array {
            shape: vec![],
            data: vec![self.n as f64],
        };
        let sum = Array {
            shape: vec![self.dims],
            data: self.sum.clone(),
        };
        let outer = Array {
            shape: vec![self.dims, self.dims],
            data: self.sum_outer.clone(),
        };
        write_npz(
            path,
            &[
                ("mu", &stats.mu_array()),
                ("sigma", &stats.sigma_array()),
                ("n", &n),
                ("sum", &sum),
                ("sum_outer", &outer),
            ],
        )
    }

    /// Reads moments written by [`Moments::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let arrays = read_npz(path)?;
        let get = |k: &str| {
            arrays.get(k).ok_or_else(|| {
                Error::file(
                    path,
                    format!(
                        "no '{k}' array: not a mergeable statistics file (save with --save-stats)"
                    ),
                )
            })
        };
        let (n, sum, outer) = (get("n")?, get("sum")?, get("sum_outer")?);
        let dims = sum.data.len();
        if n.data.len() != 1
            || outer.shape != [dims, dims]
            || n.data[0] < 0.0
            || n.data[0].fract() != 0.0
        {
            return Err(Error::file(
                path,
                "inconsistent 'n', 'sum' and 'sum_outer' arrays",
            ));
        }
        check_finite(path, &[("sum", sum), ("sum_outer", outer)])?;
        Ok(Moments {
            dims,
            n: n.data[0] as u64,
            sum: sum.data.clone(),
            sum_outer: outer.data.clone(),
        })
    }
}

/// NaN or infinite statistics would give a NaN FID that looks like a result.
fn check_finite(path: &Path, arrays: &[(&str, &Array)]) -> Result<()> {
    for (name, a) in arrays {
        if let Some(k) = a.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::file(
                path,
                format!(
                    "'{name}' holds a non-finite value ({}) at index {k}",
                    a.data[k]
                ),
            ));
        }
    }
    Ok(())
}
