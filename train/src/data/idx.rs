//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed (detected by the gzip magic bytes).

use super::dataset::byte_to_unit;
use super::{Error, ImageDataset};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// Reads a whole file, inflating it when it starts with the gzip magic `1f 8b`.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, Error> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An unsigned-byte IDX array: its dimensions and data.
struct IdxU8 {
    dims: Vec<usize>,
    data: Vec<u8>,
}

fn parse_idx(path: &Path, bytes: Vec<u8>) -> Result<IdxU8, Error> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::format(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::format(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::format(path, "IDX header is truncated"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| {
            let b = &bytes[4 + 4 * k..8 + 4 * k];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    if bytes.len() - header != expected {
        return Err(Error::format(
            path,
            format!(
                "IDX dims {dims:?} need {expected} bytes of data, found {}",
                bytes.len() - header
            ),
        ));
    }
    Ok(IdxU8 {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Loads an image file (`[N, H, W]`, grayscale) and its label file (`[N]`).
pub fn load_idx(images: &Path, labels: &Path, flip: bool) -> Result<ImageDataset, Error> {
    let img = parse_idx(images, read_maybe_gz(images)?)?;
    let lab = parse_idx(labels, read_maybe_gz(labels)?)?;
    if img.dims.len() != 3 {
        return Err(Error::format(
            images,
            format!(
                "expected a 3-D image array [N, H, W], found dims {:?}",
                img.dims
            ),
        ));
    }
    if lab.dims.len() != 1 {
        return Err(Error::format(
            labels,
            format!("expected a 1-D label array, found dims {:?}", lab.dims),
        ));
    }
    if img.dims[0] != lab.dims[0] {
        return Err(Error::Mismatch {
            images: images.to_path_buf(),
            labels: labels.to_path_buf(),
            msg: format!("{} images but {} labels", img.dims[0], lab.dims[0]),
        });
    }
    let pixels = img.data.iter().map(|&b| byte_to_unit(b)).collect();
    let labels = lab.data.iter().map(|&l| l as u32).collect();
    ImageDataset::new(pixels, labels, [1, img.dims[1], img.dims[2]], flip)
}
