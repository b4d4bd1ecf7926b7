//! `--device` on every sampling, training and scoring tool: `cpu` runs, malformed values are refused by the
//! parser, and (in the default, CPU-only build) `cuda` stops with one line saying how to rebuild.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("deediff-device-{name}-{}", std::process::id()))
}

/// Each tool with the least it needs to reach the point where it opens the device.
fn tool(bin: &str, device: &str) -> Output {
    let out = tmp(bin);
    let mut cmd = Command::new(bin_path(bin));
    cmd.args(["--device", device]);
    match bin {
        "generate" => cmd.args(["--num", "1", "--out"]).arg(&out),
        "sample_grid" => cmd.arg("--out").arg(out.with_extension("png")),
        "train" => cmd.arg("--out-dir").arg(&out),
        _ => &mut cmd,
    };
    let o = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&out);
    o
}

fn bin_path(bin: &str) -> &'static str {
    match bin {
        "txt2img" => env!("CARGO_BIN_EXE_txt2img"),
        "generate" => env!("CARGO_BIN_EXE_generate"),
        "sample_grid" => env!("CARGO_BIN_EXE_sample_grid"),
        "train" => env!("CARGO_BIN_EXE_train"),
        "tradeoff" => env!("CARGO_BIN_EXE_tradeoff"),
        "fid" => env!("CARGO_BIN_EXE_fid"),
        _ => unreachable!("{bin}"),
    }
}

const TOOLS: [&str; 6] = [
    "txt2img",
    "generate",
    "sample_grid",
    "train",
    "tradeoff",
    "fid",
];

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_on_a_cpu_build_is_one_line_and_a_failure() {
    for bin in TOOLS {
        let o = tool(bin, "cuda:0");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{bin}: {err}");
        assert_eq!(
            err,
            "error: --device cuda: this binary was built without CUDA support: rebuild with \
             --features cuda\n",
            "{bin}"
        );
    }
}

#[test]
fn malformed_devices_are_refused_by_the_parser() {
    for bin in TOOLS {
        let o = tool(bin, "gpu");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bin}: {err}");
        assert!(
            err.contains("--device")
                && err.contains("\"gpu\" is not a device: expected cpu, cuda or cuda:N"),
            "{bin}: {err}"
        );
    }
}

#[test]
fn cpu_samples() {
    let out = tmp("cpu").join("out.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_txt2img"))
        .args([
            "--device",
            "cpu",
            "--prompt",
            "an ankle boot",
            "--steps",
            "2",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&out).unwrap();
    assert!(img.width() > 0 && img.height() > 0);
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
}
