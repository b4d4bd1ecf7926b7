//! Calibration data for the filled-exit heads ([`CertaintyHeads::filled`]).
//!
//! A filled exit at block `k` decodes `h_k + Σ_{j>k} δ_j`, the cached contributions `δ_j` coming
//! from an earlier evaluation of the same sample. How wrong that is depends on how much the
//! skipped blocks' contributions moved since — which the truncation heads never saw: they were
//! trained on `h_k` alone. A recording run samples at full depth with the caches on; after every
//! block that could exit it decodes the filled state as well, and once the pass's full-depth `ε`
//! is known it keeps the head input `h_k` with the target the heads regress onto,
//! `1 − tanh|ε̂_fill − ε|` per pixel (the official certainty target, for the filled prediction).
//!
//! [`CertaintyHeads::filled`]: crate::CertaintyHeads::filled

use candle_core::{Result, Tensor};

/// One recorded exit: where it was, what the head sees and what it should answer.
#[derive(Debug, Clone)]
pub struct FillSample {
    /// The block after which the exit would happen.
    pub block: usize,
    /// The run's cache slot (image `k`'s conditional pass is slot `k`, see
    /// [`crate::EarlyExit::evaluate`]).
    pub slot: usize,
    /// The evaluation of the run.
    pub evaluation: usize,
    /// The block's output `[1, S, D]` (the head input).
    pub input: Tensor,
    /// `1 − tanh|ε̂_fill − ε|`, `[1, C, H, W]`.
    pub target: Tensor,
}

/// A filled exit whose full-depth `ε` is not known yet (the pass is still running).
#[derive(Debug)]
struct Pending {
    block: usize,
    slot: usize,
    evaluation: usize,
    /// The row of the pass (its position in the pass's output).
    row: usize,
    input: Tensor,
    eps_fill: Tensor,
}

/// Every filled exit a recording run saw.
#[derive(Debug, Default)]
pub struct FillRecords {
    pub samples: Vec<FillSample>,
    pending: Vec<Pending>,
}

impl FillRecords {
    /// Notes the filled exit of `row` (cache `slot`) after `block`: head input `input [1, S, D]`,
    /// its filled prediction `eps_fill [1, C, H, W]`.
    pub(crate) fn push_pending(
        &mut self,
        (block, slot, evaluation, row): (usize, usize, usize, usize),
        input: Tensor,
        eps_fill: Tensor,
    ) {
        self.pending.push(Pending {
            block,
            slot,
            evaluation,
            row,
            input,
            eps_fill,
        });
    }

    /// The pass is over with full-depth `eps [rows, C, H, W]`: turns every pending exit into a
    /// sample with its target.
    pub(crate) fn complete(&mut self, eps: &Tensor) -> Result<()> {
        for p in std::mem::take(&mut self.pending) {
            let err = (&p.eps_fill - eps.narrow(0, p.row, 1)?)?.abs()?;
            self.samples.push(FillSample {
                block: p.block,
                slot: p.slot,
                evaluation: p.evaluation,
                input: p.input,
                target: (1.0 - err.tanh()?)?,
            });
        }
        Ok(())
    }
}
