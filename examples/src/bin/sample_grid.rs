//! Draws a grid of samples from a text-to-image model: one column per prompt (default: the model's
//! example prompts, one per concept), `--rows` samples each, with the sampler's usual scheduler,
//! guidance and exit-policy flags. Used to check a model by eye (MODEL.md's pictures).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use deediff_eval::DeviceArg;
use deediff_examples::cli::{
    build_pipeline, check_batch, check_prompts, load_model, sample_grid, ModelArgs, SamplingArgs,
};
use deediff_examples::{check_outputs, check_seed_range, image_format, save_image};
use deediff_sampler::Condition;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    out: PathBuf,
    /// Prompts (default: the model's example prompts, one per concept).
    #[arg(long)]
    prompt: Vec<String>,
    #[arg(long, default_value_t = 2)]
    rows: usize,
    /// Images per network batch (the grid is filled batch by batch).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Image (row r, column c) uses seed `seed + r·columns + c`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    device: DeviceArg,
}

fn main() {
    deediff_examples::main(run);
}

fn run() -> Result<()> {
    let args = Args::parse();
    check_batch(args.batch)?;
    check_outputs(&[("--out", args.out.as_path())])?;
    image_format(&args.out)?;
    let device = args.device.open()?;
    let bundle = load_model(&args.model, &device)?;
    let prompts = match &args.prompt[..] {
        [] => bundle
            .text
            .as_ref()
            .map(|t| t.example_prompts())
            .unwrap_or_default(),
        given => given.to_vec(),
    };
    if prompts.is_empty() {
        bail!("this model names no example prompts: pass --prompt");
    }
    let count = match args.rows.checked_mul(prompts.len()) {
        Some(n) if args.rows > 0 => n,
        _ => bail!(
            "--rows {}: must be at least 1 (and rows × prompts must fit)",
            args.rows
        ),
    };
    check_seed_range(args.seed, count)?;
    check_prompts(&bundle, "--prompt", prompts.iter().map(String::as_str))?;
    let pipeline = build_pipeline(bundle, &args.sampling, &device)?;
    let (sheet, r) = sample_grid(
        &pipeline,
        count,
        prompts.len(),
        args.batch,
        args.seed,
        &|k: usize| Condition::Text(prompts[k % prompts.len()].clone()),
    )?;
    save_image(&args.out, &sheet)?;
    eprintln!(
        "{count} samples ({} prompts x {}) -> {} | {} | mean depth {:.2}/{} blocks",
        prompts.len(),
        args.rows,
        args.out.display(),
        pipeline.describe_policy(),
        r.mean_blocks(),
        r.num_blocks
    );
    Ok(())
}
