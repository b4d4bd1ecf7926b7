//! `generate` end to end on the official-format reference checkpoint: shards partition a run,
//! a run interrupted (files missing) resumes to byte-identical images, and `--npz` packs a shard.

use std::path::{Path, PathBuf};
use std::process::Command;

fn checkpoint() -> PathBuf {
    deediff_testkit::fixtures().join("uvit/uvit_cond.weights.safetensors")
}

fn generate(out: &Path, extra: &[&str]) -> std::process::Output {
    generate_with_env(out, extra, &[]).output().unwrap()
}

/// The `generate` command of [`generate`] with `env` set and no array-job variables inherited.
fn generate_with_env(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let ckpt = checkpoint();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_generate"));
    for var in [
        "SLURM_ARRAY_TASK_ID",
        "JOB_COMPLETION_INDEX",
        "DEEDIFF_NUM_SHARDS",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .args(["--model", ckpt.to_str().unwrap()])
        .args(["--num-heads", "4", "--trained-with", "ddpm-linear"])
        .args(["--scheduler", "ddim", "--steps", "4", "--threshold", "0.6"])
        .args(["--num", "6", "--batch", "4", "--seed", "100"])
        .args(["--out", out.to_str().unwrap()])
        .args(extra);
    cmd
}

/// The images of a folder, (name, bytes), sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
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

    // An interrupted run: one image cut short, one empty. The rerun remakes exactly those two,
    // identically; a run with other settings is refused by the folder's manifest.
    let cut = whole.join("000001.png");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(whole.join("000004.png"), b"").unwrap();
    let o = generate(&whole, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("4 done, 2 to generate"), "{err}");
    assert!(err.contains("000001.png: cut short"), "{err}");
    assert!(err.contains("000004.png: empty"), "{err}");
    assert_eq!(files(&whole), reference);
    let o = generate(&whole, &["--class", "3"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("deediff-run.json: this folder holds a run with class = null, but this run has class = \"3\""), "{err}");
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

/// Runs `n` array tasks at once, task k getting `env(k)`; all must succeed.
fn run_array(out: &Path, extra: &[&str], n: usize, env: impl Fn(usize) -> Vec<(String, String)>) {
    let children: Vec<_> = (0..n)
        .map(|k| {
            let vars = env(k);
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            generate_with_env(out, extra, &vars)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("Slurm array") || err.contains("Kubernetes Indexed Job"),
            "{err}"
        );
    }
}

/// A 3-task Slurm array and a 2-index Kubernetes Indexed Job, simulated by processes with the
/// schedulers' variables: every image exists once and equals the single-process run's, and the
/// merged FID moments of the array equal the single process's (hash-initialised Inception
/// weights, so no download).
#[test]
fn array_jobs_reproduce_one_process_and_its_fid_statistics() {
    use deediff_eval::{Moments, Stats};
    let tmp = std::env::temp_dir().join(format!("deediff-array-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let cache = tmp.join("cache");
    let weights = deediff_eval::weights::default_weights_path();
    deediff_eval::weights::save_safetensors(
        &deediff_eval::hashinit::hash_state_dict(),
        &cache.join(weights.file_name().unwrap()),
    )
    .unwrap();
    let reference = tmp.join("ref.npz");
    let d = 2048;
    let identity = (0..d * d)
        .map(|k| f64::from(u8::from(k % (d + 1) == 0)))
        .collect();
    Stats {
        dims: d,
        mu: vec![0.0; d],
        sigma: identity,
    }
    .save(&reference)
    .unwrap();
    let cache_s = cache.to_str().unwrap().to_string();
    let fid = ["--fid-stats", reference.to_str().unwrap()];

    let whole = tmp.join("whole");
    let o = generate_with_env(&whole, &fid, &[("DEEDIFF_CACHE", &cache_s)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let single = Moments::load(&whole.join("fid-moments-0-of-1.npz")).unwrap();

    let slurm = tmp.join("slurm");
    run_array(&slurm, &fid, 3, |k| {
        [
            ("SLURM_ARRAY_TASK_ID", (7 + k).to_string()),
            ("SLURM_ARRAY_TASK_MIN", "7".into()),
            ("SLURM_ARRAY_TASK_COUNT", "3".into()),
            ("DEEDIFF_CACHE", cache_s.clone()),
        ]
        .map(|(a, b)| (a.to_string(), b))
        .to_vec()
    });
    assert_eq!(files(&slurm), files(&whole));
    let mut merged = Moments::load(&slurm.join("fid-moments-0-of-3.npz")).unwrap();
    for k in 1..3 {
        merged
            .merge(&Moments::load(&slurm.join(format!("fid-moments-{k}-of-3.npz"))).unwrap())
            .unwrap();
    }
    assert_eq!(merged.n, 6);
    let (a, b) = (merged.stats().unwrap(), single.stats().unwrap());
    let worst =
        a.mu.iter()
            .zip(&b.mu)
            .chain(a.sigma.iter().zip(&b.sigma))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
    assert!(worst <= 1e-12, "merged statistics differ by {worst}");

    let k8s = tmp.join("k8s");
    run_array(&k8s, &[], 2, |k| {
        vec![
            ("JOB_COMPLETION_INDEX".into(), k.to_string()),
            ("DEEDIFF_NUM_SHARDS".into(), "2".into()),
        ]
    });
    assert_eq!(files(&k8s), files(&whole));
    std::fs::remove_dir_all(&tmp).unwrap();
}
