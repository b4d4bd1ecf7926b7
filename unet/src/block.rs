//! The pre-LN transformer block of U-ViT, with the optional long-skip fusion of out-blocks.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::attention::Attention;
use crate::kernels;
use crate::layers::{linear, LayerNorm, Linear};

/// `fc1` → exact GELU → `fc2`. The `fc1` bias is kept apart so it fuses into the GELU kernel.
#[derive(Debug, Clone)]
struct Mlp {
    /// `fc1` without its bias.
    fc1: Linear,
    fc1_bias: Tensor,
    fc2: Linear,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let fc1_bias = vb
            .pp("fc1")
            .get_with_hints(hidden, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self {
            fc1: linear(dim, hidden, false, vb.pp("fc1"))?,
            fc1_bias,
            fc2: linear(hidden, dim, true, vb.pp("fc2"))?,
        })
    }

    /// `residual + Mlp(x)`, the residual add fused into `fc2`.
    fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = kernels::bias_gelu(&self.fc1.forward(x)?, &self.fc1_bias)?;
        self.fc2.forward_add(&h, residual)
    }
}

/// One U-ViT block. Out-blocks (with `skip`) first fuse `skip_linear(concat[x, skip])`.
#[derive(Debug, Clone)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    skip_linear: Option<Linear>,
}

impl Block {
    /// `with_skip` is true for out-blocks of a model built with `skip=True`.
    pub fn new(
        dim: usize,
        num_heads: usize,
        mlp_hidden: usize,
        qkv_bias: bool,
        with_skip: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let skip_linear = if with_skip {
            Some(linear(2 * dim, dim, true, vb.pp("skip_linear"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: LayerNorm::new(dim, vb.pp("norm1"))?,
            attn: Attention::new(dim, num_heads, qkv_bias, vb.pp("attn"))?,
            norm2: LayerNorm::new(dim, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, mlp_hidden, vb.pp("mlp"))?,
            skip_linear,
        })
    }

    /// `skip` is ignored by blocks without `skip_linear`, as in the official code.
    ///
    /// On the CPU the batch runs as one part per thread, split by sample, each part through the
    /// whole block: a block is ten kernels, and splitting each of them over the threads makes the
    /// threads meet after every one. Interleaved in one process (Emerald Rapids, 2 threads),
    /// whole-block parts ran the embedded model's forward 7–29 % faster (batch 32 … 2; most at
    /// small batches, where per-sample exits run their last blocks) and U-ViT-S/2's 11 % at
    /// batch 16. Every kernel computes a row the same in any batch, so neither the numbers nor
    /// a sample's independence of its batch change. A part's own kernels still spread over idle
    /// threads (rayon steals), which evens out unequal parts.
    pub fn forward(&self, x: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let parts = crate::pool::part_ranges(x.dim(0)?);
        if parts.len() < 2 || x.track_op() || !x.device().is_cpu() {
            return self.forward_part(x, skip);
        }
        let outs = parts
            .into_par_iter()
            .map(|r| {
                let skip = skip.map(|t| t.narrow(0, r.start, r.len())).transpose()?;
                self.forward_part(&x.narrow(0, r.start, r.len())?, skip.as_ref())
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outs, 0)
    }

    /// [`Self::forward`] on one part of the batch.
    fn forward_part(&self, x: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let x = match (&self.skip_linear, skip) {
            (Some(lin), Some(s)) => lin.forward(&Tensor::cat(&[x, s], 2)?)?,
            (Some(_), None) => candle_core::bail!("out-block called without a skip tensor"),
            (None, _) => x.clone(),
        };
        let x = self.attn.forward_add(&self.norm1.forward(&x)?, &x)?;
        self.mlp.forward_add(&self.norm2.forward(&x)?, &x)
    }
}
