//! Token embeddings: sinusoidal time embedding (f32 like torch), optional time MLP, patch embedding,
//! and the inverse `unpatchify`.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{linear, Linear};

/// Sinusoidal timestep embedding `[cos(t·f), sin(t·f)]` (cos first), width `dim`.
///
/// Computed in f32 in the same operation order as the official `timestep_embedding`
/// (`exp((-ln 10000 · k) / half)`, then `t·freq` in f32): at `t ≈ 1000` an f64 computation would
/// differ from the reference by ~2e-5.
pub fn timestep_embedding(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((neg_log * k as f32) / half as f32).exp())
        .collect();
    let ts = timesteps
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(ts.len() * dim);
    for &t in &ts {
        out.extend(freqs.iter().map(|&f| (t * f).cos()));
        out.extend(freqs.iter().map(|&f| (t * f).sin()));
    }
    Tensor::from_vec(out, (ts.len(), dim), &Device::Cpu)?.to_device(timesteps.device())
}

/// The time token: the sinusoid itself, or `Linear(D→4D) → SiLU → Linear(4D→D)` with
/// `mlp_time_embed` (keys `time_embed.0.*`, `time_embed.2.*`).
#[derive(Debug, Clone)]
pub struct TimeEmbed {
    dim: usize,
    mlp: Option<(Linear, Linear)>,
}

impl TimeEmbed {
    pub fn new(dim: usize, mlp_time_embed: bool, vb: VarBuilder) -> Result<Self> {
        let mlp = if mlp_time_embed {
            let vb = vb.pp("time_embed");
            Some((
                linear(dim, 4 * dim, true, vb.pp("0"))?,
                linear(4 * dim, dim, true, vb.pp("2"))?,
            ))
        } else {
            None
        };
        Ok(Self { dim, mlp })
    }

    /// `[B]` timesteps → `[B, D]` time token.
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        let emb = timestep_embedding(timesteps, self.dim)?;
        match &self.mlp {
            None => Ok(emb),
            Some((l1, l2)) => l2.forward(&l1.forward(&emb)?.silu()?),
        }
    }
}

/// `Conv2d(C→D, kernel p, stride p)` as a matmul over non-overlapping patches (identical math,
/// no im2col padding logic). Loads `patch_embed.proj.{weight,bias}`.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    patch: usize,
    /// `[C·p·p, D]`, i.e. the conv weight flattened in its own (C, p1, p2) order and transposed.
    weight_t: Tensor,
    bias: Tensor,
}

impl PatchEmbed {
    pub fn new(in_chans: usize, dim: usize, patch: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("proj");
        let weight = vb.get((dim, in_chans, patch, patch), "weight")?;
        let bias = vb.get(dim, "bias")?;
        let weight_t = weight.reshape((dim, in_chans * patch * patch))?.t()?;
        Ok(Self {
            patch,
            weight_t,
            bias,
        })
    }

    /// `[B, C, H, W]` → `[B, L, D]`, tokens in row-major patch order, each with its row of
    /// `positions [L, D]` added (the patch tokens' share of the position embedding).
    pub fn forward(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let bias_pos = positions.broadcast_add(&self.bias)?;
        crate::kernels::patch_embed(x, &self.weight_t, &bias_pos, self.patch)
    }
}

/// `[B, L, p·p·C]` → `[B, C, H, W]` with feature order `(p1, p2, C)` (channel fastest), as
/// einops `B (h w) (p1 p2 C) -> B C (h p1) (w p2)`.
pub fn unpatchify(x: &Tensor, channels: usize) -> Result<Tensor> {
    let (b, l, f) = x.dims3()?;
    let p = ((f / channels) as f64).sqrt().round() as usize;
    let g = (l as f64).sqrt().round() as usize;
    if p * p * channels != f || g * g != l {
        candle_core::bail!("unpatchify: cannot split {l} tokens of {f} features into a square grid of {channels}-channel patches");
    }
    x.reshape((b, g, g, p, p, channels))?
        .permute((0, 5, 1, 3, 2, 4))?
        .contiguous()?
        .reshape((b, channels, g * p, g * p))
}
