//! Certainty heads (the "UEM", official `lte_classifer.{n}.lte`): one `Linear(D→p²C)` + sigmoid per
//! block, on the block's raw output with the extra tokens stripped.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use deediff_unet::embedding::unpatchify;
use deediff_unet::kernels;
use deediff_unet::layers::{linear_unpacked, Linear};
use deediff_unet::model_file::{CERTAINTY_HEAD_PREFIX, FILLED_HEAD_PREFIX};
use deediff_unet::UVitConfig;

/// The `depth + 1` certainty heads of a U-ViT. A value near 1 means "the exit at this block is
/// accurate" (training regresses it onto `1 - tanh(|eps_i - eps|)`).
#[derive(Debug, Clone)]
pub struct CertaintyHeads {
    heads: Vec<Linear>,
    extras: usize,
    num_patches: usize,
    in_chans: usize,
}

impl CertaintyHeads {
    /// Builds the heads from `vb` at the model root (keys `lte_classifer.{n}.lte.{weight,bias}`).
    /// A `VarMap` backend creates them freshly with the official init (weight trunc-normal
    /// std 0.02, bias 0), e.g. to add heads to a plain U-ViT checkpoint for fine-tuning.
    pub fn new(cfg: &UVitConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_prefix(cfg, vb, CERTAINTY_HEAD_PREFIX)
    }

    /// The filled-exit heads (`filled_certainty.{n}.lte.*`): the same shape, but regressed onto
    /// the accuracy of a *cache-filled* exit at block `n` (the exit's own output plus the cached
    /// contributions of the blocks it skips), which the truncation heads under-rate wherever the
    /// skipped blocks' contributions change little between steps.
    pub fn filled(cfg: &UVitConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_prefix(cfg, vb, FILLED_HEAD_PREFIX)
    }

    fn with_prefix(cfg: &UVitConfig, vb: VarBuilder, prefix: &str) -> Result<Self> {
        let vb = vb.pp(prefix);
        let heads = (0..cfg.num_blocks())
            .map(|n| linear_unpacked(cfg.embed_dim, cfg.patch_dim(), true, vb.pp(n).pp("lte")))
            .collect::<Result<_>>()?;
        Ok(Self {
            heads,
            extras: cfg.extras(),
            num_patches: cfg.num_patches(),
            in_chans: cfg.in_chans,
        })
    }

    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// Head `i` on block `i`'s output `h [B, S, D]` → sigmoid logits per patch `[B, L, p²C]`.
    /// The input is detached, as in the official code: the certainty loss never reaches the
    /// backbone.
    fn patch_certainty(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        let head = self.head(i)?;
        let patches = h.detach().narrow(1, self.extras, self.num_patches)?;
        candle_nn::ops::sigmoid(&head.forward(&patches)?)
    }

    fn head(&self, i: usize) -> Result<&Linear> {
        self.heads.get(i).ok_or_else(|| {
            candle_core::Error::msg(format!(
                "certainty head {i} out of range ({} heads)",
                self.heads.len()
            ))
        })
    }

    /// Certainty map `c_i [B, C, H, W]` in (0, 1) (unpatchified like the output head, no conv).
    pub fn map(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        unpatchify(&self.patch_certainty(i, h)?, self.in_chans)
    }

    /// Per-sample mean certainty `[B]` of head `i` (the mean is layout-independent, so the
    /// unpatchify is skipped): what an exit rule reads after every block, in one fused kernel.
    pub fn sample_means(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        let head = self.head(i)?;
        let (Some(weight), Some(bias)) = (head.weight(), head.bias()) else {
            candle_core::bail!("certainty heads have a bias and an unpacked weight")
        };
        kernels::sigmoid_linear_means(&h.detach(), weight, bias, self.extras)
    }
}
