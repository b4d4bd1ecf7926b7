//! Feature maps in HWC layout and the pooling layers of the FID Inception.
//!
//! HWC keeps every pixel's channels contiguous, so a 1×1 conv is a plain matrix product and a
//! branch can write straight into its channel slice of a concatenated block output.

/// One image's activations, `data[(y * w + x) * c + ch]`.
#[derive(Debug, Clone)]
pub struct FMap {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl FMap {
    pub fn zeros(h: usize, w: usize, c: usize) -> Self {
        FMap {
            h,
            w,
            c,
            data: vec![0.0; h * w * c],
        }
    }

    /// Global average pool to one value per channel; accumulates in f64.
    pub fn mean_pool(&self) -> Vec<f32> {
        let mut acc = vec![0.0f64; self.c];
        for px in self.data.chunks_exact(self.c) {
            acc.iter_mut().zip(px).for_each(|(a, &v)| *a += v as f64);
        }
        let n = (self.h * self.w) as f64;
        acc.into_iter().map(|a| (a / n) as f32).collect()
    }
}

/// Max pool 3×3, stride 2, no padding, floor mode; writes into channels `c_off..c_off+x.c` of `dst`.
pub fn max_pool_3s2_into(x: &FMap, dst: &mut FMap, c_off: usize) {
    let (ho, wo) = ((x.h - 3) / 2 + 1, (x.w - 3) / 2 + 1);
    debug_assert!(dst.h == ho && dst.w == wo && c_off + x.c <= dst.c);
    for oy in 0..ho {
        for ox in 0..wo {
            let o = (oy * wo + ox) * dst.c + c_off;
            let out = &mut dst.data[o..o + x.c];
            out.fill(f32::NEG_INFINITY);
            for iy in 2 * oy..2 * oy + 3 {
                for ix in 2 * ox..2 * ox + 3 {
                    let i = (iy * x.w + ix) * x.c;
                    out.iter_mut()
                        .zip(&x.data[i..i + x.c])
                        .for_each(|(o, &v)| *o = o.max(v));
                }
            }
        }
    }
}

/// Max pool 3×3, stride 2 (a new map).
pub fn max_pool_3s2(x: &FMap) -> FMap {
    let mut out = FMap::zeros((x.h - 3) / 2 + 1, (x.w - 3) / 2 + 1, x.c);
    max_pool_3s2_into(x, &mut out, 0);
    out
}

/// 3×3 stride-1 pools with padding 1, as used by the pool branches of blocks A, C and E.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool3 {
    /// `avg_pool2d(3, 1, 1, count_include_pad=False)`: border windows divide by 4 or 6.
    AvgExcludePad,
    /// `max_pool2d(3, 1, 1)` of FID's Mixed_7c; padding acts as −∞.
    Max,
}

impl Pool3 {
    pub fn apply(self, x: &FMap) -> FMap {
        let mut out = FMap::zeros(x.h, x.w, x.c);
        for oy in 0..x.h {
            let (y0, y1) = (oy.saturating_sub(1), (oy + 2).min(x.h));
            for ox in 0..x.w {
                let (x0, x1) = (ox.saturating_sub(1), (ox + 2).min(x.w));
                let o = (oy * x.w + ox) * x.c;
                let dst = &mut out.data[o..o + x.c];
                if self == Pool3::Max {
                    dst.fill(f32::NEG_INFINITY);
                }
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let i = (iy * x.w + ix) * x.c;
                        let src = &x.data[i..i + x.c];
                        match self {
                            Pool3::AvgExcludePad => {
                                dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v)
                            }
                            Pool3::Max => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = d.max(v)),
                        }
                    }
                }
                if self == Pool3::AvgExcludePad {
                    let count = ((y1 - y0) * (x1 - x0)) as f32;
                    dst.iter_mut().for_each(|d| *d /= count);
                }
            }
        }
        out
    }
}
