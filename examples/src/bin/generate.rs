//! Batch generation for FID: `generate --num 10000 --batch 16 --out samples/`.
//!
//! Image `i` is always `{i:06}.png` generated with seed `seed + i`, so `--shard k/n` splits a run
//! across machines into disjoint, reproducible slices, and a killed run restarted with the same
//! arguments skips the finished files (each written atomically) and produces the same images as
//! an uninterrupted run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use deediff_eval::npz::write_images_npz;
use deediff_eval::{frechet_distance, DeviceArg, FidInception, Moments, Stats};
use deediff_examples::cli::{
    build_pipeline, load_model, parse_class, warn_about_prompts, ModelArgs, SamplingArgs,
};
use deediff_examples::progress::EvalBar;
use deediff_examples::write_atomic;
use deediff_sampler::{to_images, Condition, Hooks, RunReport};
use deediff_unet::Variant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Generate numbered sample images (resumable, shardable) for FID")]
struct Cli {
    /// Images in the whole run (all shards).
    #[arg(long)]
    num: usize,
    /// Images per network batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Output folder for `000123.png` files.
    #[arg(long)]
    out: PathBuf,
    /// Base seed: image i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// This machine's slice `k/n` (0 ≤ k < n) of the run.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// One prompt for every image …
    #[arg(long, conflicts_with_all = ["prompts", "class"])]
    prompt: Option<String>,
    /// … or a file of prompts, image i taking line i mod lines.
    #[arg(long, conflicts_with = "class")]
    prompts: Option<PathBuf>,
    /// Class of every image, an index or an ImageNet class name (class-conditional models;
    /// default: image i gets class i mod K).
    #[arg(long)]
    class: Option<String>,
    /// Write the run report (this invocation's images) as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Score the shard against these pytorch-fid statistics (`.npz`) as it is generated (new
    /// images are featurised in memory, resumed ones read back); writes the shard's mergeable
    /// moments to `OUT/fid-moments-K-of-N.npz` for `fid --merge-stats`.
    #[arg(long)]
    fid_stats: Option<PathBuf>,
    /// With --fid-stats: score the images without writing PNGs (nothing to resume from: a killed
    /// run starts over).
    #[arg(long, requires = "fid_stats", conflicts_with = "npz")]
    no_png: bool,
    /// Also pack the shard's images into this uint8 `.npz` (`arr_0`, `[N, H, W, 3]`, the sample
    /// batch format of FID evaluators), written atomically once the shard is complete.
    #[arg(long)]
    npz: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    device: DeviceArg,
}

/// `k/n` → the half-open index range of shard k.
fn shard_range(spec: &str, num: usize) -> Result<std::ops::Range<usize>> {
    let bad = || anyhow::anyhow!("--shard {spec:?}: expected k/n with 0 ≤ k < n");
    let (k, n) = spec.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok(k * num / n..(k + 1) * num / n)
}

fn image_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{i:06}.png"))
}

/// Packs the PNGs of `range` (all present once the shard is done) into `path`, one image in
/// memory at a time.
fn write_npz(path: &Path, dir: &Path, range: std::ops::Range<usize>) -> Result<()> {
    let read = |i: usize| -> std::result::Result<image::RgbImage, String> {
        let p = image_path(dir, i);
        Ok(image::open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .to_rgb8())
    };
    let first = read(range.start).map_err(anyhow::Error::msg)?;
    let shape = [
        range.len(),
        first.height() as usize,
        first.width() as usize,
        3,
    ];
    // The first image, already decoded for the shape, is packed as it is.
    let mut first = Some(first);
    write_atomic(path, |tmp| {
        Ok(write_images_npz(tmp, shape, |k| match first.take() {
            Some(image) if k == 0 => Ok(image.into_raw()),
            _ => Ok(read(range.start + k)?.into_raw()),
        })?)
    })
    .with_context(|| format!("{}: cannot write the .npz", path.display()))?;
    eprintln!(
        "{} images -> {} (arr_0 {shape:?} uint8)",
        range.len(),
        path.display()
    );
    Ok(())
}

fn main() {
    deediff_examples::exit_on_error(run());
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if cli.num == 0 || cli.batch == 0 {
        bail!("--num and --batch must be at least 1");
    }
    let range = shard_range(&cli.shard, cli.num)?;
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("{}: cannot create the output folder", cli.out.display()))?;
    let probe = cli.out.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("{}: output folder is not writable", cli.out.display()))?;
    std::fs::remove_file(&probe)?;

    let device = cli.device.open()?;
    let bundle = load_model(&cli.model, &device)?;
    let cfg = bundle.model.model().config().clone();
    let class = cli
        .class
        .as_deref()
        .map(|c| parse_class(c, &cfg))
        .transpose()?;
    let prompts = match &cli.prompts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read prompts", path.display()))?;
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if lines.is_empty() {
                bail!("{}: no prompts in the file", path.display());
            }
            lines
        }
        None => cli.prompt.iter().cloned().collect(),
    };
    warn_about_prompts(&bundle, prompts.iter().map(String::as_str));
    let condition = |i: usize| -> Result<Condition> {
        Ok(match (cfg.variant, cfg.num_classes) {
            (Variant::UvitT2i, _) if prompts.is_empty() => {
                bail!("a text-to-image model needs --prompt or --prompts")
            }
            (Variant::UvitT2i, _) => Condition::Text(prompts[i % prompts.len()].clone()),
            (Variant::Uvit, Some(rows)) => {
                Condition::Class(class.unwrap_or((i % (rows - 1)) as u32))
            }
            (Variant::Uvit, None) => Condition::Unconditional,
        })
    };

    let mut pipeline = build_pipeline(bundle, &cli.sampling, &device)?;
    if let Some(budget) = cli.sampling.budget {
        // Calibrated on the first images of the whole run, so every shard gets the same threshold.
        let calib: Vec<usize> = (0..cli.num.min(8)).collect();
        let conds = calib
            .iter()
            .map(|&i| condition(i))
            .collect::<Result<Vec<_>>>()?;
        let seeds: Vec<u64> = calib.iter().map(|&i| cli.seed + i as u64).collect();
        let cal = pipeline.calibrate_budget(budget, &conds, &seeds)?;
        eprintln!(
            "budget {budget}: threshold {:.4} (depth {:.1}% on the calibration run)",
            cal.threshold,
            100.0 * cal.depth_fraction
        );
    }

    let (done, todo): (Vec<usize>, Vec<usize>) = range
        .clone()
        .partition(|&i| !cli.no_png && image_path(&cli.out, i).exists());
    // FID scoring: the network and reference load before any work, so a bad path fails early.
    let mut scoring = match &cli.fid_stats {
        Some(path) => {
            let net = FidInception::load(None)?.on_device(&device)?;
            let reference = Stats::load(path)?;
            let mut moments = Moments::new(2048);
            let resumed: Vec<PathBuf> = done.iter().map(|&i| image_path(&cli.out, i)).collect();
            if !resumed.is_empty() {
                moments.add_features(&net.features_files(&resumed, 2048, 50, &mut |_| {})?)?;
            }
            Some((net, reference, moments))
        }
        None => None,
    };
    eprintln!(
        "shard {} = images {}..{}: {} done, {} to generate with {}",
        cli.shard,
        range.start,
        range.end,
        done.len(),
        todo.len(),
        pipeline.describe_policy()
    );
    let bar = EvalBar::new(range.len() as u64, "images");
    bar.set(0, 0.0);
    let mut finished = done.len() as u64;
    let mut report: Option<RunReport> = None;
    for chunk in todo.chunks(cli.batch) {
        let conds = chunk
            .iter()
            .map(|&i| condition(i))
            .collect::<Result<Vec<_>>>()?;
        let seeds: Vec<u64> = chunk.iter().map(|&i| cli.seed + i as u64).collect();
        let generated = pipeline.generate(&conds, &seeds, Hooks::default())?;
        let images = to_images(&generated.samples)?;
        if let Some((net, _, moments)) = &mut scoring {
            let rgb: Vec<_> = images.iter().map(|i| i.to_rgb8()).collect();
            moments.add_features(&net.features_rgb8(&rgb, 2048)?)?;
        }
        for (&i, img) in chunk.iter().zip(images).filter(|_| !cli.no_png) {
            let path = image_path(&cli.out, i);
            write_atomic(&path, |tmp| {
                Ok(img.save_with_format(tmp, image::ImageFormat::Png)?)
            })
            .with_context(|| format!("{}: cannot write the image", path.display()))?;
        }
        match &mut report {
            Some(r) => r.merge(&generated.report),
            None => report = Some(generated.report),
        }
        finished += chunk.len() as u64;
        bar.set(
            finished,
            report.as_ref().map_or(0.0, RunReport::mean_blocks),
        );
    }
    bar.finish();
    if let (Some(path), false) = (&cli.npz, range.is_empty()) {
        write_npz(path, &cli.out, range.clone())?;
    }

    if let Some((_, reference, moments)) = &scoring {
        let (k, n) = cli.shard.split_once('/').expect("validated by shard_range");
        let path = cli.out.join(format!("fid-moments-{k}-of-{n}.npz"));
        write_atomic(&path, |tmp| Ok(moments.save(tmp)?))?;
        println!(
            "FID of these {} images vs {}: {:.4} (moments: {})",
            range.len(),
            cli.fid_stats
                .as_ref()
                .expect("scoring implies stats")
                .display(),
            frechet_distance(&moments.stats()?, reference)?,
            path.display()
        );
    }
    if let Some(r) = &report {
        eprintln!(
            "{} images in {:.1} s ({:.2} images/s) | mean depth {:.2}/{} blocks ({:.1}%) | compute {:.1}% of full depth",
            r.images,
            r.seconds,
            r.images_per_second(),
            r.mean_blocks(),
            r.num_blocks,
            100.0 * r.depth_fraction(),
            100.0 * r.macs_fraction()
        );
        if let Some(path) = &cli.report {
            let json = serde_json::to_string_pretty(&r.to_json())?;
            write_atomic(path, |tmp| Ok(std::fs::write(tmp, json)?))
                .with_context(|| format!("{}: cannot write the report", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shard_range;

    #[test]
    fn shards_partition_the_run() {
        let parts: Vec<_> = (0..3)
            .map(|k| shard_range(&format!("{k}/3"), 10).unwrap())
            .collect();
        assert_eq!(parts, vec![0..3, 3..6, 6..10]);
        assert!(shard_range("3/3", 10).is_err());
        assert!(shard_range("x", 10).is_err());
    }
}
