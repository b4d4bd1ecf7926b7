//! Everything needed to sample from one deediff model file (its format: [`model_file`]): the
//! early-exit U-ViT, its text encoder, the training schedule its scheduler config names, and the
//! exit threshold and sampling defaults it recommends.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use deediff_schedules::SchedulerConfig;
use deediff_uem::{CertaintyHeads, EarlyExitUVit, ExitPolicy};
use deediff_unet::model_file::{self, key, Header, TEXT_ENCODER_PREFIX};
use deediff_unet::text_encoder::TextEncoder as WordEncoder;
use deediff_unet::{LatentDecoder, UVit};

use crate::conditioning::TextEncoder;
use crate::error::{Error, Result};
use crate::sampling_defaults::SamplingDefaults;
use crate::training_schedule::TrainingSchedule;

/// Everything needed to sample from one model file.
pub struct ModelBundle {
    pub model: EarlyExitUVit,
    /// The text encoder of a text-to-image model (a bundle's own, or a published one).
    pub text: Option<Box<dyn TextEncoder>>,
    /// The autoencoder decoder of a latent model.
    pub decoder: Option<LatentDecoder>,
    pub training: TrainingSchedule,
    /// Every metadata entry of the file (configs, training recipe, step); empty for an official
    /// checkpoint.
    pub metadata: HashMap<String, String>,
    /// The exit threshold measured for this model (metadata [`key::EXIT_THRESHOLD`]), used when the
    /// caller names none.
    pub exit_threshold: Option<f32>,
    /// The scheduler, steps and policy recommended for this model (metadata
    /// [`key::SAMPLING_DEFAULTS`]), used for each of them the caller names none of.
    pub sampling_defaults: Option<SamplingDefaults>,
}

/// The model embedded in the library: the default text-to-image model (see `MODEL.md`).
#[cfg(feature = "default-model")]
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../models/uvit_t2i_fashion_digits.safetensors");

impl ModelBundle {
    /// A model without a bundle file (e.g. an official checkpoint) and the process it was
    /// trained with.
    pub fn from_model(model: EarlyExitUVit, training: TrainingSchedule) -> Self {
        Self {
            model,
            text: None,
            decoder: None,
            training,
            metadata: HashMap::new(),
            exit_threshold: None,
            sampling_defaults: None,
        }
    }

    /// Whether `path` is a deediff model file (see [`model_file::is_model_file`]), as opposed
    /// to an official checkpoint.
    pub fn is_bundle(path: impl AsRef<Path>) -> Result<bool> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| {
            Error::Unet(deediff_unet::Error::ModelFile {
                origin: path.display().to_string(),
                reason: format!("cannot open model file: {e}"),
            })
        })?;
        Ok(model_file::is_model_file(file))
    }

    /// Reads a model file written by the trainer's export (mapped, see
    /// [`model_file::map_file`]).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let map = model_file::map_file(path)?;
        Self::from_bytes(&map, &path.display().to_string(), device)
    }

    /// The embedded default model.
    #[cfg(feature = "default-model")]
    pub fn default_model(device: &Device) -> Result<Self> {
        Self::from_bytes(DEFAULT_MODEL, "<embedded default model>", device)
    }

    /// Parses a model file held in memory; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str, device: &Device) -> Result<Self> {
        let bad = |reason: String| {
            Error::Unet(deediff_unet::Error::ModelFile {
                origin: origin.to_string(),
                reason,
            })
        };
        let header = Header::read(bytes, origin)?;
        let scheduler_config = SchedulerConfig::from_diffusers_json(&header.scheduler_config)
            .map_err(|e| bad(format!("bad {}: {e}", key::SCHEDULER_CONFIG)))?;
        let training =
            TrainingSchedule::of_diffusers(&scheduler_config).map_err(|e| bad(e.to_string()))?;
        let exit_threshold = header.exit_threshold(origin)?;
        if let Some(t) = exit_threshold {
            ExitPolicy::per_sample(t).map_err(|e| bad(format!("{}: {e}", key::EXIT_THRESHOLD)))?;
        }
        let sampling_defaults = header
            .metadata
            .get(key::SAMPLING_DEFAULTS)
            .map(|v| SamplingDefaults::from_json(v))
            .transpose()
            .map_err(|e| bad(format!("{}: {e}", key::SAMPLING_DEFAULTS)))?;
        // candle errors can carry a backtrace (RUST_BACKTRACE): the message is its first line.
        let candle_bad = |e: candle_core::Error| bad(deediff_unet::one_line(&e));
        let vb =
            VarBuilder::from_slice_safetensors(bytes, DType::F32, device).map_err(candle_bad)?;
        let model = UVit::new(&header.uvit, vb.clone()).map_err(candle_bad)?;
        let heads = CertaintyHeads::new(&header.uvit, vb.clone()).map_err(candle_bad)?;
        let filled = header
            .has_filled_heads
            .then(|| CertaintyHeads::filled(&header.uvit, vb.clone()))
            .transpose()
            .map_err(candle_bad)?;
        let mut model = EarlyExitUVit::new(model, Some(heads));
        model.set_filled_heads(filled);
        let text = header
            .text_encoder
            .map(|tc| WordEncoder::new(&tc, vb.pp(TEXT_ENCODER_PREFIX)))
            .transpose()
            .map_err(candle_bad)?
            .map(|t| Box::new(t) as Box<dyn TextEncoder>);
        Ok(Self {
            model,
            text,
            decoder: None,
            training,
            metadata: header.metadata,
            exit_threshold,
            sampling_defaults,
        })
    }
}

impl TextEncoder for WordEncoder {
    fn encode(&self, prompts: &[Option<&str>], device: &Device) -> Result<Tensor> {
        let rows = prompts
            .iter()
            .map(|p| match p {
                Some(p) => self.tokenizer().encode(p).map(|e| e.ids),
                None => Ok(self.tokenizer().null()),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Text(e.to_string()))?;
        self.forward_ids(&rows, device)
            .map_err(|e| Error::Text(e.to_string()))
    }

    fn example_prompts(&self) -> Vec<String> {
        self.config().example_prompts.clone()
    }

    fn check(&self, prompt: &str) -> Result<Vec<String>> {
        match self.tokenizer().encode(prompt) {
            Ok(e) => {
                let unknown = (!e.unknown.is_empty()).then(|| {
                    format!(
                        "ignoring words this model does not know: {}",
                        e.unknown.join(", ")
                    )
                });
                let truncated = (!e.truncated.is_empty()).then(|| {
                    format!(
                        "prompt truncated to the model's {}-word context, dropping: {}",
                        self.tokenizer().max_tokens(),
                        e.truncated.join(", ")
                    )
                });
                Ok(unknown.into_iter().chain(truncated).collect())
            }
            Err(e) => Err(Error::Text(e.to_string())),
        }
    }
}
