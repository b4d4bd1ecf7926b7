//! Linear and LayerNorm built with the official U-ViT initialisation, so a `VarMap`-backed
//! `VarBuilder` creates a from-scratch model exactly like `UViT._init_weights`
//! (Linear weight trunc-normal std 0.02, bias 0; LayerNorm weight 1, bias 0). With a checkpoint
//! backend the hints are ignored and the stored tensors are used.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::amx::{self, PackedWeight};
use crate::kernels::{self, Packed};
use crate::panels::{self, PanelWeight};

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
        f32_panels: Arc::default(),
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
    /// The weight in [`panels`] layout, packed at the first f32 inference product on a CPU
    /// with AVX2 or AVX-512 ([`panels::eligible`]). Only weights that record no gradient are
    /// packed: a trained `Var` never is, so no optimiser step can leave this copy behind.
    f32_panels: Arc<OnceLock<PanelWeight>>,
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
        let packed = self.packed()?;
        kernels::linear(x, &self.weight, self.bias.as_ref(), Some(residual), packed)
    }

    /// The packed copy of the weight the inference product uses: bf16 tiles when bf16 products
    /// are on and the layer is eligible, else f32 panels where the CPU has the kernel for them.
    fn packed(&self) -> Result<Option<Packed<'_>>> {
        let w = &self.weight;
        let (n, k) = w.dims2()?;
        let inference = !w.track_op() && w.dtype() == DType::F32 && w.device().is_cpu();
        let values = || w.flatten_all()?.to_vec1::<f32>();
        Ok(if !inference {
            None
        } else if amx::eligible(n, k) {
            Some(Packed::Bf16(once(&self.bf16, || {
                Ok(PackedWeight::new(&values()?, n, k))
            })?))
        } else if panels::eligible(n, k) {
            Some(Packed::F32(once(&self.f32_panels, || {
                Ok(PanelWeight::new(&values()?, n, k))
            })?))
        } else {
            None
        })
    }
}

/// The value in `cell`, made by `make` the first time (a failure leaves the cell empty).
fn once<T>(cell: &OnceLock<T>, make: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let _ = cell.set(make()?);
    Ok(cell.get().expect("set above or by a concurrent caller"))
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let packed = self.packed()?;
        kernels::linear(x, &self.weight, self.bias.as_ref(), None, packed)
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
