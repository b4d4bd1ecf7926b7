//! The run manifest of a `generate` output folder and the checks that make resuming safe: a
//! folder only ever holds images of one set of settings, and an image that is missing, empty or
//! cut short is made again rather than counted as done.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The manifest's name inside the output folder.
pub const MANIFEST_FILE: &str = "deediff-run.json";

/// Settings that decide the pixels of a run, in the order differences are reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest(Vec<(String, Value)>);

impl Manifest {
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.push((key.to_string(), value.into()));
        self
    }

    /// Accepts `dir` for this run: writes the manifest into a folder without one (refusing a
    /// folder that already holds images of an unknown run), or checks the one there and names
    /// the first setting that differs.
    pub fn check_or_write(&self, dir: &Path, is_image: impl Fn(&str) -> bool) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => self.check(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let entries = std::fs::read_dir(dir)
                    .with_context(|| format!("{}: cannot list the folder", dir.display()))?;
                if let Some(img) = entries
                    .filter_map(|e| e.ok())
                    .find(|e| is_image(&e.file_name().to_string_lossy()))
                {
                    bail!(
                        "{}: holds images ({}) but no {MANIFEST_FILE}, so their settings are \
                         unknown; use an empty folder",
                        dir.display(),
                        img.file_name().to_string_lossy()
                    );
                }
                let json =
                    serde_json::to_string_pretty(&Value::Object(self.0.iter().cloned().collect()))?;
                crate::write_checked(&path, "run manifest", |w| {
                    std::io::Write::write_all(w, json.as_bytes())
                })
            }
            Err(e) => Err(anyhow!("{}: cannot read: {e}", path.display())),
        }
    }

    fn check(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let stored: serde_json::Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| anyhow!("{}: not a run manifest: {e}", path.display()))?;
        let null = Value::Null;
        for (key, value) in &self.0 {
            let theirs = stored.get(key).unwrap_or(&null);
            if theirs != value {
                bail!(
                    "{}: this folder holds a run with {key} = {theirs}, but this run has \
                     {key} = {value}; use another --out or the same settings",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// SHA-256 of a file's bytes, hex: identifies a model file whatever its name or place.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(hex(&h.finalize()))
}

/// SHA-256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How hard resume looks at an existing image before counting it as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// PNG signature, a sane IHDR and the IEND trailer: catches empty and cut-short files by
    /// reading 45 bytes each (cheap at 50k images).
    Header,
    /// Decodes every pixel: also catches damage in the middle of a file.
    Full,
}

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
const IEND: &[u8; 12] = b"\0\0\0\0IEND\xae\x42\x60\x82";

/// Why `path` is not a complete PNG (None: it is one, as far as `verify` looks).
pub fn png_problem(path: &Path, verify: Verify) -> Option<String> {
    let check = || -> std::result::Result<(), String> {
        let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if len == 0 {
            return Err("empty".into());
        }
        let mut head = [0u8; 24];
        f.read_exact(&mut head)
            .map_err(|_| format!("only {len} bytes"))?;
        if &head[..8] != PNG_SIGNATURE || &head[8..16] != b"\0\0\0\x0dIHDR" {
            return Err("not a PNG".into());
        }
        let side = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
        if side(&head[16..20]) == 0 || side(&head[20..24]) == 0 {
            return Err("zero-sized PNG".into());
        }
        let mut tail = [0u8; 12];
        f.seek(SeekFrom::End(-12))
            .and_then(|_| f.read_exact(&mut tail))
            .map_err(|e| e.to_string())?;
        if &tail != IEND {
            return Err("cut short (no IEND)".into());
        }
        if verify == Verify::Full {
            image::open(path).map_err(|e| format!("does not decode: {e}"))?;
        }
        Ok(())
    };
    check().err()
}

/// Splits `indices` into (done, to make): an index is done when its file is a complete PNG.
/// Each damaged file is named on stderr (it will be replaced atomically).
pub fn partition_done(
    indices: std::ops::Range<usize>,
    path: impl Fn(usize) -> PathBuf,
    verify: Verify,
) -> (Vec<usize>, Vec<usize>) {
    indices.partition(|&i| {
        let p = path(i);
        if !p.exists() {
            return false;
        }
        match png_problem(&p, verify) {
            None => true,
            Some(why) => {
                eprintln!("{}: {why}; making it again", p.display());
                false
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_pngs_are_found_by_their_header_and_trailer() {
        let dir = std::env::temp_dir().join(format!("deediff-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.png");
        image::GrayImage::from_fn(64, 64, |x, y| image::Luma([(x * y + x / 3) as u8]))
            .save(&good)
            .unwrap();
        let bytes = std::fs::read(&good).unwrap();
        assert_eq!(png_problem(&good, Verify::Full), None);
        let cases = [
            ("empty.png", Vec::new(), "empty"),
            ("short.png", bytes[..bytes.len() - 5].to_vec(), "cut short"),
            ("head.png", bytes[..10].to_vec(), "only 10 bytes"),
            ("junk.png", vec![7; 100], "not a PNG"),
        ];
        for (name, content, why) in cases {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap();
            let problem = png_problem(&p, Verify::Header).unwrap();
            assert!(problem.contains(why), "{name}: {problem}");
        }
        // Damage in the middle passes the header check but not the full decode.
        let mut middle = bytes.clone();
        let at = middle.len() / 2 + 4;
        middle[at] ^= 0xff;
        let p = dir.join("middle.png");
        std::fs::write(&p, middle).unwrap();
        assert_eq!(png_problem(&p, Verify::Header), None);
        assert!(png_problem(&p, Verify::Full).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_of_other_settings_is_refused_by_its_first_difference() {
        let dir = std::env::temp_dir().join(format!("deediff-manifest2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let is_png = |n: &str| n.ends_with(".png");
        let run = Manifest::default().with("seed", 1).with("steps", 25);
        run.check_or_write(&dir, is_png).unwrap();
        run.check_or_write(&dir, is_png).unwrap();
        let other = Manifest::default().with("seed", 1).with("steps", 4);
        let err = other.check_or_write(&dir, is_png).unwrap_err().to_string();
        assert!(
            err.contains("steps = 25, but this run has steps = 4"),
            "{err}"
        );

        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        std::fs::write(dir.join("000000.png"), b"").unwrap();
        let err = run.check_or_write(&dir, is_png).unwrap_err().to_string();
        assert!(err.contains("no deediff-run.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
