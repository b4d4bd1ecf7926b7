//! Multiply-accumulate counts per sample, for reporting the compute an early exit saves.
//!
//! Only matmul-like work is counted (linear layers, attention products, patch embedding, final
//! conv); norms, softmax and activations are a few percent at most and are left out.

use crate::config::UVitConfig;

/// Per-sample MACs of each part of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacCounts {
    /// Patch embedding, time MLP, label/context embedding.
    pub embed: u64,
    /// Block `i` in execution order (out-blocks include their `skip_linear`).
    pub blocks: Vec<u64>,
    /// Shared output head: `decoder_pred` on the patch tokens + final conv.
    pub decode: u64,
    /// One certainty head (`Linear(D→p²C)` on the patch tokens).
    pub certainty_head: u64,
}

impl MacCounts {
    pub fn new(cfg: &UVitConfig) -> Self {
        let d = cfg.embed_dim as u64;
        let s = cfg.seq_len() as u64;
        let l = cfg.num_patches() as u64;
        let pd = cfg.patch_dim() as u64;
        let hidden = cfg.mlp_hidden() as u64;
        let qkv = s * d * 3 * d;
        let attn = 2 * s * s * d;
        let proj = s * d * d;
        let mlp = 2 * s * d * hidden;
        let base = qkv + attn + proj + mlp;
        let skip = if cfg.skip { s * 2 * d * d } else { 0 };
        let blocks = (0..cfg.num_blocks())
            .map(|i| {
                if i > cfg.num_in_blocks() {
                    base + skip
                } else {
                    base
                }
            })
            .collect();
        let time = if cfg.mlp_time_embed { 8 * d * d } else { 0 };
        let context = (cfg.num_clip_token * cfg.clip_dim) as u64 * d;
        let pixels = (cfg.img_size * cfg.img_size) as u64;
        let c = cfg.in_chans as u64;
        let conv = if cfg.conv { pixels * c * c * 9 } else { 0 };
        Self {
            embed: l * pd * d + time + context,
            blocks,
            decode: l * d * pd + conv,
            certainty_head: l * d * pd,
        }
    }

    /// A plain full-depth forward: embed + every block + the output head once.
    pub fn full_depth(&self) -> u64 {
        self.embed + self.blocks.iter().sum::<u64>() + self.decode
    }

    /// Embed + the first `n` blocks + the output head once (no certainty heads).
    pub fn truncated(&self, n: usize) -> u64 {
        self.embed + self.blocks[..n].iter().sum::<u64>() + self.decode
    }
}
