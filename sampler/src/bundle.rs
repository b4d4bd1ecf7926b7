//! A self-contained deediff model file: U-ViT weights with official names, its certainty heads
//! (`lte_classifer.*`), an optional text encoder (`text_encoder.*`), and in the safetensors
//! metadata the configs that make it usable alone — `uvit_config`, `text_encoder_config` and the
//! diffusers `scheduler_config` it was trained with.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use deediff_schedules::SchedulerConfig;
use deediff_uem::{CertaintyHeads, EarlyExitUVit, ExitPolicy};
use deediff_unet::text_encoder::{TextEncoder as WordEncoder, TextEncoderConfig};
use deediff_unet::{LatentDecoder, UVit, UVitConfig};

use crate::conditioning::TextEncoder;
use crate::error::{Result, SamplerError};
use crate::sampling_defaults::{SamplingDefaults, SAMPLING_DEFAULTS_KEY};
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
    /// The exit threshold measured for this model (metadata [`EXIT_THRESHOLD_KEY`]), used when the
    /// caller names none.
    pub exit_threshold: Option<f32>,
    /// The scheduler, steps and policy recommended for this model (metadata
    /// [`SAMPLING_DEFAULTS_KEY`]), used for each of them the caller names none of.
    pub sampling_defaults: Option<SamplingDefaults>,
}

/// Metadata key of a model's recommended exit threshold: the highest-compute-saving threshold
/// whose FID its trainer measured within 10 % of full depth (MODEL.md).
pub const EXIT_THRESHOLD_KEY: &str = "exit_threshold";

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

    /// Whether `path` is a deediff model file (safetensors whose metadata has `uvit_config`),
    /// as opposed to an official checkpoint.
    pub fn is_bundle(path: impl AsRef<Path>) -> Result<bool> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| {
            SamplerError::Request(format!("{}: cannot open model file: {e}", path.display()))
        })?;
        // Only the header is read: an 8-byte length, then JSON. Anything else is not a bundle.
        let mut reader = std::io::BufReader::new(file);
        let mut len = [0u8; 8];
        let header = reader.read_exact(&mut len).ok().and_then(|()| {
            let n = u64::from_le_bytes(len);
            let mut header = vec![0u8; usize::try_from(n).ok().filter(|&n| n <= 100 << 20)?];
            reader.read_exact(&mut header).ok()?;
            serde_json::from_slice::<serde_json::Value>(&header).ok()
        });
        let Some(header) = header else {
            return Ok(false);
        };
        Ok(header["__metadata__"]["uvit_config"].is_string())
    }

    /// Reads a model file written by the trainer's export.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            SamplerError::Request(format!("{}: cannot read model file: {e}", path.display()))
        })?;
        Self::from_bytes(bytes, &path.display().to_string(), device)
    }

    /// The embedded default model.
    #[cfg(feature = "default-model")]
    pub fn default_model(device: &Device) -> Result<Self> {
        Self::from_bytes(DEFAULT_MODEL.to_vec(), "<embedded default model>", device)
    }

    /// Parses a model file held in memory; `origin` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, origin: &str, device: &Device) -> Result<Self> {
        let bad = |what: String| SamplerError::Request(format!("{origin}: {what}"));
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors model file ({e})")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            metadata
                .get(key)
                .ok_or_else(|| bad(format!("metadata has no {key:?}: not a deediff model file")))
        };
        let cfg: UVitConfig = serde_json::from_str(field("uvit_config")?)
            .map_err(|e| bad(format!("bad uvit_config: {e}")))?;
        let scheduler_config = SchedulerConfig::from_diffusers_json(field("scheduler_config")?)
            .map_err(|e| bad(format!("bad scheduler_config: {e}")))?;
        let training =
            TrainingSchedule::of_diffusers(&scheduler_config).map_err(|e| bad(e.to_string()))?;
        let text_cfg: Option<TextEncoderConfig> = metadata
            .get("text_encoder_config")
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| bad(format!("bad text_encoder_config: {e}")))?;

        let exit_threshold = metadata
            .get(EXIT_THRESHOLD_KEY)
            .map(|v| {
                let t: f32 = v
                    .parse()
                    .map_err(|_| bad(format!("{EXIT_THRESHOLD_KEY} {v:?} is not a number")))?;
                ExitPolicy::per_sample(t).map_err(|e| bad(format!("{EXIT_THRESHOLD_KEY}: {e}")))?;
                Ok::<f32, SamplerError>(t)
            })
            .transpose()?;
        let sampling_defaults = metadata
            .get(SAMPLING_DEFAULTS_KEY)
            .map(|v| SamplingDefaults::from_json(v))
            .transpose()
            .map_err(|e| bad(format!("{SAMPLING_DEFAULTS_KEY}: {e}")))?;

        // candle errors can carry a backtrace (RUST_BACKTRACE): the message is its first line.
        let candle_bad = |e: candle_core::Error| bad(deediff_unet::one_line(&e));
        let vb =
            VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).map_err(candle_bad)?;
        let model = UVit::new(&cfg, vb.clone()).map_err(candle_bad)?;
        let heads = CertaintyHeads::new(&cfg, vb.clone()).map_err(candle_bad)?;
        let text = text_cfg
            .map(|tc| WordEncoder::new(&tc, vb.pp("text_encoder")))
            .transpose()
            .map_err(candle_bad)?
            .map(|t| Box::new(t) as Box<dyn TextEncoder>);
        Ok(Self {
            model: EarlyExitUVit::new(model, Some(heads)),
            text,
            decoder: None,
            training,
            metadata,
            exit_threshold,
            sampling_defaults,
        })
    }
}

impl TextEncoder for WordEncoder {
    fn encode(
        &self,
        prompts: &[Option<&str>],
        device: &Device,
    ) -> std::result::Result<Tensor, String> {
        let rows = prompts
            .iter()
            .map(|p| match p {
                Some(p) => self.tokenizer().encode(p).map(|e| e.ids),
                None => Ok(self.tokenizer().null()),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        self.forward_ids(&rows, device).map_err(|e| e.to_string())
    }

    fn example_prompts(&self) -> Vec<String> {
        self.config().example_prompts.clone()
    }

    fn warnings(&self, prompt: &str) -> Vec<String> {
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
                unknown.into_iter().chain(truncated).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }
}
