//! `generate --policy cached:…`: per-run caches live in one batch's run, so a resumed run (two
//! images missing, regenerated in a smaller batch) reproduces the interrupted one byte for byte.

use std::path::Path;
use std::process::Command;

fn generate(out: &Path, policy: &str) -> std::process::Output {
    let ckpt = deediff_testkit::fixtures().join("uvit/uvit_cond.weights.safetensors");
    Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(["--model", ckpt.to_str().unwrap()])
        .args(["--num-heads", "4", "--trained-with", "ddpm-linear"])
        .args(["--scheduler", "ddim", "--steps", "6", "--policy", policy])
        .args(["--num", "5", "--batch", "4", "--seed", "7"])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_cached_policy_run_resumes_byte_identically() {
    let tmp = std::env::temp_dir().join(format!("deediff-cached-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (cached, full) = (tmp.join("cached"), tmp.join("full"));
    let o = generate(&cached, "cached:0.6:3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = files(&cached);
    assert_eq!(reference.len(), 5);
    // The cache really stood in for blocks: the images are not the full-depth ones.
    let o = generate(&full, "full");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(files(&full), reference);

    for n in ["000001.png", "000004.png"] {
        std::fs::remove_file(cached.join(n)).unwrap();
    }
    let o = generate(&cached, "cached:0.6:3");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("3 done, 2 to generate"),
        "{err}"
    );
    assert_eq!(files(&cached), reference);
    std::fs::remove_dir_all(&tmp).unwrap();
}
