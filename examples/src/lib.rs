//! Command-line front doors (`txt2img`, `generate`, `train`) and library examples, on top of the
//! deediff crates. The shared pieces live here so each binary stays a short `main`.

pub mod cli;
pub mod manifest;
pub mod progress;
pub mod shard;

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use image::{DynamicImage, ImageFormat};

/// Writes `path` atomically and checked to the end (see [`deediff_eval::atomic`]): the previous
/// file stays untouched unless the new one is complete on disk. Errors name the file and `what`.
pub fn write_checked(
    path: &Path,
    what: &str,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<()> {
    deediff_eval::atomic::write_atomic(path, write)
        .map_err(|e| anyhow!("{}: cannot write the {what}: {e}", path.display()))
}

/// The image format of an output name: PNG, or JPEG for `.jpg`/`.jpeg` (quality loss is the
/// user's choice); any other extension is refused rather than written as mislabelled PNG bytes.
/// Existing special files (`/dev/null`, a pipe) get PNG.
pub fn image_format(path: &Path) -> Result<ImageFormat> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return Ok(ImageFormat::Png);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => Ok(ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
        _ => bail!(
            "{}: give the image a .png, .jpg or .jpeg name",
            path.display()
        ),
    }
}

/// Saves `img` in the format its name asks for (see [`image_format`]), atomically and checked.
pub fn save_image(path: &Path, img: &DynamicImage) -> Result<()> {
    let format = image_format(path)?;
    let rgb;
    let img = match (format, img) {
        (ImageFormat::Jpeg, DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_)) => img,
        (ImageFormat::Jpeg, _) => {
            rgb = DynamicImage::ImageRgb8(img.to_rgb8());
            &rgb
        }
        _ => img,
    };
    write_checked(path, "image", |w| {
        img.write_to(w, format).map_err(|e| match e {
            image::ImageError::IoError(e) => e,
            other => io::Error::other(other),
        })
    })
}

/// Checks output files before any work: a file name (not a folder) in a folder that exists, and
/// no two outputs the same file (the later write would silently replace the earlier one).
pub fn check_outputs(outputs: &[(&str, &Path)]) -> Result<()> {
    for (k, &(flag, path)) in outputs.iter().enumerate() {
        if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') {
            bail!("{flag} {}: is a folder; give a file name", path.display());
        }
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            bail!("{flag} {}: no folder {}", path.display(), dir.display());
        }
        if let Some((other_flag, _)) = outputs[..k].iter().find(|&&(_, p)| same_file(p, path)) {
            bail!(
                "{flag} {}: the same file as {other_flag}; give each output its own name",
                path.display()
            );
        }
    }
    Ok(())
}

/// Whether two output paths name one file (their folders resolved; the files may not exist).
fn same_file(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        dir.canonicalize()
            .map(|d| d.join(p.file_name().unwrap_or_default()))
    };
    match (resolve(a), resolve(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Image k's seed `seed + k`, refused (not wrapped) past `u64::MAX`.
pub fn seed_of(seed: u64, k: usize) -> Result<u64> {
    seed.checked_add(k as u64).ok_or_else(|| {
        anyhow!("--seed {seed}: image {k} would need seed {seed} + {k}, past 2^64 - 1")
    })
}

/// The seeds of images `range` (see [`seed_of`]).
pub fn seeds(seed: u64, range: std::ops::Range<usize>) -> Result<Vec<u64>> {
    range.map(|k| seed_of(seed, k)).collect()
}

/// Checks once, before any work, that every seed of a `count`-image run fits in `u64`.
pub fn check_seed_range(seed: u64, count: usize) -> Result<()> {
    seeds(seed, count.saturating_sub(1)..count).map(drop)
}

/// A command-line tool's `main`: applies the allocator and thread settings
/// ([`tune`], [`park_candle_workers`]), runs `run`, and on error prints one line (the error and
/// its causes, outermost first) and exits with status 1.
///
/// [`tune`]: deediff_unet::alloc::tune
/// [`park_candle_workers`]: deediff_unet::pool::park_candle_workers
pub fn main(run: impl FnOnce() -> anyhow::Result<()>) {
    deediff_unet::pool::park_candle_workers();
    deediff_unet::alloc::tune();
    if let Err(e) = run() {
        eprintln!("error: {}", deediff_eval::error::error_line(e.as_ref()));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_past_u64_are_refused_not_wrapped() {
        assert_eq!(seeds(u64::MAX - 1, 0..2).unwrap(), [u64::MAX - 1, u64::MAX]);
        let err = check_seed_range(u64::MAX, 2).unwrap_err().to_string();
        assert!(err.contains("--seed 18446744073709551615"), "{err}");
        assert!(check_seed_range(u64::MAX, 1).is_ok());
    }

    #[test]
    fn outputs_must_be_distinct_files_with_image_names() {
        let (a, b) = (Path::new("x.png"), Path::new("./x.png"));
        let err = check_outputs(&[("--out", a), ("--report", b)]).unwrap_err();
        assert!(err.to_string().contains("the same file as --out"), "{err}");
        assert!(check_outputs(&[("--out", Path::new("/tmp/"))]).is_err());
        let err = check_outputs(&[("--report", Path::new("/no/such/folder/r.json"))]).unwrap_err();
        assert!(
            err.to_string().contains("no folder /no/such/folder"),
            "{err}"
        );
        assert!(check_outputs(&[("--out", a), ("--report", Path::new("x.json"))]).is_ok());
        assert_eq!(image_format(Path::new("a.JPG")).unwrap(), ImageFormat::Jpeg);
        assert!(image_format(Path::new("a.gif")).is_err());
    }
}
