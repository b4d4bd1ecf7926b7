//! Arguments and set-up shared by the sampling tools (`txt2img`, `generate`): which model (with
//! the text encoder and autoencoder of latent models), which scheduler, which exit policy —
//! turned into a ready [`Pipeline`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use deediff_sampler::{
    imagenet_class, Guidance, ModelBundle, Pipeline, TimestepBand, TrainingSchedule,
    DEFAULT_THRESHOLD,
};
use deediff_schedules::{BetaConfig, BetaSchedule, SchedulerConfig, SCHEDULER_NAMES};
use deediff_uem::{EarlyExitUVit, ExitPolicy, ReuseSchedule};
use deediff_unet::pretrained::{resolve, CLIP_VIT_L14, SD_VAE};
use deediff_unet::{ConfigHints, LatentDecoder, PretrainedText, UVitConfig, Variant};

/// The noise process an official U-ViT checkpoint was trained with (deediff model files record
/// their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrainedWith {
    /// DDPM linear betas 1e-4…0.02, diffusers timestep labels 0…999.
    DdpmLinear,
    /// Stable Diffusion's scaled-linear betas, U-ViT labels 1…1000 (latent ImageNet / MS-COCO).
    SdDiscrete,
    /// Continuous VP-linear SDE β 0.1→20, labels 999·t (U-ViT's CIFAR-10 / CelebA checkpoints).
    VpLinear,
}

impl TrainedWith {
    fn schedule(self) -> TrainingSchedule {
        match self {
            Self::DdpmLinear => TrainingSchedule::Diffusers(BetaConfig::ddpm_linear(1000)),
            Self::SdDiscrete => TrainingSchedule::UvitDiscrete(BetaConfig {
                schedule: BetaSchedule::ScaledLinear {
                    start: 0.00085,
                    end: 0.012,
                },
                num_train_timesteps: 1000,
                rescale_betas_zero_snr: false,
            }),
            Self::VpLinear => TrainingSchedule::UvitContinuous {
                beta_0: 0.1,
                beta_1: 20.0,
            },
        }
    }
}

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
}

/// How to sample: scheduler, steps, exit policy, guidance.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Scheduler preset (see --help for names) …
    #[arg(long, default_value = "dpmpp-2m", value_parser = clap::builder::PossibleValuesParser::new(SCHEDULER_NAMES))]
    pub scheduler: String,
    /// … or a diffusers scheduler_config.json (overrides --scheduler).
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// Inference steps (U-ViT DPM-Solver: model evaluations).
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
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
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Target mean depth as a fraction of the full network (0, 1]: calibrates the threshold.
    #[arg(long, conflicts_with = "threshold")]
    pub budget: Option<f64>,
    /// per-sample (default), official, full, static:K, cached[:T[:R]] (cache-filled exits, a
    /// full pass at least every R evaluations) or deepcache:N[:M] (see ExitPolicy).
    #[arg(long, default_value = "per-sample")]
    pub policy: String,
    /// Timesteps LO ≤ t ≤ HI (0 = clean … 999 = noise) that follow their own policy,
    /// `LO-HI:POLICY`, e.g. `640-1000:static:2`; comma-separated or repeated, not overlapping.
    #[arg(long, value_delimiter = ',')]
    pub timestep_band: Vec<TimestepBand>,
    /// The reuse schedule `--policy l2c` follows (JSON written by `calibrate l2c`).
    #[arg(long)]
    pub reuse_schedule: Option<PathBuf>,
}

impl SamplingArgs {
    /// The policy from `--policy` (its own syntax, see [`ExitPolicy`]'s `FromStr`) with
    /// `--threshold` (else `default_threshold`) filled in for `per-sample` / `official`.
    pub fn policy(&self, default_threshold: f32) -> Result<ExitPolicy> {
        let t = self.threshold.unwrap_or(default_threshold);
        let spec = match self.policy.as_str() {
            "per-sample" | "official" | "cached" => format!("{}:{t}", self.policy),
            other => other.to_string(),
        };
        Ok(spec.parse()?)
    }
}

/// A model loaded from `ModelArgs`, with its text encoder and (latent models) its decoder.
pub fn load_model(args: &ModelArgs, device: &Device) -> Result<ModelBundle> {
    let mut bundle = load_denoiser(args, device)?;
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

/// Prints the text encoder's warnings for `prompts` (words it ignores, truncation). Prompts it
/// cannot ground at all are refused later by the pipeline; partly used ones only deserve a warning.
pub fn warn_about_prompts<'a>(bundle: &ModelBundle, prompts: impl IntoIterator<Item = &'a str>) {
    let Some(text) = &bundle.text else { return };
    for p in prompts {
        for w in text.warnings(p) {
            eprintln!("warning: {w} (in {p:?})");
        }
    }
}

/// The U-ViT with its certainty heads (and a bundle's own text encoder).
fn load_denoiser(args: &ModelArgs, device: &Device) -> Result<ModelBundle> {
    let Some(path) = &args.model else {
        return Ok(ModelBundle::default_model(device)?);
    };
    if ModelBundle::is_bundle(path)? {
        return Ok(ModelBundle::load(path, device)?);
    }
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

/// The pipeline the sampling flags describe (budget calibration is left to the caller, which
/// knows its images).
pub fn build_pipeline(
    bundle: ModelBundle,
    args: &SamplingArgs,
    device: &Device,
) -> Result<Pipeline> {
    let scheduler = match &args.scheduler_config {
        Some(path) => SchedulerConfig::from_file(path)?,
        None => SchedulerConfig::by_name(&args.scheduler, bundle.training.betas())?,
    };
    let default_threshold = bundle.exit_threshold.unwrap_or(DEFAULT_THRESHOLD);
    let mut pipeline = Pipeline::from_bundle(bundle, scheduler, args.steps, device.clone())?;
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
