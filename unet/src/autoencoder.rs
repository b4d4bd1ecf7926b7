//! The Stable Diffusion KL-f8 autoencoder's decoder, which turns a latent U-ViT's samples into
//! pixels (`x = D(z / s)`, as U-ViT decodes; `s` = 0.18215 unless the model was trained with
//! another scale). The network is candle-transformers'
//! `AutoEncoderKL`; this module only reads the two published layouts into it:
//! * diffusers (`diffusion_pytorch_model.safetensors`, with `config.json` beside it), as is;
//! * the original LDM names of U-ViT's `autoencoder_kl.pth` (`decoder.up.3.block.0…`), mapped to
//!   the diffusers names.
//!
//! Only the decoder and `post_quant_conv` are read; the encoder, never run when sampling, is built
//! from zero-stride views that take no memory, so decoder-only files load too.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result as CandleResult, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};

use crate::{one_line, Checkpoint};
use crate::{Error, Result};

/// The latent scale of Stable Diffusion 1.x's autoencoder (`scaling_factor` in diffusers).
pub const SD_SCALE_FACTOR: f64 = 0.18215;

/// Group-norm groups of Stable Diffusion's autoencoder; not visible in the tensor shapes.
const SD_NORM_GROUPS: usize = 32;

/// A loaded decoder: call [`LatentDecoder::decode`] on sampled latents.
pub struct LatentDecoder {
    vae: AutoEncoderKL,
    scale_factor: f64,
    path: PathBuf,
}

impl LatentDecoder {
    /// Loads from a diffusers VAE folder (`config.json` + `diffusion_pytorch_model.safetensors`,
    /// or a Stable Diffusion repository with a `vae/` subfolder), a diffusers safetensors file, or
    /// an LDM-named `.pth`/`.ckpt` (U-ViT's `autoencoder_kl.pth`). `norm_num_groups` and
    /// `scaling_factor` come from a diffusers config beside the weights (`<stem>.config.json` or
    /// `config.json`), else Stable Diffusion's.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let weights = weights_file(path)?;
        let json = read_config(&weights)?;
        // Its errors name the file already.
        let ckpt = Checkpoint::open(&weights)?;
        let names = diffusers_names(ckpt.shapes().keys());
        let bad = |reason: String| Error::pretrained(&weights, reason);
        let config = infer_config(ckpt.shapes(), &names, json.as_ref()).map_err(bad)?;
        let scale_factor = json
            .as_ref()
            .and_then(|j| j.get("scaling_factor")?.as_f64())
            .unwrap_or(SD_SCALE_FACTOR);
        let backend = DecoderOnly {
            inner: ckpt.into_backend(),
            names,
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let vae = AutoEncoderKL::new(vb, 3, 3, config).map_err(|e| {
            bad(format!(
                "not a Stable Diffusion autoencoder decoder: {}",
                one_line(&e)
            ))
        })?;
        Ok(Self {
            vae,
            scale_factor,
            path: weights,
        })
    }

    /// Latent channels `z` must have.
    pub fn latent_channels(&self) -> usize {
        self.vae.config.latent_channels
    }

    /// Pixels per latent along each side (8 for KL-f8).
    pub fn upscale(&self) -> usize {
        1 << (self.vae.config.block_out_channels.len() - 1)
    }

    pub fn scale_factor(&self) -> f64 {
        self.scale_factor
    }

    /// Overrides the latent scale: the model's training data decides it, not the autoencoder
    /// file (U-ViT's MS-COCO models use 0.23010, its ImageNet ones 0.18215).
    pub fn with_scale_factor(mut self, scale_factor: f64) -> Result<Self> {
        if !(scale_factor.is_finite() && scale_factor > 0.0) {
            return Err(Error::pretrained(
                &self.path,
                format!("scale factor {scale_factor} must be a positive number"),
            ));
        }
        self.scale_factor = scale_factor;
        Ok(self)
    }

    /// The weights file that was read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Latents `[B, C, h, w]` (as the U-ViT samples them) → images `[B, 3, 8h, 8w]` in [-1, 1]
    /// (not clamped).
    ///
    /// One image at a time: with batches of two or more, candle-transformers 0.11.1's attention
    /// block (the decoder's mid block) gives outputs that differ from diffusers by ~0.1 on CPU,
    /// while single images match to 3e-6 (probably candle's batched-matmul folding with a
    /// transposed lhs, cf. huggingface/candle#3744).
    pub fn decode(&self, z: &Tensor) -> CandleResult<Tensor> {
        let z = (z / self.scale_factor)?;
        let images = (0..z.dim(0)?)
            .map(|i| self.vae.decode(&z.narrow(0, i, 1)?))
            .collect::<CandleResult<Vec<_>>>()?;
        Tensor::cat(&images, 0)
    }
}

/// The weights file of `path`: the file itself, or the diffusers weights in the folder (or its
/// `vae/` subfolder).
fn weights_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let names = [
        "diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ];
    names
        .iter()
        .map(|n| path.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::pretrained(
                path,
                "no diffusion_pytorch_model.safetensors in this folder (nor in vae/)",
            )
        })
}

/// The diffusers config beside `weights` (`<stem>.config.json`, else `config.json`), if any.
fn read_config(weights: &Path) -> Result<Option<serde_json::Value>> {
    let stem = weights
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let candidates = [format!("{stem}.config.json"), "config.json".into()];
    let Some(file) = candidates
        .iter()
        .map(|c| weights.with_file_name(c))
        .find(|f| f.is_file())
    else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&file).map_err(|e| Error::pretrained(&file, e.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::pretrained(&file, format!("invalid JSON: {e}")))
}

/// Diffusers name → stored name for the decoder tensors of a file in either layout (diffusers
/// names map to themselves; `first_stage_model.` prefixes of full LDM checkpoints are dropped).
fn diffusers_names<'a>(stored: impl Iterator<Item = &'a String>) -> HashMap<String, String> {
    let stored: Vec<&String> = stored.collect();
    let n_up = stored
        .iter()
        .filter_map(|k| {
            let k = k.strip_prefix("first_stage_model.").unwrap_or(k);
            k.strip_prefix("decoder.up.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    stored
        .into_iter()
        .filter_map(|k| {
            let name = k.strip_prefix("first_stage_model.").unwrap_or(k);
            let mapped = ldm_to_diffusers(name, n_up)?;
            Some((mapped, k.clone()))
        })
        .collect()
}

/// One decoder tensor name, LDM → diffusers (`None` for tensors the decoder does not use).
fn ldm_to_diffusers(name: &str, n_up: usize) -> Option<String> {
    if name.starts_with("post_quant_conv.") {
        return Some(name.to_string());
    }
    let rest = name.strip_prefix("decoder.")?;
    let rest = rest.replace("nin_shortcut", "conv_shortcut");
    let mapped = if let Some(r) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{r}")
    } else if let Some(r) = rest.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{r}")
    } else if let Some(r) = rest.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{r}")
    } else if let Some(r) = rest.strip_prefix("mid.attn_1.") {
        let (layer, param) = r.split_once('.')?;
        let layer = match layer {
            "norm" => "group_norm",
            "q" => "query",
            "k" => "key",
            "v" => "value",
            "proj_out" => "proj_attn",
            other => other,
        };
        format!("mid_block.attentions.0.{layer}.{param}")
    } else if let Some(r) = rest.strip_prefix("up.") {
        let (i, r) = r.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let r = r
            .replace("block.", "resnets.")
            .replace("upsample.", "upsamplers.0.");
        // LDM numbers the up path from the lowest resolution's end; diffusers in run order.
        format!("up_blocks.{}.{r}", n_up.checked_sub(i + 1)?)
    } else {
        rest
    };
    Some(format!("decoder.{mapped}"))
}

/// The autoencoder config from the decoder's tensor shapes (diffusers names) and the
/// `norm_num_groups` of `json` (Stable Diffusion's 32 without one).
fn infer_config(
    shapes: &std::collections::BTreeMap<String, Vec<usize>>,
    names: &HashMap<String, String>,
    json: Option<&serde_json::Value>,
) -> std::result::Result<AutoEncoderKLConfig, String> {
    let shape = |name: &str| names.get(name).and_then(|s| shapes.get(s));
    let conv_in = shape("decoder.conv_in.weight")
        .filter(|s| s.len() == 4)
        .ok_or("no decoder.conv_in weight: not an autoencoder (decoder) file")?;
    let up_blocks: BTreeSet<usize> = names
        .keys()
        .filter_map(|k| {
            k.strip_prefix("decoder.up_blocks.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let n = up_blocks.len();
    if n == 0 || up_blocks.last() != Some(&(n - 1)) {
        return Err(format!("decoder up blocks {up_blocks:?} are not 0..n"));
    }
    let mut block_out_channels = (0..n)
        .map(|i| {
            shape(&format!("decoder.up_blocks.{i}.resnets.0.conv2.weight"))
                .map(|s| s[0])
                .ok_or_else(|| format!("decoder up block {i} has no resnets.0.conv2 weight"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    block_out_channels.reverse();
    let resnets = names
        .keys()
        .filter_map(|k| {
            k.strip_prefix("decoder.up_blocks.0.resnets.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    let norm_num_groups = json
        .and_then(|j| j.get("norm_num_groups")?.as_u64())
        .map_or(SD_NORM_GROUPS, |g| g as usize);
    Ok(AutoEncoderKLConfig {
        block_out_channels,
        // The decoder has one resnet more per block than the encoder's `layers_per_block`.
        layers_per_block: resnets,
        latent_channels: conv_in[1],
        norm_num_groups,
        use_quant_conv: false,
        use_post_quant_conv: names.contains_key("post_quant_conv.weight"),
    })
}

/// Serves the decoder tensors under their diffusers names and zero views for the encoder.
struct DecoderOnly {
    inner: Box<dyn SimpleBackend>,
    /// Diffusers name → stored name.
    names: HashMap<String, String>,
}

impl DecoderOnly {
    fn is_encoder(name: &str) -> bool {
        name.starts_with("encoder.") || name.starts_with("quant_conv.")
    }
}

impl SimpleBackend for DecoderOnly {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> CandleResult<Tensor> {
        match self.names.get(name) {
            Some(stored) => self.inner.get(s, stored, h, dtype, dev),
            None if Self::is_encoder(name) => Tensor::zeros((), dtype, dev)?.broadcast_as(s),
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> CandleResult<Tensor> {
        match self.names.get(name) {
            Some(stored) => self.inner.get_unchecked(stored, dtype, dev),
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::ldm_to_diffusers;

    #[test]
    fn ldm_names_map_to_diffusers() {
        let cases = [
            ("decoder.conv_in.weight", "decoder.conv_in.weight"),
            ("decoder.norm_out.bias", "decoder.conv_norm_out.bias"),
            (
                "decoder.mid.block_2.norm1.weight",
                "decoder.mid_block.resnets.1.norm1.weight",
            ),
            (
                "decoder.mid.attn_1.q.weight",
                "decoder.mid_block.attentions.0.query.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.bias",
                "decoder.mid_block.attentions.0.proj_attn.bias",
            ),
            (
                "decoder.up.3.block.2.nin_shortcut.weight",
                "decoder.up_blocks.0.resnets.2.conv_shortcut.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(
                ldm_to_diffusers(ldm, 4).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
        assert_eq!(ldm_to_diffusers("encoder.conv_in.weight", 4), None);
        assert_eq!(
            ldm_to_diffusers("decoder.up.4.block.0.conv1.weight", 4),
            None
        );
    }
}
