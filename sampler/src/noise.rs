//! Per-image noise: image `i` of a run draws everything (its initial noise and every stochastic
//! step) from its own generator seeded with `base + i`, so any subset or shard of a run
//! reproduces the same images whatever the batch it lands in.

use deediff_schedules::{NoiseSource, SeededNoise};

/// A [`NoiseSource`] over a batch of images laid out image-major in one flat buffer.
pub struct PerImageNoise {
    sources: Vec<SeededNoise>,
}

impl PerImageNoise {
    /// One generator per image, seeded with the image's seed.
    pub fn new(seeds: impl IntoIterator<Item = u64>) -> Self {
        Self {
            sources: seeds.into_iter().map(SeededNoise::new).collect(),
        }
    }
}

impl NoiseSource for PerImageNoise {
    fn fill(&mut self, out: &mut [f64]) -> deediff_schedules::Result<()> {
        let n = self.sources.len();
        if n == 0 || !out.len().is_multiple_of(n) {
            return Err(deediff_schedules::Error::Noise(format!(
                "a buffer of {} values does not split into {n} images",
                out.len()
            )));
        }
        let per = out.len() / n;
        for (chunk, source) in out.chunks_mut(per).zip(&mut self.sources) {
            source.fill(chunk)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_draws_the_same_noise_in_any_batch() {
        let mut batch = PerImageNoise::new([7, 8, 9]);
        let mut alone = PerImageNoise::new([8]);
        let mut b = vec![0.0; 12];
        let mut a = vec![0.0; 4];
        for _ in 0..3 {
            batch.fill(&mut b).unwrap();
            alone.fill(&mut a).unwrap();
            assert_eq!(&b[4..8], &a[..]);
        }
        assert_ne!(&b[0..4], &b[4..8]);
    }

    #[test]
    fn an_uneven_buffer_is_an_error() {
        let mut n = PerImageNoise::new([1, 2]);
        assert!(n.fill(&mut [0.0; 3]).is_err());
    }
}
