//! Fused CPU kernels for the inference hot spots: layer-norm, attention (qkv split + scaled
//! softmax + both products in one pass), bias + exact GELU.
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

/// True when no tensor records an autograd graph and all are f32 on the CPU.
fn inference_path(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| !t.track_op() && t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
}

/// LayerNorm over the last dimension with affine weight and bias (PyTorch semantics, biased
/// variance).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if inference_path(&[x, weight, bias]) {
        return x
            .contiguous()?
            .apply_op3_no_bwd(weight, bias, &LayerNormOp { eps: eps as f32 });
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
        return qkv.contiguous()?.apply_op1_no_bwd(&AttentionOp {
            num_heads,
            scale: scale as f32,
        });
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
        return x.contiguous()?.apply_op2_no_bwd(bias, &BiasGeluOp);
    }
    x.broadcast_add(bias)?.gelu_erf()
}

/// `x·Wᵀ + bias (+ residual)` over the last dimension of `x` (`w` is `[out, in]`, PyTorch
/// layout). On the inference path bias and residual are written into the output before one gemm
/// accumulates into it: no separate add passes, no extra buffers.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let all: Vec<&Tensor> = [Some(x), Some(w), bias, residual]
        .into_iter()
        .flatten()
        .collect();
    if inference_path(&all) {
        let op = LinearOp {
            bias: bias.map(|b| b.to_vec1::<f32>()).transpose()?,
        };
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

/// Compiles `$body` twice, for baseline x86-64 and for AVX2+FMA, and picks at run time (the
/// workspace is not built with `target-cpu=native`).
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])* fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// `exp(x)` for f32 with ~1 ulp error, written branch-free so loops over it vectorise
/// (Cephes `expf`: range reduction by ln 2, degree-6 polynomial, exponent by bit shift).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.0);
    // Round-to-nearest of x·log2(e) via the 1.5·2^23 trick (vectorises, unlike `round`).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `erf(x)` by Abramowitz–Stegun 7.1.26 (abs. error ≤ 1.5e-7), the formula PyTorch's vectorised
/// CPU `erf` uses.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (0.327_591_1 * a + 1.0);
    let r = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    (1.0 - r * exp_f32(-a * a)).copysign(x)
}

multiversion! {
    /// `out[r, j] = gelu(x[r, j] + bias[j])` for whole rows.
    fn bias_gelu_rows(x: &[f32], bias: &[f32], out: &mut [f32]) {
        for (xr, or) in x.chunks_exact(bias.len()).zip(out.chunks_exact_mut(bias.len())) {
            for ((o, &v), &b) in or.iter_mut().zip(xr).zip(bias) {
                let v = v + b;
                *o = 0.5 * v * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

/// Sum of `f(x)` with 8 independent accumulators, so the loop vectorises (a single f32
/// accumulator is a serial dependency the compiler may not reorder).
#[inline(always)]
fn sum_lanes(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum with 8 independent lanes (see [`sum_lanes`]).
#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

multiversion! {
    /// Row-wise layer-norm of whole rows of width `w.len()`.
    fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
        let d = w.len();
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean = sum_lanes(xr, |v| v) / d as f32;
            let var = sum_lanes(xr, |v| (v - mean) * (v - mean)) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &v), &wi), &bi) in or.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (v - mean) * inv * wi + bi;
            }
        }
    }
}

multiversion! {
    /// In place, each row of width `n` becomes `exp(x - max)`; returns nothing but writes the
    /// reciprocal row sums to `inv_sums` (the normalisation is applied later, to the much smaller
    /// attention output).
    fn softmax_rows_unnormalised(x: &mut [f32], n: usize, inv_sums: &mut [f32]) {
        for (row, inv) in x.chunks_exact_mut(n).zip(inv_sums.iter_mut()) {
            let max = max_lanes(row);
            for v in row.iter_mut() {
                *v = exp_f32(*v - max);
            }
            *inv = 1.0 / sum_lanes(row, |v| v);
        }
    }
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

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "deediff-layer-norm"
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
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let b = f32_slice(s3, l3, self.name())?;
        let d = l1.dims().last().copied().unwrap_or(0);
        if w.len() != d || b.len() != d {
            candle_core::bail!(
                "layer-norm: width {d} but weight {} bias {}",
                w.len(),
                b.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| layer_norm_rows(x, w, b, self.eps, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct BiasGeluOp;

impl CustomOp2 for BiasGeluOp {
    fn name(&self) -> &'static str {
        "deediff-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let bias = f32_slice(s2, l2, self.name())?;
        let d = l1.dims().last().copied().unwrap_or(0);
        if bias.len() != d {
            candle_core::bail!("bias-gelu: width {d} but bias {}", bias.len());
        }
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| bias_gelu_rows(x, bias, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct AttentionOp {
    num_heads: usize,
    scale: f32,
}

/// A raw output pointer shared by the per-head tasks, which write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own batch row and head columns).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Going through a method makes closures capture the whole (Send) wrapper, not the field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "deediff-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(storage, layout, self.name())?;
        let (b, s, d3) = layout.shape().dims3()?;
        let (d, h) = (d3 / 3, self.num_heads);
        if d3 % 3 != 0 || h == 0 || d % h != 0 {
            candle_core::bail!("attention: qkv width {d3} does not split into 3×{h} heads");
        }
        let dh = d / h;
        let mut out = vec![0f32; b * s * d];
        let out_ptr = OutPtr(out.as_mut_ptr());
        (0..b * h).into_par_iter().for_each(|task| {
            let (bi, hi) = (task / h, task % h);
            let base = bi * s * d3 + hi * dh;
            let (q, k, v) = (&qkv[base..], &qkv[base + d..], &qkv[base + 2 * d..]);
            let mut logits = vec![0f32; s * s];
            // SAFETY: the slices cover every strided element gemm reads (row r of q/k/v starts at
            // r·3D within the batch row); `logits` is s×s; the output block of (bi, hi) is
            // written by this task only.
            unsafe {
                // logits = scale · q · kᵀ  (kᵀ: row = channel (stride 1), column = token (3D)).
                gemm::gemm(
                    s,
                    s,
                    dh,
                    logits.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    q.as_ptr(),
                    1,
                    d3 as isize,
                    k.as_ptr(),
                    d3 as isize,
                    1,
                    0.0,
                    self.scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            let mut inv_sums = vec![0f32; s];
            softmax_rows_unnormalised(&mut logits, s, &mut inv_sums);
            unsafe {
                gemm::gemm(
                    s,
                    dh,
                    s,
                    out_ptr.get().add(bi * s * d + hi * dh),
                    1,
                    d as isize,
                    false,
                    logits.as_ptr(),
                    1,
                    s as isize,
                    v.as_ptr(),
                    1,
                    d3 as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for (r, &inv) in inv_sums.iter().enumerate() {
                    let row = out_ptr.get().add(bi * s * d + r * d + hi * dh);
                    for j in 0..dh {
                        *row.add(j) *= inv;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, s, d))))
    }
}

struct LinearOp {
    bias: Option<Vec<f32>>,
}

impl LinearOp {
    const NAME: &'static str = "deediff-linear";

    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(x.0, x.1, Self::NAME)?;
        let ws = f32_slice(w.0, w.1, Self::NAME)?;
        let (n, k) = w.1.shape().dims2()?;
        let dims = x.1.dims();
        if dims.last() != Some(&k) || self.bias.as_ref().is_some_and(|b| b.len() != n) {
            candle_core::bail!("linear: input {dims:?} vs weight [{n}, {k}]");
        }
        let m = xs.len() / k.max(1);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = n;
        }
        let res = residual
            .map(|(s, l)| {
                let r = f32_slice(s, l, Self::NAME)?;
                if r.len() != m * n {
                    candle_core::bail!("linear: residual {:?} vs output {out_dims:?}", l.dims());
                }
                Ok(r)
            })
            .transpose()?;
        let mut out = vec![0f32; m * n];
        let chunk = rows_per_task(n) * n;
        match (res, &self.bias) {
            (Some(r), Some(b)) => {
                out.par_chunks_mut(chunk)
                    .zip(r.par_chunks(chunk))
                    .for_each(|(o, r)| {
                        for (or, rr) in o.chunks_exact_mut(n).zip(r.chunks_exact(n)) {
                            for ((o, &r), &b) in or.iter_mut().zip(rr).zip(b) {
                                *o = r + b;
                            }
                        }
                    })
            }
            (Some(r), None) => out
                .par_chunks_mut(chunk)
                .zip(r.par_chunks(chunk))
                .for_each(|(o, r)| o.copy_from_slice(r)),
            (None, Some(b)) => out
                .par_chunks_mut(chunk)
                .for_each(|o| o.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b))),
            (None, None) => {}
        }
        let accumulate = res.is_some() || self.bias.is_some();
        // SAFETY: `out` is m×n row-major, `xs` m×k row-major, `ws` n×k row-major read as its
        // transpose (k×n with column stride k); all lengths were checked above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                accumulate,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        Self::NAME
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
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let e = exp_f32(x);
            let want = (x as f64).exp();
            assert!(
                ((e as f64 - want) / want).abs() < 3e-7,
                "exp({x}) = {e} vs {want}"
            );
            let erf = erf_f32(x);
            let want = libm_erf(x as f64);
            assert!(
                (erf as f64 - want).abs() < 3e-7,
                "erf({x}) = {erf} vs {want}"
            );
        }
    }

    /// erf in f64 for the test: Taylor series for |x| ≤ 4 (cancellation stays below 1e-9),
    /// ±1 beyond (1 - erf(4) = 1.5e-8).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

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
                linear(&x, &w, bias, r)?,
                linear(var.as_tensor(), &w, bias, r)?,
                1e-5,
            )?;
        }
        let qkv = Tensor::randn(0f32, 1.0, (2, 9, 3 * 24), &dev)?;
        let qvar = candle_core::Var::from_tensor(&qkv)?;
        check(
            attention(&qkv, 4, 0.4)?,
            attention(qvar.as_tensor(), 4, 0.4)?,
            1e-5,
        )
    }
}
