//! A model file's `sampling_defaults` metadata: `txt2img` and `generate` sample with its
//! scheduler, steps and policy when given no flags (the same images as those flags spelled out),
//! a flag still wins, and a bad value is one error naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The embedded model's file with `sampling_defaults` set to `json`.
fn model_with_defaults(dir: &Path, json: &str) -> PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/uvit_t2i_fashion_digits.safetensors");
    let bytes = std::fs::read(src).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    meta.insert(
        deediff_unet::model_file::key::SAMPLING_DEFAULTS.to_string(),
        json.to_string(),
    );
    let path = dir.join("model.safetensors");
    std::fs::write(
        &path,
        safetensors::serialize(file.tensors(), Some(meta)).unwrap(),
    )
    .unwrap();
    path
}

/// Runs `bin` and returns its report (`--report`) and the bytes of the image it wrote.
fn run(bin: &str, model: &Path, dir: &Path, flags: &[&str]) -> (Value, Vec<u8>) {
    let name = Path::new(bin).file_name().unwrap().to_str().unwrap();
    // txt2img's --out is an image file (it needs an image name), generate's a folder.
    let out_name = match name == "txt2img" {
        true => format!("{name}-out.png"),
        false => format!("{name}-out"),
    };
    let (report, out) = (dir.join("report.json"), dir.join(out_name));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(bin);
    cmd.args(["--model", model.to_str().unwrap(), "--seed", "3"])
        .args(["--num", "1", "--report", report.to_str().unwrap()])
        .args([
            "--prompt",
            "a handwritten 7",
            "--out",
            out.to_str().unwrap(),
        ])
        .args(flags);
    // txt2img writes one image (a grid of one) to --out, generate a folder of numbered PNGs.
    let image = match name == "txt2img" {
        true => out.clone(),
        false => out.join("000000.png"),
    };
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (report, std::fs::read(image).unwrap())
}

fn evals(report: &Value) -> usize {
    report["evals"].as_array().unwrap().len()
}

#[test]
fn txt2img_and_generate_use_the_model_defaults_unless_flags_say_otherwise() {
    let dir = std::env::temp_dir().join(format!("deediff-defaults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = model_with_defaults(
        &dir,
        r#"{"scheduler":"ddim","steps":3,"policy":"static:2"}"#,
    );
    let explicit = [
        "--scheduler",
        "ddim",
        "--steps",
        "3",
        "--policy",
        "static:2",
    ];
    for bin in [
        env!("CARGO_BIN_EXE_txt2img"),
        env!("CARGO_BIN_EXE_generate"),
    ] {
        let (report, image) = run(bin, &model, &dir, &[]);
        assert_eq!(evals(&report), 3, "{bin}");
        assert_eq!(report["mean_blocks"].as_f64(), Some(2.0), "{bin}");
        let (spelled_out, same) = run(bin, &model, &dir, &explicit);
        assert_eq!(report["evals"], spelled_out["evals"], "{bin}");
        assert_eq!(image, same, "{bin}: defaults and the same flags differ");

        let (report, _) = run(bin, &model, &dir, &["--steps", "2", "--policy", "full"]);
        assert_eq!(evals(&report), 2, "{bin}");
        assert_eq!(report["mean_blocks"].as_f64(), Some(9.0), "{bin}");
        // --threshold asks for per-sample exits: the default policy gives way.
        let (report, _) = run(bin, &model, &dir, &["--threshold", "1.0"]);
        assert_eq!(evals(&report), 3, "{bin}");
        assert_eq!(report["mean_blocks"].as_f64(), Some(9.0), "{bin}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_default_is_one_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("deediff-bad-defaults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = model_with_defaults(&dir, r#"{"scheduler":"ddim","steps":0,"policy":"full"}"#);
    let o = Command::new(env!("CARGO_BIN_EXE_txt2img"))
        .args(["--model", model.to_str().unwrap(), "--prompt", "a sandal"])
        .args(["--out", dir.join("x.png").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("model.safetensors") && err.contains("sampling_defaults: steps must be"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain U-ViT checkpoint (no certainty heads, no recommended settings) samples at full depth
/// when no policy is asked for, where per-sample exits (the default for a model with heads)
/// would need heads it lacks; asking for exits still names what is missing.
#[test]
fn a_checkpoint_without_heads_samples_at_full_depth_unless_exits_are_asked_for() {
    let dir = std::env::temp_dir().join(format!("deediff-no-heads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = deediff_testkit::fixtures().join("uvit/uvit_cond.weights.safetensors");
    let bytes = std::fs::read(src).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let all = file.tensors();
    let plain: Vec<_> = all
        .iter()
        .filter(|(name, _)| !name.starts_with("lte_classifer."))
        .cloned()
        .collect();
    assert!(plain.len() < all.len(), "the fixture has heads to strip");
    let model = dir.join("plain.safetensors");
    std::fs::write(&model, safetensors::serialize(plain, None).unwrap()).unwrap();
    let report = dir.join("report.json");
    let txt2img = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_txt2img"))
            .args(["--model", model.to_str().unwrap(), "--class", "1"])
            .args(["--num-heads", "4", "--trained-with", "ddpm-linear"])
            .args(["--scheduler", "ddim", "--steps", "2"])
            .args(["--out", dir.join("x.png").to_str().unwrap()])
            .args(["--report", report.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = txt2img(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["mean_blocks"].as_f64(), r["num_blocks"].as_f64(), "{r}");
    let o = txt2img(&["--threshold", "0.9"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no certainty heads"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
