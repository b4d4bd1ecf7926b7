//! Batch generation for FID: `generate --num 10000 --batch 16 --out samples/`.
//!
//! Image `i` is always `{i:06}.png` generated with seed `seed + i`, so `--shard k/n` (or a Slurm /
//! Kubernetes array index) splits a run across machines into disjoint, reproducible slices, and a
//! killed run restarted with the same arguments skips the finished files (each written
//! atomically, checked on resume) and produces the same images as an uninterrupted run. The
//! folder's run manifest refuses a restart with other settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use deediff_eval::npz::write_images_npz;
use deediff_eval::{frechet_distance, DeviceArg, FidInception, Moments, Stats};
use deediff_examples::cli::{
    build_pipeline, check_batch, check_prompts, load_model, parse_class, write_report, ModelArgs,
    SamplingArgs, CALIBRATION_IMAGES,
};
use deediff_examples::manifest::{partition_done, sha256, sha256_file, Manifest, Verify};
use deediff_examples::progress::EvalBar;
use deediff_examples::shard::Shard;
use deediff_examples::{check_outputs, check_seed_range, save_image, seed_of, seeds};
use deediff_sampler::{
    to_images, Condition, Hooks, ModelBundle, Pipeline, RunReport, DEFAULT_MODEL,
};
use deediff_unet::Variant;
use image::DynamicImage;

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
    /// This machine's slice `k/n` (0 ≤ k < n) of the run. Default: the array task index of a
    /// Slurm job array (SLURM_ARRAY_TASK_*) or Kubernetes Indexed Job (JOB_COMPLETION_INDEX),
    /// else the whole run.
    #[arg(long)]
    shard: Option<String>,
    /// Completions of a Kubernetes Indexed Job (default: $DEEDIFF_NUM_SHARDS).
    #[arg(long)]
    num_shards: Option<usize>,
    /// How resume checks existing images before counting them as done: `header` (signature,
    /// IHDR and IEND; cheap) or `full` (decode every pixel).
    #[arg(long, value_enum, default_value = "header")]
    verify: Verify,
    /// One prompt for every image …
    #[arg(long, conflicts_with_all = ["prompts", "class"])]
    prompt: Option<String>,
    /// … or a file of prompts, image i taking line i mod lines. Neither: the model's example
    /// prompts, in turn.
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

fn image_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{i:06}.png"))
}

/// Names [`image_path`] gives: six or more digits, `.png`.
fn is_image_name(name: &str) -> bool {
    name.strip_suffix(".png")
        .is_some_and(|d| d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()))
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
    write_images_npz(path, shape, |k| -> std::result::Result<_, String> {
        match first.take() {
            Some(image) if k == 0 => Ok(image.into_raw()),
            _ => Ok(read(range.start + k)?.into_raw()),
        }
    })?;
    eprintln!(
        "{} images -> {} (arr_0 {shape:?} uint8)",
        range.len(),
        path.display()
    );
    Ok(())
}

/// The prompts image i cycles through: `--prompt`, the lines of `--prompts`, else (text models)
/// the model's own example prompts, which is said on stderr.
fn prompts(cli: &Cli, bundle: &ModelBundle) -> Result<Vec<String>> {
    if let Some(path) = &cli.prompts {
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
        return Ok(lines);
    }
    if let Some(p) = &cli.prompt {
        return Ok(vec![p.clone()]);
    }
    let Some(text) = &bundle.text else {
        return Ok(Vec::new());
    };
    let examples = text.example_prompts();
    if examples.is_empty() {
        bail!(
            "a text-to-image model needs --prompt or --prompts (this one names no example prompts)"
        );
    }
    eprintln!(
        "no --prompt: image i gets the model's example prompt i mod {} ({})",
        examples.len(),
        examples.join(", ")
    );
    Ok(examples)
}

/// The settings that decide the pixels (see [`Manifest`]), after budget calibration.
fn manifest(cli: &Cli, pipeline: &Pipeline, prompts: &[String], shards: usize) -> Result<Manifest> {
    let m = &cli.model;
    let model = match &m.model {
        Some(path) => sha256_file(path)?,
        None => sha256(DEFAULT_MODEL),
    };
    let path_text = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let prompts = if prompts.len() <= 16 {
        serde_json::json!(prompts)
    } else {
        serde_json::json!(format!(
            "{} prompts, sha256 {}",
            prompts.len(),
            sha256(prompts.join("\n").as_bytes())
        ))
    };
    // The resolved configuration, so flags and the model's own defaults that mean the same
    // scheduler give the same manifest.
    let scheduler = format!("{:?}", pipeline.scheduler_config());
    let s = &cli.sampling;
    Ok(Manifest::default()
        .with("model_sha256", model)
        .with("trained_with", m.trained_with.map(|t| format!("{t:?}")))
        .with("num_heads", m.num_heads)
        .with("num_clip_token", m.num_clip_token)
        .with("text_encoder", path_text(&m.text_encoder))
        .with("vae", path_text(&m.vae))
        .with("vae_scale_factor", m.vae_scale_factor)
        .with("dtype", m.dtype.manifest_value())
        .with("prompts", prompts)
        .with("class", cli.class.clone())
        .with("seed", cli.seed)
        .with("num", cli.num)
        .with("shards", shards)
        .with("scheduler", scheduler)
        .with("steps", pipeline.scheduler().num_steps())
        .with("policy", pipeline.describe_policy())
        .with("guidance", s.cfg_scale.map_or(s.guidance, |c| 1.0 + c))
        .with("shared_exit", s.shared_exit))
}

fn main() {
    deediff_examples::main(run);
}

/// The output folder, created, with a write probe so a read-only volume fails before any work.
fn prepare_folder(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {}: is a file; give a folder", out.display());
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    let probe = out.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("{}: output folder is not writable", out.display()))?;
    Ok(std::fs::remove_file(&probe)?)
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if cli.num == 0 {
        bail!("--num must be at least 1");
    }
    check_batch(cli.batch)?;
    check_seed_range(cli.seed, cli.num)?;
    // A device this build or machine lacks is a bad flag: refused before any output.
    let device = cli.device.open()?;
    let shard = Shard::resolve(cli.shard.as_deref(), cli.num_shards, |k| {
        std::env::var(k).ok()
    })?;
    let range = shard.range(cli.num);
    eprintln!("shard {}/{} from {}", shard.k, shard.n, shard.source);
    let outputs: Vec<_> = [("--report", &cli.report), ("--npz", &cli.npz)]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
        .collect();
    check_outputs(&outputs)?;

    let bundle = load_model(&cli.model, &device)?;
    let cfg = bundle.model.model().config().clone();
    let class = cli
        .class
        .as_deref()
        .map(|c| parse_class(c, &cfg))
        .transpose()?;
    let prompts = prompts(&cli, &bundle)?;
    let origin = match &cli.prompts {
        Some(file) => file.display().to_string(),
        None => "--prompt".into(),
    };
    check_prompts(&bundle, &origin, prompts.iter().map(String::as_str))?;
    // Created only once the inputs are known good, so a refused run leaves nothing behind.
    prepare_folder(&cli.out)?;
    let condition = |i: usize| -> Condition {
        match (cfg.variant, cfg.num_classes) {
            (Variant::UvitT2i, _) => Condition::Text(prompts[i % prompts.len()].clone()),
            (Variant::Uvit, Some(rows)) => {
                Condition::Class(class.unwrap_or((i % (rows - 1)) as u32))
            }
            (Variant::Uvit, None) => Condition::Unconditional,
        }
    };

    let mut pipeline = build_pipeline(bundle, &cli.sampling, &device)?;
    if let Some(budget) = cli.sampling.budget {
        // Calibrated on the first images of the whole run, so every shard gets the same threshold.
        let n = cli.num.min(CALIBRATION_IMAGES);
        let conds: Vec<_> = (0..n).map(&condition).collect();
        let cal = pipeline.calibrate_budget(budget, &conds, &seeds(cli.seed, 0..n)?)?;
        eprintln!(
            "budget {budget}: threshold {:.4} (depth {:.1}% on the calibration run)",
            cal.threshold,
            100.0 * cal.depth_fraction
        );
    }
    manifest(&cli, &pipeline, &prompts, shard.n)?.check_or_write(&cli.out, is_image_name)?;
    let report = generate_shard(&cli, &pipeline, &shard, &condition)?;
    if let (Some(path), false) = (&cli.npz, range.is_empty()) {
        write_npz(path, &cli.out, range)?;
    }
    if let Some(r) = &report {
        // The report first: the summary is printed only over outputs that were all written.
        if let Some(path) = &cli.report {
            write_report(path, r)?;
        }
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
    }
    Ok(())
}

/// Makes the shard's missing or damaged images batch by batch (and scores the shard with
/// --fid-stats); returns the report of the images made (None: all were done).
fn generate_shard(
    cli: &Cli,
    pipeline: &Pipeline,
    shard: &Shard,
    condition: &dyn Fn(usize) -> Condition,
) -> Result<Option<RunReport>> {
    let range = shard.range(cli.num);
    let (done, todo) = if cli.no_png {
        (Vec::new(), range.clone().collect())
    } else {
        partition_done(range.clone(), |i| image_path(&cli.out, i), cli.verify)
    };
    // FID scoring: the network and reference load before any work, so a bad path fails early.
    let mut scoring = match &cli.fid_stats {
        Some(path) => Some(ShardScore::open(path, pipeline.device(), cli, &done)?),
        None => None,
    };
    eprintln!(
        "shard {}/{} = images {}..{}: {} done, {} to generate with {}",
        shard.k,
        shard.n,
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
        let conds: Vec<Condition> = chunk.iter().map(|&i| condition(i)).collect();
        let seeds = chunk
            .iter()
            .map(|&i| seed_of(cli.seed, i))
            .collect::<Result<Vec<u64>>>()?;
        let generated = pipeline.generate(&conds, &seeds, Hooks::default())?;
        let images = to_images(&generated.samples)?;
        if let Some(scoring) = &mut scoring {
            scoring.add(&images)?;
        }
        for (&i, img) in chunk.iter().zip(images).filter(|_| !cli.no_png) {
            save_image(&image_path(&cli.out, i), &img)?;
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
    if let Some(scoring) = &scoring {
        scoring.finish(cli, shard, range.len())?;
    }
    Ok(report)
}

/// The running FID of a shard (--fid-stats): its images' moments against the reference.
struct ShardScore<'a> {
    net: FidInception,
    reference: Stats,
    reference_path: &'a Path,
    moments: Moments,
}

impl<'a> ShardScore<'a> {
    /// Loads the network and reference and counts the images already `done` on disk.
    fn open(path: &'a Path, device: &Device, cli: &Cli, done: &[usize]) -> Result<Self> {
        let net = FidInception::load(None)?.on_device(device)?;
        let reference = Stats::load(path)?;
        let mut moments = Moments::new(2048);
        let resumed: Vec<PathBuf> = done.iter().map(|&i| image_path(&cli.out, i)).collect();
        if !resumed.is_empty() {
            moments.add_features(&net.features_files(&resumed, 2048, 50, &mut |_| {})?)?;
        }
        Ok(Self {
            net,
            reference,
            reference_path: path,
            moments,
        })
    }

    fn add(&mut self, images: &[DynamicImage]) -> Result<()> {
        let rgb: Vec<_> = images.iter().map(|i| i.to_rgb8()).collect();
        self.moments
            .add_features(&self.net.features_rgb8(&rgb, 2048)?)?;
        Ok(())
    }

    /// Saves the shard's moments (for `fid --merge-stats`) and prints its FID.
    fn finish(&self, cli: &Cli, shard: &Shard, count: usize) -> Result<()> {
        let path = cli
            .out
            .join(format!("fid-moments-{}-of-{}.npz", shard.k, shard.n));
        self.moments.save(&path)?;
        println!(
            "FID of these {count} images vs {}: {:.4} (moments: {})",
            self.reference_path.display(),
            frechet_distance(&self.moments.stats()?, &self.reference)?,
            path.display()
        );
        Ok(())
    }
}
