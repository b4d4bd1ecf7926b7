//! bf16 linear layers on Intel AMX (`--dtype bf16`): the weights are rounded to bfloat16 once and
//! stored in the tile layout, the activations are rounded per product, and the tiles accumulate
//! in f32 — what `torch.set_float32_matmul_precision("medium")` allows PyTorch to do.
//!
//! Why: AMX's tile multiply (`TDPBF16PS`) does 1,024 bf16 multiply-adds per instruction. On a
//! 2-core Sapphire Rapids it measured ~650 GFLOP/s per core with L1-resident tiles and ~200–300 on
//! U-ViT-S/2 shapes, against 130–150 for the best f32 AVX-512 kernel. The price is bf16's 8-bit
//! mantissa on both inputs; `BENCHMARKS.md` records what that does to FID before anyone relies on
//! it. CPUs without AMX (AMD EPYC, older Xeons) refuse the mode with one line rather than
//! emulate it slowly.
//!
//! Only products whose depth and width are multiples of 32 take this path (every U-ViT linear
//! here); the rest, and attention's two products, stay f32.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::isa::{isa, Isa};
use crate::kernels::DisjointOut;
use crate::{Error, Result};

/// Rows and columns of one output block: 2 × 2 tiles of 16 × 16 f32.
const BLOCK: usize = 32;
/// Depth of one tile product: 16 rows of 64 bytes hold 32 bf16 values per row.
const DEPTH: usize = 32;
/// Rows of the activations kept hot while a column panel of the weights sweeps over them
/// (256 rows × 2,048 deep × 2 bytes = 1 MiB, within a Sapphire Rapids core's 2 MiB L2).
const ROW_CHUNK: usize = 256;
/// Columns per rayon task: enough tile work to amortise loading the tile configuration.
const COLUMN_TASK: usize = 128;

/// The process-wide switch behind `--dtype bf16`.
static BF16: AtomicBool = AtomicBool::new(false);

/// Switches every eligible linear layer of this process to bf16 tile products (`true`) or back to
/// f32. Fails, leaving f32 on, when the CPU or the kernel lacks AMX.
pub fn set_bf16(on: bool) -> Result<()> {
    if on {
        check()?;
    }
    BF16.store(on, Ordering::Relaxed);
    Ok(())
}

/// Whether [`set_bf16`] turned bf16 products on.
pub fn bf16_enabled() -> bool {
    BF16.load(Ordering::Relaxed)
}

/// Whether an `m × k` by `k × n` linear product runs on the tiles.
pub fn eligible(n: usize, k: usize) -> bool {
    bf16_enabled() && n.is_multiple_of(BLOCK) && k.is_multiple_of(DEPTH) && k > 0
}

/// Detects AMX-BF16 and asks Linux for the tile state (once per process).
fn check() -> Result<()> {
    static STATE: OnceLock<Result<(), &'static str>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            if isa() < Isa::Avx512 {
                return Err("no AVX-512 (or DEEDIFF_ISA caps it)");
            }
            if !cpu_has_amx_bf16() {
                return Err("no AMX-BF16");
            }
            if !request_tile_state() {
                return Err("an OS that refused the AMX tile state");
            }
            Ok(())
        })
        .map_err(Error::Bf16Unavailable)
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    leaf7.edx & (AMX_BF16 | AMX_TILE) == AMX_BF16 | AMX_TILE
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_bf16() -> bool {
    false
}

/// Linux keeps the 8 KiB tile state off until a process asks (`ARCH_REQ_XCOMP_PERM`); the grant
/// covers every thread of the process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes the process's xsave permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// Round-to-nearest-even f32 → bf16 (NaN stays NaN), written to auto-vectorise.
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// A PyTorch `[out, in]` weight in bf16, in the tiles' layout: for each 16-column group, `in / 2`
/// rows of 16 column pairs `(w[c][2r], w[c][2r + 1])` (the VNNI pairs `TDPBF16PS` multiplies).
#[derive(Debug)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    data: Vec<u16>,
}

impl PackedWeight {
    /// Packs `w` (`n × k`, row-major); `n` a multiple of 32 and `k` of 32 ([`eligible`]).
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert!(w.len() == n * k && n.is_multiple_of(BLOCK) && k.is_multiple_of(DEPTH));
        let mut data = vec![0u16; n * k];
        data.par_chunks_mut(16 * k)
            .enumerate()
            .for_each(|(group, out)| {
                for (i, v) in out.iter_mut().enumerate() {
                    let (pair_row, c, t) = (i / 32, i / 2 % 16, i % 2);
                    *v = bf16_bits(w[(group * 16 + c) * k + pair_row * 2 + t]);
                }
            });
        PackedWeight { n, k, data }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Depth (input columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The 16 × (32 bf16) tile of columns `16·group..+16` at depth `d..d + 32`.
    fn tile(&self, group: usize, d: usize) -> *const u16 {
        self.data[group * 16 * self.k + d * 16..].as_ptr()
    }
}

/// `dst (m × n, row-major) = (accumulate ? dst : 0) + x (m × k, row-major) · wᵀ` with `x` and `w`
/// rounded to bf16 and f32 accumulation. Panics unless the CPU has AMX ([`set_bf16`] succeeds).
pub fn linear(x: &[f32], w: &PackedWeight, dst: &mut [f32], accumulate: bool) {
    let (n, k) = (w.n, w.k);
    assert!(check().is_ok() && x.len().is_multiple_of(k) && dst.len() == x.len() / k * n);
    let m = x.len() / k;
    ROUNDED.with_borrow_mut(|a| {
        round_rows(x, m, k, a);
        products(a, w, dst, m, accumulate);
    });
}

thread_local! {
    /// The rounded activations of the last product on this thread, kept: a fresh buffer per
    /// product (up to 16 MiB at U-ViT-S/2 batch 16) cost ~11 % of the forward in page faults.
    static ROUNDED: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The tile products of [`linear`] over rounded activations `a`, split into rayon tasks.
fn products(a: &[u16], w: &PackedWeight, dst: &mut [f32], m: usize, accumulate: bool) {
    let n = w.n;
    let tasks: Vec<(usize, usize)> = (0..m.div_ceil(ROW_CHUNK))
        .flat_map(|i| (0..n.div_ceil(COLUMN_TASK)).map(move |j| (i, j)))
        .collect();
    let out = DisjointOut(dst.as_mut_ptr());
    tasks.into_par_iter().for_each(|(i, j)| {
        let rows = i * ROW_CHUNK..(i * ROW_CHUNK + ROW_CHUNK).min(m);
        let cols = j * COLUMN_TASK..(j * COLUMN_TASK + COLUMN_TASK).min(n);
        // SAFETY: tasks cover disjoint (rows, cols) rectangles of `dst`; `a` holds `m` rows
        // padded with zeros to a whole block; `check` granted the tile state.
        unsafe { tile_task(a, w, out, n, rows, cols, accumulate) };
    });
}

/// `a` = `x` rounded to bf16, with zero rows up to a whole block so every tile load stays inside.
fn round_rows(x: &[f32], m: usize, k: usize, a: &mut Vec<u16>) {
    a.resize(m.next_multiple_of(BLOCK) * k, 0);
    a[m * k..].fill(0);
    a[..m * k]
        .par_chunks_mut(16 * k)
        .zip(x.par_chunks(16 * k))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = bf16_bits(v)));
}

/// The palette-1 tile configuration: tiles 0–7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const FULL_TILES: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// One task: 32 × 32 output blocks over `rows × cols`, each column panel sweeping the row chunk
/// (its weights stay in L1 while the chunk's activations stream from L2). A last block with
/// fewer than 32 rows goes through a scratch block.
///
/// # Safety
/// As [`linear`]'s task: disjoint rectangles, padded `a`, tile state granted.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_task(
    a: &[u16],
    w: &PackedWeight,
    dst: DisjointOut,
    ld: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    accumulate: bool,
) {
    use std::arch::asm;
    // SAFETY: a valid palette-1 configuration; released below.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &FULL_TILES, options(nostack, readonly)) };
    let mut scratch = [0f32; BLOCK * BLOCK];
    for j in cols.step_by(BLOCK) {
        for i in rows.clone().step_by(BLOCK) {
            let full = i + BLOCK <= rows.end;
            let (c, c_ld) = if full {
                // SAFETY: rows i..i+32, columns j..j+32 lie inside `dst` (m × ld).
                (unsafe { dst.get().add(i * ld + j) }, ld)
            } else {
                let valid = rows.end - i;
                for r in 0..BLOCK {
                    let row = &mut scratch[r * BLOCK..(r + 1) * BLOCK];
                    if accumulate && r < valid {
                        // SAFETY: row i + r < m, columns j..j+32 inside `dst`.
                        let src = unsafe {
                            std::slice::from_raw_parts(dst.get().add((i + r) * ld + j), BLOCK)
                        };
                        row.copy_from_slice(src);
                    } else {
                        row.fill(0.0);
                    }
                }
                (scratch.as_mut_ptr(), BLOCK)
            };
            // SAFETY: `c` addresses a 32 × 32 block with row stride `c_ld`; `a` rows i..i+32
            // exist (padded); the weight tiles of columns j..j+32 exist.
            unsafe { block(a, w, i, j, c, c_ld, accumulate || !full) };
            if !full {
                for r in 0..rows.end - i {
                    // SAFETY: as above.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(dst.get().add((i + r) * ld + j), BLOCK)
                    };
                    out.copy_from_slice(&scratch[r * BLOCK..(r + 1) * BLOCK]);
                }
            }
        }
    }
    // SAFETY: ends this thread's use of the tiles.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// One 32 × 32 block `c (+)= a[i..i+32] · w[:, j..j+32]` in tiles 0–3 (C), 4–5 (A), 6–7 (B).
///
/// # Safety
/// As [`tile_task`]; the tile configuration is loaded.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block(
    a: &[u16],
    w: &PackedWeight,
    i: usize,
    j: usize,
    c: *mut f32,
    c_ld: usize,
    load_c: bool,
) {
    use std::arch::asm;
    let k = w.k;
    let c_stride = c_ld * 4;
    // SAFETY (every asm block): addresses as the caller guarantees; 64-byte tile rows.
    unsafe {
        if load_c {
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]", "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]", "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) c, c1 = in(reg) c.add(16), c2 = in(reg) c.add(16 * c_ld),
                c3 = in(reg) c.add(16 * c_ld + 16), s = in(reg) c_stride, options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        let (g0, g1) = (j / 16, j / 16 + 1);
        for d in (0..k).step_by(DEPTH) {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]", "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]", "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.as_ptr().add(i * k + d), a1 = in(reg) a.as_ptr().add((i + 16) * k + d),
                b0 = in(reg) w.tile(g0, d), b1 = in(reg) w.tile(g1, d),
                sa = in(reg) k * 2, sb = in(reg) 64usize, options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c0} + {s}*1], tmm0", "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2", "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c, c1 = in(reg) c.add(16), c2 = in(reg) c.add(16 * c_ld),
            c3 = in(reg) c.add(16 * c_ld + 16), s = in(reg) c_stride, options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_task(
    _: &[u16],
    _: &PackedWeight,
    _: DisjointOut,
    _: usize,
    _: std::ops::Range<usize>,
    _: std::ops::Range<usize>,
    _: bool,
) {
    unreachable!("set_bf16 refuses every CPU but x86-64 with AMX")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_value(x: f32) -> f32 {
        f32::from_bits((bf16_bits(x) as u32) << 16)
    }

    /// The tile product equals the f64 product of the bf16-rounded inputs (f32 accumulation
    /// error only), for row counts around the block and chunk sizes, with and without
    /// accumulation; a CPU without AMX refuses the mode instead.
    #[test]
    fn tiles_give_the_product_of_rounded_inputs_or_refuse() {
        // Not through `set_bf16`: the switch is process-wide and other tests run alongside.
        if let Err(e) = check() {
            assert!(e
                .to_string()
                .starts_with("--dtype bf16 needs Intel AMX-BF16"));
            return assert!(!cpu_has_amx_bf16() || isa() < Isa::Avx512 || !request_tile_state());
        }
        for (m, n, k) in [
            (1, 32, 32),
            (31, 64, 64),
            (33, 96, 128),
            (257, 160, 96),
            (300, 32, 2048),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 0.003)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 0.002)
                .collect();
            let packed = PackedWeight::new(&w, n, k);
            for accumulate in [false, true] {
                let mut dst: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32).collect();
                linear(&x, &packed, &mut dst, accumulate);
                for r in 0..m {
                    for c in 0..n {
                        let want: f64 = (0..k)
                            .map(|l| {
                                bf16_value(x[r * k + l]) as f64 * bf16_value(w[c * k + l]) as f64
                            })
                            .sum::<f64>()
                            + if accumulate {
                                ((r * n + c) % 5) as f64
                            } else {
                                0.0
                            };
                        let got = dst[r * n + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "({m},{n},{k}) [{r},{c}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie → even
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // tie → even
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
    }
}
