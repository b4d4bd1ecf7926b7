//! Element-wise hot spots of the forward pass (layer-norm, scaled softmax, exact GELU).
//!
//! Each function picks a fast kernel for inference (CPU, f32, nothing tracks gradients) and the
//! differentiable candle composition otherwise, so one model definition serves both the sampler
//! and the trainer. (candle-nn's own `LayerNorm`/`softmax_last_dim` have no backward pass and would
//! silently cut gradients during training.)

use candle_core::{DType, Device, Result, Tensor, D};

/// True when no tensor records an autograd graph and all are f32 on the CPU.
fn inference_path(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| !t.track_op() && t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
}

/// LayerNorm over the last dimension with affine weight and bias (PyTorch semantics, biased
/// variance).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if inference_path(&[x, weight, bias]) && x.is_contiguous() {
        return candle_nn::ops::layer_norm(x, weight, bias, eps as f32);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(weight)?.broadcast_add(bias)
}

/// `softmax(x · scale)` over the last dimension.
pub fn scaled_softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    if inference_path(&[x]) {
        return candle_nn::ops::softmax_last_dim(&(x * scale)?);
    }
    candle_nn::ops::softmax(&(x * scale)?, D::Minus1)
}

/// Exact (erf) GELU, as `nn.GELU()` in the official MLP.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}
