//! The same network on candle tensors, for devices other than the CPU (CUDA): the native path
//! works on HWC `Vec`s with `gemm` and cannot leave the CPU. Built from the loaded
//! [`FidInception`](super::FidInception) (batch norm already folded), so both paths share one
//! weight loader; the resize stays on the CPU (two taps per output pixel, negligible next to
//! the convs) and each batch goes to the device once.

use super::{Branch, ChwImage, Features, Mixed, Pool, Stage, BLOCK_DIMS};
use crate::conv::Conv;
use crate::error::Result;
use crate::fmap::Pool3;
use crate::resize::{resize_normalise, SIZE};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// Images per device batch: 64 images of Mixed_5 activations (288×35×35) and the 299² input are
/// a few hundred MB, far inside any GPU, while big enough to fill one.
const CHUNK: usize = 64;

#[derive(Debug, Clone)]
struct TConv {
    /// `[cout, cin, kh, kw]`, batch norm folded in.
    w: Tensor,
    /// `[1, cout, 1, 1]`.
    b: Tensor,
    stride: usize,
    pad: (usize, usize),
}

impl TConv {
    fn new(conv: &Conv, device: &Device) -> Result<Self> {
        let f = conv.folded();
        Ok(TConv {
            w: Tensor::from_vec(f.weight, &f.shape, device)?,
            b: Tensor::from_vec(f.bias, (1, f.shape[0], 1, 1), device)?,
            stride: f.stride,
            pad: f.pad,
        })
    }

    /// conv (asymmetric zero padding done explicitly: candle pads both axes alike) → + bias → ReLU.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.pad;
        let x = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
        Ok(x.conv2d(&self.w, 0, self.stride, 1, 1)?
            .broadcast_add(&self.b)?
            .relu()?)
    }
}

#[derive(Debug, Clone)]
struct TBranch {
    pool: Option<Pool>,
    chain: Vec<TConv>,
    fork: Vec<TConv>,
}

#[derive(Debug, Clone)]
enum TStage {
    Conv(TConv),
    MaxPool,
    Mixed(Vec<TBranch>),
}

fn convs(cs: &[Conv], device: &Device) -> Result<Vec<TConv>> {
    cs.iter().map(|c| TConv::new(c, device)).collect()
}

impl TStage {
    fn new(stage: &Stage, device: &Device) -> Result<Self> {
        Ok(match stage {
            Stage::Conv(c) => TStage::Conv(TConv::new(c, device)?),
            Stage::MaxPool => TStage::MaxPool,
            Stage::Mixed(Mixed { branches, .. }) => TStage::Mixed(
                branches
                    .iter()
                    .map(|b: &Branch| {
                        Ok(TBranch {
                            pool: b.pool,
                            chain: convs(&b.chain, device)?,
                            fork: convs(&b.fork, device)?,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            TStage::Conv(c) => c.forward(x),
            TStage::MaxPool => Ok(x.max_pool2d_with_stride(3, 2)?),
            TStage::Mixed(branches) => {
                let outs = branches
                    .iter()
                    .map(|b| b.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&outs, 1)?)
            }
        }
    }
}

impl TBranch {
    /// Mirrors `Branch::forward_into`: pool, chain, then the fork's outputs side by side.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut cur = match self.pool {
            Some(Pool::Reduce) => return Ok(x.max_pool2d_with_stride(3, 2)?),
            Some(Pool::Same(p)) => pool3(x, p)?,
            None => x.clone(),
        };
        for conv in &self.chain {
            cur = conv.forward(&cur)?;
        }
        if self.fork.is_empty() {
            return Ok(cur);
        }
        let outs = self
            .fork
            .iter()
            .map(|c| c.forward(&cur))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 1)?)
    }
}

/// 3×3 stride-1 pools with padding 1 (candle's pools have no padding).
fn pool3(x: &Tensor, p: Pool3) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    match p {
        Pool3::AvgExcludePad => {
            // Zero-padded average divided by the padded average of ones: the 1/9 cancels and
            // each border window ends up divided by its count of real pixels.
            let avg = |t: &Tensor| -> Result<Tensor> {
                Ok(t.pad_with_zeros(2, 1, 1)?
                    .pad_with_zeros(3, 1, 1)?
                    .avg_pool2d_with_stride(3, 1)?)
            };
            let ones = Tensor::ones((1, 1, h, w), DType::F32, x.device())?;
            Ok(avg(x)?.broadcast_div(&avg(&ones)?)?)
        }
        Pool3::Max => {
            let neg = |shape: (usize, usize, usize, usize)| {
                Tensor::full(f32::NEG_INFINITY, shape, x.device())
            };
            let rows = neg((n, c, 1, w))?;
            let x = Tensor::cat(&[&rows, x, &rows], 2)?;
            let cols = neg((n, c, h + 2, 1))?;
            let x = Tensor::cat(&[&cols, &x, &cols], 3)?;
            Ok(x.max_pool2d_with_stride(3, 1)?)
        }
    }
}

/// The network's weights on one device.
#[derive(Debug, Clone)]
pub(super) struct DeviceNet {
    blocks: Vec<Vec<TStage>>,
    device: Device,
}

impl DeviceNet {
    pub(super) fn new(blocks: &[Vec<Stage>], device: &Device) -> Result<Self> {
        Ok(DeviceNet {
            blocks: blocks
                .iter()
                .map(|stages| stages.iter().map(|s| TStage::new(s, device)).collect())
                .collect::<Result<_>>()?,
            device: device.clone(),
        })
    }

    /// Same contract as `FidInception::blocks_with`, [`CHUNK`] images per device batch.
    pub(super) fn blocks_with<'a, F>(
        &self,
        n: usize,
        last: usize,
        image: F,
    ) -> Result<Vec<Features>>
    where
        F: Fn(usize) -> Result<ChwImage<'a>> + Sync,
    {
        let mut data: Vec<Vec<f32>> = vec![Vec::new(); last + 1];
        for start in (0..n).step_by(CHUNK) {
            let k = CHUNK.min(n - start);
            let maps = (start..start + k)
                .into_par_iter()
                .map(|i| image(i).map(|img| resize_normalise(&img.data, img.height, img.width)))
                .collect::<Result<Vec<_>>>()?;
            let hwc: Vec<f32> = maps.into_iter().flat_map(|m| m.data).collect();
            let mut x = Tensor::from_vec(hwc, (k, SIZE, SIZE, 3), &Device::Cpu)?
                .to_device(&self.device)?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            for (b, stages) in self.blocks[..=last].iter().enumerate() {
                for s in stages {
                    x = s.forward(&x)?;
                }
                let pooled = x.mean((2, 3))?.flatten_all()?.to_vec1::<f32>()?;
                data[b].extend(pooled);
            }
        }
        Ok(data
            .into_iter()
            .enumerate()
            .map(|(b, data)| Features {
                n,
                dims: BLOCK_DIMS[b],
                data,
            })
            .collect())
    }
}
