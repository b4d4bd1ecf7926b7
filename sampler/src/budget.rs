//! Budget mode: pick the exit threshold that spends a requested fraction of the full network.
//!
//! One calibration run at full depth records every certainty score of every pass; because the
//! exit rule is a pure function of those scores, the depth any threshold would give on that
//! trajectory can then be computed without running the network again. Depth is monotone in the
//! threshold, so a binary search over the observed scores finds the closest one.
//!
//! The other calibration runs on a model's own trajectories live here too: the `l2c` reuse
//! schedule and the filled exits the filled-exit heads are fitted on.

use deediff_uem::{ExitPolicy, ExitRule, FillRecords, ReuseSchedule, RunState};
use deediff_unet::UVitConfig;

use crate::conditioning::Condition;
use crate::error::{Error, Result};
use crate::pipeline::{Hooks, Pipeline};

/// A calibrated threshold and the depth it gave on the calibration trajectories.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    pub threshold: f32,
    /// Mean blocks executed / full depth on the calibration run.
    pub depth_fraction: f64,
}

/// Blocks a pass runs at `threshold`, given the scores after each block but the last.
fn blocks_at(cfg: &UVitConfig, scores: &[f32], threshold: f32) -> usize {
    ExitRule::new(cfg.variant, cfg.num_in_blocks(), threshold).depth(scores, cfg.num_blocks())
}

fn depth_fraction(cfg: &UVitConfig, passes: &[Vec<f32>], threshold: f32) -> f64 {
    let blocks: usize = passes.iter().map(|s| blocks_at(cfg, s, threshold)).sum();
    blocks as f64 / (passes.len() * cfg.num_blocks()) as f64
}

/// The threshold among the recorded scores whose depth fraction is closest to `budget`.
pub fn threshold_for_budget(cfg: &UVitConfig, passes: &[Vec<f32>], budget: f64) -> Calibration {
    // Candidate thresholds: just below each observed score (strict `>` then crosses), and 1.0.
    let mut candidates: Vec<f32> = passes
        .iter()
        .flatten()
        .map(|&s| f32::from_bits(s.to_bits() - 1).max(f32::MIN_POSITIVE))
        .chain([1.0])
        .collect();
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    // Smallest candidate whose depth reaches the budget, and its predecessor.
    let (mut lo, mut hi) = (0, candidates.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if depth_fraction(cfg, passes, candidates[mid]) >= budget {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    [lo.saturating_sub(1), lo]
        .into_iter()
        .map(|i| Calibration {
            threshold: candidates[i],
            depth_fraction: depth_fraction(cfg, passes, candidates[i]),
        })
        .min_by(|a, b| {
            (a.depth_fraction - budget)
                .abs()
                .total_cmp(&(b.depth_fraction - budget).abs())
        })
        .expect("two candidates")
}

impl Pipeline {
    /// Calibrates a threshold for `budget` (target mean depth as a fraction of the full network,
    /// in (0, 1]) on the given calibration images, and switches the pipeline to per-sample exits
    /// at that threshold.
    pub fn calibrate_budget(
        &mut self,
        budget: f64,
        conditions: &[Condition],
        seeds: &[u64],
    ) -> Result<Calibration> {
        if !(budget > 0.0 && budget <= 1.0) {
            return Err(Error::Budget(format!("budget {budget} must be in (0, 1]")));
        }
        if self.model().heads().is_none() {
            return Err(Error::Budget(
                "budget mode needs certainty heads; this model has none".into(),
            ));
        }
        if !self.timestep_bands().is_empty() {
            return Err(Error::Budget(
                "budget mode calibrates one threshold for every timestep: it does not combine with timestep bands".into(),
            ));
        }
        // Threshold 1.0 never exits (a sigmoid mean cannot exceed it) but records every score.
        let never = ExitPolicy::per_sample(1.0)?;
        let mut passes = Vec::new();
        self.run(
            &mut RunState::new(),
            conditions,
            seeds,
            Hooks::default(),
            &|_| never,
            &mut |_, exits| passes.extend(exits.iter().map(|e| e.scores.clone())),
        )?;
        let cal = threshold_for_budget(self.model().model().config(), &passes, budget);
        self.set_policy(ExitPolicy::per_sample(cal.threshold)?)?;
        Ok(cal)
    }
}

impl Pipeline {
    /// Fits an `l2c` reuse schedule reusing `fraction` of the (evaluation, block) pairs, from a
    /// full-depth run over the calibration images (see [`ReuseSchedule::fit`]), and switches the
    /// pipeline to it. The schedule belongs to this scheduler and step count.
    pub fn fit_reuse_schedule(
        &mut self,
        fraction: f64,
        conditions: &[Condition],
        seeds: &[u64],
    ) -> Result<ReuseSchedule> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::Budget(format!(
                "reuse fraction {fraction} must be in [0, 1]"
            )));
        }
        let blocks = self.model().model().num_blocks();
        let nothing = ReuseSchedule {
            blocks,
            reuse: vec![Vec::new(); self.scheduler().nfe()],
        };
        self.set_reuse_schedule(Some(nothing))?;
        let mut state = RunState::recording();
        let learned = ExitPolicy::Learned;
        self.run(
            &mut state,
            conditions,
            seeds,
            Hooks::default(),
            &|_| learned,
            &mut |_, _| {},
        )?;
        let schedule = ReuseSchedule::fit(&state.changes(blocks), blocks, fraction);
        self.set_reuse_schedule(Some(schedule.clone()))?;
        self.set_policy(learned)?;
        Ok(schedule)
    }

    /// Records every filled exit of full-depth runs over the calibration images, `batch` images
    /// per run (see [`FillRecords`]; a sample's slot is its image index, plus the number of
    /// images for the unconditional pass of a guided run). Each evaluation after the first fills
    /// from the previous one, as `cached:T:2` does.
    pub fn record_fills(
        &self,
        conditions: &[Condition],
        seeds: &[u64],
        batch: usize,
    ) -> Result<FillRecords> {
        // A threshold no certainty exceeds: every pass runs to full depth with the caches on.
        let full = ExitPolicy::cached(1.0, 2)?;
        let mut all = FillRecords::default();
        let (num, batch) = (conditions.len(), batch.max(1));
        for start in (0..num).step_by(batch) {
            let end = (start + batch).min(num);
            let mut state = RunState::recording_fills();
            self.run(
                &mut state,
                &conditions[start..end],
                &seeds[start..end],
                Hooks::default(),
                &|_| full,
                &mut |_, _| {},
            )?;
            let records = state.take_fill_records().unwrap_or_default();
            let rows = end - start;
            all.samples.extend(records.samples.into_iter().map(|mut s| {
                // Slot `pass · rows + k` of this run is image `start + k` of pass `pass`.
                s.slot = (s.slot / rows) * num + start + s.slot % rows;
                s
            }));
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deediff_unet::Variant;

    fn cfg(variant: Variant) -> UVitConfig {
        serde_json::from_value(serde_json::json!({
            "module": if variant == Variant::Uvit { "uvit" } else { "uvit_t2i" },
            "img_size": 8, "patch_size": 2, "in_chans": 4, "embed_dim": 64, "depth": 4,
            "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": false, "mlp_time_embed": false,
            "num_classes": -1, "clip_dim": 32, "num_clip_token": 5, "conv": true, "skip": true
        }))
        .unwrap()
    }

    #[test]
    fn budget_search_hits_the_depth_the_rule_gives() {
        let c = cfg(Variant::UvitT2i);
        // 5 blocks, heads after the first 4. Pass A is certain early, pass B late.
        let passes = vec![vec![0.95, 0.96, 0.97, 0.98], vec![0.5, 0.6, 0.7, 0.99]];
        // Threshold 0.9: A exits after block 0 (1 block), B after block 3 (4 blocks) → 5/10.
        assert_eq!(depth_fraction(&c, &passes, 0.9), 0.5);
        let cal = threshold_for_budget(&c, &passes, 0.5);
        assert_eq!(cal.depth_fraction, 0.5);
        assert_eq!(depth_fraction(&c, &passes, cal.threshold), 0.5);
        // The full budget never exits; the smallest budget exits both after one block.
        assert_eq!(threshold_for_budget(&c, &passes, 1.0).depth_fraction, 1.0);
        assert_eq!(threshold_for_budget(&c, &passes, 0.01).depth_fraction, 0.2);
    }

    #[test]
    fn patience_applies_to_uvit_in_blocks() {
        let c = cfg(Variant::Uvit);
        // In-blocks 0 and 1: block 0 only arms the rule; block 1 exits.
        assert_eq!(blocks_at(&c, &[0.9, 0.9, 0.1, 0.1], 0.5), 2);
        assert_eq!(blocks_at(&c, &[0.1, 0.9, 0.1, 0.1], 0.5), 5);
        assert_eq!(blocks_at(&c, &[0.1, 0.9, 0.9, 0.1], 0.5), 3);
    }
}
