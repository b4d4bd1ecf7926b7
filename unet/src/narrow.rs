//! Products with few output columns — the output head's and the certainty heads' `n = p²·C`
//! (12 for U-ViT-S/2, 16 for the embedded model) — as dot products along the depth, on AVX-512.
//!
//! A GEMM register tile spans the output columns and broadcasts one activation per FMA: at
//! `n = 12` a quarter of each 16-wide vector is padding (faer pads to 48), and the tile reads 6–14
//! activation rows at once for 12 outputs each. Here each FMA multiplies 16 consecutive
//! activations of a row by the 16 matching weights of an output (both contiguous in memory), a
//! tile of 4 rows × 4 outputs keeps 16 accumulators of 16 partial sums, and each output's partial
//! sums are added in a fixed tree at the end. In a scratch harness on a 2-vCPU Intel Xeon
//! (family 6 model 207, Emerald Rapids; 2026-12-01, load ≤ 0.5) this ran 108–133 GFLOP/s at
//! U-ViT-S/2's head (256 and 4,096 rows × 12 × 512) where `gemm` ran 42–77 and PyTorch/MKL
//! 80–113; `cargo bench -p deediff-unet --bench matmul_shapes` keeps the comparison.
//!
//! A row's sum does not depend on the rows around it (the same order alone, in a full tile or in
//! the tail), so a sample gives identical bits alone or in any batch. Without AVX-512 the same
//! dot products run as plain loops over 8-lane partial sums ([`portable_pair`], compiled for AVX2
//! and for the baseline): slower, but just as independent of the batch, which a GEMM whose
//! blocking follows the row count is not (`gemm` gave a sample's output head other last bits
//! alone than in a batch of three).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::isa::{isa, Isa};
use crate::matmul::Product;

/// Rows per tile.
const ROWS: usize = 4;
/// Outputs per tile.
const OUTS: usize = 4;
/// Below this many multiply-adds one thread does the product: the default model's head at one
/// image (49 × 16 × 128) ran 3× slower split over two threads than on one.
const PARALLEL_MACS: usize = 1 << 20;

/// Partial sums per output in [`portable_pair`] (one AVX2 vector).
const LANES: usize = 8;

/// Whether [`product`] can run `p`: the activations' rows and the weight's rows (`rhs` read as a
/// transposed `[n, k]` weight) contiguous along the depth.
pub fn fits(p: &Product) -> bool {
    p.lhs.cs == 1 && p.rhs.rs == 1 && p.k > 0
}

/// `p.dst = (p.accumulate ? p.dst : 0) + p.alpha · p.lhs · p.rhs`, rows split over up to
/// `threads` threads when the product is large enough.
///
/// # Safety
/// As [`crate::matmul::matmul`]; and [`fits`]`(p)`.
pub unsafe fn product(p: &Product, threads: usize) {
    assert!(
        fits(p),
        "narrow product on operands strided along the depth: {p:?}"
    );
    let threads = if p.m * p.n * p.k < PARALLEL_MACS {
        1
    } else {
        threads.max(1)
    };
    let part = p.m.div_ceil(threads).next_multiple_of(ROWS);
    let rows = |r0: usize| {
        // SAFETY: rows r0..r0 + part of `dst` belong to this task alone; the caller guarantees
        // the operands and the CPU (checked by `fits`).
        unsafe { p.rows(r0, part.min(p.m - r0)) }
    };
    if threads == 1 {
        rows(0)
    } else {
        (0..p.m).into_par_iter().step_by(part).for_each(rows)
    }
}

impl Product {
    /// Rows `r0..r0 + count`, in tiles of [`ROWS`] and a tail of single rows.
    ///
    /// # Safety
    /// As [`product`], for these rows.
    unsafe fn rows(&self, r0: usize, count: usize) {
        if isa() != Isa::Avx512 {
            // SAFETY: passed on.
            return unsafe { self.portable_rows(r0, count) };
        }
        let full = count / ROWS * ROWS;
        // SAFETY: passed on; every tile lies inside rows r0..r0 + count.
        unsafe {
            for i in (r0..r0 + full).step_by(ROWS) {
                self.tile::<ROWS>(i);
            }
            for i in r0 + full..r0 + count {
                self.tile::<1>(i);
            }
        }
    }

    /// Rows `i..i + R`, all outputs, [`OUTS`] at a time.
    ///
    /// # Safety
    /// As [`Product::rows`]; AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize>(&self, i: usize) {
        for j0 in (0..self.n).step_by(OUTS) {
            // SAFETY: passed on; outputs j0.. exist.
            let acc = unsafe { self.dots::<R>(i, j0) };
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: row i + r and outputs j0.. lie inside `dst`.
                unsafe { self.store(i + r, j0, sums4(acc)) };
            }
        }
    }

    /// The 16-lane partial sums of rows `i..i + R` against outputs `j0..j0 + OUTS` (outputs
    /// past `n` repeat the last one, whose sums are never stored).
    ///
    /// # Safety
    /// As [`Product::tile`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn dots<const R: usize>(&self, i: usize, j0: usize) -> [[__m512; OUTS]; R] {
        let mut acc = [[_mm512_setzero_ps(); OUTS]; R];
        let full = self.k - self.k % 16;
        // SAFETY (both): depths below `k` of rows i..i + R and outputs j0.. (clamped to n).
        // The constant full mask makes plain loads of the main loop (masked ones cost 5–20 %).
        for p in (0..full).step_by(16) {
            unsafe { self.step(&mut acc, i, j0, p, u16::MAX) };
        }
        if full < self.k {
            let tail = ((1u32 << (self.k - full)) - 1) as u16;
            unsafe { self.step(&mut acc, i, j0, full, tail) };
        }
        acc
    }

    /// Adds depth `p..p + 16` (the lanes in `mask`) of rows `i..i + R` times outputs
    /// `j0..j0 + OUTS` (clamped to `n`) into `acc`.
    ///
    /// # Safety
    /// Those depths of those rows and outputs lie inside the operands; AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn step<const R: usize>(
        &self,
        acc: &mut [[__m512; OUTS]; R],
        i: usize,
        j0: usize,
        p: usize,
        mask: u16,
    ) {
        let a = |r: usize| {
            let row = (i + r) as isize * self.lhs.rs;
            self.lhs.ptr.wrapping_offset(row + p as isize)
        };
        let w = |j: usize| {
            let j = (j0 + j).min(self.n - 1) as isize;
            self.rhs.ptr.wrapping_offset(j * self.rhs.cs + p as isize)
        };
        // SAFETY: the masked lanes are inside the operands (caller).
        unsafe {
            let wv: [__m512; OUTS] = std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask, w(j)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_maskz_loadu_ps(mask, a(r));
                for (acc, &wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_fmadd_ps(av, wv, *acc);
                }
            }
        }
    }

    /// `dst[row, j0..]` (+)= `alpha · sums`, for the outputs from `j0` that exist (≤ [`OUTS`]).
    ///
    /// # Safety
    /// Row `row` of `dst` and its columns `j0..min(j0 + OUTS, n)` are valid; AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(&self, row: usize, j0: usize, sums: __m512) {
        let mask = ((1u32 << OUTS.min(self.n - j0)) - 1) as u16;
        let sums = _mm512_mul_ps(_mm512_set1_ps(self.alpha), sums);
        // SAFETY: the masked lanes are the valid columns (others untouched).
        unsafe {
            let c = self.dst.add(row * self.dst_ld + j0);
            let v = if self.accumulate {
                _mm512_add_ps(sums, _mm512_maskz_loadu_ps(mask, c))
            } else {
                sums
            };
            _mm512_mask_storeu_ps(c, mask, v);
        }
    }

    /// Off x86-64 [`isa`] is never AVX-512: nothing calls this.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn tile<const R: usize>(&self, _: usize) {
        unreachable!("the AVX-512 tile exists on x86-64 only")
    }

    /// Rows `r0..r0 + count` on [`portable_pair`], two at a time (a last odd row is paired with
    /// itself).
    ///
    /// # Safety
    /// As [`Product::rows`], without the AVX-512 requirement.
    unsafe fn portable_rows(&self, r0: usize, count: usize) {
        let (n, k) = (self.n, self.k);
        let mut sums = vec![0f32; 2 * n];
        // SAFETY: the weight's n rows of depth k start `rhs.cs` apart; the activations' rows
        // r0.. of depth k start `lhs.rs` apart; `dst`'s rows are `dst_ld` apart and these rows
        // belong to this task alone (caller).
        unsafe {
            let w = std::slice::from_raw_parts(self.rhs.ptr, (n - 1) * self.rhs.cs as usize + k);
            let a = |i: usize| {
                std::slice::from_raw_parts(self.lhs.ptr.offset(i as isize * self.lhs.rs), k)
            };
            for i in (r0..r0 + count).step_by(2) {
                let pair = (i + 1 < r0 + count) as usize;
                portable_pair(a(i), a(i + pair), w, self.rhs.cs as usize, &mut sums);
                for (r, sums) in sums.chunks_exact(n).take(1 + pair).enumerate() {
                    let out =
                        std::slice::from_raw_parts_mut(self.dst.add((i + r) * self.dst_ld), n);
                    for (d, &s) in out.iter_mut().zip(sums) {
                        let s = self.alpha * s;
                        *d = if self.accumulate { *d + s } else { s };
                    }
                }
            }
        }
    }
}

crate::isa::multiversion! {
    /// `sums[r·n + j]` = row `a_r` · weight row `j` (rows of `w` are `ws` apart, `n` =
    /// `sums.len() / 2`): per [`OUTS`] outputs, [`LANES`] partial sums each along the depth —
    /// eight independent chains, so the adds overlap — then a fixed tree per output. Each row
    /// has its own sums, so its bits do not depend on the other row.
    fn portable_pair(a0: &[f32], a1: &[f32], w: &[f32], ws: usize, sums: &mut [f32]) {
        let (n, k) = (sums.len() / 2, a0.len());
        let full = k - k % LANES;
        for j0 in (0..n).step_by(OUTS) {
            // Outputs past `n` repeat the last one; their sums are never stored.
            let rows: [&[f32]; OUTS] = std::array::from_fn(|j| &w[(j0 + j).min(n - 1) * ws..][..k]);
            let (mut acc0, mut acc1) = ([[0f32; LANES]; OUTS], [[0f32; LANES]; OUTS]);
            for p in (0..full).step_by(LANES) {
                let c0: &[f32; LANES] = a0[p..][..LANES].try_into().expect("LANES");
                let c1: &[f32; LANES] = a1[p..][..LANES].try_into().expect("LANES");
                for ((acc0, acc1), row) in acc0.iter_mut().zip(&mut acc1).zip(&rows) {
                    let wc: &[f32; LANES] = row[p..][..LANES].try_into().expect("LANES");
                    for l in 0..LANES {
                        acc0[l] += c0[l] * wc[l];
                    }
                    for l in 0..LANES {
                        acc1[l] += c1[l] * wc[l];
                    }
                }
            }
            let mut acc = [acc0, acc1];
            for (acc, a) in acc.iter_mut().zip([a0, a1]) {
                for (acc, row) in acc.iter_mut().zip(&rows) {
                    for (l, p) in (full..k).enumerate() {
                        acc[l] += a[p] * row[p];
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (j, acc) in acc.iter().enumerate().take(n - j0) {
                    let [s0, s1, s2, s3, s4, s5, s6, s7] = *acc;
                    sums[r * n + j0 + j] = ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7));
                }
            }
        }
    }
}

/// The horizontal sums of four accumulators in lanes 0..4, in a fixed order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sums4(acc: &[__m512; OUTS]) -> __m512 {
    let [a0, a1, a2, a3] = *acc;
    // Lanes 4q + {0, 1, 2, 3} of `y` hold the partial sums of outputs {0, 1, 2, 3} over
    // lanes 4q..4q + 4.
    let x0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    let x1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    let y = _mm512_add_ps(
        _mm512_shuffle_ps::<0x44>(x0, x1),
        _mm512_shuffle_ps::<0xEE>(x0, x1),
    );
    // Add the four 128-bit lanes.
    let z = _mm512_add_ps(y, _mm512_shuffle_f32x4::<0x4E>(y, y));
    _mm512_add_ps(z, _mm512_shuffle_f32x4::<0xB1>(z, z))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{checks, Operand};

    /// Every tiling edge (rows not a multiple of 4, outputs not of 4, depth not of 16, one
    /// row, rows split over the threads) gives the naive product with `alpha` and accumulate;
    /// a row's bits do not depend on the rows around it.
    #[test]
    fn narrow_matches_naive_product_and_rows_are_batch_invariant() {
        for shape in [
            (37, 12, 70),
            (1, 1, 16),
            (6, 13, 15),
            (4096, 12, 512),
            (5, 16, 128),
        ] {
            let linear = |x: &[f32], w: &[f32], dst: &mut [f32], accumulate: bool| {
                let (n, k) = (shape.1, shape.2);
                let p = product_of(x, w, dst, x.len() / k, n, k, accumulate);
                // SAFETY: `x` holds whole rows of depth k, `w` n × k, `dst` those rows × n.
                unsafe { product(&p, 2) };
            };
            checks::rows_match_naive_and_alone("narrow", shape, 0.5, linear);
        }
        eprintln!("narrow products checked {}", deediff_testkit::isa_marker());
    }

    /// The same checks on the plain-loop rows (AVX2 and baseline builds).
    #[test]
    fn narrow_on_fallback_kernels() {
        deediff_testkit::rerun_on_fallback_isas(
            "narrow::tests::narrow_matches_naive_product_and_rows_are_batch_invariant",
        );
    }

    fn product_of(
        a: &[f32],
        w: &[f32],
        dst: &mut [f32],
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Product {
        Product {
            m,
            n,
            k,
            dst: dst.as_mut_ptr(),
            dst_ld: n,
            accumulate,
            lhs: Operand::rows(a.as_ptr(), k),
            rhs: Operand::transposed(w.as_ptr(), k),
            alpha: 0.5,
        }
    }
}
