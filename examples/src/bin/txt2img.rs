//! Text-to-image (or class-to-image) with early exits: `txt2img --prompt "an ankle boot"`.
//! Without `--model` it samples the embedded default model; latent models decode through the
//! autoencoder (`--vae`) and official text-to-image ones read a published text encoder
//! (`--text-encoder`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use deediff_eval::DeviceArg;
use deediff_examples::cli::{
    build_pipeline, check_batch, check_prompts, load_model, parse_class, sample_grid, write_report,
    ModelArgs, SamplingArgs, CALIBRATION_IMAGES,
};
use deediff_examples::{check_outputs, check_seed_range, image_format, save_image, seeds};
use deediff_sampler::Condition;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Sample images with uncertainty-aware early exits")]
struct Cli {
    /// What to draw (text-to-image models).
    #[arg(long, conflicts_with = "class")]
    prompt: Option<String>,
    /// Steer away from this prompt: its encoding replaces the null prompt in guidance.
    #[arg(long, requires = "prompt")]
    negative_prompt: Option<String>,
    /// Class index, or for ImageNet models a class name such as "golden retriever"
    /// (class-conditional models).
    #[arg(long)]
    class: Option<String>,
    /// Number of images (a grid when more than one).
    #[arg(long, default_value_t = 1)]
    num: usize,
    /// Images per network batch (memory grows with it; the grid is filled batch by batch).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Seed of the first image; image k uses seed + k.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output image, .png or .jpg (a grid when --num > 1).
    #[arg(long, default_value = "out.png")]
    out: PathBuf,
    /// Also write the run report (depth per timestep, MACs, seconds) as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
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
    let cli = Cli::parse();
    if cli.num == 0 {
        bail!("--num must be at least 1");
    }
    check_batch(cli.batch)?;
    check_seed_range(cli.seed, cli.num)?;
    let mut outputs = vec![("--out", cli.out.as_path())];
    outputs.extend(cli.report.as_deref().map(|r| ("--report", r)));
    check_outputs(&outputs)?;
    image_format(&cli.out)?;
    let device = cli.device.open()?;
    let bundle = load_model(&cli.model, &device)?;
    let condition = match (&cli.prompt, &cli.class) {
        (Some(p), _) => Condition::Text(p.clone()),
        (None, Some(k)) => Condition::Class(parse_class(k, bundle.model.model().config())?),
        (None, None) if bundle.text.is_some() => {
            bail!("this is a text-to-image model: give --prompt, e.g. --prompt \"an ankle boot\"")
        }
        (None, None) => Condition::Unconditional,
    };
    check_prompts(&bundle, "--prompt", cli.prompt.as_deref())?;
    check_prompts(&bundle, "--negative-prompt", cli.negative_prompt.as_deref())?;
    let mut pipeline = build_pipeline(bundle, &cli.sampling, &device)?;
    if let Some(neg) = &cli.negative_prompt {
        pipeline.set_negative(Some(Condition::Text(neg.clone())))?;
    }
    if let Some(budget) = cli.sampling.budget {
        // Calibrated on the first images only: a long run's threshold is set by a sample of it.
        let n = cli.num.min(CALIBRATION_IMAGES);
        let cal = pipeline.calibrate_budget(
            budget,
            &vec![condition.clone(); n],
            &seeds(cli.seed, 0..n)?,
        )?;
        eprintln!(
            "budget {budget}: threshold {:.4} (depth {:.1}% on the calibration run)",
            cal.threshold,
            100.0 * cal.depth_fraction
        );
    }

    let cols = (cli.num as f64).sqrt().ceil() as usize;
    let (sheet, r) = sample_grid(
        &pipeline,
        cli.num,
        cols,
        cli.batch,
        cli.seed,
        &|_: usize| condition.clone(),
    )?;
    save_image(&cli.out, &sheet)?;
    // The report before the summary: it is printed only over outputs that were all written.
    if let Some(path) = &cli.report {
        write_report(path, &r)?;
    }
    println!(
        "{} image(s) → {} | policy {} | mean depth {:.2}/{} blocks ({:.1}%) | compute {:.1}% of full depth (≈{:.2}× fewer MACs) | {:.2} s, {:.2} images/s",
        r.images,
        cli.out.display(),
        pipeline.describe_policy(),
        r.mean_blocks(),
        r.num_blocks,
        100.0 * r.depth_fraction(),
        100.0 * r.macs_fraction(),
        1.0 / r.macs_fraction(),
        r.seconds,
        r.images_per_second()
    );
    Ok(())
}
