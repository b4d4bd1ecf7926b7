//! f32 linear layers on our own AVX-512 / AVX2 kernels over weights packed once into column
//! panels.
//!
//! A linear layer multiplies by the same weight at every step of every image, yet a library
//! GEMM packs it again on every call: at one image of U-ViT-S/2 (257 rows) faer's packing was
//! 8.7 % of the forward and its kernels, blocked for large products, reached 175–200 GFLOP/s where
//! MKL reached 220 (Sapphire Rapids, 2 threads). Here the weight is rearranged once, at load
//! ([`crate::layers::linear`]), into panels of 32 output columns laid out depth-major — exactly
//! the order the register tile reads them — and the activations are read in place: each register
//! tile keeps its accumulators in registers and broadcasts the activations straight from memory
//! into the FMAs (AVX-512: 14 rows × 32 columns, 28 of the 32 registers; AVX2: 6 rows × 16
//! columns, 12 of 16, each panel in two halves). The loaded copy is dropped once packed, so the
//! panels are the only copy of the weight.
//!
//! Every output row is the same sum in the same order whatever the batch, the thread count or
//! the row's place in a tile, so a sample gives identical bits alone or in any batch.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::isa::{isa, Isa};
use crate::kernels::DisjointOut;

/// Output columns per panel: two 512-bit vectors.
const NR: usize = 32;
/// Rows per register tile: AVX-512, 14 × 2 accumulators + 2 panel vectors in 30 of the 32
/// registers; AVX2, 6 × 2 + 2 + a broadcast in 15 of 16.
fn rows_per_tile(isa: Isa) -> usize {
    if isa == Isa::Avx512 {
        14
    } else {
        6
    }
}

/// Depth per pass over the panels: a 14-row tile's activations (14 KiB) stay in L1 (32 KiB on
/// Zen 4, 48 KiB on Sapphire Rapids) while the panels stream past.
const KC: usize = 256;
/// Panels swept per pass of a row tile: 32 panels × [`KC`] rows × 128 B = 1 MiB, inside L2.
const GROUP: usize = 32;

/// A linear weight `[n, k]` (PyTorch layout) rearranged for [`linear`]: panel `j` holds columns
/// `32j..32j + 32` of `Wᵀ`, depth-major (`data[j·k·32 + p·32 + c] = W[32j + c, p]`), the last
/// panel padded with zero columns.
#[derive(Debug)]
pub struct PanelWeight {
    n: usize,
    k: usize,
    data: Vec<f32>,
}

impl PanelWeight {
    /// Packs `w` (`n × k`, row-major).
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "panel weight: {n} × {k}");
        let mut data = vec![0f32; n.div_ceil(NR) * NR * k];
        data.par_chunks_mut(NR * k.max(1))
            .enumerate()
            .for_each(|(panel, out)| {
                for c in 0..NR.min(n - panel * NR) {
                    let row = &w[(panel * NR + c) * k..][..k];
                    for (p, &v) in row.iter().enumerate() {
                        out[p * NR + c] = v;
                    }
                }
            });
        PanelWeight { n, k, data }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Depth (input columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The weight back in `n × k` row-major order (PyTorch layout), for the bf16 tiles of a
    /// layer whose loaded copy was dropped.
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        w.par_chunks_mut(k.max(1))
            .enumerate()
            .for_each(|(row, out)| {
                let panel = &self.data[row / NR * NR * k..];
                for (p, v) in out.iter_mut().enumerate() {
                    *v = panel[p * NR + row % NR];
                }
            });
        w
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Panel `j` from depth `p0` on.
    fn panel(&self, j: usize, p0: usize) -> *const f32 {
        self.data[j * self.k * NR + p0 * NR..].as_ptr()
    }
}

/// Whether a linear layer with weight `[n, k]` runs on [`linear`]: on CPUs with AVX2 + FMA
/// (as [`isa`] allows), for layers at least one panel wide. The output head's 12–16 columns
/// stay on [`crate::matmul`]: reading 14 activation rows per 16 outputs, the tile waits on
/// memory (U-ViT-S/2 batch 16: 82 GFLOP/s against `gemm`'s 108).
pub fn eligible(n: usize, k: usize) -> bool {
    isa() >= Isa::Avx2 && n >= NR && k > 0
}

/// `dst (m × n, row-major) = (accumulate ? dst : 0) + x (m × k, row-major) · Wᵀ` on [`isa`]'s
/// kernel, spread over rayon's threads. Panics unless [`eligible`] and the lengths agree.
pub fn linear(x: &[f32], w: &PanelWeight, dst: &mut [f32], accumulate: bool) {
    linear_on(isa(), x, w, dst, accumulate)
}

/// [`linear`] on the kernel for `isa` (the tests run both on a CPU that has both).
fn linear_on(isa: Isa, x: &[f32], w: &PanelWeight, dst: &mut [f32], accumulate: bool) {
    let (n, k) = (w.n, w.k);
    assert!(isa >= Isa::Avx2 && isa <= crate::isa::detected() && k > 0);
    assert!(
        x.len().is_multiple_of(k),
        "panel linear: input of {} values, depth {k}",
        x.len()
    );
    let m = x.len() / k;
    assert_eq!(dst.len(), m * n, "panel linear: output of {m} × {n}");
    let out = DisjointOut(dst.as_mut_ptr());
    let mr = rows_per_tile(isa);
    tasks(m, w.panels(), rayon::current_num_threads(), mr)
        .into_par_iter()
        .for_each(|(rows, panels)| {
            // SAFETY: the tasks cover disjoint (rows, panels) rectangles of `dst` (m × n); `x`
            // holds m × k values; the CPU has `isa` (checked above).
            unsafe { task(isa, x, w, out, rows, panels, accumulate) };
        });
}

type Span = std::ops::Range<usize>;

/// One task per thread, each over all rows and its share of the panels — or, for the narrow
/// layers of a large batch, over all panels and its share of the rows (in whole row tiles of
/// `mr`). A row tile's activations are fetched once per sweep over a task's panels, so a sweep
/// over few panels spends its time fetching: interleaved forwards (Sapphire Rapids, batch 16)
/// ran the embedded model (2–8 panels per thread) 8–12 % faster split by rows, U-ViT-S/2 (8–32)
/// 10–15 % slower.
fn tasks(m: usize, panels: usize, threads: usize, mr: usize) -> Vec<(Span, Span)> {
    let threads = threads.max(1);
    if panels < threads || (m >= ROW_SPLIT_ROWS && panels / threads < ROW_SPLIT_PANELS) {
        let rows = m.div_ceil(threads).next_multiple_of(mr);
        return (0..m)
            .step_by(rows)
            .map(|r| (r..(r + rows).min(m), 0..panels))
            .collect();
    }
    let cols = panels.div_ceil(threads);
    (0..panels)
        .step_by(cols)
        .map(|c| (0..m, c..(c + cols).min(panels)))
        .collect()
}

/// The rows from which [`tasks`] may split rows (one image of every model here has fewer)…
const ROW_SPLIT_ROWS: usize = 512;
/// … for layers with fewer panels per thread than this.
const ROW_SPLIT_PANELS: usize = 8;

/// `dst[rows, panels] (+)= x[rows] · W[panels]ᵀ`: per group of panels and depth pass, each row
/// tile sweeps the group's panels.
///
/// # Safety
/// As [`linear`]'s tasks: disjoint rectangles of `dst`, valid `x`, a CPU with `isa`.
unsafe fn task(
    isa: Isa,
    x: &[f32],
    w: &PanelWeight,
    dst: DisjointOut,
    rows: Span,
    panels: Span,
    acc: bool,
) {
    let (n, k, mr) = (w.n, w.k, rows_per_tile(isa));
    let mut copy = Vec::new();
    for g in panels.clone().step_by(GROUP) {
        for p0 in (0..k).step_by(KC) {
            let depth = KC.min(k - p0);
            for i in rows.clone().step_by(mr) {
                let tile_rows = &x[i * k..(i + mr).min(rows.end) * k];
                let (a, lda) = activations(tile_rows, k, p0, depth, &mut copy);
                let group_end = (g + GROUP).min(panels.end);
                for j in g..group_end {
                    // The first row tile meets each panel before any cache does: it fetches the
                    // next one into L2 meanwhile (cold weights read 7–14 % slower without).
                    let next = (i == rows.start && j + 1 < group_end).then(|| w.panel(j + 1, p0));
                    let t = Tile {
                        depth,
                        a,
                        lda,
                        b: w.panel(j, p0),
                        // SAFETY: row i, column 32j lie inside `dst` (m × n).
                        c: unsafe { dst.get().add(i * n + j * NR) },
                        ldc: n,
                        cols: NR.min(n - j * NR),
                        add: acc || p0 > 0,
                        next,
                    };
                    // SAFETY: `t` addresses rows i..i + mr of `x` and `dst` and panel j.
                    unsafe { t.run(isa, mr.min(rows.end - i)) };
                }
            }
        }
    }
}

/// Row strides from which [`activations`] copies a row tile: 4 KiB apart, every row of a tile
/// falls in the same L1 set (64 sets of 64 B on Zen 4 and Sapphire Rapids), and 14 rows evict
/// each other from its 8 (Zen 4) or 12 ways while the tile sweeps its panels — fc2 (depth 2048)
/// and the skip linears (1024) of U-ViT-S/2 ran at 115–126 GFLOP/s where every depth-512 layer
/// ran at 184–197 (Zen 4, 2 threads).
const ALIASING_DEPTH: usize = 1024;

/// The row tile `tile_rows` (rows of `k` values) from depth `p0`, `depth` values wide, as the
/// register tile reads it: `(pointer, row stride)`, in place, or for the aliasing strides (at
/// least [`ALIASING_DEPTH`]) copied into `copy` contiguously. The copy is made once per depth
/// pass and read by every panel of the group; the sums are unchanged.
fn activations(
    tile_rows: &[f32],
    k: usize,
    p0: usize,
    depth: usize,
    copy: &mut Vec<f32>,
) -> (*const f32, usize) {
    if k < ALIASING_DEPTH {
        return (tile_rows[p0..].as_ptr(), k);
    }
    copy.clear();
    for row in tile_rows.chunks_exact(k) {
        copy.extend_from_slice(&row[p0..p0 + depth]);
    }
    (copy.as_ptr(), depth)
}

/// One register tile: `c[0..R, 0..cols] = (add ? c : 0) + a[0..R, 0..depth] · b[0..depth, 0..32]`
/// with `b` a panel (row stride 32), prefetching the same rows of panel `next` into L2.
struct Tile {
    depth: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    add: bool,
    next: Option<*const f32>,
}

impl Tile {
    /// # Safety
    /// `rows` (≤ [`rows_per_tile`]) rows of `a` (`depth` values each) and of `c` (`cols` values
    /// each) and `depth` panel rows are valid; the CPU has `isa` (AVX2 at least).
    unsafe fn run(&self, isa: Isa, rows: usize) {
        macro_rules! rows {
            ($($r:literal)*) => {
                // SAFETY: passed on.
                match (isa, rows, self.cols > 16, self.next.is_some()) {
                    $((Isa::Avx512, $r, true, false) => unsafe { self.avx512::<$r, 2, false>() },
                      (Isa::Avx512, $r, true, true) => unsafe { self.avx512::<$r, 2, true>() },
                      (Isa::Avx512, $r, false, _) => unsafe { self.avx512::<$r, 1, false>() },)*
                    (_, 1..=6, _, _) => unsafe { self.avx2_rows(rows) },
                    _ => unreachable!("{rows} rows on {isa:?}"),
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    }

    /// The AVX-512 tile, `V` vectors wide: 2, or 1 where the panel has at most 16 columns (the
    /// last panel of a layer 16 wider than a multiple of 32: half the work of a padded tile).
    ///
    /// # Safety
    /// As [`Tile::run`] with `R` rows; AVX-512 F. `PREFETCH` when `next` is set.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<const R: usize, const V: usize, const PREFETCH: bool>(&self) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let next = self.next.unwrap_or(self.b);
        for p in 0..self.depth {
            // SAFETY: panel rows p < depth; activations (i, p) inside `a`; a prefetch of any
            // address is harmless, and `next`'s rows p are inside the packed weight.
            unsafe {
                if PREFETCH {
                    _mm_prefetch::<_MM_HINT_T1>(next.add(p * NR) as *const i8);
                    _mm_prefetch::<_MM_HINT_T1>(next.add(p * NR + 16) as *const i8);
                }
                let b: [__m512; V] =
                    std::array::from_fn(|v| _mm512_loadu_ps(self.b.add(p * NR + v * 16)));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*self.a.add(i * self.lda + p));
                    for (acc, &b) in acc.iter_mut().zip(&b) {
                        *acc = _mm512_fmadd_ps(a, b, *acc);
                    }
                }
            }
        }
        let lanes = |from: usize| ((1u32 << self.cols.saturating_sub(from).min(16)) - 1) as u16;
        let masks = [lanes(0), lanes(16)];
        for (i, acc) in acc.iter().enumerate() {
            for (h, (&v, &mask)) in acc.iter().zip(&masks).enumerate() {
                // SAFETY: row i of `c`, the first `cols` columns (masked lanes are not touched).
                unsafe {
                    let c = self.c.add(i * self.ldc + h * 16);
                    let v = if self.add {
                        _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, c))
                    } else {
                        v
                    };
                    _mm512_mask_storeu_ps(c, mask, v);
                }
            }
        }
    }

    /// The AVX2 tile: the panel in two 16-column halves of `rows` (≤ 6) rows each.
    ///
    /// # Safety
    /// As [`Tile::run`]; AVX2 + FMA.
    unsafe fn avx2_rows(&self, rows: usize) {
        macro_rules! rows {
            ($($r:literal)*) => {
                for half in (0..NR).step_by(16).take_while(|&h| h < self.cols) {
                    // SAFETY: passed on; `half` < cols ≤ 32.
                    match rows { $($r => unsafe { self.avx2::<$r>(half) },)* _ => unreachable!() }
                }
            };
        }
        rows!(1 2 3 4 5 6)
    }

    /// Columns `half..half + 16` of the tile, `R` rows, on AVX2 + FMA.
    ///
    /// # Safety
    /// As [`Tile::avx2_rows`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<const R: usize>(&self, half: usize) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let next = self.next.unwrap_or(self.b);
        for p in 0..self.depth {
            // SAFETY: as in `avx512`, 16 columns from `half`.
            unsafe {
                if self.next.is_some() {
                    _mm_prefetch::<_MM_HINT_T1>(next.add(p * NR + half) as *const i8);
                }
                let b0 = _mm256_loadu_ps(self.b.add(p * NR + half));
                let b1 = _mm256_loadu_ps(self.b.add(p * NR + half + 8));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*self.a.add(i * self.lda + p));
                    acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
                }
            }
        }
        let lanes = |from: usize| {
            let valid = self.cols.saturating_sub(half + from).min(8) as i32;
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(valid),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        };
        let masks = [lanes(0), lanes(8)];
        for (i, acc) in acc.iter().enumerate() {
            for (q, (&v, &mask)) in acc.iter().zip(&masks).enumerate() {
                // SAFETY: row i of `c`, valid columns only (masked lanes are not touched).
                unsafe {
                    let c = self.c.add(i * self.ldc + half + q * 8);
                    let v = if self.add {
                        _mm256_add_ps(v, _mm256_maskload_ps(c, mask))
                    } else {
                        v
                    };
                    _mm256_maskstore_ps(c, mask, v);
                }
            }
        }
    }

    /// Off x86-64 [`eligible`] is false: nothing calls these.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn avx512<const R: usize, const V: usize, const PREFETCH: bool>(&self) {
        unreachable!("panel kernels exist on x86-64 only")
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn avx2<const R: usize>(&self, _: usize) {
        unreachable!("panel kernels exist on x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tiling edge (rows not a multiple of 14, columns not of 32, depth not of 256, one
    /// row, rows split over the threads, row tiles copied at aliasing depths) gives the naive
    /// product, accumulating or not; a row's bits do not depend on the batch around it.
    #[test]
    fn panels_match_naive_product_and_rows_are_batch_invariant() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|&i| i <= crate::isa::detected())
            .collect();
        assert_eq!(eligible(64, 64), !isas.is_empty() && isa() >= Isa::Avx2);
        for isa in isas {
            for (m, n, k) in [
                (37, 80, 300),
                (1, 32, 17),
                (29, 48, 512),
                (15, 100, 260),
                (30, 12, 64),
                (600, 64, 40),
                (33, 40, 1100),
            ] {
                check_product(isa, m, n, k);
            }
        }
    }

    /// Packing then unpacking gives the weight back, a partial last panel included.
    #[test]
    fn unpack_inverts_new() {
        for (n, k) in [(32, 1), (80, 300), (33, 7)] {
            let w: Vec<f32> = (0..n * k).map(|i| i as f32 * 0.5 - 3.0).collect();
            assert_eq!(PanelWeight::new(&w, n, k).unpack(), w, "{n} × {k}");
        }
    }

    /// The tasks cover every (row, panel) once, rows split in whole tiles, for either split.
    #[test]
    fn tasks_partition_the_output() {
        for (m, panels, threads) in [
            (257, 48, 2),
            (944, 4, 2),
            (944, 16, 2),
            (5, 1, 4),
            (1040, 8, 3),
        ] {
            let mut seen = vec![0u8; m * panels];
            for (rows, cols) in tasks(m, panels, threads, 14) {
                assert!(rows.start % 14 == 0, "{m} {panels} {threads}: {rows:?}");
                for (i, j) in rows.flat_map(|i| cols.clone().map(move |j| (i, j))) {
                    seen[i * panels + j] += 1;
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "{m} rows, {panels} panels, {threads} threads"
            );
        }
    }

    fn check_product(isa: Isa, m: usize, n: usize, k: usize) {
        let (_, w) = crate::matmul::checks::operands(m, n, k);
        let packed = PanelWeight::new(&w, n, k);
        let label = format!("{isa:?}");
        let linear = |x: &[f32], _: &[f32], dst: &mut [f32], accumulate: bool| {
            linear_on(isa, x, &packed, dst, accumulate)
        };
        crate::matmul::checks::rows_match_naive_and_alone(&label, (m, n, k), 1.0, linear);
    }
}
