//! U-ViT constructor arguments, serialised with the official names so an official `config.json`
//! (or the reference `<name>.config.json`) deserialises directly.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which official module the checkpoint comes from. It fixes the extra-token layout and the exit
/// rule (`uvit` uses a patience rule on the in-blocks, `uvit_t2i` does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    /// `libs/uvit.py`: pixel or latent, class-conditional (label token first) or unconditional.
    #[serde(rename = "uvit")]
    Uvit,
    /// `libs/uvit_t2i.py`: time token followed by `num_clip_token` text-context tokens.
    #[serde(rename = "uvit_t2i")]
    UvitT2i,
}

/// Constructor arguments of the official `UViT` (same field names, so official JSON loads as is;
/// unknown JSON fields such as `batch` or `seed` are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UVitConfig {
    #[serde(rename = "module")]
    pub variant: Variant,
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    /// Number of transformer blocks minus one (depth/2 in, 1 mid, depth/2 out).
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub mlp_time_embed: bool,
    /// Label-table rows *including* the null class (official semantics; `-1` in JSON = none).
    /// Always `None` for `uvit_t2i`.
    #[serde(
        default,
        serialize_with = "classes_to_json",
        deserialize_with = "classes_from_json"
    )]
    pub num_classes: Option<usize>,
    /// Text-encoder width (`uvit_t2i` only).
    #[serde(default)]
    pub clip_dim: usize,
    /// Number of text-context tokens (`uvit_t2i` only).
    #[serde(default)]
    pub num_clip_token: usize,
    /// Final 3×3 conv after unpatchify.
    pub conv: bool,
    /// Long skips between in- and out-blocks.
    pub skip: bool,
}

fn classes_to_json<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_i64(*n as i64),
        None => s.serialize_i64(-1),
    }
}

fn classes_from_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = i64::deserialize(d)?;
    Ok(usize::try_from(n).ok().filter(|&n| n > 0))
}

impl UVitConfig {
    /// Patch tokens per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Number of patch tokens `L`.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Tokens in front of the patches: `[label?, time]` for `uvit`, `[time, context…]` for t2i.
    pub fn extras(&self) -> usize {
        match self.variant {
            Variant::Uvit => 1 + usize::from(self.num_classes.is_some()),
            Variant::UvitT2i => 1 + self.num_clip_token,
        }
    }

    /// Sequence length `extras + L`.
    pub fn seq_len(&self) -> usize {
        self.extras() + self.num_patches()
    }

    /// Features per patch token at the output, `p²·C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    /// Hidden width of the block MLP, `int(D·mlp_ratio)` as in timm's `Mlp`.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Blocks in execution order: `depth/2` in, 1 mid, `depth/2` out.
    pub fn num_blocks(&self) -> usize {
        self.depth + 1
    }

    /// Number of in-blocks (`depth/2`); block indices below this are in-blocks.
    pub fn num_in_blocks(&self) -> usize {
        self.depth / 2
    }

    /// Checks the internal consistency the model code relies on, and sizes small enough that
    /// no shape product overflows (a damaged file may claim any number).
    pub fn validate(&self) -> crate::Result<()> {
        let mut bad = Vec::new();
        const MAX_SIDE: usize = 1 << 16;
        for (name, v, max) in [
            ("img_size", self.img_size, MAX_SIDE),
            ("patch_size", self.patch_size, MAX_SIDE),
            ("in_chans", self.in_chans, 1 << 12),
            ("embed_dim", self.embed_dim, MAX_SIDE),
            ("depth", self.depth, 1 << 12),
            ("num_heads", self.num_heads, MAX_SIDE),
            ("clip_dim", self.clip_dim, MAX_SIDE),
            ("num_clip_token", self.num_clip_token, MAX_SIDE),
            ("num_classes", self.num_classes.unwrap_or(0), 1 << 24),
        ] {
            if v > max {
                bad.push(format!("{name} {v} is larger than {max}"));
            }
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            bad.push(format!("mlp_ratio {} must be in (0, 64]", self.mlp_ratio));
        }
        if !bad.is_empty() {
            return Err(crate::Error::Config(bad.join("; ")));
        }
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            bad.push(format!(
                "img_size {} not a multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if !self.depth.is_multiple_of(2) {
            bad.push(format!("depth {} must be even", self.depth));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            bad.push(format!(
                "embed_dim {} not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if !self.embed_dim.is_multiple_of(2) {
            bad.push(format!("embed_dim {} must be even", self.embed_dim));
        }
        if self.variant == Variant::UvitT2i && (self.clip_dim == 0 || self.num_classes.is_some()) {
            bad.push("uvit_t2i needs clip_dim > 0 and no num_classes".into());
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::Config(bad.join("; ")))
        }
    }
}
