//! From model samples to `image` buffers: 8-bit quantisation (what a PNG stores, and what FID
//! should see) and contact-sheet grids.

use candle_core::Tensor;
use image::{DynamicImage, GrayImage, RgbImage};

use crate::error::{Result, SamplerError};

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
                    return Err(SamplerError::Request(format!(
                        "{c}-channel samples are not images (latent models need a decoder)"
                    )))
                }
            })
        })
        .collect()
}

/// Lays images out row-major on a grid with `cols` columns and a 2-pixel gap.
pub fn grid(images: &[DynamicImage], cols: usize) -> DynamicImage {
    let (w, h) = (images[0].width(), images[0].height());
    let cols = cols.clamp(1, images.len()) as u32;
    let rows = (images.len() as u32).div_ceil(cols);
    let gap = 2;
    let mut sheet = DynamicImage::new(
        cols * (w + gap) - gap,
        rows * (h + gap) - gap,
        images[0].color(),
    );
    for (k, img) in images.iter().enumerate() {
        let (r, c) = (k as u32 / cols, k as u32 % cols);
        image::imageops::overlay(
            &mut sheet,
            img,
            (c * (w + gap)) as i64,
            (r * (h + gap)) as i64,
        );
    }
    sheet
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
        let g = grid(&[img.clone(), img.clone(), img.clone()], 2);
        assert_eq!((g.width(), g.height()), (6, 6));
    }
}
