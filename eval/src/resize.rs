//! Bilinear resize to 299×299 exactly like `F.interpolate(mode="bilinear", align_corners=False)`
//! on CPU in f32 (no antialias), fused with pytorch-fid's `2x − 1` normalisation.

use crate::fmap::FMap;

/// Inception input side.
pub const SIZE: usize = 299;

/// Per-axis source taps `(i0, i1, l0, l1)` computed in f32 as PyTorch's CPU kernel does.
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|dst| {
            let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Resizes one CHW image with 3 channels in [0,1] to 299×299 and maps it to `2x − 1` (HWC).
pub fn resize_normalise(chw: &[f32], h: usize, w: usize) -> FMap {
    debug_assert_eq!(chw.len(), 3 * h * w);
    let (ty, tx) = (taps(h, SIZE), taps(w, SIZE));
    let mut out = FMap::zeros(SIZE, SIZE, 3);
    for c in 0..3 {
        let p = &chw[c * h * w..(c + 1) * h * w];
        for (oy, &(y0, y1, l0y, l1y)) in ty.iter().enumerate() {
            let (r0, r1) = (&p[y0 * w..(y0 + 1) * w], &p[y1 * w..(y1 + 1) * w]);
            for (ox, &(x0, x1, l0x, l1x)) in tx.iter().enumerate() {
                let v = l0y * (l0x * r0[x0] + l1x * r0[x1]) + l1y * (l0x * r1[x0] + l1x * r1[x1]);
                out.data[(oy * SIZE + ox) * 3 + c] = 2.0 * v - 1.0;
            }
        }
    }
    out
}
