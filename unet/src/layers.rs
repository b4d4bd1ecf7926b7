//! Linear and LayerNorm built with the official U-ViT initialisation, so a `VarMap`-backed
//! `VarBuilder` creates a from-scratch model exactly like `UViT._init_weights`
//! (Linear weight trunc-normal std 0.02, bias 0; LayerNorm weight 1, bias 0). With a checkpoint
//! backend the hints are ignored and the stored tensors are used.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::amx::{self, PackedWeight};
use crate::kernels;

/// timm's `trunc_normal_(std=0.02)` truncates at ±2 in absolute value, i.e. at 100σ: a plain
/// normal is the same distribution for all practical purposes.
pub const TRUNC_NORMAL_002: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// `nn.Linear(in_dim, out_dim, bias)` with weight `[out, in]`.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", TRUNC_NORMAL_002)?;
    let bias = if bias {
        Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear {
        weight,
        bias,
        bf16: Arc::default(),
    })
}

/// `y = x·Wᵀ + b` routed through [`kernels::linear`] (fused gemm on the inference path, candle's
/// differentiable ops in training).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The weight in bf16 tile layout, packed at the first product after `--dtype bf16`
    /// switched it on (inference only: training never turns bf16 on, so the copy cannot go
    /// stale behind an optimiser step).
    bf16: Arc<OnceLock<PackedWeight>>,
}

impl Linear {
    /// `[out, in]` weight, as in PyTorch.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `residual + x·Wᵀ + b` in one pass (the residual connections of a block).
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let bf16 = self.bf16_weight()?;
        kernels::linear(x, &self.weight, self.bias.as_ref(), Some(residual), bf16)
    }

    /// The bf16 tile copy of the weight when bf16 products are on and this layer is eligible.
    fn bf16_weight(&self) -> Result<Option<&PackedWeight>> {
        let w = &self.weight;
        let (n, k) = w.dims2()?;
        let inference = !w.track_op() && w.dtype() == DType::F32 && w.device().is_cpu();
        if !inference || !amx::eligible(n, k) {
            return Ok(None);
        }
        if self.bf16.get().is_none() {
            let _ = self
                .bf16
                .set(PackedWeight::new(&w.flatten_all()?.to_vec1()?, n, k));
        }
        Ok(self.bf16.get())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bf16 = self.bf16_weight()?;
        kernels::linear(x, &self.weight, self.bias.as_ref(), None, bf16)
    }
}

/// LayerNorm (eps 1e-5) routed through [`kernels::layer_norm`], so it stays differentiable in
/// training and uses the fused kernel in inference.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    pub const EPS: f64 = 1e-5;

    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::layer_norm(x, &self.weight, &self.bias, Self::EPS)
    }
}
