//! Calibration runs over real sampling trajectories of a model.
//!
//! * `calibrate l2c --fraction 0.3 --out l2c.json` fits the static reuse schedule of
//!   `--policy l2c` (see `deediff_uem::ReuseSchedule`) for the scheduler and step count given,
//!   from full-depth runs over `--num` images, written to a small JSON file the samplers read.
//! * `calibrate filled --num 256 --out model.safetensors` fits the filled-exit heads `--policy
//!   cached` decides with (see `deediff_train::filled_heads`) on the filled exits of full-depth
//!   runs at the model's default scheduler and steps, and writes the model file with them.
//!
//! Calibration images are the model's example prompts (or its classes) in turn, seeds from
//! `--seed` on.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use clap::{Args, Parser, Subcommand};
use deediff_examples::cli::{
    build_pipeline, load_model, load_model_bytes, ModelArgs, SamplingArgs, DEFAULT_SCHEDULER,
};
use deediff_sampler::{Condition, ModelBundle};
use deediff_train::filled_heads::{fit_filled_heads, BlockFit, FitOptions};
use deediff_unet::model_file::{self, key, FILLED_HEAD_PREFIX};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Calibrate reuse schedules on sampling trajectories")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

/// What every calibration reads and writes.
#[derive(Args, Debug)]
struct Common {
    /// Seed of the first calibration image.
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// Where the result goes (for `filled`, a model file: may be the `--model` file itself).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

impl Common {
    /// Image `k`'s seed, for `num` images.
    fn seeds(&self, num: usize) -> Vec<u64> {
        (0..num as u64).map(|k| self.seed + k).collect()
    }
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
        #[command(flatten)]
        common: Common,
    },
    /// Fit the filled-exit heads of a deediff model file (what `--policy cached` decides with).
    Filled {
        /// Calibration images (a fifth of them are held out to score the fit).
        #[arg(long, default_value_t = 256)]
        num: usize,
        /// Images per sampling run.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// AdamW updates of the fit.
        #[arg(long, default_value_t = 600)]
        updates: usize,
        #[command(flatten)]
        common: Common,
    },
}

fn main() {
    deediff_examples::main(run);
}

fn run() -> Result<()> {
    match Cli::parse().what {
        What::L2c {
            fraction,
            num,
            common,
        } => l2c(fraction, num, &common),
        What::Filled {
            num,
            batch,
            updates,
            common,
        } => filled(num, batch, updates, &common),
    }
}

/// The calibration images' conditions: the model's example prompts, or its classes, in turn.
fn conditions(bundle: &ModelBundle, num: usize) -> Result<Vec<Condition>> {
    if num == 0 {
        bail!("--num must be at least 1");
    }
    Ok(match &bundle.text {
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
    })
}

fn l2c(fraction: f64, num: usize, common: &Common) -> Result<()> {
    let (out, model, sampling) = (&common.out, &common.model, &common.sampling);
    let device = Device::Cpu;
    let bundle = load_model(model, &device)?;
    let conditions = conditions(&bundle, num)?;
    let seeds = common.seeds(num);
    let mut pipeline = build_pipeline(bundle, sampling, &device)?;
    let schedule = pipeline.fit_reuse_schedule(fraction, &conditions, &seeds)?;
    schedule
        .save(out)
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

fn filled(num: usize, batch: usize, updates: usize, common: &Common) -> Result<()> {
    let (out, model, sampling) = (&common.out, &common.model, &common.sampling);
    // The bytes the heads are fitted on are the bytes sampled from and written back.
    let (bytes, origin) = match &model.model {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            (bytes, path.display().to_string())
        }
        None => (
            deediff_sampler::DEFAULT_MODEL.to_vec(),
            "<embedded default model>".to_string(),
        ),
    };
    if !model_file::read_metadata(&bytes, &origin)?.contains_key(key::UVIT_CONFIG) {
        bail!(
            "{origin}: not a deediff model file (filled heads are written into model files only)"
        );
    }
    let device = Device::Cpu;
    let bundle = load_model_bytes(model, &bytes, &origin, &device)?;
    let mut metadata = bundle.metadata.clone();
    let cfg = bundle.model.model().config().clone();
    let conditions = conditions(&bundle, num)?;
    let seeds = common.seeds(num);
    let has_heads = bundle.model.heads().is_some();
    let args = sampling.with_defaults(bundle.sampling_defaults.as_ref(), has_heads);
    let pipeline = build_pipeline(bundle, &args, &device)?;
    let scheduler = args.scheduler.as_deref().unwrap_or(DEFAULT_SCHEDULER);
    eprintln!(
        "recording filled exits: {} images, {scheduler}, {} evaluations",
        num,
        pipeline.scheduler().nfe()
    );
    let records = pipeline.record_fills(&conditions, &seeds, batch)?;
    let opts = FitOptions {
        steps: updates,
        ..FitOptions::default()
    };
    let stored = candle_core::safetensors::load_buffer(&bytes, &device)?;
    let vb = VarBuilder::from_tensors(stored.clone(), DType::F32, &device);
    let fit = fit_filled_heads(&cfg, &vb, &records, &opts)?;
    print_fit(&fit.blocks);
    let mut tensors: Vec<(String, candle_core::Tensor)> = stored
        .into_iter()
        .filter(|(name, _)| !name.starts_with(&format!("{FILLED_HEAD_PREFIX}.")))
        .collect();
    tensors.extend(fit.tensors);
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let how = json!({
        "command": std::iter::once("calibrate".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        "scheduler": scheduler,
        "evaluations": pipeline.scheduler().nfe(),
        "images": num,
        "seed": common.seed,
        "exits_recorded": records.samples.len(),
        "fit": opts,
        "heldout": fit.blocks,
    });
    metadata.insert(key::FILLED_HEADS.to_string(), how.to_string());
    let bytes = model_file::serialize(tensors, metadata)?;
    deediff_examples::write_checked(out, "model file", |w| w.write_all(&bytes))?;
    println!("{}: filled-exit heads written", out.display());
    Ok(())
}

/// The held-out scores, one line per block.
fn print_fit(blocks: &[BlockFit]) {
    println!("block  exits  mean target   L_u filled / truncated   corr filled / truncated");
    for b in blocks {
        println!(
            "{:>5} {:>6} {:>12.4} {:>12.5} / {:<10.5} {:>9.3} / {:.3}",
            b.block,
            b.heldout,
            b.mean_target,
            b.mse_filled,
            b.mse_truncated,
            b.corr_filled,
            b.corr_truncated
        );
    }
}
