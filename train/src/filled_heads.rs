//! Fitting the filled-exit heads ([`CertaintyHeads::filled`]) on recorded filled exits
//! ([`FillRecords`]), with the backbone and the truncation heads frozen.
//!
//! Each head starts from the model's truncation head of the same block (same input, same output
//! layout: only what it is asked changes) and is regressed onto the filled exit's accuracy
//! `1 − tanh|ε̂_fill − ε|` with the certainty loss `L_u` of DeeDiff (mean squared error), by AdamW.
//! Every `heldout_every`-th slot (image and pass) is kept out of the fit and scores both head
//! sets on the filled targets, so the file records whether the new heads predict better.

use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use deediff_uem::{CertaintyHeads, FillRecords, FillSample};
use deediff_unet::model_file::{CERTAINTY_HEAD_PREFIX, FILLED_HEAD_PREFIX};
use deediff_unet::UVitConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamW, AdamWConfig};

/// How the heads are fitted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    pub steps: usize,
    /// Recorded exits per block and update.
    pub batch: usize,
    pub lr: f64,
    /// Slots `s` with `s % heldout_every == 0` are held out (≥ 2).
    pub heldout_every: usize,
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            steps: 600,
            batch: 128,
            lr: 1e-3,
            heldout_every: 5,
            seed: 0,
        }
    }
}

/// How well each head set predicts the filled exits of the held-out slots at one block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlockFit {
    pub block: usize,
    pub train: usize,
    pub heldout: usize,
    /// Mean target (the filled exit's mean accuracy) on the held-out exits.
    pub mean_target: f64,
    /// Held-out `L_u` of the fitted filled heads and of the truncation heads.
    pub mse_filled: f64,
    pub mse_truncated: f64,
    /// Pearson correlation of each head set's per-exit mean certainty (what the exit rule reads)
    /// with the per-exit mean target.
    pub corr_filled: f64,
    pub corr_truncated: f64,
}

/// The fitted heads as named tensors (`filled_certainty.{n}.lte.*`) and their held-out scores.
pub struct FilledFit {
    pub tensors: Vec<(String, Tensor)>,
    pub blocks: Vec<BlockFit>,
}

/// One block's exits, stacked: inputs `[M, S, D]`, targets `[M, C, H, W]`.
struct Stacked {
    inputs: Tensor,
    targets: Tensor,
}

impl Stacked {
    fn new(samples: &[&FillSample]) -> Result<Option<Self>> {
        if samples.is_empty() {
            return Ok(None);
        }
        let inputs: Vec<&Tensor> = samples.iter().map(|s| &s.input).collect();
        let targets: Vec<&Tensor> = samples.iter().map(|s| &s.target).collect();
        Ok(Some(Self {
            inputs: Tensor::cat(&inputs, 0)?,
            targets: Tensor::cat(&targets, 0)?,
        }))
    }

    fn len(&self) -> usize {
        self.inputs.dim(0).unwrap_or(0)
    }
}

/// Fits the filled-exit heads of a model whose weights (and truncation heads) `model` reads.
pub fn fit_filled_heads(
    cfg: &UVitConfig,
    model: &VarBuilder,
    records: &FillRecords,
    opts: &FitOptions,
) -> Result<FilledFit> {
    if opts.heldout_every < 2 {
        candle_core::bail!(
            "heldout_every must be at least 2, got {}",
            opts.heldout_every
        )
    }
    let device = model.device().clone();
    let truncated = CertaintyHeads::new(cfg, model.clone())?;
    let varmap = VarMap::new();
    let vars = warm_start(cfg, model, &varmap)?;
    let filled =
        CertaintyHeads::filled(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let (train, heldout) = split(cfg, records, opts.heldout_every)?;
    let cfg_opt = AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(vars.clone(), cfg_opt);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    for _ in 0..opts.steps {
        let mut loss = Tensor::zeros((), DType::F32, &device)?;
        for (b, data) in train.iter().enumerate() {
            let Some(data) = data else { continue };
            let idx: Vec<u32> = (0..opts.batch)
                .map(|_| rng.gen_range(0..data.len()) as u32)
                .collect();
            let idx = Tensor::new(idx, &device)?;
            let h = data.inputs.index_select(&idx, 0)?;
            let target = data.targets.index_select(&idx, 0)?;
            loss = (loss + (filled.map(b, &h)? - target)?.sqr()?.mean_all()?)?;
        }
        opt.step(&loss.backward()?, opts.lr, None)?;
    }
    let blocks = (0..cfg.num_blocks())
        .filter_map(|b| Some((b, train[b].as_ref()?.len(), heldout[b].as_ref()?)))
        .map(|(b, n, data)| score(b, n, data, &filled, &truncated))
        .collect::<Result<_>>()?;
    let tensors = vars
        .into_iter()
        .map(|(name, var)| Ok((name, var.as_tensor().copy()?)))
        .collect::<Result<_>>()?;
    Ok(FilledFit { tensors, blocks })
}

/// Creates the filled heads' variables in `varmap` as copies of the truncation heads, sorted by
/// name.
fn warm_start(cfg: &UVitConfig, model: &VarBuilder, varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let (pd, d) = (cfg.patch_dim(), cfg.embed_dim);
    let mut data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::msg("variable map lock poisoned"))?;
    let mut vars = Vec::new();
    for n in 0..cfg.num_blocks() {
        let from = model.pp(CERTAINTY_HEAD_PREFIX).pp(n).pp("lte");
        for (what, t) in [
            ("weight", from.get((pd, d), "weight")?),
            ("bias", from.get(pd, "bias")?),
        ] {
            let name = format!("{FILLED_HEAD_PREFIX}.{n}.lte.{what}");
            let var = Var::from_tensor(&t)?;
            data.insert(name.clone(), var.clone());
            vars.push((name, var));
        }
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// Per block: the training exits and the held-out ones.
#[allow(clippy::type_complexity)]
fn split(
    cfg: &UVitConfig,
    records: &FillRecords,
    every: usize,
) -> Result<(Vec<Option<Stacked>>, Vec<Option<Stacked>>)> {
    let mut train = Vec::new();
    let mut heldout = Vec::new();
    for b in 0..cfg.num_blocks() {
        let (out, kept): (Vec<&FillSample>, Vec<&FillSample>) = records
            .samples
            .iter()
            .filter(|s| s.block == b)
            .partition(|s| s.slot % every == 0);
        train.push(Stacked::new(&kept)?);
        heldout.push(Stacked::new(&out)?);
    }
    Ok((train, heldout))
}

/// Both head sets on block `b`'s held-out exits.
fn score(
    b: usize,
    train: usize,
    data: &Stacked,
    filled: &CertaintyHeads,
    truncated: &CertaintyHeads,
) -> Result<BlockFit> {
    let target_means = data.targets.flatten_from(1)?.mean(D::Minus1)?;
    let mse = |heads: &CertaintyHeads| -> Result<(f64, f64)> {
        let pred = heads.map(b, &data.inputs)?;
        let mse = (&pred - &data.targets)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?;
        let means = pred.flatten_from(1)?.mean(D::Minus1)?;
        Ok((f64::from(mse), pearson(&means, &target_means)?))
    };
    let (mse_filled, corr_filled) = mse(filled)?;
    let (mse_truncated, corr_truncated) = mse(truncated)?;
    Ok(BlockFit {
        block: b,
        train,
        heldout: data.len(),
        mean_target: f64::from(target_means.mean_all()?.to_scalar::<f32>()?),
        mse_filled,
        mse_truncated,
        corr_filled,
        corr_truncated,
    })
}

/// Pearson correlation of two `[M]` tensors (0 when either is constant).
fn pearson(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a: Vec<f64> = a.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
    let b: Vec<f64> = b.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
    let n = a.len().max(1) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(&b) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    let denom = (aa * bb).sqrt();
    Ok(if denom > 0.0 { ab / denom } else { 0.0 })
}
