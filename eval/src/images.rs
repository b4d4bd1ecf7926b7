//! Image folders read the way pytorch-fid reads them: non-recursive, lower-case extensions
//! only, sorted; every image converted like `PIL.Image.open(p).convert("RGB")`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Extensions pytorch-fid globs for (case-sensitive, as `Path.glob("*.png")` on Linux).
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp",
];

/// The image files directly in `dir`, sorted by path. Errors when `dir` is not a readable
/// folder or holds no image.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot read folder: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::file(dir, e))?.path();
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e));
        if ext_ok && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::file(
            dir,
            format!(
                "no images (looked for *.{{{}}}, non-recursive)",
                IMAGE_EXTENSIONS.join(",")
            ),
        ));
    }
    files.sort();
    Ok(files)
}

/// Decodes one image to 8-bit RGB: greyscale is copied to all channels, alpha dropped.
pub fn read_rgb8(path: &Path) -> Result<image::RgbImage> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::file(path, format!("cannot open image: {e}")))?
        .decode()
        .map_err(|e| Error::file(path, format!("cannot decode image: {e}")))?;
    Ok(img.to_rgb8())
}
