//! AdamW (PyTorch semantics: decoupled weight decay, bias-corrected moments) whose moments are
//! plain vectors, so a checkpoint can save and restore them exactly; plus global-norm clipping.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// U-ViT's defaults: betas (0.9, 0.999) and weight decay 0.03.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.03,
        }
    }
}

/// One named parameter with its first and second moments.
struct Slot {
    name: String,
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of updates applied (PyTorch's per-parameter `step`, shared here).
    steps: u64,
}

/// Flattens a tensor to host f32 values.
pub(crate) fn host_values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()
}

impl AdamW {
    /// `vars` in a fixed order (e.g. sorted by name), so states line up across runs.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                Slot {
                    name,
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Self {
            cfg,
            slots,
            steps: 0,
        }
    }

    /// Global L2 norm of all gradients present in `grads`.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update at learning rate `lr`; gradients are first scaled down so their global norm is
    /// at most `clip` (PyTorch `clip_grad_norm_`). Parameters without a gradient are untouched.
    /// Returns the global gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: Option<f64>) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        let scale = match clip {
            Some(max) if norm > max => (max / (norm + 1e-6)) as f32,
            _ => 1.0,
        };
        self.steps += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.steps as i32);
        let bc2 = 1.0 - beta2.powi(self.steps as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = (1.0 - lr * weight_decay) as f32;
        let (b1, b2, eps) = (beta1 as f32, beta2 as f32, eps as f32);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = host_values(g)?;
            let mut p = host_values(s.var.as_tensor())?;
            p.par_iter_mut()
                .zip(s.m.par_iter_mut())
                .zip(s.v.par_iter_mut())
                .zip(g.par_iter())
                .for_each(|(((p, m), v), &g)| {
                    let g = g * scale;
                    *p *= decay;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *p -= step_size * *m / ((*v).sqrt() / bc2_sqrt + eps);
                });
            let shape = s.var.shape().clone();
            s.var.set(&Tensor::from_vec(p, shape, s.var.device())?)?;
        }
        Ok(norm)
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The moments as named tensors (`adam.m.<name>`, `adam.v.<name>`).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            let dev = s.var.device();
            let shape = s.var.shape().clone();
            out.push((
                format!("adam.m.{}", s.name),
                Tensor::from_slice(&s.m, shape.clone(), dev)?,
            ));
            out.push((
                format!("adam.v.{}", s.name),
                Tensor::from_slice(&s.v, shape, dev)?,
            ));
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the update count.
    pub fn load_state(&mut self, get: impl Fn(&str) -> Option<Tensor>, steps: u64) -> Result<()> {
        for s in &mut self.slots {
            for (kind, buf) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("adam.{kind}.{}", s.name);
                let t = get(&key)
                    .ok_or_else(|| candle_core::Error::msg(format!("checkpoint lacks {key}")))?;
                let values = host_values(&t)?;
                if values.len() != buf.len() {
                    candle_core::bail!("{key}: {} values, expected {}", values.len(), buf.len());
                }
                *buf = values;
            }
        }
        self.steps = steps;
        Ok(())
    }
}
