//! Training checkpoints and exported models, both safetensors written atomically (temp file +
//! rename), so an interrupted write never leaves a broken file behind.
//!
//! A checkpoint holds the parameters under their model names, `ema.<name>`, `adam.m.<name>`,
//! `adam.v.<name>`, and metadata `format`, `step`, `train_config` (JSON). An exported model holds
//! the EMA weights under the model names (official U-ViT keys, `lte_classifer.*`,
//! `text_encoder.*`) and metadata `uvit_config`, `text_encoder_config`, `scheduler_config`,
//! `train_config`, `step`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use deediff_unet::text_encoder::TEXT_ENCODER_CONFIG_KEY;

use super::{TrainConfig, TrainError, Trainer};

pub const CHECKPOINT_FORMAT: &str = "deediff-train-checkpoint-v1";
const MODEL_FORMAT: &str = "deediff-model-v1";

fn load_err(path: &Path, msg: impl Into<String>) -> TrainError {
    TrainError::Load {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Writes `tensors` with `metadata` to `path` via `<path>.tmp` and a rename.
fn write_atomic(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(load_err(
            path,
            "exists and is not a regular file; refusing to replace it",
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| load_err(path, format!("cannot serialise safetensors: {e}")))?;
    // Written, flushed and synced before the rename: a full disk is an error here, never a
    // truncated checkpoint in place of the previous good one.
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        load_err(path, format!("cannot write: {e}"))
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, TrainError> {
    Ok(serde_json::to_string(v).map_err(candle_core::Error::wrap)?)
}

/// Reads a safetensors file's string metadata.
pub fn read_checkpoint_meta(path: &Path) -> Result<HashMap<String, String>, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| load_err(path, format!("not a safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

impl Trainer {
    /// Saves everything `resume` needs to continue bit-identically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<(), TrainError> {
        let mut tensors = self.parameters();
        tensors.extend(self.ema.state_tensors("ema.")?);
        tensors.extend(self.opt.state_tensors()?);
        let meta = HashMap::from([
            ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("ema_updates".to_string(), self.ema.updates().to_string()),
            ("train_config".to_string(), json(&self.cfg)?),
        ]);
        write_atomic(path, tensors, meta)
    }

    /// Rebuilds a trainer from a checkpoint written by [`Trainer::save_checkpoint`]. `adjust`
    /// may change the stored config before the trainer is built (e.g. more total steps); the
    /// architecture must stay the same.
    pub fn resume(
        path: &Path,
        alphas_cumprod: &[f64],
        device: &Device,
        adjust: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self, TrainError> {
        let meta = read_checkpoint_meta(path)?;
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(load_err(
                path,
                format!("not a training checkpoint (format {CHECKPOINT_FORMAT} expected)"),
            ));
        }
        let mut cfg: TrainConfig =
            serde_json::from_str(meta.get("train_config").map(String::as_str).unwrap_or(""))
                .map_err(|e| load_err(path, format!("bad train_config metadata: {e}")))?;
        let step: u64 = meta
            .get("step")
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
        if let Some(updates) = meta.get("ema_updates").and_then(|s| s.parse().ok()) {
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
    pub fn export_model(&self, path: &Path) -> Result<(), TrainError> {
        self.export_model_with(path, &[])
    }

    /// [`Self::export_model`] with extra metadata entries (e.g. a measured `exit_threshold`).
    pub fn export_model_with(
        &self,
        path: &Path,
        extra: &[(&str, String)],
    ) -> Result<(), TrainError> {
        let mut meta = HashMap::from([
            ("format".to_string(), MODEL_FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("uvit_config".to_string(), json(&self.cfg.model)?),
            (
                "scheduler_config".to_string(),
                self.cfg.scheduler.to_string(),
            ),
            ("train_config".to_string(), json(&self.cfg)?),
        ]);
        if let Some(tc) = &self.cfg.text_encoder {
            meta.insert(TEXT_ENCODER_CONFIG_KEY.to_string(), json(tc)?);
        }
        meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        write_atomic(path, self.ema.averaged("")?, meta)
    }
}
