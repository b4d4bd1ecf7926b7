//! Everything that defines a training run; stored in every checkpoint so `--resume` needs nothing else.

use deediff_unet::text_encoder::TextEncoderConfig;
use deediff_unet::UVitConfig;
use serde::{Deserialize, Serialize};

use crate::loss::LossConfig;
use crate::optim::AdamWConfig;

/// Learning rate after the linear warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LrSchedule {
    /// Constant peak lr (U-ViT's `customized` schedule).
    Constant,
    /// Cosine decay from the peak to `min_lr` at `total_steps`.
    Cosine { min_lr: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: UVitConfig,
    /// Required for `uvit_t2i` (the jointly trained text encoder), absent otherwise.
    pub text_encoder: Option<TextEncoderConfig>,
    pub loss: LossConfig,
    pub optim: AdamWConfig,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: u64,
    pub schedule: LrSchedule,
    pub total_steps: u64,
    pub batch_size: usize,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    pub ema_decay: f64,
    /// Probability of replacing a sample's label/caption by the null one (classifier-free guidance).
    pub cond_drop_prob: f64,
    pub seed: u64,
    /// Number of discrete training timesteps; `t` is drawn uniformly from `0..T` and fed to the
    /// network as that integer (diffusers convention).
    pub num_train_timesteps: usize,
    /// Opaque scheduler description (diffusers-style JSON) copied into exported models.
    pub scheduler: serde_json::Value,
    /// Train only the certainty heads (the "frozen backbone" fine-tune): the DeeDiff losses then
    /// reach nothing but the heads, so a pretrained backbone keeps its full-depth quality.
    #[serde(default)]
    pub freeze_backbone: bool,
}

/// Largest batch the trainer accepts: activations of every block are kept for the backward pass,
/// so memory grows with the batch, and past this a 24 GB machine is killed mid-run.
pub const MAX_BATCH_SIZE: usize = 4096;

impl TrainConfig {
    /// Refuses hyper-parameters outside their meaning (a NaN learning rate trains a NaN model;
    /// a decay or probability above 1 diverges silently), naming the field and its flag.
    pub fn validate(&self) -> candle_core::Result<()> {
        let in_range = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;
        let checks = [
            (
                self.lr.is_finite() && self.lr > 0.0,
                "lr (--lr)",
                self.lr,
                "a finite number > 0",
            ),
            (
                in_range(self.ema_decay, 0.0, 1.0),
                "ema_decay (--ema-decay)",
                self.ema_decay,
                "in [0, 1]",
            ),
            (
                in_range(self.cond_drop_prob, 0.0, 1.0),
                "cond_drop_prob (--cond-drop)",
                self.cond_drop_prob,
                "in [0, 1]",
            ),
            (
                in_range(self.optim.weight_decay, 0.0, f64::MAX),
                "weight_decay (--weight-decay)",
                self.optim.weight_decay,
                "a finite number ≥ 0",
            ),
            (
                in_range(self.loss.lambda, 0.0, f64::MAX),
                "lambda (--lambda)",
                self.loss.lambda,
                "a finite number ≥ 0",
            ),
            (
                in_range(self.loss.beta, 0.0, f64::MAX),
                "beta (--beta)",
                self.loss.beta,
                "a finite number ≥ 0",
            ),
            (
                self.grad_clip.is_none_or(|c| c.is_finite() && c > 0.0),
                "grad_clip (--grad-clip)",
                self.grad_clip.unwrap_or(0.0),
                "a finite number > 0",
            ),
        ];
        if let Some((_, name, v, want)) = checks.iter().find(|c| !c.0) {
            candle_core::bail!("{name} = {v}: must be {want}");
        }
        if let LrSchedule::Cosine { min_lr } = self.schedule {
            if !in_range(min_lr, 0.0, self.lr) {
                candle_core::bail!(
                    "min_lr (--cosine-min-lr) = {min_lr}: must be in [0, lr = {}]",
                    self.lr
                );
            }
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            candle_core::bail!(
                "batch_size (--batch-size) = {}: must be between 1 and {MAX_BATCH_SIZE}",
                self.batch_size
            );
        }
        Ok(())
    }

    /// Learning rate at update `step` (0-based): linear warm-up to `lr`, then the schedule.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine { min_lr } => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
