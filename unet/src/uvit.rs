//! The U-ViT model with a block-by-block API shared by the trainer and the early-exit driver.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Embedding, VarBuilder};
use rayon::prelude::*;

use crate::block::Block;
use crate::config::{UVitConfig, Variant};
use crate::embedding::{unpatchify, PatchEmbed, TimeEmbed};
use crate::layers::{linear, LayerNorm, Linear, TRUNC_NORMAL_002};
use crate::macs::MacCounts;

/// What the network is conditioned on, besides `x_t` and `t`.
#[derive(Debug, Clone)]
pub enum Conditioning {
    /// Unconditional `uvit`.
    None,
    /// Class-conditional `uvit`: integer labels `[B]` (u32 or i64); `num_classes-1` is the null
    /// label used for classifier-free guidance.
    Class(Tensor),
    /// `uvit_t2i`: text-encoder tokens `[B, num_clip_token, clip_dim]` (f32).
    Context(Tensor),
}

impl Conditioning {
    /// The `len` rows from `start` of the conditioning: one contiguous part of a batch.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(match self {
            Self::None => Self::None,
            Self::Class(y) => Self::Class(y.narrow(0, start, len)?),
            Self::Context(c) => Self::Context(c.narrow(0, start, len)?),
        })
    }

    /// Keeps the rows `idx` (u32 `[B']`) of the conditioning, e.g. to split a batch.
    pub fn index_select(&self, idx: &Tensor) -> Result<Self> {
        Ok(match self {
            Self::None => Self::None,
            Self::Class(y) => Self::Class(y.index_select(idx, 0)?),
            Self::Context(c) => Self::Context(c.index_select(idx, 0)?),
        })
    }
}

/// U-ViT (`libs/uvit.py` or `libs/uvit_t2i.py`) without the certainty heads, which live in
/// `deediff-uem` and load from the same `VarBuilder` under `lte_classifer.*`.
///
/// The forward pass is split so a caller can stop after any block:
/// ```text
/// let mut h = model.embed(&x, &t, &cond)?;           // [B, extras+L, D]
/// let mut skips = Vec::new();
/// for i in 0..k { h = model.block(i, &h, &mut skips)?; }
/// let eps = model.decode(&h)?;                        // [B, C, H, W]
/// ```
/// All state between blocks is the token tensor `h` and the skip stack, both batch-major, so a
/// batch can be compacted from outside with `index_select(idx, 0)` on `h` and on every skip.
#[derive(Debug, Clone)]
pub struct UVit {
    cfg: UVitConfig,
    patch_embed: PatchEmbed,
    time_embed: TimeEmbed,
    label_emb: Option<Embedding>,
    context_embed: Option<Linear>,
    pos_embed: Tensor,
    /// In, mid and out blocks in execution order.
    blocks: Vec<Block>,
    norm: LayerNorm,
    decoder_pred: Linear,
    final_layer: Option<Conv2d>,
    macs: MacCounts,
}

impl UVit {
    /// Builds the model from `vb` with the official key names (`pos_embed`, `in_blocks.0.…`,
    /// `mid_block.…`, `out_blocks.0.…`, `decoder_pred`, `final_layer`, …). With a checkpoint
    /// backend every tensor must exist with the right shape; with a `VarMap` backend missing
    /// tensors are created with the official initialisation (for training from scratch).
    pub fn new(cfg: &UVitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let d = cfg.embed_dim;
        let patch_embed = PatchEmbed::new(cfg.in_chans, d, cfg.patch_size, vb.pp("patch_embed"))?;
        let time_embed = TimeEmbed::new(d, cfg.mlp_time_embed, vb.clone())?;
        let label_emb = match cfg.num_classes {
            Some(n) if cfg.variant == Variant::Uvit => {
                Some(candle_nn::embedding(n, d, vb.pp("label_emb"))?)
            }
            _ => None,
        };
        let context_embed = match cfg.variant {
            Variant::UvitT2i => Some(linear(cfg.clip_dim, d, true, vb.pp("context_embed"))?),
            Variant::Uvit => None,
        };
        let pos_embed = vb.get_with_hints((1, cfg.seq_len(), d), "pos_embed", TRUNC_NORMAL_002)?;
        let n_in = cfg.num_in_blocks();
        let hidden = cfg.mlp_hidden();
        let block =
            |with_skip, vb| Block::new(d, cfg.num_heads, hidden, cfg.qkv_bias, with_skip, vb);
        let mut blocks = Vec::with_capacity(cfg.num_blocks());
        for i in 0..n_in {
            blocks.push(block(false, vb.pp(format!("in_blocks.{i}")))?);
        }
        blocks.push(block(false, vb.pp("mid_block"))?);
        for i in 0..n_in {
            blocks.push(block(cfg.skip, vb.pp(format!("out_blocks.{i}")))?);
        }
        let final_layer = if cfg.conv {
            let conv_cfg = candle_nn::Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            Some(candle_nn::conv2d(
                cfg.in_chans,
                cfg.in_chans,
                3,
                conv_cfg,
                vb.pp("final_layer"),
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            time_embed,
            label_emb,
            context_embed,
            pos_embed,
            blocks,
            norm: LayerNorm::new(d, vb.pp("norm"))?,
            decoder_pred: linear(d, cfg.patch_dim(), true, vb.pp("decoder_pred"))?,
            final_layer,
            macs: MacCounts::new(cfg),
        })
    }

    pub fn config(&self) -> &UVitConfig {
        &self.cfg
    }

    /// Number of non-patch tokens at the front of the sequence.
    pub fn extras(&self) -> usize {
        self.cfg.extras()
    }

    /// Blocks in execution order (`depth + 1`).
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Per-sample MAC counts of every part (see [`MacCounts`]).
    pub fn macs(&self) -> &MacCounts {
        &self.macs
    }

    /// `x [B,C,H,W]` (f32), `t [B]` (timesteps as fed to the official model, any float or int
    /// dtype) → token sequence `[B, extras+L, D]` with `pos_embed` added (the input of block 0).
    /// Errors if `cond` does not match the variant.
    pub fn embed(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let (e, l) = (self.extras(), self.cfg.num_patches());
        let pos = self.pos_embed.squeeze(0)?;
        let patches = self.patch_embed.forward(x, &pos.narrow(0, e, l)?)?;
        let time = self.time_embed.forward(t)?.unsqueeze(1)?;
        let extras = match (cond, &self.label_emb, &self.context_embed) {
            (Conditioning::None, None, None) => time,
            (Conditioning::Class(y), Some(emb), None) => {
                Tensor::cat(&[&emb.forward(y)?.unsqueeze(1)?, &time], 1)?
            }
            (Conditioning::Context(c), None, Some(lin)) => {
                Tensor::cat(&[&time, &lin.forward(c)?], 1)?
            }
            _ => candle_core::bail!(
                "conditioning {} does not match this model (variant {:?}, num_classes {:?})",
                match cond {
                    Conditioning::None => "None",
                    Conditioning::Class(_) => "Class",
                    Conditioning::Context(_) => "Context",
                },
                self.cfg.variant,
                self.cfg.num_classes
            ),
        };
        Tensor::cat(
            &[&extras.broadcast_add(&pos.narrow(0, 0, e)?)?, &patches],
            1,
        )
    }

    /// Runs block `i` (0-based, execution order) on `h [B, S, D]`. In-blocks push their output onto
    /// `skips`; out-blocks pop the most recent skip (LIFO) and fuse it as `[h, skip]`. Blocks must
    /// be called in order 0, 1, … with the same `skips` vector, which starts empty.
    pub fn block(&self, i: usize, h: &Tensor, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let n_in = self.cfg.num_in_blocks();
        let Some(block) = self.blocks.get(i) else {
            candle_core::bail!(
                "block index {i} out of range (model has {})",
                self.blocks.len()
            )
        };
        if i < n_in {
            let out = block.forward(h, None)?;
            skips.push(out.clone());
            Ok(out)
        } else if i == n_in {
            block.forward(h, None)
        } else {
            let skip = skips.pop().ok_or_else(|| {
                candle_core::Error::msg(format!("block {i}: skip stack is empty"))
            })?;
            block.forward(h, Some(&skip))
        }
    }

    /// The shared output head on any block's output `h [B, S, D]` → `eps [B, C, H, W]`:
    /// drop extras → `norm` → `decoder_pred` → unpatchify `(p1 p2 C)` → 3×3 conv. (Dropping the
    /// extras first is the same math as the official order, since both ops act per token.)
    pub fn decode(&self, h: &Tensor) -> Result<Tensor> {
        let patches = h.narrow(1, self.extras(), self.cfg.num_patches())?;
        let out = self.decoder_pred.forward(&self.norm.forward(&patches)?)?;
        let img = unpatchify(&out, self.cfg.in_chans)?;
        match &self.final_layer {
            Some(conv) => {
                let bias = conv.bias().ok_or_else(|| {
                    candle_core::Error::msg("final_layer: a 3×3 conv without a bias")
                })?;
                crate::kernels::conv3x3(&img, conv.weight(), bias)
            }
            None => Ok(img),
        }
    }

    /// Full-depth forward (the official output with no early exit), run on a rayon worker and,
    /// on the CPU, as one part of the batch per thread, each through the whole network
    /// ([`crate::pool::part_ranges`]): the threads meet once per forward rather than after every
    /// block and around the embed and the output head. Rows are computed the same in any part.
    pub fn forward(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        crate::pool::on_worker(|| {
            let b = x.dim(0)?;
            let parts = crate::pool::part_ranges(b);
            let whole = x.track_op() || !x.device().is_cpu() || t.dims() != [b];
            if parts.len() < 2 || whole {
                return self.forward_rows(x, t, cond);
            }
            let outs = parts
                .into_par_iter()
                .map(|r| {
                    let (x, t) = (
                        x.narrow(0, r.start, r.len())?,
                        t.narrow(0, r.start, r.len())?,
                    );
                    self.forward_rows(&x, &t, &cond.narrow(r.start, r.len())?)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&outs, 0)
        })
    }

    /// [`Self::forward`] of one part.
    fn forward_rows(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let mut h = self.embed(x, t, cond)?;
        let mut skips = Vec::with_capacity(self.cfg.num_in_blocks());
        for i in 0..self.num_blocks() {
            h = self.block(i, &h, &mut skips)?;
        }
        self.decode(&h)
    }
}
