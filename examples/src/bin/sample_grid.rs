//! Draws a grid of samples from a text-to-image model file written by `train` (full depth, DDIM
//! with classifier-free guidance): one column per prompt (default: the model's example prompts),
//! `--rows` samples each. Used to check the default model by eye while it trains.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Parser;
use deediff_schedules::{sample, ModelError, Scheduler, SchedulerConfig, SeededNoise};
use deediff_unet::text_encoder::TextEncoder;
use deediff_unet::{Conditioning, UVit, UVitConfig};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Prompts (default: the model's example prompts, one per concept).
    #[arg(long)]
    prompt: Vec<String>,
    #[arg(long, default_value_t = 2)]
    rows: usize,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Guidance scale s: ε = ε_u + s·(ε_c − ε_u).
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Clip the predicted x₀ to [-1, 1] (diffusers' DDIM `clip_sample`, which keeps the unclipped ε
    /// for the direction term: at high noise that mismatch turns samples into noise).
    #[arg(long)]
    clip_sample: bool,
}

fn main() {
    deediff_examples::exit_on_error(run());
}

fn run() -> Result<()> {
    let args = Args::parse();
    let dev = Device::Cpu;
    let bytes = std::fs::read(&args.model)
        .with_context(|| format!("{}: cannot read", args.model.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let cfg: UVitConfig = serde_json::from_str(
        meta.get("uvit_config")
            .context("model file has no uvit_config metadata")?,
    )?;
    let vb = VarBuilder::from_tensors(
        candle_core::safetensors::load_buffer(&bytes, &dev)?,
        DType::F32,
        &dev,
    );
    let model = UVit::new(&cfg, vb)?;
    let text = TextEncoder::load(&args.model, &dev)?;
    let prompts: Vec<String> = if args.prompt.is_empty() {
        text.config().example_prompts.clone()
    } else {
        args.prompt.clone()
    };
    if prompts.is_empty() {
        bail!("no prompts");
    }
    let b = prompts.len() * args.rows;
    let per_row: Vec<&str> = (0..args.rows)
        .flat_map(|_| prompts.iter().map(String::as_str))
        .collect();
    let ctx = Tensor::cat(
        &[
            text.encode_prompts(&per_row, &dev)?,
            text.encode_null(b, &dev)?,
        ],
        0,
    )?;
    let cond = Conditioning::Context(ctx);
    let (c, s) = (cfg.in_chans, cfg.img_size);
    // The training schedule with DDIM's update.
    let ddim = serde_json::json!({
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        "clip_sample": args.clip_sample
    });
    let scheduler = Scheduler::new(
        &SchedulerConfig::from_diffusers_json(&ddim.to_string())?,
        args.steps,
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let z: Vec<f64> = (0..b * c * s * s)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let g = args.guidance;
    let net =
        |x: &[f64], t: deediff_schedules::ModelTime| -> std::result::Result<Vec<f64>, ModelError> {
            let run = || -> candle_core::Result<Vec<f64>> {
                let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let x = Tensor::from_vec(x, (b, c, s, s), &dev)?;
                let x2 = Tensor::cat(&[&x, &x], 0)?;
                let tt = Tensor::full(t.t as f32, 2 * b, &dev)?;
                let eps = model.forward(&x2, &tt, &cond)?;
                let (ec, eu) = (eps.narrow(0, 0, b)?, eps.narrow(0, b, b)?);
                let out = (&eu + ((ec - &eu)? * g)?)?;
                Ok(out
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(f64::from)
                    .collect())
            };
            run().map_err(|e| ModelError::from(e.to_string()))
        };
    let out = sample(
        &scheduler,
        &z,
        net,
        &mut SeededNoise::new(args.seed),
        |_, _| {},
    )?;
    // Grid: columns = prompts, rows = samples; grayscale of channel 0.
    let cols = prompts.len();
    let mut img = image::GrayImage::new((cols * s) as u32, (args.rows * s) as u32);
    for (i, px) in out.x.chunks_exact(c * s * s).enumerate() {
        let (row, col) = (i / cols, i % cols);
        for y in 0..s {
            for x in 0..s {
                let v = ((px[y * s + x] + 1.0) * 127.5).clamp(0.0, 255.0) as u8;
                img.put_pixel((col * s + x) as u32, (row * s + y) as u32, image::Luma([v]));
            }
        }
    }
    img.save(&args.out)
        .with_context(|| format!("{}: cannot write", args.out.display()))?;
    eprintln!(
        "{} samples ({} prompts x {}) -> {}",
        b,
        cols,
        args.rows,
        args.out.display()
    );
    Ok(())
}
