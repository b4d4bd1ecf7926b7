//! The DeeDiff training losses, as the official AdaDiff training code computes them.
//!
//! With `ε` the true noise, `ε̂_i` the shared output head applied to block `i` (the last one is the
//! model output) and `c_i` the certainty map of block `i`:
//! - `L_simple = mean((ε − ε̂_last)²)`;
//! - `L_u = mean_i mean((c_i − sg[1 − tanh|ε̂_i − ε|])²)` (`sg` = stop-gradient);
//! - `L_layer = Σ_i w_i · mean((ε − ε̂_i)²)` with `w_i = mean(c_i) / Σ_j mean(c_j)`, not detached,
//!   so the heads also learn to lower the weight of inaccurate exits;
//! - `total = L_simple + λ·L_u + β·L_layer` (the official code uses λ = β = 1).
//!
//! The paper's variant of `L_layer` weights each pixel by its own certainty (`1 − u`):
//! `Σ_i mean(c_i ⊙ (ε − ε̂_i)²)`.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// How the layer-wise loss weights the exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LayerWeighting {
    /// Official code: one scalar per block, its batch-mean certainty normalised over blocks.
    #[default]
    BatchMeanCertainty,
    /// Paper: per-pixel weight `1 − u = c`, summed over blocks.
    PixelCertainty,
}

/// Weights of the DeeDiff loss terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// λ, weight of the certainty loss `L_u`.
    pub lambda: f64,
    /// β, weight of the layer-wise loss `L_layer`. With β = 0 the exits get no gradient.
    pub beta: f64,
    pub layer_weighting: LayerWeighting,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            lambda: 1.0,
            beta: 1.0,
            layer_weighting: LayerWeighting::BatchMeanCertainty,
        }
    }
}

/// The loss terms of one batch (scalars) plus per-block diagnostics (`[blocks]`, detached).
#[derive(Debug, Clone)]
pub struct LossTerms {
    pub total: Tensor,
    pub simple: Tensor,
    pub certainty: Tensor,
    pub layer: Tensor,
    /// Batch-mean certainty of every block.
    pub certainty_means: Tensor,
    /// `mean((ε − ε̂_i)²)` of every block.
    pub exit_mse: Tensor,
}

/// Computes the DeeDiff losses. `exits[i]` is `ε̂_i` and `certainties[i]` is `c_i`, one per block,
/// all shaped like `noise`; the last exit is the full-depth output.
pub fn deediff_loss(
    noise: &Tensor,
    exits: &[Tensor],
    certainties: &[Tensor],
    cfg: &LossConfig,
) -> Result<LossTerms> {
    if exits.is_empty() || exits.len() != certainties.len() {
        candle_core::bail!(
            "deediff_loss needs one certainty map per exit and at least one exit, got {} exits and {} maps",
            exits.len(),
            certainties.len()
        );
    }
    let n = exits.len() as f64;
    let simple = (noise - &exits[exits.len() - 1])?.sqr()?.mean_all()?;
    let mut u_terms = Vec::with_capacity(exits.len());
    let mut mse = Vec::with_capacity(exits.len());
    let mut means = Vec::with_capacity(exits.len());
    let mut pixel_weighted = Vec::with_capacity(exits.len());
    for (e, c) in exits.iter().zip(certainties) {
        let err = (e - noise)?;
        let target = (1.0 - err.abs()?.tanh()?)?.detach();
        u_terms.push((c - target)?.sqr()?.mean_all()?);
        let sq = err.sqr()?;
        mse.push(sq.mean_all()?);
        means.push(c.mean_all()?);
        if cfg.layer_weighting == LayerWeighting::PixelCertainty {
            pixel_weighted.push((c * &sq)?.mean_all()?);
        }
    }
    let certainty = (Tensor::stack(&u_terms, 0)?.sum_all()? / n)?;
    let mse = Tensor::stack(&mse, 0)?;
    let means = Tensor::stack(&means, 0)?;
    let layer = match cfg.layer_weighting {
        LayerWeighting::BatchMeanCertainty => {
            let w = means.broadcast_div(&means.sum_all()?)?;
            (w * &mse)?.sum_all()?
        }
        LayerWeighting::PixelCertainty => Tensor::stack(&pixel_weighted, 0)?.sum_all()?,
    };
    let total = ((&simple + (&certainty * cfg.lambda)?)? + (&layer * cfg.beta)?)?;
    Ok(LossTerms {
        total,
        simple,
        certainty,
        layer,
        certainty_means: means.detach(),
        exit_mse: mse.detach(),
    })
}
