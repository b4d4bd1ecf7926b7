//! Text-to-image (or class-to-image) with early exits: `txt2img --prompt "an ankle boot"`.
//! Without `--model` it samples the embedded default model; latent models decode through the
//! autoencoder (`--vae`) and official text-to-image ones read a published text encoder
//! (`--text-encoder`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use deediff_eval::DeviceArg;
use deediff_examples::cli::{
    build_pipeline, load_model, parse_class, warn_about_prompts, ModelArgs, SamplingArgs,
};
use deediff_examples::progress::EvalBar;
use deediff_sampler::{grid, to_images, Condition, Hooks};

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
    /// Number of images.
    #[arg(long, default_value_t = 1)]
    num: usize,
    /// Seed of the first image; image k uses seed + k.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output PNG (a grid when --num > 1).
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
    deediff_examples::exit_on_error(run());
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if cli.num == 0 {
        bail!("--num must be at least 1");
    }
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
    warn_about_prompts(&bundle, cli.prompt.as_deref());
    let mut pipeline = build_pipeline(bundle, &cli.sampling, &device)?;
    if let Some(neg) = &cli.negative_prompt {
        pipeline.set_negative(Some(Condition::Text(neg.clone())))?;
    }
    let conditions = vec![condition; cli.num];
    let seeds: Vec<u64> = (0..cli.num as u64).map(|k| cli.seed + k).collect();
    if let Some(budget) = cli.sampling.budget {
        let cal = pipeline.calibrate_budget(budget, &conditions, &seeds)?;
        eprintln!(
            "budget {budget}: threshold {:.4} (depth {:.1}% on the calibration run)",
            cal.threshold,
            100.0 * cal.depth_fraction
        );
    }

    let bar = EvalBar::new(pipeline.scheduler().nfe() as u64, "steps");
    let mut on_progress = |p: &deediff_sampler::Progress| bar.update(p);
    let generated = pipeline.generate(
        &conditions,
        &seeds,
        Hooks {
            progress: Some(&mut on_progress),
            cancel: None,
        },
    )?;
    bar.finish();

    let images = to_images(&generated.samples)?;
    let sheet = if images.len() == 1 {
        images[0].clone()
    } else {
        grid(&images, (images.len() as f64).sqrt().ceil() as usize)
    };
    deediff_examples::write_atomic(&cli.out, |path| {
        Ok(sheet.save_with_format(path, image::ImageFormat::Png)?)
    })
    .with_context(|| format!("{}: cannot write the image", cli.out.display()))?;

    let r = &generated.report;
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
    if let Some(path) = &cli.report {
        let json = serde_json::to_string_pretty(&r.to_json())?;
        deediff_examples::write_atomic(path, |tmp| Ok(std::fs::write(tmp, json)?))
            .with_context(|| format!("{}: cannot write the report", path.display()))?;
    }
    Ok(())
}
