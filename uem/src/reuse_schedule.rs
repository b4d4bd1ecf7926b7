//! A static reuse schedule in the style of Learning-to-Cache (L2C): for every evaluation of a run
//! and every block, whether the block runs or its cached contribution from the last evaluation
//! that ran it is added instead. The same for every sample, so it costs nothing to decide.
//!
//! L2C trains a router per (step, layer) with a differentiable relaxation of the reuse choice and
//! the backbone frozen. Here the schedule is fitted in one shot from calibration trajectories at
//! full depth: each (evaluation, block) pair is scored by how much the block's contribution
//! changed since the previous evaluation (relative L2, averaged over samples), and the pairs that
//! changed least are reused, up to the requested fraction. It needs no gradient and no training
//! run, but unlike the router it ignores how reuse errors compound along the trajectory.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Per evaluation, the blocks whose cached contribution is reused. Stored as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReuseSchedule {
    /// Blocks of the network the schedule was fitted for.
    pub blocks: usize,
    /// `reuse[e]`: blocks (ascending) reused at evaluation `e`; evaluation 0 must run all.
    pub reuse: Vec<Vec<usize>>,
}

impl ReuseSchedule {
    /// Evaluations the schedule covers (the run's number of network evaluations).
    pub fn evaluations(&self) -> usize {
        self.reuse.len()
    }

    /// Whether block `j` is reused at evaluation `e` (never beyond the schedule).
    pub fn reuses(&self, e: usize, j: usize) -> bool {
        self.reuse
            .get(e)
            .is_some_and(|r| r.binary_search(&j).is_ok())
    }

    /// Fraction of (evaluation, block) pairs reused.
    pub fn reuse_fraction(&self) -> f64 {
        let reused: usize = self.reuse.iter().map(Vec::len).sum();
        reused as f64 / (self.blocks * self.reuse.len()).max(1) as f64
    }

    /// Refuses a schedule whose first evaluation reuses, or that names a block beyond `blocks`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.reuse.first().is_some_and(|r| !r.is_empty()) {
            return Err(Error::Schedule(
                "evaluation 0 has nothing cached to reuse".into(),
            ));
        }
        for (e, r) in self.reuse.iter().enumerate() {
            if r.windows(2).any(|w| w[0] >= w[1]) || r.last().is_some_and(|&j| j >= self.blocks) {
                return Err(Error::Schedule(format!(
                    "evaluation {e}: blocks {r:?} must ascend and be below {}",
                    self.blocks
                )));
            }
        }
        Ok(())
    }

    /// The schedule reusing the `fraction` of pairs whose contribution changed least;
    /// `change[e][j]` is block `j`'s relative change from evaluation `e − 1` to `e` (row 0 is
    /// ignored: the first evaluation runs everything).
    pub fn fit(change: &[Vec<f64>], blocks: usize, fraction: f64) -> Self {
        let mut pairs: Vec<(f64, usize, usize)> = change
            .iter()
            .enumerate()
            .skip(1)
            .flat_map(|(e, row)| row.iter().enumerate().map(move |(j, &c)| (c, e, j)))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let take = (fraction.clamp(0.0, 1.0) * (blocks * change.len()) as f64).round() as usize;
        let mut reuse = vec![Vec::new(); change.len()];
        for &(_, e, j) in pairs.iter().take(take) {
            reuse[e].push(j);
        }
        reuse.iter_mut().for_each(|r| r.sort_unstable());
        Self { blocks, reuse }
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let file = |reason: String| Error::ScheduleFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        let s: Self = serde_json::from_str(&text).map_err(|e| file(e.to_string()))?;
        s.validate().map_err(|e| file(e.to_string()))?;
        Ok(s)
    }

    pub fn save(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let json = serde_json::to_string(self).expect("a schedule serialises");
        std::fs::write(path, json + "\n")
    }
}
