//! An in-memory labelled image set with pixels in `[-1, 1]`, channel-first, and batch assembly.

use super::Error;
use candle_core::{Device, Tensor};
use rand::Rng;

/// Images `[N, C, H, W]` stored flat in `[-1, 1]`, one `u32` label each.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    pixels: Vec<f32>,
    labels: Vec<u32>,
    channels: usize,
    height: usize,
    width: usize,
    /// Whether a random horizontal flip is a valid augmentation (not for digits or text).
    flip: bool,
}

impl ImageDataset {
    /// `pixels` must hold `labels.len() · channels · height · width` values in `[-1, 1]`.
    pub fn new(
        pixels: Vec<f32>,
        labels: Vec<u32>,
        [channels, height, width]: [usize; 3],
        flip: bool,
    ) -> Result<Self, Error> {
        let per = channels * height * width;
        if per == 0 || pixels.len() != labels.len() * per {
            return Err(Error::Invalid {
                msg: format!(
                    "{} pixel values do not make {} images of {channels}x{height}x{width}",
                    pixels.len(),
                    labels.len()
                ),
            });
        }
        Ok(Self {
            pixels,
            labels,
            channels,
            height,
            width,
            flip,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[C, H, W]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    pub fn flip(&self) -> bool {
        self.flip
    }

    /// Pixels of image `i`, channel-first.
    pub fn image(&self, i: usize) -> &[f32] {
        let per = self.channels * self.height * self.width;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// Adds `offset` to every label, e.g. to give a second data set its own label range.
    pub fn with_label_offset(mut self, offset: u32) -> Self {
        self.labels.iter_mut().for_each(|l| *l += offset);
        self
    }

    /// Appends `other` (same image shape); flipping stays allowed only if both allow it.
    pub fn concat(mut self, other: ImageDataset) -> Result<Self, Error> {
        if self.image_shape() != other.image_shape() {
            return Err(Error::Invalid {
                msg: format!(
                    "cannot join image sets of shapes {:?} and {:?}",
                    self.image_shape(),
                    other.image_shape()
                ),
            });
        }
        self.pixels.extend(other.pixels);
        self.labels.extend(other.labels);
        self.flip &= other.flip;
        Ok(self)
    }

    /// Stacks the images at `indices` into `[B, C, H, W]`, flipping each with probability 1/2
    /// when the set allows it (one draw per image, in order, from `rng`).
    pub fn batch<R: Rng>(
        &self,
        indices: &[usize],
        rng: &mut R,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Vec<u32>)> {
        let [c, h, w] = self.image_shape();
        let mut out = Vec::with_capacity(indices.len() * c * h * w);
        for &i in indices {
            let img = self.image(i);
            if self.flip && rng.gen::<bool>() {
                for row in img.chunks_exact(w) {
                    out.extend(row.iter().rev());
                }
            } else {
                out.extend_from_slice(img);
            }
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok((
            Tensor::from_vec(out, (indices.len(), c, h, w), device)?,
            labels,
        ))
    }
}

/// Maps a byte in `[0, 255]` to `[-1, 1]`.
pub(crate) fn byte_to_unit(b: u8) -> f32 {
    b as f32 / 127.5 - 1.0
}
