//! The one f32 matrix product every fused kernel calls, on the fastest kernel for the CPU and the
//! shape, chosen at run time.
//!
//! Two kernel families are linked: the `gemm` crate (what candle uses; AVX2+FMA at most) and the
//! x86 kernels behind faer's `matmul` (`private-gemm-x86`, with 256- and 512-bit variants). faer
//! itself picks the 512-bit kernels whenever `avx512f` is detected and offers no override, so we
//! call that kernel crate directly with the instruction set [`crate::isa::isa`] chose: the
//! `DEEDIFF_ISA` cap then applies to the matmuls too. `cargo bench -p deediff-unet --bench
//! matmul_shapes` measures every kernel at every U-ViT shape class, the evidence for
//! [`kernel_for`].

use crate::isa::{isa, Isa};

/// A strided f32 operand: element `(i, j)` lives at `ptr + i·rs + j·cs` (in elements).
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Operand {
    /// Row-major `rows × cols` block with row stride `ld`.
    pub fn rows(ptr: *const f32, ld: usize) -> Self {
        Operand {
            ptr,
            rs: ld as isize,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with row stride `ld` (e.g. a PyTorch `[out, in]`
    /// weight read as `[in, out]`).
    pub fn transposed(ptr: *const f32, ld: usize) -> Self {
        Operand {
            ptr,
            rs: 1,
            cs: ld as isize,
        }
    }
}

/// A matrix-product kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The `gemm` crate (its own AVX2/FMA dispatch).
    Gemm,
    /// faer's x86 kernels, 256-bit.
    Faer256,
    /// faer's x86 kernels, 512-bit (AVX-512 F).
    Faer512,
    /// [`Kernel::Faer512`] with the output's columns split evenly over the threads, each part a
    /// single-threaded product: for few rows (one image's tokens) faer's own splitting leaves
    /// its threads waiting on each other.
    Faer512Cols,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Gemm => "gemm",
            Kernel::Faer256 => "faer-avx2",
            Kernel::Faer512 => "faer-avx512",
            Kernel::Faer512Cols => "faer-avx512-cols",
        }
    }

    /// The kernels usable at the current [`isa`], for benchmarks.
    pub fn available() -> Vec<Kernel> {
        match isa() {
            Isa::Avx512 => vec![
                Kernel::Gemm,
                Kernel::Faer256,
                Kernel::Faer512,
                Kernel::Faer512Cols,
            ],
            Isa::Avx2 => vec![Kernel::Gemm, Kernel::Faer256],
            Isa::Generic => vec![Kernel::Gemm],
        }
    }
}

/// Below this many multiply-adds a product is too small for any kernel's blocking to matter and
/// `gemm`'s small-matrix path has the least overhead.
const SMALL_MNK: usize = 32 * 32 * 32;

/// Below this many rows (one image of any U-ViT here, up to 8 of the default model) splitting
/// the columns over the threads beats faer's own parallel split: in `matmul_shapes` on the
/// Sapphire Rapids above 1.1–2.5× at the batch-1 shapes; at 944–1,040 rows the two are within
/// noise (and the default model's batch-16 forward was slower split), at 4,112 faer's split is
/// 10–20 % faster.
const FEW_ROWS: usize = 512;

/// Products narrower than this (the output head's `n = p²·C`) run on `gemm` at every ISA.
const NARROW_N: usize = 32;

/// The kernel [`matmul`] uses for an `m × k` by `k × n` product.
///
/// - AVX-512: faer's 512-bit kernels (twice the FMA width of `gemm`'s): on a 2-core Sapphire
///   Rapids (2026-11-30, `matmul_shapes`) 1.5–1.9× `gemm` at every U-ViT shape with `n ≥ 128`,
///   e.g. 292–309 vs 156–174 GFLOP/s at U-ViT-S/2 batch 16, and 1.8–2× on attention tiles; but
///   on the output head's narrow products (`n` = 16 patch values) `gemm` is 1.0–4× faster
///   (its register tile fits `n`; faer pads to 48), so those stay on `gemm`.
/// - AVX2: `gemm` for now, the kernel every layer used before; faer's 256-bit kernels are linked
///   and `matmul_shapes` compares them per shape, but that comparison has not been run yet.
/// - generic: `gemm`, which dispatches on its own (it cannot be capped below AVX2 from outside).
pub fn kernel_for(m: usize, n: usize, k: usize) -> Kernel {
    let small = m.saturating_mul(n).saturating_mul(k) < SMALL_MNK || n < NARROW_N;
    match isa() {
        Isa::Avx512 if !small && m < FEW_ROWS => Kernel::Faer512Cols,
        Isa::Avx512 if !small => Kernel::Faer512,
        _ => Kernel::Gemm,
    }
}

/// `dst = (accumulate ? dst : 0) + alpha · lhs · rhs` for `lhs m × k`, `rhs k × n` and a
/// row-major `dst` with row stride `dst_ld`, on [`kernel_for`]'s kernel. `parallel` spreads one
/// product over rayon's threads; pass `false` from inside a rayon task.
///
/// # Safety
/// Every element the operands address (`m × k`, `k × n`, `m × n` with their strides) must be
/// valid, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_ld: usize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    alpha: f32,
    parallel: bool,
) {
    let kernel = kernel_for(m, n, k);
    matmul_with(
        kernel, m, n, k, dst, dst_ld, accumulate, lhs, rhs, alpha, parallel,
    )
}

/// [`matmul`] on a given kernel (benchmarks compare them). A kernel above the current [`isa`]
/// falls back to `gemm`.
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_with(
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_ld: usize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    alpha: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    if kernel == Kernel::Faer512Cols {
        return unsafe { by_columns(threads, m, n, k, dst, dst_ld, accumulate, lhs, rhs, alpha) };
    }
    #[cfg(target_arch = "x86_64")]
    {
        let instr = match kernel {
            Kernel::Faer512 | Kernel::Faer512Cols if isa() == Isa::Avx512 => {
                Some(private_gemm_x86::InstrSet::Avx512)
            }
            Kernel::Faer256 | Kernel::Faer512 if isa() >= Isa::Avx2 => {
                Some(private_gemm_x86::InstrSet::Avx256)
            }
            _ => None,
        };
        if let (Some(instr), true) = (instr, k > 0) {
            use private_gemm_x86 as pg;
            // SAFETY: the caller guarantees the operands; strides are in elements, as here.
            unsafe {
                pg::gemm(
                    pg::DType::F32,
                    pg::IType::U64,
                    instr,
                    m,
                    n,
                    k,
                    dst as *mut (),
                    dst_ld as isize,
                    1,
                    std::ptr::null(),
                    std::ptr::null(),
                    pg::DstKind::Full,
                    if accumulate {
                        pg::Accum::Add
                    } else {
                        pg::Accum::Replace
                    },
                    lhs.ptr as *const (),
                    lhs.rs,
                    lhs.cs,
                    false,
                    std::ptr::null(),
                    0,
                    rhs.ptr as *const (),
                    rhs.rs,
                    rhs.cs,
                    false,
                    &raw const alpha as *const (),
                    threads,
                );
            }
            return;
        }
    }
    let _ = kernel;
    // SAFETY: as above; `gemm` takes column stride before row stride and computes
    // `dst = (read_dst ? 1·dst : 0) + alpha·lhs·rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_ld as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            alpha,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// Pointers handed to rayon tasks that write disjoint column ranges.
#[derive(Clone, Copy)]
struct Shared(*mut f32, Operand, Operand);
// SAFETY: every task reads the shared operands and writes only its own columns of `dst`.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// Columns per part are a multiple of this (faer's 512-bit f32 register tile width).
const COLUMN_ALIGN: usize = 16;

/// [`Kernel::Faer512Cols`]: `threads` single-threaded 512-bit products over column ranges.
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
unsafe fn by_columns(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_ld: usize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    alpha: f32,
) {
    use rayon::prelude::*;
    let part = n.div_ceil(threads.max(1)).next_multiple_of(COLUMN_ALIGN);
    let shared = Shared(dst, lhs, rhs);
    (0..n.div_ceil(part)).into_par_iter().for_each(|p| {
        let s = shared;
        let (j0, cols) = (p * part, part.min(n - p * part));
        let rhs = Operand {
            ptr: s.2.ptr.wrapping_offset(j0 as isize * s.2.cs),
            ..s.2
        };
        // SAFETY: columns j0..j0 + cols of `dst` and `rhs` lie inside the caller's operands and
        // no other task touches these columns of `dst`.
        unsafe {
            matmul_with(
                Kernel::Faer512,
                m,
                cols,
                k,
                s.0.add(j0),
                dst_ld,
                accumulate,
                s.1,
                rhs,
                alpha,
                false,
            )
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel gives the naive product (strided and transposed operands, accumulate on/off).
    #[test]
    fn kernels_match_naive_product() {
        let (m, n, k) = (37, 29, 70);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        // `b` stored as the transpose (n × k), as linear weights are.
        let b: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let want =
            |i: usize, j: usize| -> f32 { (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum() };
        for kernel in Kernel::available() {
            for accumulate in [false, true] {
                let mut dst = vec![1f32; m * (n + 3)];
                // SAFETY: sizes as allocated; dst row stride n + 3.
                unsafe {
                    matmul_with(
                        kernel,
                        m,
                        n,
                        k,
                        dst.as_mut_ptr(),
                        n + 3,
                        accumulate,
                        Operand::rows(a.as_ptr(), k),
                        Operand::transposed(b.as_ptr(), k),
                        0.5,
                        true,
                    );
                }
                for i in 0..m {
                    for j in 0..n {
                        let w = 0.5 * want(i, j) + if accumulate { 1.0 } else { 0.0 };
                        let got = dst[i * (n + 3) + j];
                        assert!((got - w).abs() < 1e-4, "{kernel:?}: ({i},{j}) {got} vs {w}");
                    }
                    assert_eq!(dst[i * (n + 3) + n], 1.0, "{kernel:?} wrote past a row");
                }
            }
        }
    }
}
