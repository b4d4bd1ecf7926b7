//! Training checkpoints and exported models, both serialised by the model-file module
//! ([`deediff_unet::model_file`]) and written atomically ([`deediff_eval::atomic`]), so an
//! interrupted write never leaves a broken file behind.
//!
//! A checkpoint holds the parameters under their model names, `ema.<name>`, `adam.m.<name>`,
//! `adam.v.<name>`, and metadata `format`, `step`, `ema_updates`, `train_config` (JSON). An
//! exported model is a model file: the EMA weights under the model names and the metadata
//! [`model_file::metadata`] writes.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::Device;
use deediff_unet::model_file::{self, key};

use super::{Error, TrainConfig, Trainer};

pub const CHECKPOINT_FORMAT: &str = "deediff-train-checkpoint-v1";

/// Metadata key of the EMA's update count (for its bias correction).
const EMA_UPDATES: &str = "ema_updates";

fn load_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Load {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// `tensors` with `meta` written to `path` atomically.
fn write(
    path: &Path,
    tensors: Vec<(String, candle_core::Tensor)>,
    meta: HashMap<String, String>,
) -> Result<(), Error> {
    let bytes = model_file::serialize(tensors, meta)?;
    deediff_eval::atomic::write_atomic(path, |w| w.write_all(&bytes)).map_err(|source| {
        Error::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, Error> {
    Ok(serde_json::to_string(v).map_err(candle_core::Error::wrap)?)
}

impl Trainer {
    /// Saves everything `resume` needs to continue bit-identically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<(), Error> {
        let mut tensors = self.parameters();
        tensors.extend(self.ema.state_tensors("ema.")?);
        tensors.extend(self.opt.state_tensors()?);
        let meta = HashMap::from([
            (key::FORMAT.to_string(), CHECKPOINT_FORMAT.to_string()),
            (key::STEP.to_string(), self.step.to_string()),
            (EMA_UPDATES.to_string(), self.ema.updates().to_string()),
            (key::TRAIN_CONFIG.to_string(), json(&self.cfg)?),
        ]);
        write(path, tensors, meta)
    }

    /// Rebuilds a trainer from a checkpoint written by [`Trainer::save_checkpoint`]. `adjust`
    /// may change the stored config before the trainer is built (e.g. more total steps); the
    /// architecture must stay the same.
    pub fn resume(
        path: &Path,
        alphas_cumprod: &[f64],
        device: &Device,
        adjust: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self, Error> {
        let meta = model_file::read_metadata_file(path)?;
        if meta.get(key::FORMAT).map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(load_err(
                path,
                format!("not a training checkpoint (format {CHECKPOINT_FORMAT} expected)"),
            ));
        }
        let mut cfg: TrainConfig = serde_json::from_str(
            meta.get(key::TRAIN_CONFIG)
                .map(String::as_str)
                .unwrap_or(""),
        )
        .map_err(|e| load_err(path, format!("bad train_config metadata: {e}")))?;
        let step: u64 = meta
            .get(key::STEP)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| load_err(path, "missing or bad step metadata"))?;
        adjust(&mut cfg);
        let mut trainer = Trainer::new(cfg, alphas_cumprod, device)?;
        let tensors = candle_core::safetensors::load(path, device)
            .map_err(|e| load_err(path, format!("cannot read tensors: {e}")))?;
        let get = |k: &str| tensors.get(k).cloned();
        for (name, var) in &trainer.vars {
            let t = get(name).ok_or_else(|| load_err(path, format!("checkpoint lacks {name}")))?;
            if t.dims() != var.dims() {
                return Err(load_err(
                    path,
                    format!("{name}: shape {:?}, model needs {:?}", t.dims(), var.dims()),
                ));
            }
            var.set(&t)?;
        }
        // A checkpoint from before the bias-corrected EMA (no `ema_updates`) restarts the average.
        if let Some(updates) = meta.get(EMA_UPDATES).and_then(|s| s.parse().ok()) {
            trainer
                .ema
                .load("ema.", get, updates)
                .map_err(|e| load_err(path, e.to_string()))?;
        }
        trainer
            .opt
            .load_state(get, step)
            .map_err(|e| load_err(path, e.to_string()))?;
        trainer.step = step;
        Ok(trainer)
    }

    /// Writes the EMA weights as a self-contained model file for sampling.
    pub fn export_model(&self, path: &Path) -> Result<(), Error> {
        self.export_model_with(path, &[])
    }

    /// [`Self::export_model`] with extra metadata entries (e.g. a measured `exit_threshold`).
    pub fn export_model_with(&self, path: &Path, extra: &[(&str, String)]) -> Result<(), Error> {
        let mut meta = model_file::metadata(
            &self.cfg.model,
            self.cfg.text_encoder.as_ref(),
            self.cfg.scheduler.to_string(),
            json(&self.cfg)?,
            self.step,
        )
        .map_err(candle_core::Error::wrap)?;
        meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        write(path, self.ema.averaged("")?, meta)
    }
}
