//! The f32 matrix product of every fused kernel whose right operand is not a packed weight
//! (attention's tiles, the certainty heads, the output head, any layer outside inference), on the
//! fastest kernel for the CPU and the shape, chosen at run time. The linear layers of an
//! inference forward multiply by weights packed once for our own kernels instead
//! ([`crate::panels`]).
//!
//! Two kernel families are linked: the `gemm` crate (what candle uses; AVX2+FMA at most) and the
//! x86 kernels behind faer's `matmul` (`private-gemm-x86`, with 256- and 512-bit variants). faer
//! itself picks the 512-bit kernels whenever `avx512f` is detected and offers no override, so we
//! call that kernel crate directly with the instruction set [`crate::isa::isa`] chose: the
//! `DEEDIFF_ISA` cap then applies to the matmuls too. `cargo bench -p deediff-unet --bench
//! matmul_shapes` measures every kernel at every U-ViT shape class, the evidence for
//! [`kernel_for`].

use crate::isa::{isa, Isa};
use crate::narrow;

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
    /// Dot products along the depth for few output columns ([`crate::narrow`]: an AVX-512 tile,
    /// plain loops elsewhere).
    Narrow,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Gemm => "gemm",
            Kernel::Faer256 => "faer-avx2",
            Kernel::Faer512 => "faer-avx512",
            Kernel::Faer512Cols => "faer-avx512-cols",
            Kernel::Narrow => "narrow",
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
                Kernel::Narrow,
            ],
            Isa::Avx2 => vec![Kernel::Gemm, Kernel::Faer256, Kernel::Narrow],
            Isa::Generic => vec![Kernel::Gemm, Kernel::Narrow],
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

/// Products narrower than this (the output head's and the certainty heads' `n = p²·C`) run on
/// [`Kernel::Narrow`] on every CPU and at any size: a choice that depended on the rows `m`, or a
/// kernel whose blocking does, would give a sample's output head other bits alone than in a
/// batch (the tiny products `gemm`'s small path would take cost well under a microsecond
/// either way).
const NARROW_N: usize = 32;

/// The kernel [`matmul`] uses for an `m × k` by `k × n` product.
///
/// - AVX-512: faer's 512-bit kernels (twice the FMA width of `gemm`'s): on a 2-core Sapphire
///   Rapids (2026-11-30, `matmul_shapes`) 1.5–1.9× `gemm` at every U-ViT shape with `n ≥ 128`,
///   e.g. 292–309 vs 156–174 GFLOP/s at U-ViT-S/2 batch 16, and 1.8–2× on attention tiles; but
///   on the output head's narrow products (`n` = 16 patch values) `gemm` is 1.0–4× faster
///   (its register tile fits `n`; faer pads to 48), and [`Kernel::Narrow`] 1.4–2.7× `gemm`
///   there (scratch harness, 2026-12-01, Emerald Rapids), so those run on it.
/// - AVX2: `gemm`, the kernel every layer used before. faer's 256-bit kernels are linked and
///   `matmul_shapes` compares them per shape; measured only under `DEEDIFF_ISA=avx2` on CPUs
///   that have AVX-512: the Sapphire Rapids (within ±20 % of `gemm`, either way by shape) and a
///   Zen 4 EPYC (2026-12-02: 0.95–1.27× `gemm`, attention tiles included). No AVX2-only CPU,
///   where this choice applies, has been drawn to decide it.
/// - generic: `gemm`, which dispatches on its own (it cannot be capped below AVX2 from outside).
/// - Narrow products ([`NARROW_N`]) on [`Kernel::Narrow`] whatever the CPU.
pub fn kernel_for(m: usize, n: usize, k: usize) -> Kernel {
    if n < NARROW_N {
        return Kernel::Narrow;
    }
    let small = m.saturating_mul(n).saturating_mul(k) < SMALL_MNK;
    match isa() {
        Isa::Avx512 if !small && m < FEW_ROWS => Kernel::Faer512Cols,
        Isa::Avx512 if !small => Kernel::Faer512,
        _ => Kernel::Gemm,
    }
}

/// `p.dst = (p.accumulate ? p.dst : 0) + p.alpha · p.lhs · p.rhs` on [`kernel_for`]'s kernel.
/// `parallel` spreads one product over rayon's threads; pass `false` from inside a rayon task.
///
/// # Safety
/// Every element the operands address (`m × k`, `k × n`, `m × n` with their strides) must be
/// valid, and `dst` must not alias the inputs.
pub unsafe fn matmul(p: &Product, parallel: bool) {
    // SAFETY: passed on from the caller.
    unsafe { matmul_with(kernel_for(p.m, p.n, p.k), p, parallel) }
}

/// [`matmul`] on a given kernel (benchmarks compare them). A kernel above the current [`isa`],
/// or [`Kernel::Narrow`] on operands not contiguous along the depth, falls back to `gemm`.
///
/// # Safety
/// As [`matmul`].
pub unsafe fn matmul_with(kernel: Kernel, p: &Product, parallel: bool) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    // SAFETY (all three): the caller guarantees the operands of `p`.
    match (kernel, faer_instr(kernel)) {
        // On one thread (e.g. attention tiles inside a rayon task) there is nothing to split.
        (Kernel::Narrow, _) if narrow::fits(p) => unsafe { narrow::product(p, threads) },
        (Kernel::Faer512Cols, _) if threads > 1 => unsafe { p.by_columns(threads) },
        (_, Some(instr)) if p.k > 0 => unsafe { p.faer(instr, threads) },
        _ => unsafe { p.gemm(threads) },
    }
}

/// The instruction set of faer's kernels for `kernel` at the current [`isa`] (`None`: `gemm`).
#[cfg(target_arch = "x86_64")]
fn faer_instr(kernel: Kernel) -> Option<private_gemm_x86::InstrSet> {
    use private_gemm_x86::InstrSet;
    match kernel {
        Kernel::Faer512 | Kernel::Faer512Cols if isa() == Isa::Avx512 => Some(InstrSet::Avx512),
        Kernel::Faer256 | Kernel::Faer512 | Kernel::Faer512Cols if isa() >= Isa::Avx2 => {
            Some(InstrSet::Avx256)
        }
        _ => None,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn faer_instr(_: Kernel) -> Option<()> {
    None
}

/// One product `dst = (accumulate ? dst : 0) + alpha · lhs · rhs` (`lhs m × k`, `rhs k × n`,
/// row-major `dst` with row stride `dst_ld`): what [`matmul`] computes.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dst: *mut f32,
    pub dst_ld: usize,
    pub accumulate: bool,
    pub lhs: Operand,
    pub rhs: Operand,
    pub alpha: f32,
}

// SAFETY: a `Product` is only shared between rayon tasks by [`Product::by_columns`], whose tasks
// read the operands and write disjoint column ranges of `dst`.
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

/// Columns per part of [`Product::by_columns`] are a multiple of this (faer's 512-bit f32
/// register tile width).
const COLUMN_ALIGN: usize = 16;

impl Product {
    /// On faer's x86 kernels with `instr`.
    ///
    /// # Safety
    /// The operands are valid as [`matmul`] requires.
    #[cfg(target_arch = "x86_64")]
    unsafe fn faer(&self, instr: private_gemm_x86::InstrSet, threads: usize) {
        use private_gemm_x86 as pg;
        let accum = if self.accumulate {
            pg::Accum::Add
        } else {
            pg::Accum::Replace
        };
        // SAFETY: the caller guarantees the operands; strides are in elements, as here.
        unsafe {
            pg::gemm(
                pg::DType::F32,
                pg::IType::U64,
                instr,
                self.m,
                self.n,
                self.k,
                self.dst as *mut (),
                self.dst_ld as isize,
                1,
                std::ptr::null(),
                std::ptr::null(),
                pg::DstKind::Full,
                accum,
                self.lhs.ptr as *const (),
                self.lhs.rs,
                self.lhs.cs,
                false,
                std::ptr::null(),
                0,
                self.rhs.ptr as *const (),
                self.rhs.rs,
                self.rhs.cs,
                false,
                &raw const self.alpha as *const (),
                threads,
            );
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn faer(&self, _: (), threads: usize) {
        unsafe { self.gemm(threads) }
    }

    /// On the `gemm` crate (its own AVX2/FMA dispatch).
    ///
    /// # Safety
    /// As [`Product::faer`].
    unsafe fn gemm(&self, threads: usize) {
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: as above; `gemm` takes column stride before row stride and computes
        // `dst = (read_dst ? 1·dst : 0) + alpha·lhs·rhs`.
        unsafe {
            gemm::gemm(
                self.m,
                self.n,
                self.k,
                self.dst,
                1,
                self.dst_ld as isize,
                self.accumulate,
                self.lhs.ptr,
                self.lhs.cs,
                self.lhs.rs,
                self.rhs.ptr,
                self.rhs.cs,
                self.rhs.rs,
                1.0,
                self.alpha,
                false,
                false,
                false,
                parallelism,
            );
        }
    }

    /// [`Kernel::Faer512Cols`]: `threads` single-threaded [`Kernel::Faer512`] products over
    /// column ranges.
    ///
    /// # Safety
    /// As [`Product::faer`].
    unsafe fn by_columns(&self, threads: usize) {
        use rayon::prelude::*;
        let part = self
            .n
            .div_ceil(threads.max(1))
            .next_multiple_of(COLUMN_ALIGN);
        (0..self.n.div_ceil(part)).into_par_iter().for_each(|i| {
            let j0 = i * part;
            let rhs = Operand {
                ptr: self.rhs.ptr.wrapping_offset(j0 as isize * self.rhs.cs),
                ..self.rhs
            };
            let part = Product {
                n: part.min(self.n - j0),
                dst: self.dst.wrapping_add(j0),
                rhs,
                ..*self
            };
            // SAFETY: columns j0..j0 + part.n of `dst` and `rhs` lie inside the caller's
            // operands and no other task touches these columns of `dst`.
            unsafe { matmul_with(Kernel::Faer512, &part, false) }
        });
    }
}

/// What the tests of every product kernel share (this module's, [`crate::panels`]',
/// [`crate::narrow`]'s).
#[cfg(test)]
pub(crate) mod checks {
    /// An `m × k` activation and an `n × k` weight (PyTorch layout) of small distinct values.
    pub fn operands(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let w = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
            .collect();
        (a, w)
    }

    /// `linear(x, w, dst, accumulate)` (`x` any number of rows of [`operands`]' `a`, `dst` of
    /// ones, row-major) gives `alpha · x·wᵀ` (+ 1 when accumulating) for `m` rows, accumulating
    /// or not, and the last row alone gives the bits it had in the batch.
    pub fn rows_match_naive_and_alone(
        label: &str,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        linear: impl Fn(&[f32], &[f32], &mut [f32], bool),
    ) {
        let (a, w) = operands(m, n, k);
        for accumulate in [false, true] {
            let mut dst = vec![1f32; m * n];
            linear(&a, &w, &mut dst, accumulate);
            for (i, row) in dst.chunks(n).enumerate() {
                for (j, &got) in row.iter().enumerate() {
                    let dot: f32 = (0..k).map(|p| a[i * k + p] * w[j * k + p]).sum();
                    let want = alpha * dot + if accumulate { 1.0 } else { 0.0 };
                    assert!(
                        (got - want).abs() < 1e-3,
                        "{label} {m}×{n}×{k} ({i},{j}) {got} {want}"
                    );
                }
            }
            let mut alone = vec![1f32; n];
            linear(&a[(m - 1) * k..], &w, &mut alone, accumulate);
            assert_eq!(
                alone,
                dst[(m - 1) * n..],
                "{label} {m}×{n}×{k}: last row alone"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel gives the naive product (strided and transposed operands, accumulate on/off).
    #[test]
    fn kernels_match_naive_product() {
        let (m, n, k) = (37, 29, 70);
        // `b` stored as the transpose (n × k), as linear weights are.
        let (a, b) = checks::operands(m, n, k);
        let want =
            |i: usize, j: usize| -> f32 { (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum() };
        for kernel in Kernel::available() {
            for accumulate in [false, true] {
                let mut dst = vec![1f32; m * (n + 3)];
                let p = Product {
                    m,
                    n,
                    k,
                    dst: dst.as_mut_ptr(),
                    dst_ld: n + 3,
                    accumulate,
                    lhs: Operand::rows(a.as_ptr(), k),
                    rhs: Operand::transposed(b.as_ptr(), k),
                    alpha: 0.5,
                };
                // SAFETY: sizes as allocated; dst row stride n + 3.
                unsafe { matmul_with(kernel, &p, true) };
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
