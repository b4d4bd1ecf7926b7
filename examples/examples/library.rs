//! deediff as a library inside a Rust image pipeline: load the embedded model, sample four
//! images with per-sample early exits, then post-process them with the `image` crate.
//!
//! `cargo run --release -p deediff-examples --example library`

use candle_core::Device;
use deediff_sampler::{to_images, Condition, Hooks, ModelBundle, Pipeline};
use deediff_schedules::SchedulerConfig;
use deediff_uem::ExitPolicy;
use image::imageops::FilterType;

fn main() -> anyhow::Result<()> {
    // Before any thread exists: candle's own workers park between ops instead of spinning on
    // the cores the sampler runs on (3–8 % of a run on 2 vCPUs).
    deediff_unet::pool::park_candle_workers();
    let device = Device::Cpu;
    let bundle = ModelBundle::default_model(&device)?;
    let scheduler = SchedulerConfig::by_name("dpmpp-2m", bundle.training.betas())?;
    let mut pipeline = Pipeline::from_bundle(bundle, scheduler, 20, device)?;
    pipeline.set_policy(ExitPolicy::per_sample(0.9)?)?;

    let prompts = [
        "an ankle boot",
        "a handwritten 3",
        "a pair of trousers",
        "a bag",
    ];
    let conditions: Vec<Condition> = prompts
        .iter()
        .map(|p| Condition::Text(p.to_string()))
        .collect();
    let out = pipeline.generate(&conditions, &[0, 1, 2, 3], Hooks::default())?;

    for (prompt, img) in prompts.iter().zip(to_images(&out.samples)?) {
        // Any `image` processing from here on: upscale 4× and save.
        let big = img.resize(112, 112, FilterType::Lanczos3);
        big.save(format!("{}.png", prompt.replace(' ', "_")))?;
    }
    println!(
        "mean depth {:.2}/{} blocks, {:.1}% of full-depth compute",
        out.report.mean_blocks(),
        out.report.num_blocks,
        100.0 * out.report.macs_fraction()
    );
    Ok(())
}
