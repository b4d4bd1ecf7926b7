//! What each image is conditioned on, and how a batch of those becomes the network's
//! [`Conditioning`] (with the matching unconditional batch for classifier-free guidance).

use candle_core::{Device, Tensor};
use deediff_unet::{Conditioning, PretrainedText, UVitConfig, Variant};

use crate::error::{Error, Result};

/// The condition of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// No conditioning: the null class, the empty prompt, or an unconditional model.
    Unconditional,
    /// A class index of a class-conditional `uvit` (below the null class).
    Class(u32),
    /// A prompt for a `uvit_t2i` model.
    Text(String),
}

/// Turns prompts into the `[B, num_clip_token, clip_dim]` context a `uvit_t2i` model reads.
pub trait TextEncoder: Send + Sync {
    /// Encodes `prompts` (`None` = the null prompt used for guidance); a prompt the encoder
    /// cannot ground is an error, never a silent guess.
    fn encode(&self, prompts: &[Option<&str>], device: &Device) -> Result<Tensor>;

    /// Whether `prompt` can be encoded, before any sampling (a long run must not fail at its
    /// thousandth image): the error [`TextEncoder::encode`] would give, or what the encoder will
    /// drop or ignore of it (unknown words, tokens past the context), one line each, for the
    /// caller to show.
    fn check(&self, _prompt: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Prompts the encoder is known to ground (one per concept for a closed-vocabulary
    /// encoder; empty for open ones), for help texts and demo grids.
    fn example_prompts(&self) -> Vec<String> {
        Vec::new()
    }
}

impl TextEncoder for PretrainedText {
    fn encode(&self, prompts: &[Option<&str>], device: &Device) -> Result<Tensor> {
        PretrainedText::encode(self, prompts, device).map_err(|e| Error::Text(e.to_string()))
    }

    fn check(&self, prompt: &str) -> Result<Vec<String>> {
        match self.overflow(prompt) {
            Ok(0) => Ok(Vec::new()),
            Ok(n) => Ok(vec![format!(
                "prompt truncated: {n} token(s) past the {}-token context are dropped",
                self.context_len()
            )]),
            Err(e) => Err(Error::Text(e.to_string())),
        }
    }
}

/// Builds conditioning batches for one model.
pub struct Conditioner<'a> {
    cfg: &'a UVitConfig,
    text: Option<&'a dyn TextEncoder>,
}

impl<'a> Conditioner<'a> {
    pub fn new(cfg: &'a UVitConfig, text: Option<&'a dyn TextEncoder>) -> Self {
        Self { cfg, text }
    }

    /// Whether the model can be guided (it has a null class or reads text).
    pub fn supports_guidance(&self) -> bool {
        self.cfg.variant == Variant::UvitT2i || self.cfg.num_classes.is_some()
    }

    /// The network conditioning for `conditions` (one per image).
    pub fn batch(&self, conditions: &[Condition], device: &Device) -> Result<Conditioning> {
        match (self.cfg.variant, self.cfg.num_classes) {
            (Variant::UvitT2i, _) => {
                let encoder = self.text.ok_or_else(|| {
                    Error::Condition("this text-to-image model needs a text encoder".into())
                })?;
                let prompts = conditions
                    .iter()
                    .map(|c| match c {
                        Condition::Text(p) => Ok(Some(p.as_str())),
                        Condition::Unconditional => Ok(None),
                        Condition::Class(k) => Err(Error::Condition(format!(
                            "class {k} given to a text-to-image model: pass a prompt"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let ctx = encoder.encode(&prompts, device)?;
                Ok(Conditioning::Context(ctx))
            }
            (Variant::Uvit, Some(rows)) => {
                let null = rows as u32 - 1;
                let labels = conditions
                    .iter()
                    .map(|c| match c {
                        Condition::Class(k) if *k < null => Ok(*k),
                        Condition::Class(k) => Err(Error::Condition(format!(
                            "class {k} is out of range: this model has classes 0..{}",
                            null - 1
                        ))),
                        Condition::Unconditional => Ok(null),
                        Condition::Text(p) => Err(Error::Condition(format!(
                            "prompt {p:?} given to a class-conditional model: pass a class index"
                        ))),
                    })
                    .collect::<Result<Vec<u32>>>()?;
                Ok(Conditioning::Class(Tensor::new(labels, device)?))
            }
            (Variant::Uvit, None) => {
                match conditions.iter().find(|c| **c != Condition::Unconditional) {
                    Some(c) => Err(Error::Condition(format!(
                        "{c:?} given to an unconditional model"
                    ))),
                    None => Ok(Conditioning::None),
                }
            }
        }
    }

    /// The unconditional batch of `n` images (null class or empty prompt).
    pub fn unconditional(&self, n: usize, device: &Device) -> Result<Conditioning> {
        self.batch(&vec![Condition::Unconditional; n], device)
    }
}
