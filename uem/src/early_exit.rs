//! The early-exit forward: blocks run one by one, certainty heads decide after each block, and the
//! shared output head runs only for samples that leave (or at the end).

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use deediff_unet::{Checkpoint, CheckpointError, Conditioning, ConfigHints, UVit};

use crate::head::CertaintyHeads;
use crate::policy::{ExitPolicy, ExitRule};

/// What one sample of a forward pass cost and where it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleExit {
    /// Block whose output was decoded (0-based, execution order).
    pub exit_block: usize,
    /// Blocks executed for this sample (`exit_block + 1`).
    pub blocks_executed: usize,
    /// Certainty score the rule saw after each block where a head ran: the batch mean under
    /// `Official`, the sample's own mean under `PerSample`, empty for `Full`/`Static`. No head
    /// runs after the last block (nothing left to decide).
    pub scores: Vec<f32>,
    /// MACs spent on this sample: embed + executed blocks + certainty heads run + output head.
    pub macs: u64,
    /// MACs of a plain full-depth forward of one sample.
    pub full_depth_macs: u64,
}

/// The prediction plus per-sample exit statistics.
#[derive(Debug, Clone)]
pub struct ExitOutput {
    /// `[B, C, H, W]`, in the input's sample order.
    pub eps: Tensor,
    pub samples: Vec<SampleExit>,
}

/// A U-ViT with (optionally) its certainty heads.
#[derive(Debug, Clone)]
pub struct EarlyExitUVit {
    model: UVit,
    heads: Option<CertaintyHeads>,
}

impl EarlyExitUVit {
    /// `heads` is `None` for a plain U-ViT, which then supports only `Full` and `Static`.
    pub fn new(model: UVit, heads: Option<CertaintyHeads>) -> Self {
        Self { model, heads }
    }

    /// Loads a checkpoint (`.pth` or safetensors, see [`Checkpoint::load`]) with its
    /// `lte_classifer` heads when the file has them.
    pub fn load(
        path: impl AsRef<Path>,
        hints: &ConfigHints,
        device: &Device,
    ) -> std::result::Result<Self, CheckpointError> {
        let loaded = Checkpoint::load(path, hints, device)?;
        let heads = if loaded.has_certainty_heads {
            let heads = CertaintyHeads::new(&loaded.config, loaded.vb.clone()).map_err(|e| {
                CheckpointError::Read {
                    path: loaded.path.clone(),
                    reason: e.to_string(),
                }
            })?;
            Some(heads)
        } else {
            None
        };
        Ok(Self::new(loaded.model, heads))
    }

    pub fn model(&self) -> &UVit {
        &self.model
    }

    pub fn heads(&self) -> Option<&CertaintyHeads> {
        self.heads.as_ref()
    }

    /// Runs `x [B,C,H,W]`, `t [B]`, `cond` under `policy`.
    ///
    /// `PerSample` compacts the running batch with `index_select` as samples exit, so an exited
    /// sample costs nothing more; `Official` keeps the batch together on its mean certainty.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        policy: &ExitPolicy,
    ) -> Result<ExitOutput> {
        policy.validate().map_err(candle_core::Error::msg)?;
        let n = self.model.num_blocks();
        match *policy {
            ExitPolicy::Full => self.truncated(x, t, cond, n),
            ExitPolicy::Static { blocks } => self.truncated(x, t, cond, blocks.min(n)),
            ExitPolicy::Official { threshold } => self.adaptive(x, t, cond, threshold, false),
            ExitPolicy::PerSample { threshold } => self.adaptive(x, t, cond, threshold, true),
        }
    }

    fn sample_exit(&self, blocks: usize, scores: Vec<f32>) -> SampleExit {
        let macs = self.model.macs();
        SampleExit {
            exit_block: blocks - 1,
            blocks_executed: blocks,
            macs: macs.truncated(blocks) + scores.len() as u64 * macs.certainty_head,
            full_depth_macs: macs.full_depth(),
            scores,
        }
    }

    /// The first `blocks` blocks for the whole batch, then the output head.
    fn truncated(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        blocks: usize,
    ) -> Result<ExitOutput> {
        let mut h = self.model.embed(x, t, cond)?;
        let mut skips = Vec::new();
        for i in 0..blocks {
            h = self.model.block(i, &h, &mut skips)?;
        }
        Ok(ExitOutput {
            eps: self.model.decode(&h)?,
            samples: (0..x.dim(0)?)
                .map(|_| self.sample_exit(blocks, Vec::new()))
                .collect(),
        })
    }

    /// Threshold exits; `per_sample` selects own-mean decisions with batch compaction.
    fn adaptive(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        threshold: f32,
        per_sample: bool,
    ) -> Result<ExitOutput> {
        let heads = self.heads.as_ref().ok_or_else(|| {
            candle_core::Error::msg(
                "this checkpoint has no certainty heads (lte_classifer.*): use the full or static:K exit policy",
            )
        })?;
        let cfg = self.model.config();
        let n = self.model.num_blocks();
        let b = x.dim(0)?;
        let rule = ExitRule::new(cfg.variant, cfg.num_in_blocks(), threshold);
        // One rule per sample under PerSample; under Official only rules[0] is used.
        let mut rules = vec![rule; b];
        let mut scores: Vec<Vec<f32>> = vec![Vec::new(); b];
        let mut outputs: Vec<Option<Tensor>> = vec![None; b];
        let mut blocks_run = vec![n; b];
        // `active[row]` is the original index of the sample in row `row` of `h`.
        let mut active: Vec<usize> = (0..b).collect();
        let mut h = self.model.embed(x, t, cond)?;
        let mut skips = Vec::new();
        for i in 0..n {
            h = self.model.block(i, &h, &mut skips)?;
            let exiting: Vec<bool> = if i + 1 == n {
                vec![true; active.len()]
            } else {
                let means = heads.sample_means(i, &h)?.to_vec1::<f32>()?;
                if per_sample {
                    active
                        .iter()
                        .zip(&means)
                        .map(|(&s, &m)| {
                            scores[s].push(m);
                            rules[s].exits(i, m)
                        })
                        .collect()
                } else {
                    let m = means.iter().sum::<f32>() / means.len() as f32;
                    active.iter().for_each(|&s| scores[s].push(m));
                    vec![rules[0].exits(i, m); active.len()]
                }
            };
            let (out_rows, keep_rows): (Vec<usize>, Vec<usize>) =
                (0..active.len()).partition(|&r| exiting[r]);
            if out_rows.is_empty() {
                continue;
            }
            let eps = self.model.decode(&select_rows(&h, &out_rows)?)?;
            for (k, &row) in out_rows.iter().enumerate() {
                outputs[active[row]] = Some(eps.narrow(0, k, 1)?);
                blocks_run[active[row]] = i + 1;
            }
            if keep_rows.is_empty() {
                break;
            }
            h = select_rows(&h, &keep_rows)?;
            for s in skips.iter_mut() {
                *s = select_rows(s, &keep_rows)?;
            }
            active = keep_rows.iter().map(|&r| active[r]).collect();
        }
        let outputs: Vec<Tensor> = outputs.into_iter().flatten().collect();
        Ok(ExitOutput {
            eps: Tensor::cat(&outputs, 0)?,
            samples: blocks_run
                .into_iter()
                .zip(scores)
                .map(|(k, s)| self.sample_exit(k, s))
                .collect(),
        })
    }
}

/// Rows `rows` of a batch-major tensor (no copy when all rows are kept in order).
fn select_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    if rows.len() == t.dim(0)? && rows.iter().enumerate().all(|(i, &r)| i == r) {
        return Ok(t.clone());
    }
    let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    t.index_select(&Tensor::new(idx, t.device())?, 0)
}
