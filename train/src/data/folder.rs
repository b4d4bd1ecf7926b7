//! Image folders (PNG/JPEG/…): `root/<class>/*.png` gives one label per class folder (sorted by
//! name); images directly in `root` get label 0. Each image is resized so its short side equals
//! `size` and centre-cropped to `size × size`.

use super::dataset::byte_to_unit;
use super::{Error, ImageDataset};
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "webp", "tif"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

/// Loads one image as `channels` (1 = luma, 3 = RGB) planes of `size × size`, values in `[-1, 1]`.
pub fn load_image(path: &Path, size: usize, channels: usize) -> Result<Vec<f32>, Error> {
    let img =
        image::open(path).map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let scale = size as f64 / w.min(h) as f64;
    let (rw, rh) = (
        ((w as f64 * scale).round() as u32).max(size as u32),
        ((h as f64 * scale).round() as u32).max(size as u32),
    );
    let resized = img.resize_exact(rw, rh, FilterType::Triangle);
    let (x0, y0) = ((rw - size as u32) / 2, (rh - size as u32) / 2);
    let cropped = resized.crop_imm(x0, y0, size as u32, size as u32);
    let planes: Vec<Vec<u8>> = match channels {
        1 => vec![cropped.to_luma8().into_raw()],
        3 => {
            let rgb = cropped.to_rgb8().into_raw();
            (0..3)
                .map(|c| rgb.iter().skip(c).step_by(3).copied().collect())
                .collect()
        }
        n => {
            return Err(Error::Invalid {
                msg: format!("image folders load 1 or 3 channels, not {n}"),
            })
        }
    };
    Ok(planes.concat().into_iter().map(byte_to_unit).collect())
}

/// Loads every image under `root` (see the module doc for the layout).
pub fn load_image_folder(
    root: &Path,
    size: usize,
    channels: usize,
    flip: bool,
) -> Result<ImageDataset, Error> {
    let entries = sorted_entries(root)?;
    let mut files: Vec<(PathBuf, u32)> = entries
        .iter()
        .filter(|p| p.is_file() && is_image(p))
        .map(|p| (p.clone(), 0))
        .collect();
    let classes: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    for (label, dir) in classes.iter().enumerate() {
        for p in sorted_entries(dir)? {
            if p.is_file() && is_image(&p) {
                files.push((p, label as u32));
            }
        }
    }
    if files.is_empty() {
        return Err(Error::format(
            root,
            format!(
                "no images ({}) found in it or its subfolders",
                EXTENSIONS.join(", ")
            ),
        ));
    }
    let mut pixels = Vec::with_capacity(files.len() * channels * size * size);
    for (path, _) in &files {
        pixels.extend(load_image(path, size, channels)?);
    }
    let labels = files.iter().map(|(_, l)| *l).collect();
    ImageDataset::new(pixels, labels, [channels, size, size], flip)
}
