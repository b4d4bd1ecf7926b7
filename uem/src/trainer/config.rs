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

impl TrainConfig {
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
