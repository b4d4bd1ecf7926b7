//! `--dtype bf16`: on a CPU with AMX-BF16 the images stay those of f32 up to bf16 rounding; on any
//! other CPU (and under `DEEDIFF_ISA=avx2`, how a Sapphire Rapids runs the AMD path) the tools
//! stop with one line instead of sampling in another precision than asked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("deediff-dtype-{name}-{}.png", std::process::id()))
}

fn txt2img(dtype: &str, isa_cap: Option<&str>, out: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_txt2img"));
    cmd.args(["--prompt", "an ankle boot", "--num", "4", "--seed", "5"])
        .args(["--dtype", dtype, "--out"])
        .arg(out);
    if let Some(cap) = isa_cap {
        cmd.env("DEEDIFF_ISA", cap);
    }
    cmd.output().unwrap()
}

const REFUSAL: &str = "error: --dtype bf16 needs Intel AMX-BF16 (Xeon Sapphire Rapids or newer) \
                       with AVX-512 enabled; this CPU/OS has ";

fn cpu_has_amx_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_bf16"))
}

#[test]
fn bf16_without_amx_is_one_line_and_a_failure() {
    let out = tmp("capped");
    let o = txt2img("bf16", Some("avx2"), &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        format!("{REFUSAL}no AVX-512 (or DEEDIFF_ISA caps it)\n")
    );
    assert!(!out.exists(), "no image after a refusal");
}

#[test]
fn bf16_images_are_f32_images_up_to_rounding() {
    let (f32_out, bf16_out) = (tmp("f32"), tmp("bf16"));
    assert!(txt2img("f32", None, &f32_out).status.success());
    let o = txt2img("bf16", None, &bf16_out);
    if !o.status.success() {
        // Only a CPU without AMX may refuse, and only with the one line.
        assert!(!cpu_has_amx_bf16(), "refused on an AMX CPU: {o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).starts_with(REFUSAL));
        return;
    }
    let a = image::open(&f32_out).unwrap().to_luma8();
    let b = image::open(&bf16_out).unwrap().to_luma8();
    let _ = (
        std::fs::remove_file(&f32_out),
        std::fs::remove_file(&bf16_out),
    );
    let diffs: Vec<f64> = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| (p.0[0] as f64 - q.0[0] as f64).abs())
        .collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let far = diffs.iter().filter(|&&d| d > 8.0).count() as f64 / diffs.len() as f64;
    // Measured on a Sapphire Rapids: mean 0.56 of 255, 0.7 % of pixels off by more than 8.
    assert!(
        mean < 2.0 && far < 0.03,
        "mean |Δ| {mean:.2}, {far:.3} of pixels > 8"
    );
    assert!(
        a.pixels().map(|p| p.0[0] as f64).sum::<f64>() > 0.0,
        "a black grid proves nothing"
    );
}
