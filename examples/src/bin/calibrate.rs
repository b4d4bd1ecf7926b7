//! Calibration runs over real sampling trajectories of a model, written to small JSON files the
//! samplers read. `calibrate l2c --fraction 0.3 --out l2c.json` fits the static reuse schedule of
//! `--policy l2c` (see `deediff_uem::ReuseSchedule`) for the scheduler and step count given,
//! from full-depth runs over `--num` images (the model's example prompts, in turn).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use deediff_examples::cli::{build_pipeline, load_model, ModelArgs, SamplingArgs};
use deediff_sampler::Condition;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Calibrate reuse schedules on sampling trajectories")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Fit an L2C-style reuse schedule (per evaluation and block: run or reuse).
    L2c {
        /// Fraction of (evaluation, block) pairs to reuse, in [0, 1].
        #[arg(long)]
        fraction: f64,
        /// Calibration images.
        #[arg(long, default_value_t = 32)]
        num: usize,
        /// Seed of the first calibration image.
        #[arg(long, default_value_t = 1_000_000)]
        seed: u64,
        /// Where to write the schedule.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
}

fn main() {
    deediff_examples::main(run);
}

fn run() -> Result<()> {
    let What::L2c {
        fraction,
        num,
        seed,
        out,
        model,
        sampling,
    } = Cli::parse().what;
    if num == 0 {
        bail!("--num must be at least 1");
    }
    let device = Device::Cpu;
    let bundle = load_model(&model, &device)?;
    let conditions: Vec<Condition> = match &bundle.text {
        Some(text) => {
            let prompts = text.example_prompts();
            if prompts.is_empty() {
                bail!("this text-to-image model names no example prompts to calibrate on");
            }
            (0..num)
                .map(|k| Condition::Text(prompts[k % prompts.len()].clone()))
                .collect()
        }
        None => {
            // Class models: the real classes in turn (the last index is the null label).
            let classes = bundle.model.model().config().num_classes;
            (0..num)
                .map(|k| match classes {
                    None => Condition::Unconditional,
                    Some(n) => Condition::Class((k % n.saturating_sub(1).max(1)) as u32),
                })
                .collect()
        }
    };
    let seeds: Vec<u64> = (0..num as u64).map(|k| seed + k).collect();
    let mut pipeline = build_pipeline(bundle, &sampling, &device)?;
    let schedule = pipeline.fit_reuse_schedule(fraction, &conditions, &seeds)?;
    schedule
        .save(&out)
        .with_context(|| format!("{}: cannot write the schedule", out.display()))?;
    println!(
        "{}: reuses {:.1}% of {} evaluations × {} blocks (use with the same --scheduler and --steps)",
        out.display(),
        100.0 * schedule.reuse_fraction(),
        schedule.evaluations(),
        schedule.blocks,
    );
    Ok(())
}
