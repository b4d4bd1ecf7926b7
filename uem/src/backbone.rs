//! The denoiser behind the early-exit driver, as a small trait: a second backbone (e.g. a DiT) or
//! a new reuse method needs only an implementation of [`Backbone`], not a new driver.

use candle_core::{Result, Tensor};
use deediff_unet::{Conditioning, MacCounts, UVit};

use crate::policy::ExitRule;

/// A transformer denoiser run block by block. Between blocks its whole state is the token
/// tensor `h [B, S, D]` plus [`Backbone::Pass`], the backbone's own per-pass state (U-ViT: the
/// long-skip stack), which the driver shrinks with [`Backbone::retain_rows`] as samples leave.
/// `Sync`: evaluations run on rayon's worker threads ([`deediff_unet::pool`]).
pub trait Backbone: Sync {
    /// Per-pass state between blocks.
    type Pass;

    /// Blocks in execution order.
    fn num_blocks(&self) -> usize;
    /// Per-sample MAC counts of every part.
    fn macs(&self) -> &MacCounts;
    /// The official exit rule of this architecture at `threshold`.
    fn exit_rule(&self, threshold: f32) -> ExitRule;
    /// `x [B,C,H,W]`, `t [B]`, `cond` → the input of block 0.
    fn embed(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor>;
    /// Fresh per-pass state for a batch of `rows` samples.
    fn start_pass(&self, rows: usize) -> Self::Pass;
    /// Block `i` on `h`; blocks run in order, each at most once per pass.
    fn block(&self, i: usize, h: &Tensor, pass: &mut Self::Pass) -> Result<Tensor>;
    /// Block `i` was not computed and `out` stands in for its output: keep `pass` consistent
    /// (U-ViT: an in-block still pushes its skip, an out-block still pops one).
    fn reuse_block(&self, i: usize, out: &Tensor, pass: &mut Self::Pass);
    /// Only the rows at positions `keep` (ascending) of the current batch go on.
    fn retain_rows(&self, pass: &mut Self::Pass, keep: &[usize]);
    /// The shared output head on any block's output → `eps [B, C, H, W]`.
    fn decode(&self, h: &Tensor) -> Result<Tensor>;
}

/// U-ViT's per-pass state: the long-skip stack, with the samples each skip holds.
///
/// Skips are not compacted when samples leave; an out-block gathers the live rows of its skip
/// when it pops it, so each skip is copied at most once per pass however many exits happen.
#[derive(Debug)]
pub struct SkipStack {
    skips: Vec<Tensor>,
    /// `rows[k]`: the pass's original row of each row of `skips[k]`.
    rows: Vec<Vec<u32>>,
    /// The original rows still running, in batch order.
    live: Vec<u32>,
}

impl SkipStack {
    /// The live rows of the top skip, copied only if samples left since it was pushed.
    fn gather_top(&mut self) -> Result<()> {
        let (Some(skip), Some(rows)) = (self.skips.last_mut(), self.rows.last()) else {
            return Ok(());
        };
        if *rows != self.live {
            // Both lists ascend and `live` ⊆ `rows`, so one merge finds the positions.
            let mut pos = Vec::with_capacity(self.live.len());
            let mut k = 0;
            for &r in &self.live {
                while rows[k] != r {
                    k += 1;
                }
                pos.push(k as u32);
            }
            *skip = skip.index_select(&Tensor::new(pos, skip.device())?, 0)?;
        }
        Ok(())
    }
}

impl Backbone for UVit {
    type Pass = SkipStack;

    fn num_blocks(&self) -> usize {
        UVit::num_blocks(self)
    }

    fn macs(&self) -> &MacCounts {
        UVit::macs(self)
    }

    fn exit_rule(&self, threshold: f32) -> ExitRule {
        let cfg = self.config();
        ExitRule::new(cfg.variant, cfg.num_in_blocks(), threshold)
    }

    fn embed(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        UVit::embed(self, x, t, cond)
    }

    fn start_pass(&self, rows: usize) -> SkipStack {
        SkipStack {
            skips: Vec::with_capacity(self.config().num_in_blocks()),
            rows: Vec::with_capacity(self.config().num_in_blocks()),
            live: (0..rows as u32).collect(),
        }
    }

    fn block(&self, i: usize, h: &Tensor, pass: &mut SkipStack) -> Result<Tensor> {
        let n_in = self.config().num_in_blocks();
        if i > n_in {
            pass.gather_top()?;
            pass.rows.pop();
        }
        let out = UVit::block(self, i, h, &mut pass.skips)?;
        if i < n_in {
            pass.rows.push(pass.live.clone());
        }
        Ok(out)
    }

    fn reuse_block(&self, i: usize, out: &Tensor, pass: &mut SkipStack) {
        let n_in = self.config().num_in_blocks();
        if i < n_in {
            pass.skips.push(out.clone());
            pass.rows.push(pass.live.clone());
        } else if i > n_in {
            pass.skips.pop();
            pass.rows.pop();
        }
    }

    fn retain_rows(&self, pass: &mut SkipStack, keep: &[usize]) {
        pass.live = keep.iter().map(|&p| pass.live[p]).collect();
    }

    fn decode(&self, h: &Tensor) -> Result<Tensor> {
        UVit::decode(self, h)
    }
}
