//! From model samples to `image` buffers: 8-bit quantisation (what a PNG stores, and what FID
//! should see) and contact-sheet grids.

use candle_core::Tensor;
use image::{DynamicImage, GrayImage, RgbImage};

use crate::error::{Error, Result};

/// Quantises samples in [-1, 1] (`[B, C, H, W]`, C = 1 or 3) to 8-bit images,
/// `round((x + 1)·127.5)` clamped to [0, 255].
pub fn to_images(samples: &Tensor) -> Result<Vec<DynamicImage>> {
    let (b, c, h, w) = samples.dims4()?;
    let u8s = ((samples.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .permute((0, 2, 3, 1))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let per = h * w * c;
    (0..b)
        .map(|i| {
            let px: Vec<u8> = u8s[i * per..(i + 1) * per]
                .iter()
                .map(|&v| v as u8)
                .collect();
            let (w, h) = (w as u32, h as u32);
            Ok(match c {
                1 => DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, px).expect("sized")),
                3 => DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, px).expect("sized")),
                _ => {
                    return Err(Error::Image(format!(
                        "{c}-channel samples are not images (latent models need a decoder)"
                    )))
                }
            })
        })
        .collect()
}

/// A contact sheet filled image by image (row-major, `cols` columns, a 2-pixel gap), so a grid
/// of many samples holds only the sheet, never all the samples at once.
pub struct GridSheet {
    sheet: DynamicImage,
    count: usize,
    cols: u32,
    cell: (u32, u32),
}

impl GridSheet {
    /// The largest sheet allocated (bytes of pixels): beyond this a grid is refused, not built.
    pub const MAX_BYTES: u64 = 1 << 30;
    const GAP: u32 = 2;

    /// A blank sheet for `count` images shaped like `first`; errors when it would pass
    /// [`Self::MAX_BYTES`] or the `u32` sides of an image.
    pub fn new(count: usize, cols: usize, first: &DynamicImage) -> Result<Self> {
        let (w, h) = (first.width() as u64, first.height() as u64);
        let cols = cols.clamp(1, count.max(1)) as u64;
        let rows = (count as u64).div_ceil(cols);
        let side =
            |n: u64, cell: u64| (n * (cell + Self::GAP as u64)).saturating_sub(Self::GAP as u64);
        let (sw, sh) = (side(cols, w), side(rows, h));
        let bytes = sw
            .checked_mul(sh)
            .and_then(|p| p.checked_mul(first.color().bytes_per_pixel() as u64));
        if bytes.is_none_or(|b| b > Self::MAX_BYTES) || sw > u32::MAX as u64 || sh > u32::MAX as u64
        {
            return Err(Error::Image(format!(
                "a grid of {count} {w}x{h} images ({cols} columns) would be {sw}x{sh} pixels, \
                 more than {} MiB: ask for fewer images or write them one per file (generate)",
                Self::MAX_BYTES >> 20
            )));
        }
        Ok(Self {
            sheet: DynamicImage::new(sw as u32, sh as u32, first.color()),
            count,
            cols: cols as u32,
            cell: (w as u32, h as u32),
        })
    }

    /// Draws image `k` into its cell.
    pub fn place(&mut self, k: usize, img: &DynamicImage) -> Result<()> {
        let (w, h) = self.cell;
        if k >= self.count || (img.width(), img.height()) != (w, h) {
            return Err(Error::Image(format!(
                "grid cell {k} of {} ({w}x{h}) cannot take a {}x{} image",
                self.count,
                img.width(),
                img.height()
            )));
        }
        let (r, c) = (k as u32 / self.cols, k as u32 % self.cols);
        let (x, y) = (c * (w + Self::GAP), r * (h + Self::GAP));
        image::imageops::overlay(&mut self.sheet, img, x as i64, y as i64);
        Ok(())
    }

    pub fn into_image(self) -> DynamicImage {
        self.sheet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn quantisation_maps_the_range_ends_and_middle() {
        let x = Tensor::new(&[[[[-1.5f32, -1.0], [0.0, 1.0]]]], &Device::Cpu).unwrap();
        let img = &to_images(&x).unwrap()[0];
        assert_eq!(img.to_luma8().into_raw(), vec![0, 0, 128, 255]);
        let mut g = GridSheet::new(3, 2, img).unwrap();
        for k in 0..3 {
            g.place(k, img).unwrap();
        }
        assert!(g.place(3, img).is_err());
        let g = g.into_image();
        assert_eq!((g.width(), g.height()), (6, 6));
        assert_eq!(g.to_luma8().get_pixel(4, 4).0, [0]);
        assert_eq!(g.to_luma8().get_pixel(5, 1).0, [255]);
        let huge = GridSheet::new(100_000_000, 10_000, img).err().unwrap();
        assert!(huge.to_string().contains("MiB"), "{huge}");
    }
}
