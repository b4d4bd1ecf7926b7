//! A small text encoder that ships inside a model file: a word-level tokenizer whose vocabulary is
//! stored in the file's metadata, token + position embeddings and a few U-ViT blocks, producing the
//! `[B, N_ctx, clip_dim]` context tokens that `uvit_t2i` expects. Trained jointly with the U-ViT, so
//! no external CLIP is needed; its weights live under `text_encoder.*`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::block::Block;
use crate::layers::{LayerNorm, TRUNC_NORMAL_002};
use crate::model_file::{self, key::TEXT_ENCODER_CONFIG, TEXT_ENCODER_PREFIX};
use crate::Error;

/// Token id of padding; an all-padding sequence is the null (unconditional) prompt.
pub const PAD: u32 = 0;
const PAD_WORD: &str = "<pad>";

/// Architecture and vocabulary (stored as JSON in the model file's metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderConfig {
    /// Words by id; id 0 is `<pad>`.
    pub vocab: Vec<String>,
    /// Sequence length `N_ctx` (= the U-ViT's `num_clip_token`).
    pub max_tokens: usize,
    /// Width (= the U-ViT's `clip_dim`).
    pub dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// Prompts shown when a prompt has no known word.
    pub example_prompts: Vec<String>,
    /// Words that name something the model can draw. When given, a prompt must contain one:
    /// "a purple elephant" shares only "a" with the captions and is refused instead of
    /// yielding an arbitrary image. Empty (older files) = any known word grounds a prompt.
    #[serde(default)]
    pub content_words: Vec<String>,
}

impl TextEncoderConfig {
    /// A config whose vocabulary is every word of `corpus` (sorted) and whose length fits the
    /// longest caption.
    pub fn from_corpus(
        corpus: &[String],
        example_prompts: Vec<String>,
        dim: usize,
        depth: usize,
        num_heads: usize,
    ) -> Self {
        let mut known: Vec<String> = corpus.iter().flat_map(|c| words(c)).collect();
        known.sort();
        known.dedup();
        let max_tokens = corpus
            .iter()
            .map(|c| words(c).count())
            .max()
            .unwrap_or(1)
            .max(1);
        Self {
            vocab: std::iter::once(PAD_WORD.to_string()).chain(known).collect(),
            max_tokens,
            dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            example_prompts,
            content_words: Vec::new(),
        }
    }

    /// Requires prompts to contain one of `words` (see [`Self::content_words`]).
    pub fn with_content_words(mut self, words: impl IntoIterator<Item = String>) -> Self {
        self.content_words = words.into_iter().collect();
        self
    }
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|ch: char| !(ch.is_alphanumeric() || ch == '-'))
        .map(|w| w.trim_matches('-').to_lowercase())
        .filter(|w| !w.is_empty())
}

/// A tokenised prompt: `max_tokens` ids (padded), the words that were skipped as unknown and the
/// known words cut off past the context.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoding {
    pub ids: Vec<u32>,
    pub unknown: Vec<String>,
    pub truncated: Vec<String>,
}

/// Lower-cases, splits on anything but letters, digits and `-`, and maps known words to ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    index: HashMap<String, u32>,
    /// Ids of the content words (empty: no such requirement).
    content: std::collections::HashSet<u32>,
    max_tokens: usize,
    examples: Vec<String>,
}

impl Tokenizer {
    pub fn new(cfg: &TextEncoderConfig) -> Self {
        let index: HashMap<String, u32> = cfg
            .vocab
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        let content = cfg
            .content_words
            .iter()
            .filter_map(|w| index.get(w).copied())
            .collect();
        Self {
            index,
            content,
            max_tokens: cfg.max_tokens,
            examples: cfg.example_prompts.clone(),
        }
    }

    /// Unknown words are skipped (and reported); a prompt with no known word is an error, so a
    /// typo never silently yields an unconditional image. Longer prompts are cut to `max_tokens`
    /// (the cut words reported); the drawable-word check looks at what is left after the cut, so
    /// a subject past the context is an error, not a silently different picture.
    pub fn encode(&self, prompt: &str) -> crate::Result<Encoding> {
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        for w in words(prompt) {
            match self.index.get(&w) {
                Some(&id) => known.push((id, w)),
                None => unknown.push(w),
            }
        }
        if known.is_empty() {
            return Err(Error::NoKnownWord {
                prompt: prompt.to_string(),
                examples: self.examples.clone(),
            });
        }
        let cut = known.split_off(known.len().min(self.max_tokens));
        let drawable =
            |words: &[(u32, String)]| words.iter().any(|(id, _)| self.content.contains(id));
        if !self.content.is_empty() && !drawable(&known) {
            let prompt = prompt.to_string();
            return Err(if drawable(&cut) {
                Error::SubjectPastContext {
                    prompt,
                    max_tokens: self.max_tokens,
                }
            } else {
                Error::NothingToDraw {
                    prompt,
                    examples: self.examples.clone(),
                }
            });
        }
        let mut ids: Vec<u32> = known.into_iter().map(|(id, _)| id).collect();
        ids.resize(self.max_tokens, PAD);
        Ok(Encoding {
            ids,
            unknown,
            truncated: cut.into_iter().map(|(_, w)| w).collect(),
        })
    }

    /// The null prompt (all padding), used for classifier-free guidance.
    pub fn null(&self) -> Vec<u32> {
        vec![PAD; self.max_tokens]
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

/// Token + position embeddings → `depth` pre-LN U-ViT blocks → LayerNorm.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    cfg: TextEncoderConfig,
    tokenizer: Tokenizer,
    token_embed: Embedding,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl TextEncoder {
    /// Builds the encoder from `vb` (pass `vb.pp(TEXT_ENCODER_PREFIX)` of the model file).
    pub fn new(cfg: &TextEncoderConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.vocab.first().map(String::as_str) != Some(PAD_WORD) || cfg.max_tokens == 0 {
            candle_core::bail!(
                "text encoder config needs vocab[0] = {PAD_WORD:?} and max_tokens > 0"
            );
        }
        if cfg.num_heads == 0 || !cfg.dim.is_multiple_of(cfg.num_heads) {
            candle_core::bail!(
                "text encoder config: dim {} must be a positive multiple of num_heads {}",
                cfg.dim,
                cfg.num_heads
            );
        }
        // A damaged file may claim any size: keep shape products far from overflowing.
        if cfg.max_tokens > 1 << 16 || cfg.dim > 1 << 16 || cfg.depth > 1 << 12 {
            candle_core::bail!(
                "text encoder config: max_tokens {}, dim {} or depth {} is implausibly large",
                cfg.max_tokens,
                cfg.dim,
                cfg.depth
            );
        }
        if !(cfg.mlp_ratio > 0.0 && cfg.mlp_ratio <= 64.0) {
            candle_core::bail!(
                "text encoder config: mlp_ratio {} must be in (0, 64]",
                cfg.mlp_ratio
            );
        }
        let d = cfg.dim;
        let table =
            vb.get_with_hints((cfg.vocab.len(), d), "token_embed.weight", TRUNC_NORMAL_002)?;
        let pos_embed = vb.get_with_hints((1, cfg.max_tokens, d), "pos_embed", TRUNC_NORMAL_002)?;
        let hidden = (d as f64 * cfg.mlp_ratio) as usize;
        let blocks = (0..cfg.depth)
            .map(|i| {
                Block::new(
                    d,
                    cfg.num_heads,
                    hidden,
                    false,
                    false,
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            tokenizer: Tokenizer::new(cfg),
            token_embed: Embedding::new(table, d),
            pos_embed,
            blocks,
            norm: LayerNorm::new(d, vb.pp("norm"))?,
        })
    }

    /// Loads the encoder shipped inside a model file: config and vocabulary from the metadata
    /// key [`TEXT_ENCODER_CONFIG`], weights from `text_encoder.*`.
    pub fn load(path: &Path, device: &Device) -> crate::Result<Self> {
        let err = |reason: String| Error::ModelFile {
            origin: path.display().to_string(),
            reason,
        };
        // Mapped: only the header and the encoder's own tensors are read, not the U-ViT's.
        let map = model_file::map_file(path)?;
        let meta = model_file::read_metadata(&map, &path.display().to_string())?;
        let json = meta.get(TEXT_ENCODER_CONFIG).ok_or_else(|| {
            err(format!(
                "no {TEXT_ENCODER_CONFIG} metadata (not a text-to-image model?)"
            ))
        })?;
        let cfg: TextEncoderConfig = serde_json::from_str(json)
            .map_err(|e| err(format!("bad {TEXT_ENCODER_CONFIG} metadata: {e}")))?;
        let vb = VarBuilder::from_slice_safetensors(&map, DType::F32, device)?;
        Self::new(&cfg, vb.pp(TEXT_ENCODER_PREFIX)).map_err(|e| err(e.to_string()))
    }

    pub fn config(&self) -> &TextEncoderConfig {
        &self.cfg
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids `[B, max_tokens]` (u32) → context `[B, max_tokens, dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut h = self
            .token_embed
            .forward(ids)?
            .broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            h = block.forward(&h, None)?;
        }
        self.norm.forward(&h)
    }

    /// Token-id rows (each `max_tokens` long) → context tokens.
    pub fn forward_ids(&self, rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let flat: Vec<u32> = rows.concat();
        let ids = Tensor::from_vec(flat, (rows.len(), self.cfg.max_tokens), device)?;
        self.forward(&ids.to_dtype(DType::U32)?)
    }

    /// Encodes prompts; errors (with example prompts) if one has no known word.
    pub fn encode_prompts(&self, prompts: &[&str], device: &Device) -> Result<Tensor> {
        let rows = prompts
            .iter()
            .map(|p| self.tokenizer.encode(p).map(|e| e.ids))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(candle_core::Error::wrap)?;
        self.forward_ids(&rows, device)
    }

    /// Context of the null prompt for `batch` samples (classifier-free guidance).
    pub fn encode_null(&self, batch: usize, device: &Device) -> Result<Tensor> {
        self.forward_ids(&vec![self.tokenizer.null(); batch], device)
    }
}
