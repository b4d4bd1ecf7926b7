//! `bench/uvit_forward`, Rust side. Driven by `bench/uvit_forward.py`, which alternates it with
//! PyTorch; run alone it only prepares files.
//!
//! `prepare`: writes random weights for U-ViT-S/2 (CIFAR-10 config) and the small config
//! (`<cfg>.safetensors` + `<cfg>.config.json`), and for those and the default model a batch-1
//! input/output pair (`<cfg>.check.safetensors`) for the PyTorch cross-check, into `--dir`.
//! `serve`: reads `CONFIG BATCH REPS [f32|bf16]` lines on stdin and answers each with one JSON
//! line of per-forward seconds (after one warm-up forward), so the driver can interleave the two
//! sides without counting process start-up or model loading. `bf16` runs the linear layers on
//! AMX tiles ([`deediff_unet::amx`]).
//!
//! `cargo bench -p deediff-unet --bench uvit_forward -- prepare|serve [--dir DIR]`

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use deediff_unet::{Checkpoint, Conditioning, UVit, UVitConfig, Variant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The embedded default model (a `uvit_t2i` with certainty heads and a text encoder).
const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/uvit_t2i_fashion_digits.safetensors"
);

/// The pixel-space unconditional U-ViT of the benchmark, as the official `libs/uvit.py` builds it.
fn config(img: usize, patch: usize, dim: usize) -> UVitConfig {
    UVitConfig {
        variant: Variant::Uvit,
        img_size: img,
        patch_size: patch,
        in_chans: 3,
        embed_dim: dim,
        depth: 12,
        num_heads: 8,
        mlp_ratio: 4.0,
        qkv_bias: false,
        mlp_time_embed: false,
        num_classes: None,
        clip_dim: 0,
        num_clip_token: 0,
        conv: true,
        skip: true,
    }
}

/// Weights file of a benchmark config.
fn weights(dir: &Path, name: &str) -> PathBuf {
    if name == "default" {
        PathBuf::from(DEFAULT_MODEL)
    } else {
        dir.join(format!("{name}.safetensors"))
    }
}

/// A benchmark model and its config. The default model is a deediff model file (config in its
/// `uvit_config` metadata, text encoder and heads beside the U-ViT), read by hand here since the
/// model-file reader lives in `deediff-sampler`, above this crate; the others are checkpoints with
/// a `config.json` beside them.
fn load(dir: &Path, name: &str) -> anyhow::Result<(UVit, UVitConfig)> {
    if name != "default" {
        let loaded = Checkpoint::load(weights(dir, name), &Default::default(), &Device::Cpu)?;
        return Ok((loaded.model, loaded.config));
    }
    let bytes = std::fs::read(DEFAULT_MODEL)?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let cfg: UVitConfig = serde_json::from_str(
        header["__metadata__"]["uvit_config"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{DEFAULT_MODEL}: no uvit_config metadata"))?,
    )?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
    Ok((UVit::new(&cfg, vb)?, cfg))
}

/// A deterministic input batch: noise, timesteps and (for `uvit_t2i`) a context.
fn inputs(cfg: &UVitConfig, batch: usize) -> candle_core::Result<(Tensor, Tensor, Conditioning)> {
    let dev = Device::Cpu;
    let x = Tensor::randn(
        0f32,
        1.0,
        (batch, cfg.in_chans, cfg.img_size, cfg.img_size),
        &dev,
    )?;
    let t: Vec<f32> = (0..batch).map(|i| (i * 997 % 1000) as f32).collect();
    let t = Tensor::from_vec(t, batch, &dev)?;
    let cond = if cfg.clip_dim > 0 {
        Conditioning::Context(Tensor::randn(
            0f32,
            1.0,
            (batch, cfg.num_clip_token, cfg.clip_dim),
            &dev,
        )?)
    } else {
        Conditioning::None
    };
    Ok((x, t, cond))
}

fn prepare(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, cfg) in [
        ("uvit_s2_cifar", config(32, 2, 512)),
        ("uvit_small_p4", config(32, 4, 256)),
    ] {
        let varmap = VarMap::new();
        UVit::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        varmap.save(weights(dir, name))?;
        std::fs::write(
            dir.join(format!("{name}.config.json")),
            serde_json::to_string_pretty(&cfg)?,
        )?;
    }
    for name in ["uvit_s2_cifar", "uvit_small_p4", "default"] {
        let (model, config) = load(dir, name)?;
        let (x, t, cond) = inputs(&config, 1)?;
        let eps = model.forward(&x, &t, &cond)?;
        let mut io = vec![("x".to_string(), x), ("t".into(), t), ("eps".into(), eps)];
        if let Conditioning::Context(c) = cond {
            io.push(("context".into(), c));
        }
        candle_core::safetensors::save(
            &io.into_iter().collect(),
            dir.join(format!("{name}.check.safetensors")),
        )?;
        std::fs::write(
            dir.join(format!("{name}.config.json")),
            serde_json::to_string_pretty(&config)?,
        )?;
    }
    println!("prepared {}", dir.display());
    Ok(())
}

fn serve(dir: &Path) -> anyhow::Result<()> {
    let mut models: HashMap<String, (UVit, UVitConfig)> = HashMap::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (&[name, batch, reps], dtype) = (&words[..words.len().min(3)], words.get(3)) else {
            anyhow::bail!("serve: expected `CONFIG BATCH REPS [f32|bf16]`, got {line:?}");
        };
        let (batch, reps): (usize, usize) = (batch.parse()?, reps.parse()?);
        deediff_unet::amx::set_bf16(dtype == Some(&"bf16"))?;
        if !models.contains_key(name) {
            models.insert(name.to_string(), load(dir, name)?);
        }
        let (model, cfg) = &models[name];
        let (x, t, cond) = inputs(cfg, batch)?;
        model.forward(&x, &t, &cond)?;
        let mut secs = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t0 = Instant::now();
            model.forward(&x, &t, &cond)?;
            secs.push(t0.elapsed().as_secs_f64());
        }
        println!("{}", serde_json::json!({ "seconds": secs }));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // As every deediff tool does at start-up.
    deediff_unet::pool::park_candle_workers();
    deediff_unet::alloc::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-uvit"));
    if args.iter().any(|a| a == "prepare") {
        prepare(&dir)
    } else if args.iter().any(|a| a == "serve") {
        serve(&dir)
    } else {
        // `cargo bench` without arguments (e.g. the whole workspace's benches): prepare only.
        prepare(&dir)
    }
}
