//! Multi-head attention in the flash style: per (sample, head, query block) task the keys are
//! visited in tiles with an online softmax, so no score matrix larger than one
//! `QUERY_BLOCK × KEY_TILE` tile is ever stored (the S/2 model's 257×257 per head used to be),
//! and the tile stays in L1/L2 between its two products.

use candle_core::{CpuStorage, Layout, Result, Shape};
use rayon::prelude::*;

use crate::kernels::{DisjointOut, FusedOp};
use crate::matmul::{matmul, Operand, Product};
use crate::rowops::{online_softmax_rows, scale_into};

/// Most query rows per task (blocks are split evenly, so 257 queries become 3 × 86, not 2 × 128
/// plus a lone row).
const QUERY_BLOCK: usize = 128;
/// Most keys per tile (split evenly, as the query blocks).
const KEY_TILE: usize = 128;

/// `(start, len)` of `ceil(n / most)` nearly equal parts of `0..n`.
fn even_parts(n: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let parts = n.div_ceil(most).max(1);
    (0..parts).map(move |i| (i * n / parts, (i + 1) * n / parts - i * n / parts))
}

/// `softmax(scale·q·kᵀ)·v` per head on `qkv [B, S, 3D]` (channel `k·D + h·Dh + d`), heads merged
/// to `[B, S, D]`.
pub(crate) struct AttentionOp {
    pub num_heads: usize,
    pub scale: f32,
}

/// Geometry of one (sample, head, query block) task.
struct Task<'a> {
    /// q/k/v of this sample and head: row `r` of q at `qkv[r·3D + h·Dh]`, k at `+ D`, v at `+ 2D`.
    qkv: &'a [f32],
    d: usize,
    dh: usize,
    keys: usize,
    q0: usize,
    rows: usize,
    scale: f32,
}

impl Task<'_> {
    /// Writes the normalised attention output of the block's rows, row `r` to `out(r)`.
    fn run(&self, out: impl Fn(usize) -> *mut f32) {
        let (d3, dh, rows) = (3 * self.d, self.dh, self.rows);
        let tile_len = self.keys.min(KEY_TILE);
        let mut scores = vec![0f32; rows * tile_len];
        let mut acc = vec![0f32; rows * dh];
        let (mut max, mut sum) = (vec![f32::NEG_INFINITY; rows], vec![0f32; rows]);
        let q = self.qkv[self.q0 * d3..].as_ptr();
        for (t, (k0, kt)) in even_parts(self.keys, KEY_TILE).enumerate() {
            let k = self.qkv[k0 * d3 + self.d..].as_ptr();
            let v = self.qkv[k0 * d3 + 2 * self.d..].as_ptr();
            let scores = &mut scores[..rows * kt];
            let qk = Product {
                m: rows,
                n: kt,
                k: dh,
                dst: scores.as_mut_ptr(),
                dst_ld: kt,
                accumulate: false,
                lhs: Operand::rows(q, d3),
                rhs: Operand::transposed(k, d3),
                alpha: self.scale,
            };
            // SAFETY: q rows q0..q0+rows and k/v rows k0..k0+kt lie inside `qkv` (row stride 3D,
            // dh columns); `scores` is rows×kt and `acc` rows×dh, both contiguous.
            unsafe { matmul(&qk, false) };
            online_softmax_rows(scores, &mut max, &mut sum, &mut acc);
            let pv = Product {
                m: rows,
                n: dh,
                k: kt,
                dst: acc.as_mut_ptr(),
                dst_ld: dh,
                accumulate: t > 0,
                lhs: Operand::rows(scores.as_ptr(), kt),
                rhs: Operand::rows(v, d3),
                alpha: 1.0,
            };
            // SAFETY: as above.
            unsafe { matmul(&pv, false) };
        }
        for (r, (a, l)) in acc.chunks_exact(dh).zip(&sum).enumerate() {
            // SAFETY: `out(r)` points at dh floats of this task's own output row and head.
            let dst = unsafe { std::slice::from_raw_parts_mut(out(r), dh) };
            scale_into(a, 1.0 / l, dst);
        }
    }
}

impl FusedOp<1> for AttentionOp {
    const NAME: &'static str = "deediff-attention";

    fn cpu(&self, [qkv]: [&[f32]; 1], [layout]: [&Layout; 1]) -> Result<(CpuStorage, Shape)> {
        let (b, s, d3) = layout.shape().dims3()?;
        let (d, h) = (d3 / 3, self.num_heads);
        if d3 % 3 != 0 || h == 0 || d % h != 0 {
            candle_core::bail!("attention: qkv width {d3} does not split into 3×{h} heads");
        }
        let dh = d / h;
        // SAFETY: the tasks cover every (sample, head, query row), each writing its `dh` floats.
        let mut out = unsafe { crate::kernels::output_buffer(b * s * d) };
        let out_ptr = DisjointOut(out.as_mut_ptr());
        let blocks: Vec<(usize, usize)> = even_parts(s, QUERY_BLOCK).collect();
        (0..b * h * blocks.len()).into_par_iter().for_each(|i| {
            let (bi, hi, (q0, rows)) = (
                i / (h * blocks.len()),
                i / blocks.len() % h,
                blocks[i % blocks.len()],
            );
            let task = Task {
                qkv: &qkv[bi * s * d3 + hi * dh..],
                d,
                dh,
                keys: s,
                q0,
                rows,
                scale: self.scale,
            };
            // SAFETY: row q0 + r of sample bi, head columns hi·dh.. — inside `out`, and written
            // by this task only.
            task.run(|r| unsafe { out_ptr.get().add((bi * s + q0 + r) * d + hi * dh) });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, s, d))))
    }
}
