//! What a run cost: blocks executed per evaluation (mean and histogram by timestep), MACs against
//! full depth, and wall-clock throughput — the numbers that show saved blocks as saved seconds.

use deediff_uem::SampleExit;
use serde::Serialize;

/// Exit statistics of one model evaluation (all images, conditional and unconditional passes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// The time label the network was fed.
    pub t: f64,
    /// Mean blocks executed per network pass at this evaluation.
    pub mean_blocks: f64,
    /// `histogram[k]` = passes that ran exactly `k` blocks (index 0 unused).
    pub histogram: Vec<u64>,
}

/// The report of one sampling run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub images: usize,
    /// Blocks of the full network.
    pub num_blocks: usize,
    /// Network passes per image and evaluation (2 with classifier-free guidance).
    pub passes_per_eval: usize,
    pub evals: Vec<EvalReport>,
    pub macs_executed: u64,
    pub macs_full_depth: u64,
    pub seconds: f64,
    /// The most bytes of cached block contributions held at once (`cached`, `deepcache`).
    pub cache_bytes_peak: usize,
    /// Bytes still cached once the run ended (0: the run's caches were freed).
    pub cache_bytes_after_run: usize,
}

impl RunReport {
    /// An empty report; [`Self::record`] adds evaluations (the pipeline's runs fill one; code
    /// that drives [`deediff_uem::EarlyExit`] itself can too).
    pub fn new(images: usize, num_blocks: usize, passes_per_eval: usize) -> Self {
        Self {
            images,
            num_blocks,
            passes_per_eval,
            evals: Vec::new(),
            macs_executed: 0,
            macs_full_depth: 0,
            seconds: 0.0,
            cache_bytes_peak: 0,
            cache_bytes_after_run: 0,
        }
    }

    /// Records one evaluation's per-pass exits.
    pub fn record(&mut self, t: f64, exits: &[SampleExit]) {
        let mut histogram = vec![0; self.num_blocks + 1];
        for e in exits {
            histogram[e.blocks_executed] += 1;
            self.macs_executed += e.macs;
            self.macs_full_depth += e.full_depth_macs;
        }
        let total: usize = exits.iter().map(|e| e.blocks_executed).sum();
        self.evals.push(EvalReport {
            t,
            mean_blocks: total as f64 / exits.len().max(1) as f64,
            histogram,
        });
    }

    /// Folds another run (e.g. the next batch) into this one.
    pub fn merge(&mut self, other: &RunReport) {
        if self.evals.is_empty() {
            self.evals = other.evals.clone();
        } else {
            for (a, b) in self.evals.iter_mut().zip(&other.evals) {
                let (na, nb) = (
                    a.histogram.iter().sum::<u64>(),
                    b.histogram.iter().sum::<u64>(),
                );
                a.mean_blocks = (a.mean_blocks * na as f64 + b.mean_blocks * nb as f64)
                    / (na + nb).max(1) as f64;
                for (x, y) in a.histogram.iter_mut().zip(&b.histogram) {
                    *x += y;
                }
            }
        }
        self.images += other.images;
        self.macs_executed += other.macs_executed;
        self.macs_full_depth += other.macs_full_depth;
        self.seconds += other.seconds;
        self.cache_bytes_peak = self.cache_bytes_peak.max(other.cache_bytes_peak);
        self.cache_bytes_after_run += other.cache_bytes_after_run;
    }

    /// Mean blocks executed per network pass over the whole run.
    pub fn mean_blocks(&self) -> f64 {
        let (mut blocks, mut passes) = (0u64, 0u64);
        for e in &self.evals {
            for (k, &n) in e.histogram.iter().enumerate() {
                blocks += k as u64 * n;
                passes += n;
            }
        }
        blocks as f64 / passes.max(1) as f64
    }

    /// Mean depth as a fraction of the full network.
    pub fn depth_fraction(&self) -> f64 {
        self.mean_blocks() / self.num_blocks as f64
    }

    /// MACs executed / MACs of the same passes at full depth.
    pub fn macs_fraction(&self) -> f64 {
        self.macs_executed as f64 / self.macs_full_depth.max(1) as f64
    }

    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// The report as JSON, with the derived totals alongside the raw per-evaluation data.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("the report serialises");
        v["mean_blocks"] = self.mean_blocks().into();
        v["depth_fraction"] = self.depth_fraction().into();
        v["macs_fraction"] = self.macs_fraction().into();
        v["images_per_second"] = self.images_per_second().into();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(blocks: usize) -> SampleExit {
        SampleExit {
            exit_block: blocks - 1,
            blocks_executed: blocks,
            scores: Vec::new(),
            reused_blocks: 0,
            macs: 10 * blocks as u64,
            full_depth_macs: 50,
        }
    }

    #[test]
    fn merged_reports_average_by_pass_count() {
        let mut a = RunReport::new(1, 5, 1);
        a.record(999.0, &[exit(5)]);
        let mut b = RunReport::new(3, 5, 1);
        b.record(999.0, &[exit(2), exit(2), exit(5)]);
        a.merge(&b);
        assert_eq!(a.images, 4);
        assert_eq!(a.evals[0].histogram, vec![0, 0, 2, 0, 0, 2]);
        assert!((a.evals[0].mean_blocks - 3.5).abs() < 1e-12);
        assert!((a.mean_blocks() - 3.5).abs() < 1e-12);
        assert!((a.macs_fraction() - 140.0 / 200.0).abs() < 1e-12);
    }
}
