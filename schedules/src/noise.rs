//! Injectable sources of standard-normal noise, so stochastic samplers are reproducible and
//! reference runs can be replayed draw for draw.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Supplies i.i.d. N(0, 1) draws. Solvers call [`NoiseSource::fill`] exactly where the reference
/// implementation draws (one call per stochastic step, the length of the sample buffer).
pub trait NoiseSource {
    /// Overwrite `out` with fresh standard-normal draws.
    fn fill(&mut self, out: &mut [f64]) -> Result<()>;
}

/// Default source: a seeded `StdRng` (ChaCha12) through `rand_distr::StandardNormal`.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: StdRng,
}

impl SeededNoise {
    /// A source whose draws depend only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn fill(&mut self, out: &mut [f64]) -> Result<()> {
        for v in out.iter_mut() {
            *v = StandardNormal.sample(&mut self.rng);
        }
        Ok(())
    }
}

/// Replays recorded draws in order: call `k` receives `rows[k]`.
#[derive(Debug, Clone)]
pub struct ReplayNoise {
    rows: Vec<Vec<f64>>,
    next: usize,
}

impl ReplayNoise {
    /// Replay `rows`, one row per draw.
    pub fn new(rows: Vec<Vec<f64>>) -> Self {
        Self { rows, next: 0 }
    }

    /// How many rows have been consumed so far.
    pub fn consumed(&self) -> usize {
        self.next
    }
}

impl NoiseSource for ReplayNoise {
    fn fill(&mut self, out: &mut [f64]) -> Result<()> {
        let row = self.rows.get(self.next).ok_or_else(|| {
            Error::Noise(format!(
                "replay exhausted after {} recorded draws",
                self.rows.len()
            ))
        })?;
        if row.len() != out.len() {
            return Err(Error::Noise(format!(
                "recorded draw {} has {} values, the sample has {}",
                self.next,
                row.len(),
                out.len()
            )));
        }
        out.copy_from_slice(row);
        self.next += 1;
        Ok(())
    }
}

/// A source that must never be asked: for deterministic solvers.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn fill(&mut self, _out: &mut [f64]) -> Result<()> {
        Err(Error::Noise(
            "this run was given no noise source but the solver is stochastic".into(),
        ))
    }
}

/// Draw one noise buffer of length `n`.
pub(crate) fn draw(noise: &mut dyn NoiseSource, n: usize) -> Result<Vec<f64>> {
    let mut v = vec![0.0; n];
    noise.fill(&mut v)?;
    Ok(v)
}

/// Adds `scale`·z with a fresh draw z to `x`: the noise term of DDIM (η > 0), DDPM and the
/// reverse SDE.
pub(crate) fn add_noise(noise: &mut dyn NoiseSource, x: &mut [f64], scale: f64) -> Result<()> {
    let z = draw(noise, x.len())?;
    for (x, z) in x.iter_mut().zip(&z) {
        *x += scale * z;
    }
    Ok(())
}
