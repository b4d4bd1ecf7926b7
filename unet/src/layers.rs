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

/// `nn.Linear(in_dim, out_dim, bias)` with weight `[out, in]`. An inference weight (one that
/// records no gradient, f32 on the CPU, e.g. from a checkpoint) on a CPU with the panel kernels
/// ([`panels::eligible`]) is packed into panels here and its loaded copy dropped: the model then
/// holds each weight once (a lazily packed copy beside the loaded one doubled a large model's
/// weight memory), and the first sampling step no longer pays the packing. A trained `Var` is
/// never packed, so no optimiser step can leave a packed copy behind.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    build(in_dim, out_dim, bias, vb, true)
}

/// [`linear`] that keeps the weight as loaded: the certainty heads, whose inference kernel
/// ([`kernels::sigmoid_linear_means`]) reads the plain weight.
pub fn linear_unpacked(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Linear> {
    build(in_dim, out_dim, bias, vb, false)
}

fn build(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder, pack: bool) -> Result<Linear> {
    let w = vb.get_with_hints((out_dim, in_dim), "weight", TRUNC_NORMAL_002)?;
    let weight = if pack && inference(&w) && panels::eligible(out_dim, in_dim) {
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        Weight::Panels(Arc::new(PanelWeight::new(&values, out_dim, in_dim)))
    } else {
        Weight::Plain(w)
    };
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

/// Whether `w` takes the fused inference kernels (see [`kernels`]).
fn inference(w: &Tensor) -> bool {
    !w.track_op() && w.dtype() == DType::F32 && w.device().is_cpu()
}

/// `y = x·Wᵀ + b` routed through [`kernels::linear`] (fused gemm on the inference path, candle's
/// differentiable ops in training).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// The weight in bf16 tile layout, packed at the first product after `--dtype bf16`
    /// switched it on (inference only: training never turns bf16 on, so the copy cannot go
    /// stale behind an optimiser step).
    bf16: Arc<OnceLock<PackedWeight>>,
}

#[derive(Debug, Clone)]
enum Weight {
    /// `[out, in]` as loaded: weights that train, live off the CPU or have no panel kernel.
    Plain(Tensor),
    /// Packed into [`panels`] layout at load, the loaded copy dropped (see [`linear`]).
    Panels(Arc<PanelWeight>),
}

impl Linear {
    /// `[out, in]` weight, as in PyTorch; `None` once [`linear`] packed it.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Plain(w) => Some(w),
            Weight::Panels(_) => None,
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `residual + x·Wᵀ + b` in one pass (the residual connections of a block).
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.product(x, Some(residual))
    }

    fn product(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let bias = self.bias.as_ref();
        match &self.weight {
            Weight::Plain(w) => {
                let (n, k) = w.dims2()?;
                let values = || w.flatten_all()?.to_vec1::<f32>();
                let tiles = if inference(w) {
                    self.bf16(n, k, values)?
                } else {
                    None
                };
                kernels::linear(x, w, bias, residual, tiles)
            }
            Weight::Panels(p) => {
                let tiles = self.bf16(p.n(), p.k(), || Ok(p.unpack()))?;
                kernels::packed_linear(x, tiles.unwrap_or(Packed::F32(p)), bias, residual)
            }
        }
    }

    /// The bf16 tiles of an inference weight, made from `values` at the first product once bf16
    /// products are on, for the layers the tiles fit ([`amx::eligible`]).
    fn bf16(
        &self,
        n: usize,
        k: usize,
        values: impl FnOnce() -> Result<Vec<f32>>,
    ) -> Result<Option<Packed<'_>>> {
        if !amx::eligible(n, k) {
            return Ok(None);
        }
        let tiles = once(&self.bf16, || Ok(PackedWeight::new(&values()?, n, k)))?;
        Ok(Some(Packed::Bf16(tiles)))
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
        self.product(x, None)
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;
    use candle_nn::VarMap;

    use super::*;

    /// A loaded weight is packed at load where the CPU has the panel kernels, its loaded copy
    /// dropped, and gives the plain product; a trained `Var` and the unpacked variant keep theirs.
    #[test]
    fn loaded_weights_are_packed_once_at_load() -> Result<()> {
        let (n, k, dev) = (48, 40, &Device::Cpu);
        let w = Tensor::randn(0f32, 1.0, (n, k), dev)?;
        let b = Tensor::randn(0f32, 1.0, n, dev)?;
        let tensors = HashMap::from([
            ("weight".to_string(), w.clone()),
            ("bias".into(), b.clone()),
        ]);
        let loaded = || VarBuilder::from_tensors(tensors.clone(), DType::F32, dev);
        let layer = linear(k, n, true, loaded())?;
        assert_eq!(layer.weight().is_none(), panels::eligible(n, k));
        let x = Tensor::randn(0f32, 1.0, (2, 5, k), dev)?;
        let r = Tensor::randn(0f32, 1.0, (2, 5, n), dev)?;
        let want = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
        for (got, want) in [
            (layer.forward(&x)?, want.clone()),
            (layer.forward_add(&x, &r)?, (&want + &r)?),
        ] {
            let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "packed product off by {err}");
        }
        assert!(linear_unpacked(k, n, true, loaded())?.weight().is_some());
        let varmap = VarMap::new();
        let trained = linear(
            k,
            n,
            true,
            VarBuilder::from_varmap(&varmap, DType::F32, dev),
        )?;
        assert!(trained.weight().is_some());
        Ok(())
    }
}
