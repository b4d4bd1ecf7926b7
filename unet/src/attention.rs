//! Multi-head self-attention with the official `(K H D)` split of the fused qkv projection.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels;
use crate::layers::{linear, Linear};

/// `qkv` Linear(D→3D) (bias optional, off in all official configs) and `proj` Linear(D→D).
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, qkv_bias: bool, vb: VarBuilder) -> Result<Self> {
        let qkv = linear(dim, 3 * dim, qkv_bias, vb.pp("qkv"))?;
        let proj = linear(dim, dim, true, vb.pp("proj"))?;
        Ok(Self {
            qkv,
            proj,
            num_heads,
            scale: 1.0 / ((dim / num_heads) as f64).sqrt(),
        })
    }

    /// `residual + Attn(x)` for `x, residual [B, S, D]`; every token attends to every token (no
    /// mask). The residual add is fused into the output projection.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let heads = kernels::attention(&qkv, self.num_heads, self.scale)?;
        self.proj.forward_add(&heads, residual)
    }
}
