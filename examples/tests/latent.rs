//! The sampling tools end to end on latent models with every part swapped for a tiny
//! random-weight stand-in of the official file: the reference `uvit_t2i` checkpoint (4-channel
//! latents) with certainty heads added, or an ImageNet-shaped class-conditional `uvit` (1000
//! classes + null); the CLIP text fixture as `--text-encoder` and the autoencoder fixture as
//! `--vae` (both made by `scripts/make_latent_fixtures.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use deediff_uem::CertaintyHeads;
use deediff_unet::{UVit, UVitConfig, Variant};

/// The reference `uvit_t2i` weights plus certainty heads whose certainty rises with depth
/// (zero weights, bias `n − 2` on block n), written with its config into `dir`.
fn checkpoint_with_heads(dir: &Path) -> PathBuf {
    let uvit = deediff_testkit::fixtures().join("uvit");
    let mut tensors =
        candle_core::safetensors::load(uvit.join("uvit_t2i.weights.safetensors"), &Device::Cpu)
            .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(uvit.join("uvit_t2i.config.json")).unwrap())
            .unwrap();
    let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (d, pd) = (n("embed_dim"), n("patch_size").pow(2) * n("in_chans"));
    for b in 0..=n("depth") {
        let prefix = format!("lte_classifer.{b}.lte");
        let w = Tensor::zeros((pd, d), DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::full(b as f32 - 2.0, pd, &Device::Cpu).unwrap();
        tensors.insert(format!("{prefix}.weight"), w);
        tensors.insert(format!("{prefix}.bias"), bias);
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("t2i.weights.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    std::fs::copy(
        uvit.join("uvit_t2i.config.json"),
        dir.join("t2i.config.json"),
    )
    .unwrap();
    path
}

fn txt2img(model: &Path, extra: &[&str], hf_home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_txt2img"))
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE")
        .args(["--model", model.to_str().unwrap()])
        .args(["--trained-with", "sd-discrete", "--scheduler", "ddim"])
        .args(["--steps", "3", "--threshold", "0.6", "--cfg-scale", "1"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn latent_text_to_image_runs_with_early_exits() {
    let tmp = std::env::temp_dir().join(format!("deediff-latent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let model = checkpoint_with_heads(&tmp);
    let latent = deediff_testkit::fixtures().join("latent");
    let (out, report) = (tmp.join("out.png"), tmp.join("report.json"));
    let o = txt2img(
        &model,
        &[
            "--text-encoder",
            latent.join("clip").to_str().unwrap(),
            "--vae",
            latent.join("vae").to_str().unwrap(),
            "--vae-scale-factor",
            "0.2301",
            "--prompt",
            "a photo of a cat on the grass",
            "--out",
            out.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
        &tmp,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    eprintln!("{stdout}");
    // The tiny model reads 5 context tokens: the prompt does not fit.
    assert!(stderr.contains("warning: prompt truncated"), "{stderr}");

    // 8×8 latents through the KL-f8 decoder.
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert!(img.as_rgb8().is_some());

    // Certainty σ(n − 2) passes 0.6 first at block 3: every pass runs 4 of the 5 blocks.
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let blocks = r["num_blocks"].as_f64().unwrap();
    assert_eq!(r["mean_blocks"].as_f64().unwrap(), blocks - 1.0, "{r}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn missing_parts_name_the_files_needed() {
    let tmp = std::env::temp_dir().join(format!("deediff-latent-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let model = checkpoint_with_heads(&tmp);
    let latent = deediff_testkit::fixtures().join("latent");

    // No text encoder given and none in the (empty) cache.
    let o = txt2img(&model, &["--prompt", "a cat"], &tmp);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("openai/clip-vit-large-patch14") && e.contains("tokenizer.json"),
        "{e}"
    );

    // The text encoder found in the cache; the autoencoder missing.
    let snap = tmp.join("hub/models--openai--clip-vit-large-patch14/snapshots/abc");
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(latent.join("clip").join(f), snap.join(f)).unwrap();
    }
    let o = txt2img(&model, &["--prompt", "a cat"], &tmp);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("stabilityai/sd-vae-ft-mse") && e.contains("autoencoder_kl.pth"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    // A class name for a text-to-image model.
    let vae = latent.join("vae");
    let o = txt2img(
        &model,
        &["--class", "tench", "--vae", vae.to_str().unwrap()],
        &tmp,
    );
    assert!(!o.status.success());

    // An autoencoder for a pixel model.
    let pixel = deediff_testkit::fixtures().join("uvit/uvit_cond.weights.safetensors");
    let o = txt2img(
        &pixel,
        &["--class", "3", "--vae", vae.to_str().unwrap()],
        &tmp,
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("4-channel latents"),
        "{e}"
    );

    // Text-encoder weights without their config.json: one line naming where it was looked for.
    let lonely = tmp.join("lonely");
    std::fs::create_dir_all(&lonely).unwrap();
    std::fs::copy(
        latent.join("clip/model.safetensors"),
        lonely.join("model.safetensors"),
    )
    .unwrap();
    let o = txt2img(
        &model,
        &[
            "--prompt",
            "a cat",
            "--text-encoder",
            lonely.join("model.safetensors").to_str().unwrap(),
        ],
        &tmp,
    );
    let line = deediff_testkit::cli_error(&o);
    assert!(
        line.contains(lonely.join("config.json").to_str().unwrap()) && line.contains("missing"),
        "{line}"
    );

    // A damaged autoencoder: one line that names it once.
    let damaged = tmp.join("damaged_vae.pth");
    std::fs::write(&damaged, deediff_testkit::pth_with_unknown_storage()).unwrap();
    let o = txt2img(
        &model,
        &["--prompt", "a cat", "--vae", damaged.to_str().unwrap()],
        &tmp,
    );
    let line = deediff_testkit::cli_error(&o);
    assert_eq!(line.matches(damaged.to_str().unwrap()).count(), 1, "{line}");
    assert!(line.contains("unsupported storage type"), "{line}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A random-weight latent `uvit` shaped like U-ViT's ImageNet-256 models (1001 label rows, the
/// last the null class; 4-channel latents) with certainty heads, and its config beside it.
fn imagenet_like_checkpoint(dir: &Path) -> PathBuf {
    let cfg = UVitConfig {
        variant: Variant::Uvit,
        img_size: 8,
        patch_size: 2,
        in_chans: 4,
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 2.0,
        qkv_bias: false,
        mlp_time_embed: false,
        num_classes: Some(1001),
        clip_dim: 0,
        num_clip_token: 0,
        conv: true,
        skip: true,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    UVit::new(&cfg, vb.clone()).unwrap();
    CertaintyHeads::new(&cfg, vb).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("in256.weights.safetensors");
    varmap.save(&path).unwrap();
    std::fs::write(
        dir.join("in256.config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    path
}

#[test]
fn latent_imagenet_classes_by_name_with_guidance() {
    let tmp = std::env::temp_dir().join(format!("deediff-latent-cls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let model = imagenet_like_checkpoint(&tmp);
    let vae = deediff_testkit::fixtures().join("latent/autoencoder_kl.pth");
    let out = tmp.join("samples");
    let latent_model = |bin: &str| {
        let mut c = Command::new(bin);
        c.args([
            "--model",
            model.to_str().unwrap(),
            "--vae",
            vae.to_str().unwrap(),
        ])
        .args(["--trained-with", "sd-discrete"]);
        c
    };
    let o = latent_model(env!("CARGO_BIN_EXE_generate"))
        .args(["--class", "golden retriever", "--cfg-scale", "0.4"])
        .args(["--scheduler", "ddim", "--steps", "2", "--policy", "full"])
        .args(["--num", "2", "--batch", "2", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for i in 0..2 {
        let img = image::open(out.join(format!("{i:06}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }

    // An ambiguous name lists the classes it could mean.
    let o = latent_model(env!("CARGO_BIN_EXE_txt2img"))
        .args(["--class", "crane"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("134") && e.contains("517"),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
