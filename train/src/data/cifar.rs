//! CIFAR-10 binary batches: records of one label byte followed by 3072 bytes (R, G, B planes of 32×32).

use super::dataset::byte_to_unit;
use super::idx::read_maybe_gz;
use super::{Error, ImageDataset};
use std::path::Path;

const SIDE: usize = 32;
const RECORD: usize = 1 + 3 * SIDE * SIDE;

/// Loads and concatenates the given batch files (e.g. `data_batch_1.bin` … `data_batch_5.bin`).
pub fn load_cifar10(files: &[&Path]) -> Result<ImageDataset, Error> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for &path in files {
        let bytes = read_maybe_gz(path)?;
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
            return Err(Error::format(
                path,
                format!(
                    "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                    bytes.len()
                ),
            ));
        }
        for rec in bytes.chunks_exact(RECORD) {
            if rec[0] > 9 {
                return Err(Error::format(
                    path,
                    format!("label {} is outside 0..=9", rec[0]),
                ));
            }
            labels.push(rec[0] as u32);
            pixels.extend(rec[1..].iter().map(|&b| byte_to_unit(b)));
        }
    }
    if labels.is_empty() {
        return Err(Error::Invalid {
            msg: "no CIFAR-10 batch files given".into(),
        });
    }
    ImageDataset::new(pixels, labels, [3, SIDE, SIDE], true)
}
