//! Fused CPU kernels for the inference hot spots: layer-norm, attention (qkv split + scaled
//! softmax + both products in one pass, [`crate::flash`]), bias + exact GELU, linear layers with
//! their bias/residual epilogue. The arithmetic lives in [`crate::rowops`], [`crate::panels`]
//! (linear layers over packed weights) and [`crate::matmul`] (every other product), which pick
//! AVX-512, AVX2 or baseline code at run time ([`crate::isa`]).
//!
//! candle's element-wise ops are several times slower than PyTorch's on the CPU (GELU-erf
//! 11–17×, softmax ~5×, layer-norm ~3×), and candle-nn's own `LayerNorm`/`softmax_last_dim` have
//! no backward pass. Each public function here therefore picks the fused kernel only for
//! inference (CPU, f32, nothing records gradients) and the differentiable candle composition
//! otherwise, so one model definition serves both the sampler and the trainer.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout,
    Module, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use crate::amx::{self, PackedWeight};
use crate::matmul::{matmul, Operand, Product};
use crate::panels::{self, PanelWeight};
use crate::rowops::{bias_gelu_rows, bias_residual_rows, layer_norm_rows, sigmoid_sum};

/// An output buffer of `len` floats left unfilled: every kernel here writes each element of its
/// output before anything reads it, and `vec![0.0; len]` spent ~4 % of a U-ViT-S/2 forward
/// zeroing outputs that are overwritten at once. (candle's own CPU ops allocate the same way.)
///
/// # Safety
/// The caller writes every element before the buffer is read or returned.
// `clippy::uninit_vec` guards against reading such a buffer; no caller does (see each SAFETY).
#[allow(clippy::uninit_vec)]
pub(crate) unsafe fn output_buffer(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: capacity is `len`; f32 has no invalid bit patterns and the caller fills it.
    unsafe { v.set_len(len) };
    v
}

/// An output buffer's pointer handed to rayon tasks that each write their own disjoint part of
/// it (attention's (sample, head, query block) tiles, AMX's output blocks).
#[derive(Clone, Copy)]
pub(crate) struct DisjointOut(pub(crate) *mut f32);
// SAFETY: the tasks sharing one write disjoint elements; each user's SAFETY comment says how.
unsafe impl Send for DisjointOut {}
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    /// Going through a method makes closures capture the whole (Send) wrapper, not the field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// True when no tensor records an autograd graph and all are f32 on the CPU.
fn inference_path(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| !t.track_op() && t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
}

/// LayerNorm over the last dimension with affine weight and bias (PyTorch semantics, biased
/// variance).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if inference_path(&[x, weight, bias]) {
        return x.contiguous()?.apply_op3_no_bwd(
            weight,
            bias,
            &Fused(LayerNormOp { eps: eps as f32 }),
        );
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Multi-head attention core on the fused projection `qkv [B, S, 3D]` (channel `k·D + h·Dh + d`,
/// q/k/v slowest): `softmax(q·kᵀ·scale)·v` per head, heads merged back to `[B, S, D]`.
pub fn attention(qkv: &Tensor, num_heads: usize, scale: f64) -> Result<Tensor> {
    if inference_path(&[qkv]) {
        return qkv
            .contiguous()?
            .apply_op1_no_bwd(&Fused(crate::flash::AttentionOp {
                num_heads,
                scale: scale as f32,
            }));
    }
    let (b, s, d3) = qkv.dims3()?;
    let (d, h) = (d3 / 3, num_heads);
    let qkv = qkv.reshape((b, s, 3, h, d / h))?.permute((2, 0, 3, 1, 4))?;
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let attn = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * scale)?, D::Minus1)?;
    attn.matmul(&v)?.transpose(1, 2)?.reshape((b, s, d))
}

/// Exact (erf) GELU of `x + bias` (bias broadcast over the last dimension), as the official MLP's
/// `nn.GELU()` after `fc1`.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if inference_path(&[x, bias]) {
        return x.contiguous()?.apply_op2_no_bwd(bias, &Fused(BiasGeluOp));
    }
    x.broadcast_add(bias)?.gelu_erf()
}

/// `x·Wᵀ + bias (+ residual)` over the last dimension of `x` (`w` is `[out, in]`, PyTorch
/// layout). On the inference path bias and residual are written into the output before one gemm
/// accumulates into it: no separate add passes, no extra buffers. `packed`: a copy of `w` for a
/// faster kernel, used instead of the plain product on the inference path.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    packed: Option<Packed>,
) -> Result<Tensor> {
    let all: Vec<&Tensor> = [Some(x), Some(w), bias, residual]
        .into_iter()
        .flatten()
        .collect();
    if inference_path(&all) {
        let op = Fused(LinearOp {
            bias: bias.map(|b| b.to_vec1::<f32>()).transpose()?,
            packed,
        });
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        return match residual {
            Some(r) => x.apply_op3_no_bwd(&w, &r.contiguous()?, &op),
            None => x.apply_op2_no_bwd(&w, &op),
        };
    }
    let y = candle_nn::Linear::new(w.clone(), bias.cloned()).forward(x)?;
    match residual {
        Some(r) => r + y,
        None => Ok(y),
    }
}

/// [`linear`] with only a packed weight (an inference weight packed at load, its `[out, in]`
/// tensor dropped): always the inference path, so `x`, `bias` and `residual` must be f32 on the
/// CPU.
pub fn packed_linear(
    x: &Tensor,
    packed: Packed,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let all: Vec<&Tensor> = [Some(x), bias, residual].into_iter().flatten().collect();
    if !inference_path(&all) {
        candle_core::bail!("linear: a packed weight takes f32 CPU inputs without gradients");
    }
    let op = Fused(PackedLinearOp(LinearOp {
        bias: bias.map(|b| b.to_vec1::<f32>()).transpose()?,
        packed: Some(packed),
    }));
    let x = x.contiguous()?;
    match residual {
        Some(r) => x.apply_op2_no_bwd(&r.contiguous()?, &op),
        None => x.apply_op1_no_bwd(&op),
    }
}

/// `Conv2d(C→C', 3×3, stride 1, padding 1)` of `x [B, C, H, W]` with `w [C', C, 3, 3]` and
/// `bias [C']`: the U-ViT's final layer. candle's conv (im2col, then a `gemm` with `C'` = 1–4
/// output columns) took 1.1 ms of the embedded model's 28×28 decode at batch 16, a third of a
/// block, in every step however early the exit; here each output plane starts from its bias and
/// adds the nine shifted input rows of every input channel, one plane per task.
pub fn conv3x3(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if inference_path(&[x, w, bias]) {
        return x
            .contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, bias, &Fused(Conv3x3Op));
    }
    let y = x.conv2d(w, 1, 1, 1, 1)?;
    y.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)
}

/// `Conv2d(C→D, kernel p, stride p)` of `x [B, C, H, W]` as patch tokens `[B, L, D]` (row-major
/// patch order), each token starting from its own row of `bias_pos [L, D]` (the conv's bias plus
/// the token's position embedding): `wt [C·p·p, D]` is the conv weight flattened in its (C, p1,
/// p2) order and transposed. candle's version (a strided patch copy, a `gemm` of depth C·p·p,
/// the bias, then the position add on its own thread pool) took ~0.2 ms of the embedded model's
/// 0.3 ms embed at batch 16, paid by every pass however early it exits; here each token is a
/// few vector row updates.
pub fn patch_embed(x: &Tensor, wt: &Tensor, bias_pos: &Tensor, patch: usize) -> Result<Tensor> {
    if inference_path(&[x, wt, bias_pos]) {
        return x.contiguous()?.apply_op3_no_bwd(
            &wt.contiguous()?,
            &bias_pos.contiguous()?,
            &Fused(PatchEmbedOp { patch }),
        );
    }
    let (b, c, h, w) = x.dims4()?;
    let (gh, gw) = (h / patch, w / patch);
    x.reshape((b, c, gh, patch, gw, patch))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((b * gh * gw, c * patch * patch))?
        .matmul(wt)?
        .reshape((b, gh * gw, ()))?
        .broadcast_add(bias_pos)
}

/// Per-sample mean of `sigmoid(x·Wᵀ + bias)` over the tokens `skip..S` of `x [B, S, D]` and
/// every output of `w [P, D]`: a certainty head's score, decided on after every block of an
/// early-exit pass. On the inference path each sample's tokens go through one small product and
/// the sigmoid is summed in place; the candle composition (a copy of the token slice, the
/// linear, a `[B, L, P]` sigmoid map, the mean) cost 4–5 % of a default-model block, 4–5× the
/// head's share of its MACs, at every block (`--bench block_rows`).
pub fn sigmoid_linear_means(x: &Tensor, w: &Tensor, bias: &Tensor, skip: usize) -> Result<Tensor> {
    if inference_path(&[x, w, bias]) {
        return x
            .contiguous()?
            .apply_op3_no_bwd(w, bias, &Fused(SigmoidMeansOp { skip }));
    }
    let tokens = x.narrow(1, skip, x.dim(1)?.saturating_sub(skip))?;
    let y = linear(&tokens, w, Some(bias), None, None)?;
    candle_nn::ops::sigmoid(&y)?
        .flatten_from(1)?
        .mean(D::Minus1)
}

/// Rows per rayon task for the row-wise kernels: enough work to amortise scheduling.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg(format!("{what}: input must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("{what}: only f32 is supported, got {:?}", s.dtype()),
    }
}

/// A fused op over `N` f32 inputs. [`Fused`] makes it a candle `CustomOp1`/`2`/`3`: it reads
/// each input's contiguous values (an error naming the op otherwise), so an op is only its kernel.
pub(crate) trait FusedOp<const N: usize> {
    const NAME: &'static str;

    /// The output from the inputs' values and layouts.
    fn cpu(&self, values: [&[f32]; N], layouts: [&Layout; N]) -> Result<(CpuStorage, Shape)>;
}

pub(crate) struct Fused<T>(pub T);

impl<T> Fused<T> {
    fn run<const N: usize>(
        &self,
        inputs: [(&CpuStorage, &Layout); N],
    ) -> Result<(CpuStorage, Shape)>
    where
        T: FusedOp<N>,
    {
        let mut values = [&[][..]; N];
        for (v, (s, l)) in values.iter_mut().zip(inputs) {
            *v = f32_slice(s, l, T::NAME)?;
        }
        self.0.cpu(values, inputs.map(|(_, l)| l))
    }
}

impl<T: FusedOp<1>> CustomOp1 for Fused<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run([(s1, l1)])
    }
}

impl<T: FusedOp<2>> CustomOp2 for Fused<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run([(s1, l1), (s2, l2)])
    }
}

impl<T: FusedOp<3>> CustomOp3 for Fused<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run([(s1, l1), (s2, l2), (s3, l3)])
    }
}

struct LayerNormOp {
    eps: f32,
}

impl FusedOp<3> for LayerNormOp {
    const NAME: &'static str = "deediff-layer-norm";

    fn cpu(&self, [x, w, b]: [&[f32]; 3], [l1, _, _]: [&Layout; 3]) -> Result<(CpuStorage, Shape)> {
        let d = l1.dims().last().copied().unwrap_or(0);
        if w.len() != d || b.len() != d {
            candle_core::bail!(
                "layer-norm: width {d} but weight {} bias {}",
                w.len(),
                b.len()
            );
        }
        // SAFETY: the chunks cover `out`; `layer_norm_rows` writes every element of its rows.
        let mut out = unsafe { output_buffer(x.len()) };
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| layer_norm_rows(x, w, b, self.eps, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct BiasGeluOp;

impl FusedOp<2> for BiasGeluOp {
    const NAME: &'static str = "deediff-bias-gelu";

    fn cpu(&self, [x, bias]: [&[f32]; 2], [l1, _]: [&Layout; 2]) -> Result<(CpuStorage, Shape)> {
        let d = l1.dims().last().copied().unwrap_or(0);
        if bias.len() != d {
            candle_core::bail!("bias-gelu: width {d} but bias {}", bias.len());
        }
        // SAFETY: the chunks cover `out`; `bias_gelu_rows` writes every element of its rows.
        let mut out = unsafe { output_buffer(x.len()) };
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| bias_gelu_rows(x, bias, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct Conv3x3Op;

impl FusedOp<3> for Conv3x3Op {
    const NAME: &'static str = "deediff-conv3x3";

    fn cpu(
        &self,
        [x, w, bias]: [&[f32]; 3],
        [l1, l2, _]: [&Layout; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, wd) = l1.shape().dims4()?;
        let (co, ci, kh, kw) = l2.shape().dims4()?;
        if ci != c || (kh, kw) != (3, 3) || bias.len() != co {
            candle_core::bail!(
                "conv3x3: input {:?}, weight {:?}, bias {}",
                l1.dims(),
                l2.dims(),
                bias.len()
            );
        }
        let plane = h * wd;
        let mut out = vec![0f32; b * co * plane];
        out.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(i, out)| {
                let (n, o) = (i / co, i % co);
                let x = &x[n * c * plane..][..c * plane];
                conv3x3_plane(x, &w[o * c * 9..][..c * 9], bias[o], wd, out);
            });
        Ok((CpuStorage::F32(out), Shape::from((b, co, h, wd))))
    }
}

/// One output plane (`out`, rows of `width`) of [`conv3x3`]: the bias, then for every input
/// channel of `x` and every tap of its 3×3 kernel `w`, the shifted input rows times the tap.
fn conv3x3_plane(x: &[f32], w: &[f32], bias: f32, width: usize, out: &mut [f32]) {
    out.fill(bias);
    if out.is_empty() {
        return;
    }
    let h = out.len() / width;
    for (x, w) in x.chunks_exact(h * width).zip(w.chunks_exact(9)) {
        for (y, row) in out.chunks_exact_mut(width).enumerate() {
            for ky in 0..3 {
                let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else {
                    continue;
                };
                let src = &x[iy * width..][..width];
                // Tap kx reads column x + kx − 1.
                for (kx, &wv) in w[ky * 3..ky * 3 + 3].iter().enumerate() {
                    let (dst, src) = match kx {
                        0 => (&mut row[1..], &src[..width - 1]),
                        1 => (&mut row[..], src),
                        _ => (&mut row[..width - 1], &src[1..]),
                    };
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d += wv * s;
                    }
                }
            }
        }
    }
}

/// A linear weight rearranged once for a faster kernel than [`matmul`] (see
/// [`crate::layers::Linear`], which makes and keeps it).
#[derive(Clone, Copy, Debug)]
pub enum Packed<'a> {
    /// bf16 tiles for AMX ([`crate::amx`], `--dtype bf16`).
    Bf16(&'a PackedWeight),
    /// f32 column panels for the AVX-512 / AVX2 kernels of [`crate::panels`].
    F32(&'a PanelWeight),
}

impl Packed<'_> {
    /// `[out, in]` of the packed weight.
    fn dims(self) -> (usize, usize) {
        match self {
            Packed::Bf16(p) => (p.n(), p.k()),
            Packed::F32(p) => (p.n(), p.k()),
        }
    }
}

struct LinearOp<'a> {
    bias: Option<Vec<f32>>,
    packed: Option<Packed<'a>>,
}

/// The name of both linear ops.
const LINEAR: &str = "deediff-linear";

impl LinearOp<'_> {
    /// `w`: the plain weight, absent when only [`Self::packed`] holds it.
    fn run(
        &self,
        (xs, xl): (&[f32], &Layout),
        w: Option<(&[f32], &Layout)>,
        residual: Option<(&[f32], &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let ws = w.map(|(v, _)| v);
        let (n, k) = match (w, self.packed) {
            (Some((_, l)), _) => l.shape().dims2()?,
            (None, Some(p)) => p.dims(),
            (None, None) => candle_core::bail!("linear: no weight"),
        };
        let dims = xl.dims();
        if dims.last() != Some(&k) || self.bias.as_ref().is_some_and(|b| b.len() != n) {
            candle_core::bail!("linear: input {dims:?} vs weight [{n}, {k}]");
        }
        let m = xs.len() / k.max(1);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = n;
        }
        let res = residual
            .map(|(r, l)| {
                if r.len() != m * n {
                    candle_core::bail!("linear: residual {:?} vs output {out_dims:?}", l.dims());
                }
                Ok(r)
            })
            .transpose()?;
        // SAFETY: with a bias or residual, `bias_residual_rows` fills every row first; without,
        // the product replaces every element, except with `k = 0` (no product): zeroed here.
        let mut out = unsafe { output_buffer(m * n) };
        let accumulate = res.is_some() || self.bias.is_some();
        if k == 0 && !accumulate {
            out.fill(0.0);
        }
        if accumulate {
            let chunk = rows_per_task(n) * n;
            let bias = self.bias.as_deref();
            out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
                let r = res.map(|r| &r[i * chunk..i * chunk + o.len()]);
                bias_residual_rows(bias, r, o);
            });
        }
        match (self.packed.filter(|p| p.dims() == (n, k)), ws) {
            (Some(Packed::Bf16(p)), _) => amx::linear(xs, p, &mut out, accumulate),
            (Some(Packed::F32(p)), _) => panels::linear(xs, p, &mut out, accumulate),
            (None, None) => candle_core::bail!("linear: packed weight is not [{n}, {k}]"),
            (None, Some(ws)) => {
                let product = Product {
                    m,
                    n,
                    k,
                    dst: out.as_mut_ptr(),
                    dst_ld: n,
                    accumulate,
                    lhs: Operand::rows(xs.as_ptr(), k),
                    rhs: Operand::transposed(ws.as_ptr(), k),
                    alpha: 1.0,
                };
                // SAFETY: `out` is m×n row-major, `xs` m×k row-major, `ws` n×k row-major read
                // as its transpose; all lengths were checked above.
                unsafe { matmul(&product, true) };
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// `x` and the plain weight.
impl FusedOp<2> for LinearOp<'_> {
    const NAME: &'static str = LINEAR;

    fn cpu(&self, [x, w]: [&[f32]; 2], [lx, lw]: [&Layout; 2]) -> Result<(CpuStorage, Shape)> {
        self.run((x, lx), Some((w, lw)), None)
    }
}

/// `x`, the plain weight and the residual.
impl FusedOp<3> for LinearOp<'_> {
    const NAME: &'static str = LINEAR;

    fn cpu(
        &self,
        [x, w, r]: [&[f32]; 3],
        [lx, lw, lr]: [&Layout; 3],
    ) -> Result<(CpuStorage, Shape)> {
        self.run((x, lx), Some((w, lw)), Some((r, lr)))
    }
}

/// [`LinearOp`] over a packed weight alone: `x`, or `x` and the residual.
struct PackedLinearOp<'a>(LinearOp<'a>);

impl FusedOp<1> for PackedLinearOp<'_> {
    const NAME: &'static str = LINEAR;

    fn cpu(&self, [x]: [&[f32]; 1], [lx]: [&Layout; 1]) -> Result<(CpuStorage, Shape)> {
        self.0.run((x, lx), None, None)
    }
}

impl FusedOp<2> for PackedLinearOp<'_> {
    const NAME: &'static str = LINEAR;

    fn cpu(&self, [x, r]: [&[f32]; 2], [lx, lr]: [&Layout; 2]) -> Result<(CpuStorage, Shape)> {
        self.0.run((x, lx), None, Some((r, lr)))
    }
}

struct PatchEmbedOp {
    patch: usize,
}

impl FusedOp<3> for PatchEmbedOp {
    const NAME: &'static str = "deediff-patch-embed";

    fn cpu(
        &self,
        [x, wt, bias_pos]: [&[f32]; 3],
        [l1, l2, l3]: [&Layout; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let (k, d) = l2.shape().dims2()?;
        let p = self.patch;
        let (gh, gw) = (h / p.max(1), w / p.max(1));
        let (l, d_pos) = l3.shape().dims2()?;
        if p == 0 || h % p != 0 || w % p != 0 || k != c * p * p || l != gh * gw || d_pos != d {
            candle_core::bail!(
                "patch-embed: input {:?}, patch {p}, weight [{k}, {d}], bias+positions {:?}",
                l1.dims(),
                l3.dims()
            );
        }
        // SAFETY: every token row (b·L rows of width d, `out.len()`) is written by one task.
        let mut out = unsafe { output_buffer(b * l * d) };
        out.par_chunks_mut((gw * d).max(1))
            .enumerate()
            .for_each(|(patch_row, tokens)| {
                let (n, gy) = (patch_row / gh, patch_row % gh);
                let mut pixels = Vec::with_capacity(k);
                for (gx, dst) in tokens.chunks_exact_mut(d).enumerate() {
                    pixels.clear();
                    for ch in 0..c {
                        for py in 0..p {
                            let first = ((n * c + ch) * h + gy * p + py) * w + gx * p;
                            pixels.extend_from_slice(&x[first..][..p]);
                        }
                    }
                    patch_token(&pixels, wt, &bias_pos[(gy * gw + gx) * d..][..d], dst);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, l, d))))
    }
}

crate::isa::multiversion! {
    /// `dst = start + Σ_i pixels[i] · wt[i]` (rows of `wt` of width `dst.len()`), in `i` order.
    /// Whole blocks of [`PATCH_COLUMNS`] columns are summed in a fixed-size local array, which
    /// the compiler keeps in vector registers, instead of a load and store of `dst` for every
    /// pixel; the last partial block, if any, goes column by column.
    fn patch_token(pixels: &[f32], wt: &[f32], start: &[f32], dst: &mut [f32]) {
        const W: usize = PATCH_COLUMNS;
        let n = dst.len();
        let whole = n / W * W;
        for j in (0..whole).step_by(W) {
            let mut acc: [f32; W] = start[j..j + W].try_into().expect("W values");
            for (i, &v) in pixels.iter().enumerate() {
                let w: &[f32; W] = wt[i * n + j..][..W].try_into().expect("W values");
                for c in 0..W {
                    acc[c] += v * w[c];
                }
            }
            dst[j..j + W].copy_from_slice(&acc);
        }
        for j in whole..n {
            dst[j] = start[j];
            for (i, &v) in pixels.iter().enumerate() {
                dst[j] += v * wt[i * n + j];
            }
        }
    }
}

/// Output columns per block of [`patch_token`]: four AVX-512 or eight AVX2 registers, enough
/// independent sums to hide the add latency.
const PATCH_COLUMNS: usize = 64;

struct SigmoidMeansOp {
    skip: usize,
}

impl FusedOp<3> for SigmoidMeansOp {
    const NAME: &'static str = "deediff-sigmoid-linear-means";

    fn cpu(
        &self,
        [xs, ws, bias]: [&[f32]; 3],
        [l1, l2, _]: [&Layout; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (b, s, d) = l1.shape().dims3()?;
        let (p, k) = l2.shape().dims2()?;
        if k != d || bias.len() != p || self.skip >= s {
            candle_core::bail!(
                "sigmoid-linear-means: input {:?}, weight [{p}, {k}], bias {}, skip {}",
                l1.dims(),
                bias.len(),
                self.skip
            );
        }
        // One small product per sample over its own tokens, each row starting from the bias,
        // then the sigmoid summed in place. (One product over the whole batch measured ~2×
        // slower on the default model's heads; the transposed `W·xᵀ` per sample no faster.)
        let tokens = s - self.skip;
        let means: Vec<f32> = (0..b)
            .into_par_iter()
            .map(|i| {
                let mut y: Vec<f32> = bias.iter().copied().cycle().take(tokens * p).collect();
                let product = Product {
                    m: tokens,
                    n: p,
                    k,
                    dst: y.as_mut_ptr(),
                    dst_ld: p,
                    accumulate: true,
                    lhs: Operand::rows(xs[(i * s + self.skip) * d..].as_ptr(), d),
                    rhs: Operand::transposed(ws.as_ptr(), k),
                    alpha: 1.0,
                };
                // SAFETY: `y` is tokens×p; sample `i`'s tokens `skip..s` are `tokens` rows of
                // width `d` inside `xs`; `ws` is p×k. Checked above. One task per sample.
                unsafe { matmul(&product, false) };
                sigmoid_sum(&y) / y.len() as f32
            })
            .collect();
        Ok((CpuStorage::F32(means), Shape::from(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused kernels equal the differentiable candle compositions.
    #[test]
    fn fused_kernels_match_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (2, 7, 24), &dev)? * 3.0)?;
        let w = Tensor::randn(1f32, 0.1, 24, &dev)?;
        let b = Tensor::randn(0f32, 0.1, 24, &dev)?;
        let var = candle_core::Var::from_tensor(&x)?;
        let check = |fast: Tensor, slow: Tensor, tol: f32| -> Result<()> {
            let diff = (fast - slow)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < tol, "fused vs candle: {diff}");
            Ok(())
        };
        check(
            layer_norm(&x, &w, &b, 1e-5)?,
            layer_norm(var.as_tensor(), &w, &b, 1e-5)?,
            1e-5,
        )?;
        check(bias_gelu(&x, &b)?, bias_gelu(var.as_tensor(), &b)?, 1e-5)?;
        for (c, co, h, wd) in [(1, 1, 28, 28), (3, 3, 5, 7), (4, 2, 1, 1)] {
            let img = Tensor::randn(0f32, 1.0, (2, c, h, wd), &dev)?;
            let k = Tensor::randn(0f32, 0.3, (co, c, 3, 3), &dev)?;
            let kb = Tensor::randn(0f32, 0.3, co, &dev)?;
            let img_var = candle_core::Var::from_tensor(&img)?;
            check(
                conv3x3(&img, &k, &kb)?,
                conv3x3(img_var.as_tensor(), &k, &kb)?,
                1e-5,
            )?;
        }
        // Widths with whole blocks of `PATCH_COLUMNS` only, with a remainder, and below one.
        for (c, p, hw, d) in [(1, 4, 28, 128), (2, 2, 4, 70), (3, 2, 6, 8), (4, 1, 3, 5)] {
            let img = Tensor::randn(0f32, 1.0, (2, c, hw, hw), &dev)?;
            let wt = Tensor::randn(0f32, 0.3, (c * p * p, d), &dev)?;
            let bias_pos = Tensor::randn(0f32, 0.3, ((hw / p) * (hw / p), d), &dev)?;
            let img_var = candle_core::Var::from_tensor(&img)?;
            check(
                patch_embed(&img, &wt, &bias_pos, p)?,
                patch_embed(img_var.as_tensor(), &wt, &bias_pos, p)?,
                1e-5,
            )?;
        }
        let w = Tensor::randn(0f32, 0.2, (5, 24), &dev)?;
        let bias = Tensor::randn(0f32, 0.2, 5, &dev)?;
        let r = Tensor::randn(0f32, 1.0, (2, 7, 5), &dev)?;
        for (bias, r) in [
            (None, None),
            (Some(&bias), None),
            (None, Some(&r)),
            (Some(&bias), Some(&r)),
        ] {
            check(
                linear(&x, &w, bias, r, None)?,
                linear(var.as_tensor(), &w, bias, r, None)?,
                1e-5,
            )?;
        }
        let bias = Tensor::randn(0f32, 0.2, 5, &dev)?;
        check(
            sigmoid_linear_means(&x, &w, &bias, 3)?,
            sigmoid_linear_means(var.as_tensor(), &w, &bias, 3)?,
            1e-6,
        )?;
        let qkv = Tensor::randn(0f32, 1.0, (2, 9, 3 * 24), &dev)?;
        let qvar = candle_core::Var::from_tensor(&qkv)?;
        check(
            attention(&qkv, 4, 0.4)?,
            attention(qvar.as_tensor(), 4, 0.4)?,
            1e-5,
        )
    }
}
