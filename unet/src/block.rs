//! The pre-LN transformer block of U-ViT, with the optional long-skip fusion of out-blocks.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::attention::Attention;
use crate::kernels;
use crate::layers::{linear, LayerNorm};

/// `fc1` → exact GELU → `fc2`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&kernels::gelu_erf(&self.fc1.forward(x)?)?)
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
            mlp: Mlp {
                fc1: linear(dim, mlp_hidden, true, vb.pp("mlp.fc1"))?,
                fc2: linear(mlp_hidden, dim, true, vb.pp("mlp.fc2"))?,
            },
            skip_linear,
        })
    }

    /// `skip` is ignored by blocks without `skip_linear`, as in the official code.
    pub fn forward(&self, x: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let x = match (&self.skip_linear, skip) {
            (Some(lin), Some(s)) => lin.forward(&Tensor::cat(&[x, s], 2)?)?,
            (Some(_), None) => candle_core::bail!("out-block called without a skip tensor"),
            (None, _) => x.clone(),
        };
        let x = (&x + self.attn.forward(&self.norm1.forward(&x)?)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}
