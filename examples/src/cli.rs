//! Arguments and set-up shared by the sampling tools (`txt2img`, `generate`): which model (with
//! the text encoder and autoencoder of latent models), which scheduler, which exit policy —
//! turned into a ready [`Pipeline`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use deediff_sampler::{
    imagenet_class, to_images, Condition, GridSheet, Guidance, Hooks, ModelBundle, Pipeline,
    RunReport, SamplingDefaults, TimestepBand, TrainedWith, DEFAULT_THRESHOLD,
};
use image::DynamicImage;

use crate::progress::EvalBar;
use deediff_schedules::{SchedulerConfig, SCHEDULER_NAMES};
use deediff_uem::{EarlyExitUVit, ExitPolicy, ReuseSchedule};
use deediff_unet::pretrained::{resolve, CLIP_VIT_L14, SD_VAE};
use deediff_unet::{Checkpoint, ConfigHints, LatentDecoder, PretrainedText, UVitConfig, Variant};

/// Which model to sample from.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A deediff model file, or an official U-ViT/AdaDiff checkpoint (.pth or safetensors).
    /// Default: the embedded text-to-image model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Attention heads of an official checkpoint (not inferable from its shapes).
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// Training noise process of an official checkpoint.
    #[arg(long, value_enum)]
    pub trained_with: Option<TrainedWith>,
    /// Context tokens of an official text-to-image checkpoint (77 for U-ViT's MS-COCO models).
    #[arg(long)]
    pub num_clip_token: Option<usize>,
    /// Text encoder of a text-to-image checkpoint: a folder with config.json, model.safetensors
    /// and tokenizer.json (CLIP text or BERT). Default: CLIP ViT-L/14 from the Hugging Face cache.
    #[arg(long)]
    pub text_encoder: Option<PathBuf>,
    /// Autoencoder of a latent model: a diffusers VAE folder or safetensors file, or U-ViT's
    /// autoencoder_kl.pth. Default: stabilityai/sd-vae-ft-mse from the Hugging Face cache.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Latent scale the model was trained with (x = D(z / s)); default: the autoencoder's
    /// config, else 0.18215. U-ViT's MS-COCO models: 0.2301.
    #[arg(long)]
    pub vae_scale_factor: Option<f64>,
    /// Precision of the denoiser's linear layers: f32, or bf16 on Intel AMX (inputs rounded to
    /// bfloat16, f32 accumulation; 2–3× faster on a Sapphire Rapids, see BENCHMARKS.md for its
    /// FID cost). CPUs without AMX refuse bf16.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

/// `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    /// For a run manifest: `None` for f32, so manifests written before `--dtype` existed (all
    /// f32) still match.
    pub fn manifest_value(self) -> Option<&'static str> {
        (self == Dtype::Bf16).then_some("bf16")
    }
}

/// How to sample: scheduler, steps, exit policy, guidance.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Scheduler preset (see --help for names) … Default: the model's (metadata
    /// `sampling_defaults`), else dpmpp-2m.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SCHEDULER_NAMES))]
    pub scheduler: Option<String>,
    /// … or a diffusers scheduler_config.json (overrides --scheduler).
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// Inference steps (U-ViT DPM-Solver: model evaluations). Default: the model's, else 25.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale g (diffusers convention; 1 = off; U-ViT's s is g − 1).
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f64,
    /// Guidance in U-ViT's convention, (1+s)·cond − s·uncond (its configs' `cfg_scale`).
    #[arg(long, conflicts_with = "guidance")]
    pub cfg_scale: Option<f64>,
    /// The unconditional pass stops where the conditional pass of the same image stopped.
    #[arg(long)]
    pub shared_exit: bool,
    /// Exit threshold on the certainty (0, 1]; with --policy per-sample/official. Default: the
    /// model's recommended threshold (metadata `exit_threshold`), else 0.9.
    #[arg(long, value_parser = parse_unit_f32)]
    pub threshold: Option<f32>,
    /// Target mean depth as a fraction of the full network (0, 1]: calibrates the threshold
    /// of the per-sample (or official) policy.
    #[arg(long, conflicts_with = "threshold", value_parser = parse_unit_f64)]
    pub budget: Option<f64>,
    /// per-sample, official, full, static:K, cached[:T[:R]] (cache-filled exits, a full pass at
    /// least every R evaluations, decided by the model's filled-exit heads when it has them),
    /// cached-trunc[:T[:R]] (the same, decided by the truncation heads), deepcache:N[:M] or l2c
    /// (see ExitPolicy). Default: the model's (metadata `sampling_defaults`), else per-sample
    /// for a model with certainty heads and full for one without.
    #[arg(long)]
    pub policy: Option<String>,
    /// Timesteps LO ≤ t ≤ HI (0 = clean … 999 = noise) that follow their own policy,
    /// `LO-HI:POLICY`, e.g. `640-1000:static:2`; comma-separated or repeated, not overlapping.
    #[arg(long, value_delimiter = ',')]
    pub timestep_band: Vec<TimestepBand>,
    /// The reuse schedule `--policy l2c` follows (JSON written by `calibrate l2c`).
    #[arg(long)]
    pub reuse_schedule: Option<PathBuf>,
}

/// A value in (0, 1] that survives the conversion to f32 (`1e-300` would become 0).
fn parse_unit_f32(s: &str) -> std::result::Result<f32, String> {
    let v = parse_unit_f64(s)?;
    let f = v as f32;
    if f == 0.0 || !f.is_normal() {
        return Err(format!(
            "{s} is below the smallest usable threshold ({:e})",
            f32::MIN_POSITIVE
        ));
    }
    Ok(f)
}

/// A finite value in (0, 1].
fn parse_unit_f64(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("{s} is not a number in (0, 1]")),
    }
}

impl SamplingArgs {
    /// The policy from `--policy` (its own syntax, see [`ExitPolicy`]'s `FromStr`) with
    /// `--threshold` (else `default_threshold`) filled in for `per-sample` / `official`.
    pub fn policy(&self, default_threshold: f32) -> Result<ExitPolicy> {
        let t = self.threshold.unwrap_or(default_threshold);
        let policy = self.policy.as_deref().unwrap_or("per-sample");
        let spec = match policy {
            "per-sample" | "official" | "cached" | "cached-trunc" => format!("{policy}:{t}"),
            other => other.to_string(),
        };
        Ok(spec.parse()?)
    }

    /// Flags that cannot hold together for a model of `num_blocks` blocks: a budget calibrates
    /// a certainty threshold, which the full and static policies never read; a static depth
    /// past the model's blocks would silently run full depth.
    fn check(&self, num_blocks: usize) -> Result<()> {
        let policy = self.policy.as_deref().unwrap_or("per-sample");
        let thresholded = matches!(
            policy,
            "per-sample" | "official" | "cached" | "cached-trunc"
        );
        let calibrated = matches!(policy, "per-sample" | "official");
        if let (Some(b), false) = (self.budget, calibrated) {
            bail!(
                "--budget {b} calibrates the threshold of the per-sample or official policy; \
                 --policy {policy} has none (drop one of the two)"
            );
        }
        if let (Some(t), false) = (self.threshold, thresholded) {
            bail!(
                "--threshold {t} applies to the per-sample, official or cached policy, not --policy {policy}"
            );
        }
        if let Ok(ExitPolicy::Static { blocks }) = policy.parse::<ExitPolicy>() {
            if blocks > num_blocks {
                bail!("--policy {policy}: this model has only {num_blocks} blocks");
            }
        }
        Ok(())
    }

    /// Every setting the flags leave open taken from the model's recommended ones
    /// (`sampling_defaults`): scheduler, steps, and the policy unless `--threshold` or
    /// `--budget` asks for per-sample exits. A model without certainty heads (a plain official
    /// U-ViT checkpoint) and without recommendations samples at full depth: per-sample exits,
    /// the default otherwise, would need heads it does not have.
    pub fn with_defaults(&self, defaults: Option<&SamplingDefaults>, has_heads: bool) -> Self {
        let exits_asked = self.threshold.is_some() || self.budget.is_some();
        let fallback = match (defaults, has_heads) {
            (Some(d), _) => Some(d.policy.clone()),
            (None, false) => Some("full".to_string()),
            (None, true) => None,
        };
        Self {
            scheduler: self
                .scheduler
                .clone()
                .or_else(|| defaults.map(|d| d.scheduler.clone())),
            steps: self.steps.or(defaults.map(|d| d.steps)),
            policy: match exits_asked {
                true => self.policy.clone(),
                false => self.policy.clone().or(fallback),
            },
            ..self.clone()
        }
    }
}

/// The scheduler of a model that names none in its `sampling_defaults`, when `--scheduler` is not
/// given.
pub const DEFAULT_SCHEDULER: &str = "dpmpp-2m";

/// A model loaded from `ModelArgs`, with its text encoder and (latent models) its decoder.
pub fn load_model(args: &ModelArgs, device: &Device) -> Result<ModelBundle> {
    set_dtype(args, device)?;
    complete(load_denoiser(args, device)?, args, device)
}

/// [`load_model`] from a model file already in memory (`origin` names it in errors), for a
/// command that also writes those bytes back changed.
pub fn load_model_bytes(
    args: &ModelArgs,
    bytes: &[u8],
    origin: &str,
    device: &Device,
) -> Result<ModelBundle> {
    set_dtype(args, device)?;
    complete(
        ModelBundle::from_bytes(bytes, origin, device)?,
        args,
        device,
    )
}

/// Applies `--dtype`.
fn set_dtype(args: &ModelArgs, device: &Device) -> Result<()> {
    if args.dtype == Dtype::Bf16 {
        if !device.is_cpu() {
            bail!("--dtype bf16: runs on the CPU's AMX tiles only; use --dtype f32 with --device cuda");
        }
        deediff_unet::amx::set_bf16(true)?;
    }
    Ok(())
}

/// Adds the text encoder and the latent decoder `args` name or the model needs.
fn complete(mut bundle: ModelBundle, args: &ModelArgs, device: &Device) -> Result<ModelBundle> {
    let cfg = bundle.model.model().config().clone();
    if args.text_encoder.is_some() || (cfg.variant == Variant::UvitT2i && bundle.text.is_none()) {
        let path = resolve(args.text_encoder.as_deref(), &CLIP_VIT_L14)?;
        let text = PretrainedText::load(&path, device)?.fit_to(&cfg)?;
        bundle.text = Some(Box::new(text));
    }
    // Pixel models have 1 or 3 channels; anything else samples autoencoder latents.
    if args.vae.is_some() || !matches!(cfg.in_chans, 1 | 3) {
        let path = resolve(args.vae.as_deref(), &SD_VAE)?;
        let mut decoder = LatentDecoder::load(&path, device)?;
        if let Some(s) = args.vae_scale_factor {
            decoder = decoder.with_scale_factor(s)?;
        }
        bundle.decoder = Some(decoder);
    }
    Ok(bundle)
}

/// Refuses, before any sampling, a prompt the text encoder cannot ground (the error line names
/// `origin`, the flag or file the prompts came from), and prints the warnings of the others
/// (words it ignores, truncation): partly used prompts only deserve a warning.
pub fn check_prompts<'a>(
    bundle: &ModelBundle,
    origin: &str,
    prompts: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    let Some(text) = &bundle.text else {
        return Ok(());
    };
    for p in prompts {
        for w in text.check(p).with_context(|| origin.to_string())? {
            eprintln!("warning: {w} (in {p:?})");
        }
    }
    Ok(())
}

/// The U-ViT with its certainty heads (and a bundle's own text encoder).
fn load_denoiser(args: &ModelArgs, device: &Device) -> Result<ModelBundle> {
    let Some(path) = &args.model else {
        return Ok(ModelBundle::default_model(device)?);
    };
    if ModelBundle::is_bundle(path)? {
        return Ok(ModelBundle::load(path, device)?);
    }
    // What is wrong with the file comes before what is missing from the command line.
    Checkpoint::open(path)?;
    let trained_with = args.trained_with.with_context(|| {
        format!(
            "{}: an official checkpoint needs --trained-with (ddpm-linear, sd-discrete or vp-linear)",
            path.display()
        )
    })?;
    let hints = ConfigHints {
        num_heads: args.num_heads,
        num_clip_token: args.num_clip_token,
        ..ConfigHints::default()
    };
    let model = EarlyExitUVit::load(path, &hints, device)?;
    Ok(ModelBundle::from_model(model, trained_with.schedule()))
}

/// The class index `spec` names: an index, or for a 1000-class model (ImageNet, 1001 label rows
/// with the null class) an ImageNet class name.
pub fn parse_class(spec: &str, cfg: &UVitConfig) -> Result<u32> {
    if let Ok(k) = spec.trim().parse::<u32>() {
        return Ok(k);
    }
    match cfg.num_classes {
        Some(1001) => Ok(imagenet_class(spec)?),
        Some(n) => bail!(
            "--class {spec:?}: this model has {} unnamed classes: pass an index",
            n - 1
        ),
        None => bail!("--class {spec:?}: this model is not class-conditional"),
    }
}

/// Images a `--budget` calibration runs (the first of the run), so every shard and any `--num`
/// get the same threshold at a bounded cost.
pub const CALIBRATION_IMAGES: usize = 8;

/// Writes a run report as pretty JSON, atomically and checked.
pub fn write_report(path: &std::path::Path, report: &RunReport) -> Result<()> {
    let json = serde_json::to_string_pretty(&report.to_json())?;
    crate::write_checked(path, "report", |w| {
        std::io::Write::write_all(w, json.as_bytes())
    })
}

/// Most images per network batch: beyond this a batch only costs memory (activations grow with
/// it), never speed.
pub const MAX_BATCH: usize = 1024;

/// `--batch` within 1..=[`MAX_BATCH`].
pub fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        bail!("--batch {batch}: must be between 1 and {MAX_BATCH}");
    }
    Ok(())
}

/// Samples `count` images batch by batch into a grid of `cols` columns; image k gets
/// `condition(k)` and seed `seed + k`. Memory is the sheet plus one batch, never all samples;
/// a sheet too large to allocate is refused after the first batch (see [`GridSheet::new`]).
pub fn sample_grid(
    pipeline: &Pipeline,
    count: usize,
    cols: usize,
    batch: usize,
    seed: u64,
    condition: &dyn Fn(usize) -> Condition,
) -> Result<(DynamicImage, RunReport)> {
    let nfe = pipeline.scheduler().nfe() as u64;
    let bar = EvalBar::new(nfe.saturating_mul(count.div_ceil(batch) as u64), "steps");
    let mut sheet: Option<GridSheet> = None;
    let mut report: Option<RunReport> = None;
    for (b, start) in (0..count).step_by(batch).enumerate() {
        let range = start..(start + batch).min(count);
        let conds: Vec<Condition> = range.clone().map(condition).collect();
        let seeds = crate::seeds(seed, range.clone())?;
        let offset = (b as u64).saturating_mul(nfe);
        let mut on_progress = |p: &deediff_sampler::Progress| bar.update_from(offset, p);
        let hooks = Hooks {
            progress: Some(&mut on_progress),
            cancel: None,
        };
        let generated = pipeline.generate(&conds, &seeds, hooks)?;
        let images = to_images(&generated.samples)?;
        let mut filled = match sheet.take() {
            Some(s) => s,
            None => GridSheet::new(count, cols, &images[0])?,
        };
        for (k, img) in range.zip(&images) {
            filled.place(k, img)?;
        }
        sheet = Some(filled);
        match &mut report {
            Some(r) => r.merge(&generated.report),
            None => report = Some(generated.report),
        }
    }
    bar.finish();
    match (sheet, report) {
        (Some(s), Some(r)) => Ok((s.into_image(), r)),
        _ => bail!("a grid needs at least one image"),
    }
}

/// The pipeline the sampling flags describe (budget calibration is left to the caller, which
/// knows its images).
pub fn build_pipeline(
    bundle: ModelBundle,
    args: &SamplingArgs,
    device: &Device,
) -> Result<Pipeline> {
    let has_heads = bundle.model.heads().is_some();
    let args = &args.with_defaults(bundle.sampling_defaults.as_ref(), has_heads);
    let scheduler = match &args.scheduler_config {
        Some(path) => SchedulerConfig::from_file(path)?,
        None => SchedulerConfig::by_name(
            args.scheduler.as_deref().unwrap_or(DEFAULT_SCHEDULER),
            bundle.training.betas(),
        )?,
    };
    args.check(bundle.model.model().config().num_blocks())?;
    let default_threshold = bundle.exit_threshold.unwrap_or(DEFAULT_THRESHOLD);
    let steps = args.steps.unwrap_or(25);
    let mut pipeline = Pipeline::from_bundle(bundle, scheduler, steps, device.clone())?;
    if let Some(path) = &args.reuse_schedule {
        pipeline.set_reuse_schedule(Some(ReuseSchedule::load(path)?))?;
    }
    if args.budget.is_none() {
        pipeline.set_policy(args.policy(default_threshold)?)?;
    }
    pipeline.set_timestep_bands(args.timestep_band.clone())?;
    pipeline.set_guidance(Guidance {
        scale: args.cfg_scale.map_or(args.guidance, |s| 1.0 + s),
        shared_exit: args.shared_exit,
    })?;
    Ok(pipeline)
}
