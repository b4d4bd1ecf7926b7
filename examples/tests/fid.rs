//! `fid` end to end with hash-initialised weights: bad inputs give one-line errors naming the
//! file or folder; statistics files are written, compared, merged, and refused when a result would
//! be meaningless or overwrite its input.

use deediff_eval::hashinit::hash_state_dict;
use deediff_eval::weights::save_safetensors;
use deediff_eval::{Moments, Stats};
use deediff_testkit::{assert_one_line_naming, scratch_dir};
use std::path::Path;
use std::process::Command;

fn png(path: &Path, side: u32, seed: u8) {
    image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed])
    })
    .save(path)
    .unwrap();
}

/// Runs the CLI with hash-initialised weights; returns (success, stdout, stderr).
fn fid(weights: &Path, args: &[&Path]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fid"))
        .arg("--weights")
        .arg(weights)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn cli_errors_and_stats_files() {
    let dir = scratch_dir("eval-cli");
    let weights = dir.join("hash.safetensors");
    save_safetensors(&hash_state_dict(), &weights).unwrap();
    let (one, two) = (dir.join("one"), dir.join("two"));
    std::fs::create_dir(&one).unwrap();
    std::fs::create_dir(&two).unwrap();
    png(&one.join("a.png"), 20, 1);
    png(&two.join("a.png"), 20, 2);
    png(&two.join("b.png"), 31, 3);

    let (ok, _, err) = fid(
        &weights,
        &[Path::new("--dims"), Path::new("64"), &one, &two],
    );
    assert!(!ok);
    assert_one_line_naming(&err, &one);

    // A `.pth` whose tensors candle's reader cannot read: one line, not a report per tensor.
    let damaged = dir.join("damaged.pth");
    std::fs::write(&damaged, deediff_testkit::pth_with_unknown_storage()).unwrap();
    let (ok, _, err) = fid(&damaged, &[&one, &two]);
    assert!(!ok);
    assert_one_line_naming(&err, &damaged);
    assert!(
        err.contains("unsupported storage type FloatStoragf"),
        "{err}"
    );

    let s64 = dir.join("s64.npz");
    let (ok, out, err) = fid(
        &weights,
        &[
            Path::new("--dims"),
            Path::new("64"),
            Path::new("--save-stats"),
            &s64,
            &two,
        ],
    );
    assert!(ok, "{err}");
    println!("{out}");
    let s = Stats::load(&s64).unwrap();
    assert_eq!((s.dims, Moments::load(&s64).unwrap().n), (64, 2));
    let s2048 = dir.join("s2048.npz");
    Stats {
        dims: 2048,
        mu: vec![0.0; 2048],
        sigma: vec![0.0; 2048 * 2048],
    }
    .save(&s2048)
    .unwrap();
    let (ok, _, err) = fid(
        &weights,
        &[Path::new("--dims"), Path::new("64"), &s64, &s2048],
    );
    assert!(!ok);
    assert_one_line_naming(&err, &s2048);

    let (ok, out, err) = fid(
        &weights,
        &[Path::new("--dims"), Path::new("64"), &s64, &s64],
    );
    assert!(ok, "{err}");
    let value: f64 = out
        .trim()
        .strip_prefix("FID:")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(value.abs() <= 1e-9, "FID of identical stats: {value}");

    // KID subsets larger than a folder: refused before any features, and no FID line printed
    // over the failure.
    let (ok, out, err) = fid(
        &weights,
        &[
            Path::new("--kid"),
            Path::new("--kid-subset-size"),
            Path::new("3"),
            &two,
            &two,
        ],
    );
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("KID subset size 3 must be between 2 and"),
        "{err}"
    );
    assert_one_line_naming(&err, &two);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Statistics that would give a meaningless FID, and merges that would count images twice or
/// overwrite their own input, are refused with one line; nothing is written.
#[test]
fn non_finite_stats_duplicate_shards_and_self_overwrites_are_refused() {
    let dir = scratch_dir("eval-refuse");
    let weights = dir.join("hash.safetensors");
    save_safetensors(&hash_state_dict(), &weights).unwrap();
    let shard = |name: &str, offset: f64| {
        let mut m = Moments::new(2);
        m.add_rows(&[offset, 1.0, 2.0, offset, 0.5, 0.25], 3);
        let p = dir.join(name);
        m.save(&p).unwrap();
        p
    };
    let (a, b) = (shard("a.npz", 0.0), shard("b.npz", 1.0));
    let nan = dir.join("nan.npz");
    Stats {
        dims: 2,
        mu: vec![f64::NAN, 0.0],
        sigma: vec![1.0, 0.0, 0.0, 1.0],
    }
    .save(&nan)
    .unwrap();
    let (ok, out, err) = fid(&weights, &[&nan, &a]);
    assert!(!ok && out.is_empty(), "{out}");
    assert_one_line_naming(&err, &nan);
    assert!(err.contains("non-finite"), "{err}");

    let merged = dir.join("merged.npz");
    let flag = Path::new("--merge-stats");
    let (ok, _, err) = fid(&weights, &[flag, &merged, &a, &b, &a]);
    assert!(!ok && !merged.exists(), "{err}");
    assert!(err.contains("the same statistics as"), "{err}");
    assert_one_line_naming(&err, &a);

    let before = std::fs::read(&a).unwrap();
    let (ok, _, err) = fid(&weights, &[flag, &a, &a, &b]);
    assert!(!ok, "{err}");
    assert!(err.contains("the output is also an input"), "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), before);

    let (ok, _, err) = fid(
        &weights,
        &[Path::new("--threads"), Path::new("100000"), &a, &b],
    );
    assert!(!ok && err.contains("--threads"), "{err}");

    let (ok, out, err) = fid(&weights, &[flag, &merged, &a, &b]);
    assert!(ok, "{err}");
    assert!(out.contains("merged 2 shards (6 images)"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
