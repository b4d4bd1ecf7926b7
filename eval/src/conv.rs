//! `BasicConv2d` (conv → batch norm → ReLU) with the batch norm folded into the weights at load
//! time, run as im2col + one `gemm` call per conv on HWC maps.

use crate::error::{Error, Result};
use crate::fmap::FMap;
use crate::weights::StateDict;
use gemm::Parallelism;

thread_local! {
    /// Per-thread im2col buffer: the largest is ~25 MB, and allocating it per call made the
    /// kernel zero fresh pages for a fifth of the run time.
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// pytorch-fid's batch-norm epsilon.
const BN_EPS: f64 = 1e-3;

/// `dst += lhs · w` for row-major `lhs` (`m × k`), `w` (`k × n`) and `dst` (`m × n`, row stride
/// `ld`), on the faster kernel for this CPU: faer's matmul where the CPU has AVX-512 (faer then
/// runs 512-bit kernels, twice `gemm`'s AVX2 width; `gemm` cannot use AVX-512), otherwise
/// `gemm`, the kernel used before (faer vs `gemm` at these shapes on AVX2 not yet measured).
///
/// # Safety
/// `dst` must address `m` rows of `n` floats with row stride `ld`, not overlapping `lhs` or `w`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ld: usize,
    lhs: &[f32],
    w: &[f32],
    par: Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            let par = match par {
                Parallelism::None => faer::Par::Seq,
                _ => faer::Par::rayon(0),
            };
            // SAFETY: the caller guarantees the extents; strides in elements.
            let (d, a, b) = unsafe {
                (
                    faer::MatMut::from_raw_parts_mut(dst, m, n, ld as isize, 1),
                    faer::MatRef::from_raw_parts(lhs.as_ptr(), m, k, k as isize, 1),
                    faer::MatRef::from_raw_parts(w.as_ptr(), k, n, n as isize, 1),
                )
            };
            faer::linalg::matmul::matmul(d, faer::Accum::Add, a, b, 1.0f32, par);
            return;
        }
    }
    // SAFETY: as above (`gemm` takes column strides first).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// A conv layer with folded batch norm and fused ReLU.
#[derive(Debug, Clone)]
pub struct Conv {
    cin: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    ph: usize,
    pw: usize,
    /// `[kh·kw·cin, cout]` row-major: row `(ky·kw + kx)·cin + ci` matches the im2col columns.
    w: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv {
    /// Loads `<layer>.conv.weight` and `<layer>.bn.*` and folds
    /// `γ·(conv(x) − mean)/sqrt(var + 1e-3) + β` into one weight and bias (computed in f64).
    pub fn load(sd: &StateDict, layer: &str, stride: usize, pad: (usize, usize)) -> Result<Self> {
        let get = |suffix: &str| {
            sd.get(&format!("{layer}.{suffix}"))
                .ok_or_else(|| Error::Invalid(format!("weights lack tensor `{layer}.{suffix}`")))
        };
        let wt = get("conv.weight")?;
        let [cout, cin, kh, kw] = wt.shape[..] else {
            return Err(Error::Invalid(format!(
                "`{layer}.conv.weight` is not 4-d: {:?}",
                wt.shape
            )));
        };
        let (gamma, beta, mean, var) = (
            get("bn.weight")?,
            get("bn.bias")?,
            get("bn.running_mean")?,
            get("bn.running_var")?,
        );
        if [gamma, beta, mean, var]
            .iter()
            .any(|t| t.data.len() != cout)
        {
            return Err(Error::Invalid(format!(
                "batch norm of `{layer}` does not have {cout} channels"
            )));
        }
        let scale: Vec<f64> = (0..cout)
            .map(|o| gamma.data[o] as f64 / (var.data[o] as f64 + BN_EPS).sqrt())
            .collect();
        let bias = (0..cout)
            .map(|o| (beta.data[o] as f64 - mean.data[o] as f64 * scale[o]) as f32)
            .collect();
        let mut w = vec![0.0f32; kh * kw * cin * cout];
        for o in 0..cout {
            for ci in 0..cin {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let v = wt.data[((o * cin + ci) * kh + ky) * kw + kx] as f64 * scale[o];
                        w[((ky * kw + kx) * cin + ci) * cout + o] = v as f32;
                    }
                }
            }
        }
        Ok(Conv {
            cin,
            cout,
            kh,
            kw,
            stride,
            ph: pad.0,
            pw: pad.1,
            w,
            bias,
        })
    }

    pub fn cout(&self) -> usize {
        self.cout
    }

    fn out_size(&self, x: &FMap) -> (usize, usize) {
        (
            (x.h + 2 * self.ph - self.kh) / self.stride + 1,
            (x.w + 2 * self.pw - self.kw) / self.stride + 1,
        )
    }

    /// Runs the layer on `x` (a new map).
    pub fn forward(&self, x: &FMap, par: Parallelism) -> FMap {
        let (ho, wo) = self.out_size(x);
        let mut out = FMap::zeros(ho, wo, self.cout);
        self.forward_into(x, &mut out, 0, par);
        out
    }

    /// Runs the layer on `x`, writing channels `c_off..c_off+cout` of `dst` (a concat slice).
    pub fn forward_into(&self, x: &FMap, dst: &mut FMap, c_off: usize, par: Parallelism) {
        assert_eq!(x.c, self.cin, "conv input channels");
        let (ho, wo) = self.out_size(x);
        assert!(
            dst.h == ho && dst.w == wo && c_off + self.cout <= dst.c,
            "conv output slice"
        );
        let (m, k) = (ho * wo, self.kh * self.kw * self.cin);
        if self.kh == 1 && self.kw == 1 && self.stride == 1 {
            return self.gemm_bias_relu(&x.data, m, k, dst, c_off, par);
        }
        COLS.with_borrow_mut(|cols| {
            self.im2col(x, ho, wo, cols);
            self.gemm_bias_relu(cols, m, k, dst, c_off, par)
        })
    }

    /// `dst[:, c_off..c_off+cout] = relu(lhs · w + bias)` for an `m × k` row-major `lhs`.
    fn gemm_bias_relu(
        &self,
        lhs: &[f32],
        m: usize,
        k: usize,
        dst: &mut FMap,
        c_off: usize,
        par: Parallelism,
    ) {
        let n = self.cout;
        assert!(
            lhs.len() >= m * k && dst.data.len() == m * dst.c,
            "conv gemm shapes"
        );
        for row in dst.data.chunks_exact_mut(dst.c) {
            row[c_off..c_off + n].copy_from_slice(&self.bias);
        }
        // SAFETY: lhs is m×k row-major, w is k×n row-major and dst holds m rows of dst.c floats
        // with the n written columns starting at c_off (c_off + n <= dst.c checked by the caller).
        unsafe {
            matmul_acc(
                m,
                n,
                k,
                dst.data.as_mut_ptr().add(c_off),
                dst.c,
                lhs,
                &self.w,
                par,
            )
        };
        for row in dst.data.chunks_exact_mut(dst.c) {
            row[c_off..c_off + n]
                .iter_mut()
                .for_each(|v| *v = v.max(0.0));
        }
    }

    /// Unfolds the receptive fields into an `[ho·wo, kh·kw·cin]` matrix (zeros for padding),
    /// reusing `cols`.
    fn im2col(&self, x: &FMap, ho: usize, wo: usize, cols: &mut Vec<f32>) {
        let c = self.cin;
        let k = self.kh * self.kw * c;
        cols.clear();
        cols.resize(ho * wo * k, 0.0);
        for oy in 0..ho {
            for ox in 0..wo {
                let row = &mut cols[(oy * wo + ox) * k..(oy * wo + ox + 1) * k];
                for ky in 0..self.kh {
                    let Some(iy) = (oy * self.stride + ky)
                        .checked_sub(self.ph)
                        .filter(|&iy| iy < x.h)
                    else {
                        continue;
                    };
                    for kx in 0..self.kw {
                        let Some(ix) = (ox * self.stride + kx)
                            .checked_sub(self.pw)
                            .filter(|&ix| ix < x.w)
                        else {
                            continue;
                        };
                        let src = (iy * x.w + ix) * c;
                        let d = (ky * self.kw + kx) * c;
                        row[d..d + c].copy_from_slice(&x.data[src..src + c]);
                    }
                }
            }
        }
    }
}

/// A layer's folded parameters in PyTorch's layout, for candle's `conv2d` (the GPU path in
/// `inception::candle`). Kept beside [`Conv::w`]'s packing so the two change together.
pub(crate) struct FoldedConv {
    /// `[cout, cin, kh, kw]` row-major.
    pub weight: Vec<f32>,
    pub shape: [usize; 4],
    pub bias: Vec<f32>,
    pub stride: usize,
    pub pad: (usize, usize),
}

impl Conv {
    pub(crate) fn folded(&self) -> FoldedConv {
        let (cin, cout, kh, kw) = (self.cin, self.cout, self.kh, self.kw);
        let mut weight = vec![0.0f32; cout * cin * kh * kw];
        for (r, row) in self.w.chunks_exact(cout).enumerate() {
            // Row r = (ky·kw + kx)·cin + ci of the im2col layout.
            let (kk, ci) = (r / cin, r % cin);
            for (o, &v) in row.iter().enumerate() {
                weight[(o * cin + ci) * kh * kw + kk] = v;
            }
        }
        FoldedConv {
            weight,
            shape: [cout, cin, kh, kw],
            bias: self.bias.clone(),
            stride: self.stride,
            pad: (self.ph, self.pw),
        }
    }
}
