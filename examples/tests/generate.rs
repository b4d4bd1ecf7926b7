//! `generate` end to end on the official-format reference checkpoint: shards partition a run,
//! a run interrupted (files missing) resumes to byte-identical images, and `--npz` packs a shard.

use std::path::{Path, PathBuf};
use std::process::Command;

fn checkpoint() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../unet/tests/fixtures/uvit/uvit_cond.weights.safetensors")
}

fn generate(out: &Path, extra: &[&str]) -> std::process::Output {
    let ckpt = checkpoint();
    Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(["--model", ckpt.to_str().unwrap()])
        .args(["--num-heads", "4", "--trained-with", "ddpm-linear"])
        .args(["--scheduler", "ddim", "--steps", "4", "--threshold", "0.6"])
        .args(["--num", "6", "--batch", "4", "--seed", "100"])
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn shards_and_resumed_runs_reproduce_the_whole_run() {
    let tmp = std::env::temp_dir().join(format!("deediff-generate-{}", std::process::id()));
    let (whole, sharded) = (tmp.join("whole"), tmp.join("sharded"));
    let _ = std::fs::remove_dir_all(&tmp);

    let o = generate(&whole, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = files(&whole);
    let names: Vec<_> = reference.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "000000.png",
            "000001.png",
            "000002.png",
            "000003.png",
            "000004.png",
            "000005.png"
        ]
    );

    for shard in ["1/2", "0/2"] {
        let o = generate(&sharded, &["--shard", shard]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(files(&sharded), reference);

    // Packing a finished shard: arr_0 holds its images as uint8 NHWC RGB, in index order.
    let npz = tmp.join("shard1.npz");
    let o = generate(
        &sharded,
        &["--shard", "1/2", "--npz", npz.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arr = &deediff_eval::npz::read_npz(&npz).unwrap()["arr_0"];
    let rgb: Vec<f64> = (3..6)
        .flat_map(|i| {
            image::open(sharded.join(format!("{i:06}.png")))
                .unwrap()
                .to_rgb8()
                .into_raw()
        })
        .map(f64::from)
        .collect();
    assert_eq!(arr.shape[0], 3);
    assert_eq!(arr.shape[3], 3);
    assert_eq!(arr.data, rgb);

    // An interrupted run: two images missing. The rerun fills exactly those, identically.
    for n in ["000001.png", "000004.png"] {
        std::fs::remove_file(whole.join(n)).unwrap();
    }
    let o = generate(&whole, &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("4 done, 2 to generate"));
    assert_eq!(files(&whole), reference);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn bad_arguments_get_one_clear_line() {
    let tmp = std::env::temp_dir().join(format!("deediff-generate-bad-{}", std::process::id()));
    for (extra, expect) in [
        (vec!["--shard", "2/2"], "expected k/n"),
        (
            vec!["--scheduler-config", "/nonexistent.json"],
            "/nonexistent.json",
        ),
    ] {
        let o = generate(&tmp, &extra);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect), "{err}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(["--model", "/nonexistent.pth", "--num", "1", "--out"])
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.pth"));
    let _ = std::fs::remove_dir_all(&tmp);
}
