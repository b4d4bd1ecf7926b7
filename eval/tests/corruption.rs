//! Randomised corruption of the files the FID tools read (statistics `.npz`, `.npy` members,
//! images): thousands of mutated files per run. None may panic, and every error names the file.

use deediff_eval::images::read_rgb8;
use deediff_eval::npz::{npy_bytes, parse_npy, read_npz, Array};
use deediff_eval::{Moments, Stats};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// One way to damage a file.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut at a fraction (‰) of the length.
    Truncate(u16),
    /// XOR bytes at positions (‰ of the length) with values.
    Flip(Vec<(u16, u8)>),
    /// Replace everything by `len` pseudo-random bytes.
    Garbage(u16, u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0u16..1000).prop_map(Damage::Truncate),
        prop::collection::vec((0u16..1000, 1u8..=255), 1..8).prop_map(Damage::Flip),
        (0u16..2048, any::<u64>()).prop_map(|(n, s)| Damage::Garbage(n, s)),
    ]
}

fn apply(bytes: &[u8], d: &Damage) -> Vec<u8> {
    let at = |permille: u16| bytes.len() * permille as usize / 1000;
    match d {
        Damage::Truncate(p) => bytes[..at(*p)].to_vec(),
        Damage::Flip(flips) => {
            let mut b = bytes.to_vec();
            for &(p, x) in flips {
                let i = at(p).min(b.len() - 1);
                b[i] ^= x;
            }
            b
        }
        Damage::Garbage(n, seed) => {
            let mut s = *seed;
            (0..*n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 56) as u8
                })
                .collect()
        }
    }
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("deediff-eval-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn names(err: impl std::fmt::Display, path: &Path) -> Result<(), TestCaseError> {
    let msg = err.to_string();
    prop_assert!(
        msg.contains(&path.display().to_string()),
        "{msg:?} does not name the file"
    );
    prop_assert!(!msg.contains('\n'), "{msg:?} is not one line");
    Ok(())
}

/// A mergeable statistics file of a few 3-d features, as `fid --save-stats` writes.
fn stats_file(path: &Path) -> Vec<u8> {
    let mut m = Moments::new(3);
    m.add_rows(&[0.5, -1.0, 2.0, 1.5, 0.25, -0.75, 3.0, 1.0, 0.0], 3);
    m.save(path).unwrap();
    std::fs::read(path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_statistics_files_are_errors_naming_the_file(d in damage()) {
        let dir = scratch();
        let good = stats_file(&dir.join("good.npz"));
        let path = dir.join(format!("bad-{}.npz", std::process::id()));
        std::fs::write(&path, apply(&good, &d)).unwrap();
        for result in [Stats::load(&path).map(drop), Moments::load(&path).map(drop), read_npz(&path).map(drop)] {
            if let Err(e) = result {
                names(e, &path)?;
            }
        }
    }

    #[test]
    fn damaged_npy_members_are_errors(d in damage(), shape in prop::collection::vec(0usize..5, 0..4)) {
        let n = shape.iter().product();
        let good = npy_bytes(&Array { shape, data: (0..n).map(|i| i as f64).collect() });
        // The header is where shapes and dtypes live: damage it more often than the body.
        let bytes = apply(&good, &d);
        let _ = parse_npy(&bytes);
        let _ = parse_npy(&apply(&good[..good.len().min(80)], &d));
    }

    #[test]
    fn damaged_images_are_errors_naming_the_file(d in damage(), ext in prop::sample::select(vec!["png", "jpg", "bmp", "webp", "tiff", "ppm"])) {
        let dir = scratch();
        let good_path = dir.join(format!("good.{ext}"));
        if !good_path.exists() {
            image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([(x * 16) as u8, (y * 20) as u8, 7]))
                .save(&good_path)
                .unwrap();
        }
        let good = std::fs::read(&good_path).unwrap();
        let path = dir.join(format!("bad.{ext}"));
        std::fs::write(&path, apply(&good, &d)).unwrap();
        if let Err(e) = read_rgb8(&path) {
            names(e, &path)?;
        }
    }
}
