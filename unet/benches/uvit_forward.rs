//! `bench/uvit_forward`, Rust side: U-ViT forward time at full depth and static exits.
//!
//! Writes random weights (`<cfg>.safetensors` + `<cfg>.config.json`), a batch-1 input/output pair
//! for the cross-check and `rust.json` with the medians into `target/bench-uvit/` (or
//! `$UVIT_BENCH_DIR`); `bench/uvit_forward.py` then times PyTorch on the same weights and prints the
//! comparison. Run with `RAYON_NUM_THREADS=2 cargo bench -p deediff-unet --bench uvit_forward`.
//! `UVIT_BENCH_DEVICE=cuda` (a build with `--features cuda`) times the GPU at batch 1, 16 and 128
//! instead (scripts/gpu_check.sh).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use deediff_unet::{Conditioning, UVit, UVitConfig, Variant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// (median, min) seconds of `reps` runs after one warm-up. The min is printed too because the
/// shared benchmark machine is often loaded by other jobs.
/// GPU work is queued: each run waits for the device to finish before its clock stops.
fn time(
    dev: &Device,
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(f64, f64)> {
    f()?;
    dev.synchronize()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        dev.synchronize()?;
        v.push(t0.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok((v[v.len() / 2], v[0]))
}

/// Matmul peak: best GFLOP/s of a 1024×1024×1024 f32 matmul through candle (gemm / cuBLAS).
fn matmul_peak(dev: &Device) -> candle_core::Result<f64> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let (_, best) = time(dev, 10, || a.matmul(&b))?;
    Ok(2.0 * (n * n * n) as f64 / best / 1e9)
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::var_os("UVIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-uvit"));
    std::fs::create_dir_all(&dir)?;
    let quick = std::env::args().any(|a| a == "--quick");
    let dev = match std::env::var("UVIT_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0)?,
        _ => Device::Cpu,
    };
    let peak = matmul_peak(&dev)?;
    println!(
        "threads {} | matmul peak {peak:.1} GFLOP/s (1024³ f32)",
        candle_core::utils::get_num_threads()
    );
    let mut rows = Vec::new();
    for (name, cfg) in [
        ("uvit_s2_cifar", config(32, 2, 512)),
        ("uvit_small_p4", config(32, 4, 256)),
    ] {
        let varmap = VarMap::new();
        // VarMap-backed: every op records gradients, so this model runs the differentiable candle
        // compositions instead of the fused kernels (the "before" of the kernel work).
        let candle_ops = UVit::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        varmap.save(dir.join(format!("{name}.safetensors")))?;
        std::fs::write(
            dir.join(format!("{name}.config.json")),
            serde_json::to_string_pretty(&cfg)?,
        )?;
        // Reload through the checkpoint path so the benchmark runs exactly the inference model.
        let model = deediff_unet::Checkpoint::load(
            dir.join(format!("{name}.safetensors")),
            &Default::default(),
            &dev,
        )?
        .model;
        let n = model.num_blocks();
        let macs = model.macs().clone();
        let batches: &[usize] = if dev.is_cpu() {
            &[1, 16]
        } else {
            &[1, 16, 128]
        };
        for &batch in batches {
            let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), &dev)?;
            let t = Tensor::from_vec(
                (0..batch)
                    .map(|i| (i * 997 % 1000) as f32)
                    .collect::<Vec<_>>(),
                batch,
                &dev,
            )?;
            if batch == 1 {
                let eps = model.forward(&x, &t, &Conditioning::None)?;
                candle_core::safetensors::save(
                    &[
                        ("x".to_string(), x.clone()),
                        ("t".into(), t.clone()),
                        ("eps".into(), eps),
                    ]
                    .into_iter()
                    .collect(),
                    dir.join(format!("{name}.check.safetensors")),
                )?;
            }
            let depths: Vec<usize> = if quick { vec![n] } else { vec![n, 10, 7, 4, 1] };
            // Off the CPU both models run candle's ops: the fused kernels are CPU-only.
            let runs = std::iter::once(("candle-ops", &candle_ops, n))
                .filter(|_| !quick && dev.is_cpu())
                .chain(depths.into_iter().map(|k| ("fused", &model, k)));
            for (imp, model, k) in runs {
                let reps = if batch == 1 { 9 } else { 5 };
                let (s, min) = time(&dev, reps, || run(model, &x, &t, k))?;
                let flops = 2.0 * (macs.truncated(k) * batch as u64) as f64;
                let gflops = flops / s / 1e9;
                println!(
                    "{name:14} {imp:10} batch {batch:2} blocks {k:2}/{n}: median {:9.2} ms (min {:9.2})  {gflops:6.1} GFLOP/s ({:4.1}% of peak)",
                    s * 1e3,
                    min * 1e3,
                    100.0 * gflops / peak
                );
                rows.push(serde_json::json!({
                    "config": name, "impl": imp, "batch": batch, "blocks": k, "num_blocks": n,
                    "ms": s * 1e3, "min_ms": min * 1e3, "gflop": flops / 1e9,
                }));
            }
        }
    }
    let report = serde_json::json!({ "matmul_peak_gflops": peak, "rows": rows });
    std::fs::write(
        dir.join("rust.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("wrote {}", dir.join("rust.json").display());
    Ok(())
}

/// The first `k` blocks, then the shared output head (a static exit; `k = depth+1` is full depth).
fn run(model: &UVit, x: &Tensor, t: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let mut h = model.embed(x, t, &Conditioning::None)?;
    let mut skips = Vec::new();
    for i in 0..k {
        h = model.block(i, &h, &mut skips)?;
    }
    model.decode(&h)
}
