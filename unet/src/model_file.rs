//! The deediff model file, in one place: a safetensors file holding a U-ViT's weights under the
//! official names, its certainty heads (`lte_classifer.*`), an optional text encoder
//! (`text_encoder.*`), and in its metadata the configs that make it usable alone. The trainer
//! writes it, the sampler reads it; both go through this module, so the keys and their checks
//! cannot drift apart.
//!
//! It lives in `deediff-unet`, the lowest crate that knows the configs it stores. The entries
//! other crates own (the diffusers scheduler config, the exit threshold, the sampling defaults)
//! are carried as text here and interpreted by those crates.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::Tensor;

use crate::config::UVitConfig;
use crate::text_encoder::TextEncoderConfig;
use crate::{Error, Result};

/// Value of [`key::FORMAT`] in a model file.
pub const FORMAT: &str = "deediff-model-v1";

/// Prefix of the certainty-head tensors (the official spelling).
pub const CERTAINTY_HEAD_PREFIX: &str = "lte_classifer";

/// Prefix of the filled-exit certainty heads: one more head per block, same shape as the
/// official ones, that predicts the error of a *cache-filled* exit (`--policy cached`) instead of
/// a truncated one; fitted by `calibrate filled` on the model's own sampling trajectories.
pub const FILLED_HEAD_PREFIX: &str = "filled_certainty";

/// Prefix of the tensors of the text encoder a text-to-image model ships.
pub const TEXT_ENCODER_PREFIX: &str = "text_encoder";

/// The metadata keys of a model file (the first three are shared with training checkpoints).
pub mod key {
    /// The file's format ([`super::FORMAT`] for a model file).
    pub const FORMAT: &str = "format";
    /// Training updates behind the weights.
    pub const STEP: &str = "step";
    /// The training recipe (JSON), for the record.
    pub const TRAIN_CONFIG: &str = "train_config";
    /// The JSON [`crate::UVitConfig`]; its presence is what marks a model file.
    pub const UVIT_CONFIG: &str = "uvit_config";
    /// The JSON [`crate::text_encoder::TextEncoderConfig`] of a text-to-image model.
    pub const TEXT_ENCODER_CONFIG: &str = "text_encoder_config";
    /// The diffusers `scheduler_config.json` the model was trained with.
    pub const SCHEDULER_CONFIG: &str = "scheduler_config";
    /// The model's recommended exit threshold: the highest-compute-saving threshold whose FID
    /// its trainer measured within 10 % of full depth (MODEL.md).
    pub const EXIT_THRESHOLD: &str = "exit_threshold";
    /// The scheduler, steps and policy recommended for this model (JSON, `deediff-sampler`).
    pub const SAMPLING_DEFAULTS: &str = "sampling_defaults";
    /// How the filled-exit heads ([`super::FILLED_HEAD_PREFIX`]) were calibrated (JSON: the
    /// command, scheduler, steps, images, held-out fit).
    pub const FILLED_HEADS: &str = "filled_heads";
}

fn invalid(origin: &dyn std::fmt::Display, reason: impl Into<String>) -> Error {
    Error::ModelFile {
        origin: origin.to_string(),
        reason: reason.into(),
    }
}

/// The metadata a trainer writes into a model file. `scheduler_config` is the diffusers JSON
/// and `train_config` the recipe's JSON.
pub fn metadata(
    uvit: &UVitConfig,
    text_encoder: Option<&TextEncoderConfig>,
    scheduler_config: String,
    train_config: String,
    step: u64,
) -> serde_json::Result<HashMap<String, String>> {
    let mut meta = HashMap::from([
        (key::FORMAT.to_string(), FORMAT.to_string()),
        (key::STEP.to_string(), step.to_string()),
        (key::UVIT_CONFIG.to_string(), serde_json::to_string(uvit)?),
        (key::SCHEDULER_CONFIG.to_string(), scheduler_config),
        (key::TRAIN_CONFIG.to_string(), train_config),
    ]);
    if let Some(tc) = text_encoder {
        meta.insert(
            key::TEXT_ENCODER_CONFIG.to_string(),
            serde_json::to_string(tc)?,
        );
    }
    Ok(meta)
}

/// `tensors` (made contiguous) with `metadata` as the bytes of a safetensors file. The tools
/// write them through one atomic writer (`deediff_eval::atomic`: a temporary file per process,
/// synced, renamed over the target, the folder synced), so an interrupted or failed write never
/// leaves a broken file in place of the previous good one.
pub fn serialize(
    tensors: Vec<(String, Tensor)>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| candle_core::Error::msg(format!("cannot serialise safetensors: {e}")).into())
}

/// The string metadata of a safetensors file held in memory; `origin` names it in errors.
pub fn read_metadata(bytes: &[u8], origin: &str) -> Result<HashMap<String, String>> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| invalid(&origin, format!("not a safetensors file: {e}")))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// [`read_metadata`] of the file at `path` (only its header is read from disk).
pub fn read_metadata_file(path: &Path) -> Result<HashMap<String, String>> {
    read_metadata(&map_file(path)?, &path.display().to_string())
}

/// The file at `path` mapped read-only, so that a reader touches only the bytes it uses: the
/// header alone for the metadata, and each tensor once as a model copies it into its layers —
/// loading a model never holds the whole file and the model in memory at once.
pub fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: mapped read-only; like every mmap user (and candle's `MmapedSafetensors`, which the
    // checkpoint loader uses) we assume the file is not truncated while it is mapped. deediff's
    // own writers replace a file by renaming a new one over it, which leaves a mapping intact.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

/// Whether the file behind `file` is a model file (safetensors whose metadata has
/// [`key::UVIT_CONFIG`]) rather than, say, an official checkpoint. Only the header is read: an
/// 8-byte length, then JSON; anything else is not a model file.
pub fn is_model_file(file: impl Read) -> bool {
    let mut reader = std::io::BufReader::new(file);
    let mut len = [0u8; 8];
    let header = reader.read_exact(&mut len).ok().and_then(|()| {
        let n = u64::from_le_bytes(len);
        let mut header = vec![0u8; usize::try_from(n).ok().filter(|&n| n <= 100 << 20)?];
        reader.read_exact(&mut header).ok()?;
        serde_json::from_slice::<serde_json::Value>(&header).ok()
    });
    header.is_some_and(|h| h["__metadata__"][key::UVIT_CONFIG].is_string())
}

/// A model file's metadata, checked: the configs this crate knows parsed, the entries other
/// crates own kept as text for them.
pub struct Header {
    pub uvit: UVitConfig,
    pub text_encoder: Option<TextEncoderConfig>,
    /// The diffusers scheduler config the model was trained with (JSON).
    pub scheduler_config: String,
    /// Every metadata entry (configs, training recipe, step).
    pub metadata: HashMap<String, String>,
    /// The file has tensors of filled-exit heads ([`FILLED_HEAD_PREFIX`]); loading them then
    /// fails if any is missing, rather than ignoring a partial set.
    pub has_filled_heads: bool,
}

impl Header {
    /// Reads and checks the metadata of a model file held in memory; `origin` names it in
    /// errors.
    pub fn read(bytes: &[u8], origin: &str) -> Result<Self> {
        let bad = |what: String| invalid(&origin, what);
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors model file ({e})")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            metadata
                .get(key)
                .ok_or_else(|| bad(format!("metadata has no {key:?}: not a deediff model file")))
        };
        let uvit: UVitConfig = serde_json::from_str(field(key::UVIT_CONFIG)?)
            .map_err(|e| bad(format!("bad {}: {e}", key::UVIT_CONFIG)))?;
        let scheduler_config = field(key::SCHEDULER_CONFIG)?.clone();
        let text_encoder = metadata
            .get(key::TEXT_ENCODER_CONFIG)
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| bad(format!("bad {}: {e}", key::TEXT_ENCODER_CONFIG)))?;
        let filled = format!("{FILLED_HEAD_PREFIX}.");
        let has_filled_heads = header.offset_keys().iter().any(|k| k.starts_with(&filled));
        Ok(Self {
            uvit,
            text_encoder,
            scheduler_config,
            metadata,
            has_filled_heads,
        })
    }

    /// The recorded exit threshold ([`key::EXIT_THRESHOLD`]), if any; whether it is a usable
    /// threshold is the exit policy's to say.
    pub fn exit_threshold(&self, origin: &str) -> Result<Option<f32>> {
        self.metadata
            .get(key::EXIT_THRESHOLD)
            .map(|v| {
                v.parse().map_err(|_| {
                    invalid(
                        &origin,
                        format!("{} {v:?} is not a number", key::EXIT_THRESHOLD),
                    )
                })
            })
            .transpose()
    }
}
