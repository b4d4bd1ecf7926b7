//! Published text encoders that feed `uvit_t2i`'s context tokens: the CLIP text model (U-ViT's
//! MS-COCO models read CLIP ViT-L/14's last hidden state, 77 tokens) or a BERT such as
//! sentence-transformers' all-MiniLM-L6-v2 (its token embeddings), both from candle-transformers,
//! with the Hugging Face tokenizer from `tokenizer.json`.
//!
//! A prompt is tokenized as U-ViT's `FrozenCLIPEmbedder` does (`truncation=True,
//! padding="max_length"`) to the U-ViT's `num_clip_token`; the null prompt is the empty string.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::config::{UVitConfig, Variant};
use crate::{one_line, Checkpoint};
use crate::{Error, Result};

/// The network behind a [`PretrainedText`] encoder.
enum Backbone {
    /// Causal text transformer; no attention mask (padding is `<|endoftext|>`, as U-ViT feeds it).
    Clip(ClipTextTransformer),
    /// Bidirectional; padding is masked out.
    Bert(BertModel),
}

/// Tokenized prompts, one row each, all of the context length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<Vec<u32>>,
    /// 1 for prompt tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

/// A CLIP text or BERT encoder with its tokenizer, producing `[B, context_len, width]`.
pub struct PretrainedText {
    backbone: Backbone,
    tokenizer: Tokenizer,
    width: usize,
    max_positions: usize,
    context_len: usize,
    path: PathBuf,
}

/// The fields of transformers' `CLIPTextConfig` the model needs (its defaults where absent, as
/// older configs leave them out).
#[derive(Deserialize)]
#[serde(default)]
struct ClipFields {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for ClipFields {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl PretrainedText {
    /// Loads a folder (or a weights file inside one) with `config.json`, `tokenizer.json` and
    /// `model.safetensors` (or `pytorch_model.bin`): a CLIP model or CLIP text model
    /// (`openai/clip-vit-large-patch14`, a Stable Diffusion `text_encoder/` with the tokenizer
    /// copied in) or a BERT (`sentence-transformers/all-MiniLM-L6-v2`). The context is the
    /// model's full length until [`PretrainedText::fit_to`] sets the U-ViT's.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let (dir, weights) = locate_weights(path.as_ref())?;
        let config_file = dir.join("config.json");
        let config = read_json(&config_file)?;
        let tokenizer_file = dir.join("tokenizer.json");
        let tokenizer = read_tokenizer(&tokenizer_file)?;
        // Its errors name the file already.
        let vb = Checkpoint::open(&weights)?.into_var_builder(device);
        let built = build_backbone(&config, vb).map_err(|e| e.blame(&config_file, &weights))?;
        let pad = pad_token(&dir).unwrap_or_else(|| built.default_pad.to_string());
        let pad_id = tokenizer.token_to_id(&pad).ok_or_else(|| {
            Error::pretrained(&tokenizer_file, format!("has no padding token {pad:?}"))
        })?;
        let mut encoder = Self {
            backbone: built.backbone,
            tokenizer,
            width: built.width,
            max_positions: built.max_positions,
            context_len: built.max_positions,
            path: dir,
        };
        encoder.set_context(built.max_positions, pad_id, &pad)?;
        Ok(encoder)
    }

    /// Checks the encoder against a `uvit_t2i` config (width = `clip_dim`, `num_clip_token` ≤
    /// the encoder's positions) and tokenizes to its `num_clip_token`.
    pub fn fit_to(mut self, cfg: &UVitConfig) -> Result<Self> {
        let bad = |reason: String| Error::pretrained(&self.path, reason);
        if cfg.variant != Variant::UvitT2i {
            return Err(bad(
                "a text encoder was given for a model that reads no text".into(),
            ));
        }
        if cfg.clip_dim != self.width {
            return Err(bad(format!(
                "encoder width {} but the U-ViT's context is {}-dimensional (clip_dim)",
                self.width, cfg.clip_dim
            )));
        }
        if cfg.num_clip_token > self.max_positions {
            return Err(bad(format!(
                "the U-ViT reads {} context tokens but the encoder has only {} positions",
                cfg.num_clip_token, self.max_positions
            )));
        }
        let padding = self.tokenizer.get_padding().cloned();
        let (pad_id, pad) = padding.map(|p| (p.pad_id, p.pad_token)).unwrap_or_default();
        self.set_context(cfg.num_clip_token, pad_id, &pad)?;
        Ok(self)
    }

    fn set_context(&mut self, len: usize, pad_id: u32, pad: &str) -> Result<()> {
        let trunc = TruncationParams {
            max_length: len,
            ..Default::default()
        };
        self.tokenizer
            .with_truncation(Some(trunc))
            .map_err(|e| Error::pretrained(&self.path, format!("tokenizer: {e}")))?;
        self.tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(len),
            pad_id,
            pad_token: pad.to_string(),
            ..Default::default()
        }));
        self.context_len = len;
        Ok(())
    }

    /// Width of the token features (CLIP ViT-L/14: 768).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Tokens per prompt, padding included.
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// Token ids (padded/truncated to the context) and attention mask of each prompt.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Tokens> {
        let enc = self
            .tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let (ids, attention_mask) = enc
            .into_iter()
            .map(|e| (e.get_ids().to_vec(), e.get_attention_mask().to_vec()))
            .unzip();
        Ok(Tokens {
            ids,
            attention_mask,
        })
    }

    /// How many tokens of `prompt` do not fit the context (they are dropped, as U-ViT's
    /// tokenizer call drops them).
    pub fn overflow(&self, prompt: &str) -> Result<usize> {
        let mut full = self.tokenizer.clone();
        full.with_padding(None);
        let n = full
            .with_truncation(None)
            .and_then(|t| t.encode(prompt, true))
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .len();
        Ok(n.saturating_sub(self.context_len))
    }

    /// `[B, context_len, width]` features of `prompts` (`None` = the empty prompt).
    pub fn encode(&self, prompts: &[Option<&str>], device: &Device) -> Result<Tensor> {
        let texts: Vec<&str> = prompts.iter().map(|p| p.unwrap_or("")).collect();
        let Tokens {
            ids,
            attention_mask,
        } = self.tokenize(&texts)?;
        let b = ids.len();
        let as_tensor = |rows: Vec<Vec<u32>>| {
            Tensor::new(rows.concat(), device)?.reshape((b, self.context_len))
        };
        let run = || -> candle_core::Result<Tensor> {
            let ids = as_tensor(ids)?;
            match &self.backbone {
                Backbone::Clip(m) => m.forward_with_mask(&ids, usize::MAX),
                Backbone::Bert(m) => {
                    let mask = as_tensor(attention_mask)?;
                    m.forward(&ids, &ids.zeros_like()?, Some(&mask))
                }
            }
        };
        run()
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| Error::pretrained(&self.path, one_line(&e)))
    }
}

/// The padding token named by `tokenizer_config.json` or `special_tokens_map.json` in `dir`.
fn pad_token(dir: &Path) -> Option<String> {
    ["tokenizer_config.json", "special_tokens_map.json"]
        .iter()
        .find_map(|f| {
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok()?;
            let pad = &json["pad_token"];
            pad.as_str()
                .or_else(|| pad["content"].as_str())
                .map(String::from)
        })
}

/// The folder and weights file of a pretrained encoder given as either.
fn locate_weights(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.is_file() {
        // A bare file name's parent is "", which would print `config.json` without a folder.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new(".")).to_path_buf();
        return Ok((dir, path.to_path_buf()));
    }
    let weights = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|f| path.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::pretrained(path, "no model.safetensors (or pytorch_model.bin) here")
        })?;
    Ok((path.to_path_buf(), weights))
}

fn read_json(file: &Path) -> Result<serde_json::Value> {
    present(file, "its Hugging Face config.json beside its weights")?;
    let text = std::fs::read_to_string(file).map_err(|e| Error::pretrained(file, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| Error::pretrained(file, format!("invalid JSON: {e}")))
}

/// Ok when `file` exists; otherwise one error naming it and what the encoder needs (`needs`),
/// rather than the bare "No such file or directory" of the read that would follow.
fn present(file: &Path, needs: &str) -> Result<()> {
    match file.is_file() {
        true => Ok(()),
        false => Err(Error::pretrained(
            file,
            format!("missing: the text encoder needs {needs}"),
        )),
    }
}

fn read_tokenizer(file: &Path) -> Result<Tokenizer> {
    present(file, "its Hugging Face tokenizer.json")?;
    Tokenizer::from_file(file).map_err(|e| Error::pretrained(file, e.to_string()))
}

/// A text network built from its config, with what the encoder around it needs to know.
struct Built {
    backbone: Backbone,
    width: usize,
    max_positions: usize,
    /// The padding token this family uses when the tokenizer files name none.
    default_pad: &'static str,
}

/// Why [`build_backbone`] failed: the config (a reason) or the weights (candle's error); the
/// caller knows both file names.
enum BuildError {
    Config(String),
    Weights(candle_core::Error),
}

impl BuildError {
    fn blame(self, config_file: &Path, weights: &Path) -> Error {
        match self {
            Self::Config(reason) => Error::pretrained(config_file, reason),
            Self::Weights(e) => Error::pretrained(weights, one_line(&e)),
        }
    }
}

/// The CLIP text or BERT network named by `config`'s `model_type`.
fn build_backbone(config: &serde_json::Value, vb: VarBuilder) -> Result<Built, BuildError> {
    match config["model_type"].as_str().unwrap_or_default() {
        "clip" | "clip_text_model" => build_clip(config.get("text_config").unwrap_or(config), vb),
        "bert" => {
            let cfg: BertConfig = serde_json::from_value(config.clone())
                .map_err(|e| BuildError::Config(format!("bad BERT config: {e}")))?;
            let model = BertModel::load(vb, &cfg).map_err(BuildError::Weights)?;
            Ok(Built {
                backbone: Backbone::Bert(model),
                width: cfg.hidden_size,
                max_positions: cfg.max_position_embeddings,
                default_pad: "[PAD]",
            })
        }
        other => Err(BuildError::Config(format!(
            "model_type {other:?}: only CLIP text models and BERT are supported"
        ))),
    }
}

fn build_clip(fields: &serde_json::Value, vb: VarBuilder) -> Result<Built, BuildError> {
    let c: ClipFields = serde_json::from_value(fields.clone())
        .map_err(|e| BuildError::Config(format!("bad CLIP text config: {e}")))?;
    if c.hidden_act != "quick_gelu" || c.layer_norm_eps != 1e-5 {
        return Err(BuildError::Config(format!(
            "CLIP text models with hidden_act {:?} / layer_norm_eps {} are not supported (quick_gelu, 1e-5 are)",
            c.hidden_act, c.layer_norm_eps
        )));
    }
    let cfg = ClipTextConfig {
        vocab_size: c.vocab_size,
        embed_dim: c.hidden_size,
        activation: Activation::QuickGelu,
        intermediate_size: c.intermediate_size,
        max_position_embeddings: c.max_position_embeddings,
        pad_with: None,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        projection_dim: c.hidden_size,
    };
    // A full CLIP (or a text model saved by older transformers) nests the text tower.
    let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
        vb.pp("text_model")
    } else {
        vb
    };
    let model = ClipTextTransformer::new(vb, &cfg).map_err(BuildError::Weights)?;
    Ok(Built {
        backbone: Backbone::Clip(model),
        width: c.hidden_size,
        max_positions: c.max_position_embeddings,
        default_pad: "<|endoftext|>",
    })
}
