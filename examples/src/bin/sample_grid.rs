//! Draws a grid of samples from a text-to-image model: one column per prompt (default: the model's
//! example prompts, one per concept), `--rows` samples each, with the sampler's usual scheduler,
//! guidance and exit-policy flags. Used to check a model by eye (MODEL.md's pictures).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use deediff_eval::DeviceArg;
use deediff_examples::cli::{
    build_pipeline, load_model, warn_about_prompts, ModelArgs, SamplingArgs,
};
use deediff_sampler::{grid, to_images, Condition, Hooks};

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
    deediff_examples::exit_on_error(run());
}

fn run() -> Result<()> {
    let args = Args::parse();
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
    if args.rows == 0 {
        bail!("--rows must be at least 1");
    }
    warn_about_prompts(&bundle, prompts.iter().map(String::as_str));
    let pipeline = build_pipeline(bundle, &args.sampling, &device)?;
    let conds: Vec<Condition> = (0..args.rows)
        .flat_map(|_| prompts.iter().map(|p| Condition::Text(p.clone())))
        .collect();
    let seeds: Vec<u64> = (0..conds.len() as u64).map(|i| args.seed + i).collect();
    let generated = pipeline.generate(&conds, &seeds, Hooks::default())?;
    grid(&to_images(&generated.samples)?, prompts.len())
        .save(&args.out)
        .with_context(|| format!("{}: cannot write", args.out.display()))?;
    let r = &generated.report;
    eprintln!(
        "{} samples ({} prompts x {}) -> {} | {} | mean depth {:.2}/{} blocks",
        conds.len(),
        prompts.len(),
        args.rows,
        args.out.display(),
        pipeline.describe_policy(),
        r.mean_blocks(),
        r.num_blocks
    );
    Ok(())
}
