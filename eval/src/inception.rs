//! pytorch-fid's InceptionV3 (torchvision `Inception3` with the FID patches) in eval mode, from
//! the resize to the four globally pooled feature blocks (64, 192, 768, 2048 dims).

use crate::conv::Conv;
use crate::error::{Error, Result};
use crate::fmap::{max_pool_3s2, max_pool_3s2_into, FMap, Pool3};
use crate::resize::resize_normalise;
use crate::weights::StateDict;
use gemm::Parallelism;
use rayon::prelude::*;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

mod candle;

/// Feature sizes of pytorch-fid's `--dims`, indexed by output block.
pub const BLOCK_DIMS: [usize; 4] = [64, 192, 768, 2048];

/// The output block that pytorch-fid uses for `--dims d`.
pub fn block_for_dims(dims: usize) -> Result<usize> {
    BLOCK_DIMS
        .iter()
        .position(|&d| d == dims)
        .ok_or_else(|| Error::Invalid(format!("--dims {dims} is not one of 64, 192, 768, 2048")))
}

/// Activations of `n` images, `dims` each, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub n: usize,
    pub dims: usize,
    pub data: Vec<f32>,
}

impl Features {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dims..(i + 1) * self.dims]
    }

    /// Stacks rows from several batches (all of the same width).
    pub fn concat(parts: &[Features]) -> Features {
        let dims = parts.first().map_or(0, |p| p.dims);
        Features {
            n: parts.iter().map(|p| p.n).sum(),
            dims,
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
        }
    }
}

/// One image as CHW f32 in [0, 1] with 3 channels (borrowed from a batch or converted).
#[derive(Debug, Clone)]
pub struct ChwImage<'a> {
    pub data: Cow<'a, [f32]>,
    pub height: usize,
    pub width: usize,
}

/// How a pool branch starts.
#[derive(Debug, Clone, Copy)]
enum Pool {
    Same(Pool3),
    /// Max pool 3/2 of the block input (blocks B and D), no conv after it.
    Reduce,
}

/// A branch: optional pool, a chain of convs, and optionally a fork of convs that all read the
/// chain's output and are concatenated (the 1×3 ‖ 3×1 pairs of block E).
#[derive(Debug, Clone)]
struct Branch {
    pool: Option<Pool>,
    chain: Vec<Conv>,
    fork: Vec<Conv>,
}

impl Branch {
    /// The max-pool branch of the reduction blocks (B and D): the block input at half size.
    fn reduce() -> Self {
        Self {
            pool: Some(Pool::Reduce),
            chain: vec![],
            fork: vec![],
        }
    }

    /// Writes this branch's channels from `c_off` on; returns how many it wrote.
    fn forward_into(&self, x: &FMap, dst: &mut FMap, c_off: usize, par: Parallelism) -> usize {
        let mut cur = match self.pool {
            Some(Pool::Reduce) => {
                max_pool_3s2_into(x, dst, c_off);
                return x.c;
            }
            Some(Pool::Same(p)) => Some(p.apply(x)),
            None => None,
        };
        let (body, ends) = if self.fork.is_empty() {
            self.chain.split_at(self.chain.len() - 1)
        } else {
            (&self.chain[..], &self.fork[..])
        };
        for conv in body {
            cur = Some(conv.forward(cur.as_ref().unwrap_or(x), par));
        }
        let input = cur.as_ref().unwrap_or(x);
        let mut c = c_off;
        for conv in ends {
            conv.forward_into(input, dst, c, par);
            c += conv.cout();
        }
        c - c_off
    }
}

/// An inception block: branches concatenated in channel order.
#[derive(Debug, Clone)]
struct Mixed {
    branches: Vec<Branch>,
    reduce: bool,
    cout: usize,
}

impl Mixed {
    fn forward(&self, x: &FMap, par: Parallelism) -> FMap {
        let (h, w) = if self.reduce {
            ((x.h - 3) / 2 + 1, (x.w - 3) / 2 + 1)
        } else {
            (x.h, x.w)
        };
        let mut out = FMap::zeros(h, w, self.cout);
        let mut c = 0;
        for b in &self.branches {
            c += b.forward_into(x, &mut out, c, par);
        }
        debug_assert_eq!(c, self.cout);
        out
    }
}

#[derive(Debug, Clone)]
enum Stage {
    Conv(Conv),
    MaxPool,
    Mixed(Mixed),
}

impl Stage {
    fn forward(&self, x: &FMap, par: Parallelism) -> FMap {
        match self {
            Stage::Conv(c) => c.forward(x, par),
            Stage::MaxPool => max_pool_3s2(x),
            Stage::Mixed(m) => m.forward(x, par),
        }
    }
}

/// Builds the branches of one mixed block from `(branch name, stride, pad)` lists.
struct Builder<'a> {
    sd: &'a StateDict,
    block: &'a str,
}

type Spec<'s> = (&'s str, usize, (usize, usize));

impl Builder<'_> {
    fn convs(&self, specs: &[Spec]) -> Result<Vec<Conv>> {
        specs
            .iter()
            .map(|(n, s, p)| Conv::load(self.sd, &format!("{}.{n}", self.block), *s, *p))
            .collect()
    }
    fn chain(&self, specs: &[Spec]) -> Result<Branch> {
        Ok(Branch {
            pool: None,
            chain: self.convs(specs)?,
            fork: vec![],
        })
    }
    fn fork(&self, chain: &[Spec], fork: &[Spec]) -> Result<Branch> {
        Ok(Branch {
            pool: None,
            chain: self.convs(chain)?,
            fork: self.convs(fork)?,
        })
    }
    fn pool(&self, pool: Pool3) -> Result<Branch> {
        Ok(Branch {
            pool: Some(Pool::Same(pool)),
            chain: self.convs(&[("branch_pool", 1, P0)])?,
            fork: vec![],
        })
    }
    fn mixed(&self, cin: usize, branches: Vec<Branch>, reduce: bool) -> Stage {
        let cout = branches
            .iter()
            .map(|b| match b.pool {
                Some(Pool::Reduce) => cin,
                _ => b
                    .fork
                    .iter()
                    .chain(b.chain.last().filter(|_| b.fork.is_empty()))
                    .map(Conv::cout)
                    .sum(),
            })
            .sum();
        Stage::Mixed(Mixed {
            branches,
            reduce,
            cout,
        })
    }
}

const P0: (usize, usize) = (0, 0);
const P1: (usize, usize) = (1, 1);

fn block_a(sd: &StateDict, name: &str, cin: usize) -> Result<Stage> {
    let b = Builder { sd, block: name };
    let branches = vec![
        b.chain(&[("branch1x1", 1, P0)])?,
        b.chain(&[("branch5x5_1", 1, P0), ("branch5x5_2", 1, (2, 2))])?,
        b.chain(&[
            ("branch3x3dbl_1", 1, P0),
            ("branch3x3dbl_2", 1, P1),
            ("branch3x3dbl_3", 1, P1),
        ])?,
        b.pool(Pool3::AvgExcludePad)?,
    ];
    Ok(b.mixed(cin, branches, false))
}

fn block_b(sd: &StateDict, name: &str, cin: usize) -> Result<Stage> {
    let b = Builder { sd, block: name };
    let branches = vec![
        b.chain(&[("branch3x3", 2, P0)])?,
        b.chain(&[
            ("branch3x3dbl_1", 1, P0),
            ("branch3x3dbl_2", 1, P1),
            ("branch3x3dbl_3", 2, P0),
        ])?,
        Branch::reduce(),
    ];
    Ok(b.mixed(cin, branches, true))
}

fn block_c(sd: &StateDict, name: &str, cin: usize) -> Result<Stage> {
    let b = Builder { sd, block: name };
    let (row, col) = ((0, 3), (3, 0));
    let branches = vec![
        b.chain(&[("branch1x1", 1, P0)])?,
        b.chain(&[
            ("branch7x7_1", 1, P0),
            ("branch7x7_2", 1, row),
            ("branch7x7_3", 1, col),
        ])?,
        b.chain(&[
            ("branch7x7dbl_1", 1, P0),
            ("branch7x7dbl_2", 1, col),
            ("branch7x7dbl_3", 1, row),
            ("branch7x7dbl_4", 1, col),
            ("branch7x7dbl_5", 1, row),
        ])?,
        b.pool(Pool3::AvgExcludePad)?,
    ];
    Ok(b.mixed(cin, branches, false))
}

fn block_d(sd: &StateDict, name: &str, cin: usize) -> Result<Stage> {
    let b = Builder { sd, block: name };
    let branches = vec![
        b.chain(&[("branch3x3_1", 1, P0), ("branch3x3_2", 2, P0)])?,
        b.chain(&[
            ("branch7x7x3_1", 1, P0),
            ("branch7x7x3_2", 1, (0, 3)),
            ("branch7x7x3_3", 1, (3, 0)),
            ("branch7x7x3_4", 2, P0),
        ])?,
        Branch::reduce(),
    ];
    Ok(b.mixed(cin, branches, true))
}

fn block_e(sd: &StateDict, name: &str, cin: usize, pool: Pool3) -> Result<Stage> {
    let b = Builder { sd, block: name };
    let (row, col) = ((0, 1), (1, 0));
    let branches = vec![
        b.chain(&[("branch1x1", 1, P0)])?,
        b.fork(
            &[("branch3x3_1", 1, P0)],
            &[("branch3x3_2a", 1, row), ("branch3x3_2b", 1, col)],
        )?,
        b.fork(
            &[("branch3x3dbl_1", 1, P0), ("branch3x3dbl_2", 1, P1)],
            &[("branch3x3dbl_3a", 1, row), ("branch3x3dbl_3b", 1, col)],
        )?,
        b.pool(pool)?,
    ];
    Ok(b.mixed(cin, branches, false))
}

/// The FID feature extractor. All four blocks are loaded; a forward pass stops after the block
/// that the requested dims need.
#[derive(Debug, Clone)]
pub struct FidInception {
    blocks: [Vec<Stage>; 4],
    /// The weights on a GPU when the network runs there (see [`FidInception::on_device`]).
    device: Option<candle::DeviceNet>,
}

impl FidInception {
    /// Builds the network from a pytorch-fid state dict (batch norm is folded here).
    pub fn from_state_dict(sd: &StateDict) -> Result<Self> {
        let conv = |name: &str, stride, pad| Conv::load(sd, name, stride, pad).map(Stage::Conv);
        Ok(FidInception {
            blocks: [
                vec![
                    conv("Conv2d_1a_3x3", 2, P0)?,
                    conv("Conv2d_2a_3x3", 1, P0)?,
                    conv("Conv2d_2b_3x3", 1, P1)?,
                    Stage::MaxPool,
                ],
                vec![
                    conv("Conv2d_3b_1x1", 1, P0)?,
                    conv("Conv2d_4a_3x3", 1, P0)?,
                    Stage::MaxPool,
                ],
                vec![
                    block_a(sd, "Mixed_5b", 192)?,
                    block_a(sd, "Mixed_5c", 256)?,
                    block_a(sd, "Mixed_5d", 288)?,
                    block_b(sd, "Mixed_6a", 288)?,
                    block_c(sd, "Mixed_6b", 768)?,
                    block_c(sd, "Mixed_6c", 768)?,
                    block_c(sd, "Mixed_6d", 768)?,
                    block_c(sd, "Mixed_6e", 768)?,
                ],
                vec![
                    block_d(sd, "Mixed_7a", 768)?,
                    block_e(sd, "Mixed_7b", 1280, Pool3::AvgExcludePad)?,
                    block_e(sd, "Mixed_7c", 2048, Pool3::Max)?,
                ],
            ],
            device: None,
        })
    }

    /// Loads the network from `weights` (safetensors or pytorch-fid `.pth`), or from the cache
    /// ([`crate::weights::default_weights_path`]) when `None`.
    pub fn load(weights: Option<&Path>) -> Result<Self> {
        let path = weights.map_or_else(crate::weights::default_weights_path, Path::to_path_buf);
        Self::from_state_dict(&crate::weights::load_weights(&path)?)
    }

    /// Runs the network on `device`: the CPU keeps the native kernels, any other device (CUDA)
    /// runs candle's ops there ([`FidInception::with_candle`]).
    pub fn on_device(self, device: &candle_core::Device) -> Result<Self> {
        match device {
            candle_core::Device::Cpu => Ok(self),
            _ => self.with_candle(device),
        }
    }

    /// Runs the network through candle's ops on `device` (the GPU path; on the CPU it lets tests
    /// check that path against pytorch-fid without a GPU).
    pub fn with_candle(mut self, device: &candle_core::Device) -> Result<Self> {
        self.device = Some(candle::DeviceNet::new(&self.blocks, device)?);
        Ok(self)
    }

    /// Pooled features of blocks `0..=last` for one image.
    fn forward_one(&self, img: &ChwImage, last: usize, par: Parallelism) -> Vec<Vec<f32>> {
        let mut x = resize_normalise(&img.data, img.height, img.width);
        self.blocks[..=last]
            .iter()
            .map(|stages| {
                for s in stages {
                    x = s.forward(&x, par);
                }
                x.mean_pool()
            })
            .collect()
    }

    /// Features of blocks `0..=last` for `n` images produced on demand by `image(i)` (so u8
    /// inputs are converted one at a time). Images run in parallel when there are enough of
    /// them, otherwise each matrix product is parallel.
    pub fn blocks_with<'a, F>(&self, n: usize, last: usize, image: F) -> Result<Vec<Features>>
    where
        F: Fn(usize) -> Result<ChwImage<'a>> + Sync,
    {
        if let Some(net) = &self.device {
            return net.blocks_with(n, last, image);
        }
        let one =
            |i: usize, par: Parallelism| image(i).map(|img| self.forward_one(&img, last, par));
        let per_image: Vec<Vec<Vec<f32>>> = if n >= rayon::current_num_threads() {
            (0..n)
                .into_par_iter()
                .map(|i| one(i, Parallelism::None))
                .collect::<Result<_>>()?
        } else {
            (0..n)
                .map(|i| one(i, Parallelism::Rayon(0)))
                .collect::<Result<_>>()?
        };
        Ok((0..=last)
            .map(|b| Features {
                n,
                dims: BLOCK_DIMS[b],
                data: per_image
                    .iter()
                    .flat_map(|f| f[b].iter().copied())
                    .collect(),
            })
            .collect())
    }

    /// Features of blocks `0..=last` for an NCHW f32 batch in [0, 1].
    pub fn blocks_nchw(
        &self,
        data: &[f32],
        n: usize,
        h: usize,
        w: usize,
        last: usize,
    ) -> Result<Vec<Features>> {
        if data.len() != n * 3 * h * w || h == 0 || w == 0 {
            return Err(Error::Invalid(format!(
                "image batch has {} values, expected {n}×3×{h}×{w} (non-empty)",
                data.len()
            )));
        }
        let size = 3 * h * w;
        self.blocks_with(n, last, |i| {
            Ok(ChwImage {
                data: Cow::Borrowed(&data[i * size..(i + 1) * size]),
                height: h,
                width: w,
            })
        })
    }

    /// pytorch-fid features (`--dims`) for an NCHW f32 batch in [0, 1].
    pub fn features_nchw(
        &self,
        data: &[f32],
        n: usize,
        h: usize,
        w: usize,
        dims: usize,
    ) -> Result<Features> {
        let last = block_for_dims(dims)?;
        Ok(self.blocks_nchw(data, n, h, w, last)?.swap_remove(last))
    }

    /// pytorch-fid features for a `candle_core::Tensor` `[N, 3, H, W]` on any device: `U8`
    /// values are read as `u8 / 255` (exactly what saved PNGs give); float values must lie in
    /// [0, 1] and are used as they are, so quantise samples first to score what a file would hold.
    pub fn features_tensor(&self, x: &candle_core::Tensor, dims: usize) -> Result<Features> {
        let (n, c, h, w) = x.dims4()?;
        if c != 3 {
            return Err(Error::Invalid(format!(
                "image tensor must be [N, 3, H, W], got {:?}",
                x.dims()
            )));
        }
        let flat = x.flatten_all()?;
        let data: Vec<f32> = if x.dtype() == candle_core::DType::U8 {
            flat.to_vec1::<u8>()?
                .into_iter()
                .map(|v| v as f32 / 255.0)
                .collect()
        } else {
            flat.to_dtype(candle_core::DType::F32)?.to_vec1()?
        };
        self.features_nchw(&data, n, h, w, dims)
    }

    /// pytorch-fid features for 8-bit RGB images (each may have its own size); values are
    /// `u8 / 255` like `ToTensor()`.
    pub fn features_rgb8(&self, images: &[image::RgbImage], dims: usize) -> Result<Features> {
        let last = block_for_dims(dims)?;
        let mut out = self.blocks_with(images.len(), last, |i| Ok(rgb8_to_chw(&images[i])))?;
        Ok(out.swap_remove(last))
    }
}

impl FidInception {
    /// pytorch-fid features of image files, `batch_size` at a time (each image is decoded and
    /// resized on its own, so sizes may differ); `progress` gets the number done after each batch.
    pub fn features_files(
        &self,
        files: &[PathBuf],
        dims: usize,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Features> {
        let last = block_for_dims(dims)?;
        let mut parts = Vec::new();
        for batch in files.chunks(batch_size.max(1)) {
            let read = |i: usize| crate::images::read_rgb8(&batch[i]).map(|img| rgb8_to_chw(&img));
            parts.push(self.blocks_with(batch.len(), last, read)?.swap_remove(last));
            progress(batch.len());
        }
        Ok(Features::concat(&parts))
    }
}

/// `ToTensor()`: HWC u8 → CHW f32 `u8 / 255`.
pub fn rgb8_to_chw(img: &image::RgbImage) -> ChwImage<'static> {
    let plane = (img.width() * img.height()) as usize;
    let mut chw = vec![0.0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = px.0[c] as f32 / 255.0;
        }
    }
    ChwImage {
        data: Cow::Owned(chw),
        height: img.height() as usize,
        width: img.width() as usize,
    }
}
