//! Training and fine-tuning of a U-ViT with certainty heads under the DeeDiff losses: seeded and
//! exactly resumable (parameters, EMA and AdamW moments are checkpointed; every random draw of a
//! step derives from the run seed and the step number).

mod checkpoint;
mod config;
mod init;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use deediff_uem::CertaintyHeads;
use deediff_unet::model_file::{CERTAINTY_HEAD_PREFIX, TEXT_ENCODER_PREFIX};
use deediff_unet::text_encoder::{TextEncoder, PAD};
use deediff_unet::{Checkpoint, Conditioning, UVit, Variant};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::error::Error;
pub use checkpoint::CHECKPOINT_FORMAT;
pub use config::{LrSchedule, TrainConfig, MAX_BATCH_SIZE};
pub use init::seeded_init;

use crate::data::{Captions, ImageDataset};
use crate::ema::Ema;
use crate::loss::{deediff_loss, LossTerms};
use crate::optim::AdamW;

/// Whether parameter `name` belongs to the module under `prefix`.
fn in_module(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Whether parameter `name` is a certainty head's (the official `lte_classifer.N.lte.*`).
fn is_head(name: &str) -> bool {
    in_module(name, CERTAINTY_HEAD_PREFIX)
}

/// Numbers from one update, for logs and progress bars.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepStats {
    /// Updates done after this one.
    pub step: u64,
    pub loss: f32,
    pub simple: f32,
    pub certainty: f32,
    pub layer: f32,
    pub certainty_means: Vec<f32>,
    pub exit_mse: Vec<f32>,
    pub lr: f64,
    pub grad_norm: f64,
}

/// What the network is conditioned on during training, derived from the model config.
enum CondKind {
    None,
    /// Class labels; `null` is the last row of the label table.
    Class {
        null: u32,
    },
    Text(Box<TextEncoder>),
}

pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    /// Kept so the variables stay owned in one place.
    _varmap: VarMap,
    vars: Vec<(String, Var)>,
    model: UVit,
    heads: CertaintyHeads,
    cond: CondKind,
    /// What a text model reads for each label ([`Trainer::with_captions`]).
    captions: Option<Box<dyn Captions>>,
    opt: AdamW,
    ema: Ema,
    step: u64,
    sqrt_ac: Vec<f32>,
    sqrt_one_minus_ac: Vec<f32>,
    /// The data order of one epoch, cached: (epoch, permutation).
    order: Option<(u64, Vec<usize>)>,
}

impl Trainer {
    /// A freshly initialised model (seeded) for `cfg`. `alphas_cumprod` has one entry per
    /// training timestep (ᾱ of the noise schedule).
    pub fn new(cfg: TrainConfig, alphas_cumprod: &[f64], device: &Device) -> Result<Self> {
        cfg.validate()?;
        if alphas_cumprod.len() != cfg.num_train_timesteps {
            candle_core::bail!(
                "alphas_cumprod has {} entries but num_train_timesteps is {}",
                alphas_cumprod.len(),
                cfg.num_train_timesteps
            );
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = UVit::new(&cfg.model, vb.clone())?;
        let heads = CertaintyHeads::new(&cfg.model, vb.clone())?;
        let cond = match (cfg.model.variant, cfg.model.num_classes, &cfg.text_encoder) {
            (Variant::UvitT2i, _, Some(tc)) => {
                if tc.dim != cfg.model.clip_dim || tc.max_tokens != cfg.model.num_clip_token {
                    candle_core::bail!(
                        "text encoder (dim {}, {} tokens) does not fit the U-ViT (clip_dim {}, num_clip_token {})",
                        tc.dim, tc.max_tokens, cfg.model.clip_dim, cfg.model.num_clip_token
                    );
                }
                CondKind::Text(Box::new(TextEncoder::new(tc, vb.pp(TEXT_ENCODER_PREFIX))?))
            }
            (Variant::UvitT2i, _, None) => {
                candle_core::bail!("uvit_t2i training needs a text encoder config")
            }
            (Variant::Uvit, Some(n), _) => CondKind::Class { null: n as u32 - 1 },
            (Variant::Uvit, None, _) => CondKind::None,
        };
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::msg("variable map lock poisoned"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        seeded_init(&vars, cfg.seed)?;
        let trainable = vars
            .iter()
            .filter(|(name, _)| !cfg.freeze_backbone || is_head(name))
            .cloned()
            .collect();
        let opt = AdamW::new(trainable, cfg.optim);
        let ema = Ema::new(vars.clone(), cfg.ema_decay);
        let sqrt_ac = alphas_cumprod.iter().map(|a| a.sqrt() as f32).collect();
        let sqrt_one_minus_ac = alphas_cumprod
            .iter()
            .map(|a| (1.0 - a).sqrt() as f32)
            .collect();
        Ok(Self {
            cfg,
            device: device.clone(),
            _varmap: varmap,
            vars,
            model,
            heads,
            cond,
            captions: None,
            opt,
            ema,
            step: 0,
            sqrt_ac,
            sqrt_one_minus_ac,
            order: None,
        })
    }

    /// Sets the captions a text-to-image model is trained on: each sample's label becomes a
    /// caption drawn from `captions`. Class-conditional and unconditional models ignore them.
    pub fn with_captions(mut self, captions: impl Captions + 'static) -> Self {
        self.captions = Some(Box::new(captions));
        self
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Updates done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn model(&self) -> &UVit {
        &self.model
    }

    /// Current (non-EMA) parameters by name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Fine-tuning: copies every tensor of an official `.pth`/safetensors checkpoint into the
    /// model and restarts the EMA from them. Certainty heads and text encoder may be absent (they
    /// keep their fresh initialisation); any other missing, unknown or mis-shaped tensor is an
    /// error. Returns the names that were not in the file.
    pub fn load_pretrained(&mut self, path: &Path) -> std::result::Result<Vec<String>, Error> {
        let ckpt = Checkpoint::open(path)?;
        let tensors = ckpt.tensors(&self.device)?;
        let mut fresh = Vec::new();
        let mut problems = Vec::new();
        let known: BTreeMap<&str, &Var> = self.vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
        for name in tensors.keys() {
            if !known.contains_key(name.as_str()) {
                problems.push(format!("unexpected tensor {name}"));
            }
        }
        for (name, var) in &self.vars {
            match tensors.get(name) {
                Some(t) if t.dims() == var.dims() => var.set(&t.to_dtype(DType::F32)?)?,
                Some(t) => problems.push(format!(
                    "{name}: shape {:?}, model needs {:?}",
                    t.dims(),
                    var.dims()
                )),
                None if is_head(name) || in_module(name, TEXT_ENCODER_PREFIX) => {
                    fresh.push(name.clone())
                }
                None => problems.push(format!("missing tensor {name}")),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Load {
                path: path.to_path_buf(),
                msg: problems.join("; "),
            });
        }
        self.ema = Ema::new(self.vars.clone(), self.cfg.ema_decay);
        Ok(fresh)
    }

    /// Sample indices of update `step`: epochs are seeded permutations of the data set, consumed
    /// `batch_size` at a time across epoch boundaries.
    fn batch_indices(&mut self, n: usize) -> Vec<usize> {
        let b = self.cfg.batch_size;
        let start = self.step * b as u64;
        (start..start + b as u64)
            .map(|k| {
                let epoch = k / n as u64;
                if self.order.as_ref().map(|o| o.0) != Some(epoch) {
                    let mut perm: Vec<usize> = (0..n).collect();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(
                        self.cfg.seed ^ 0x0da7_a0d3_u64.wrapping_mul(epoch + 1),
                    );
                    perm.shuffle(&mut rng);
                    self.order = Some((epoch, perm));
                }
                self.order
                    .as_ref()
                    .map(|o| o.1[(k % n as u64) as usize])
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The conditioning of a batch, with each sample replaced by the null condition with
    /// probability `cond_drop_prob`.
    fn conditioning(&self, labels: &[u32], rng: &mut StdRng) -> Result<Conditioning> {
        let p = self.cfg.cond_drop_prob;
        match &self.cond {
            CondKind::None => Ok(Conditioning::None),
            CondKind::Class { null } => {
                if let Some(bad) = labels.iter().find(|&&l| l >= *null) {
                    candle_core::bail!("label {bad} does not fit a model with {null} classes");
                }
                let y: Vec<u32> = labels
                    .iter()
                    .map(|&l| if rng.gen::<f64>() < p { *null } else { l })
                    .collect();
                Ok(Conditioning::Class(Tensor::new(y, &self.device)?))
            }
            CondKind::Text(enc) => {
                let Some(captions) = &self.captions else {
                    candle_core::bail!(
                        "text-to-image training needs captions for its labels (Trainer::with_captions)"
                    );
                };
                let tok = enc.tokenizer();
                let rows = labels
                    .iter()
                    .map(|&l| {
                        let caption = captions.caption(l, rng).map_err(candle_core::Error::wrap)?;
                        if rng.gen::<f64>() < p {
                            return Ok(vec![PAD; tok.max_tokens()]);
                        }
                        tok.encode(&caption)
                            .map(|e| e.ids)
                            .map_err(candle_core::Error::wrap)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Conditioning::Context(enc.forward_ids(&rows, &self.device)?))
            }
        }
    }

    /// The DeeDiff loss terms of a noised batch `x_t` at timesteps `t` whose noise was `noise`:
    /// every block's exit and certainty map from one forward pass, differentiable w.r.t. the
    /// parameters (what [`Trainer::train_step`] back-propagates).
    pub fn losses(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        noise: &Tensor,
    ) -> Result<LossTerms> {
        let mut h = self.model.embed(x_t, t, cond)?;
        let mut skips = Vec::new();
        let n = self.model.num_blocks();
        let mut exits = Vec::with_capacity(n);
        let mut certainties = Vec::with_capacity(n);
        for i in 0..n {
            h = self.model.block(i, &h, &mut skips)?;
            // With β = 0 the early exits only feed the (detached) certainty target; with a frozen
            // backbone no exit needs a gradient.
            let exit_in = if self.cfg.freeze_backbone || (self.cfg.loss.beta == 0.0 && i + 1 < n) {
                h.detach()
            } else {
                h.clone()
            };
            exits.push(self.model.decode(&exit_in)?);
            certainties.push(self.heads.map(i, &h)?);
        }
        deediff_loss(noise, &exits, &certainties, &self.cfg.loss)
    }

    /// One AdamW update on the next batch of `data`.
    pub fn train_step(&mut self, data: &ImageDataset) -> Result<StepStats> {
        if data.is_empty() {
            candle_core::bail!("training data set is empty");
        }
        let idx = self.batch_indices(data.len());
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.cfg.seed ^ 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(self.step + 1),
        );
        let (x0, labels) = data.batch(&idx, &mut rng, &self.device)?;
        let b = idx.len();
        let t: Vec<u32> = (0..b)
            .map(|_| rng.gen_range(0..self.cfg.num_train_timesteps as u32))
            .collect();
        let noise: Vec<f32> = (0..x0.elem_count())
            .map(|_| rng.sample(StandardNormal))
            .collect();
        let noise = Tensor::from_vec(noise, x0.shape(), &self.device)?;
        let coef = |table: &[f32]| {
            let v: Vec<f32> = t.iter().map(|&t| table[t as usize]).collect();
            Tensor::from_vec(v, (b, 1, 1, 1), &self.device)
        };
        let x_t = (x0.broadcast_mul(&coef(&self.sqrt_ac)?)?
            + noise.broadcast_mul(&coef(&self.sqrt_one_minus_ac)?)?)?;
        let cond = self.conditioning(&labels, &mut rng)?;
        let t_in = Tensor::from_vec(
            t.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            b,
            &self.device,
        )?;

        let terms = self.losses(&x_t, &t_in, &cond, &noise)?;
        let scalar = |t: &Tensor| t.to_dtype(DType::F32)?.to_scalar::<f32>();
        let loss = scalar(&terms.total)?;
        if !loss.is_finite() {
            candle_core::bail!(
                "step {}: the loss is {loss}; training stopped (lower --lr or check the data)",
                self.step + 1
            );
        }
        let grads = terms.total.backward()?;
        let lr = self.cfg.lr_at(self.step);
        let grad_norm = self.opt.step(&grads, lr, self.cfg.grad_clip)?;
        // The update has already been applied: the caller must not save this state.
        if !grad_norm.is_finite() {
            candle_core::bail!(
                "step {}: the gradient norm is {grad_norm}; training stopped (lower --lr or check the data)",
                self.step + 1
            );
        }
        self.ema.update()?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss,
            simple: scalar(&terms.simple)?,
            certainty: scalar(&terms.certainty)?,
            layer: scalar(&terms.layer)?,
            certainty_means: terms.certainty_means.to_vec1::<f32>()?,
            exit_mse: terms.exit_mse.to_vec1::<f32>()?,
            lr,
            grad_norm,
        })
    }
}
