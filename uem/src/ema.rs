//! Exponential moving average of the parameters (the weights used for sampling).

use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

use crate::optim::host_values;

pub struct Ema {
    decay: f64,
    /// (name, variable, shadow values) in a fixed order.
    shadow: Vec<(String, Var, Vec<f32>)>,
}

impl Ema {
    /// Starts the average at the current parameter values.
    pub fn new(vars: Vec<(String, Var)>, decay: f64) -> Result<Self> {
        let shadow = vars
            .into_iter()
            .map(|(n, v)| {
                let values = host_values(v.as_tensor())?;
                Ok((n, v, values))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { decay, shadow })
    }

    /// `shadow ← decay·shadow + (1 − decay)·param`.
    pub fn update(&mut self) -> Result<()> {
        let d = self.decay as f32;
        for (_, var, shadow) in &mut self.shadow {
            let p = host_values(var.as_tensor())?;
            shadow
                .par_iter_mut()
                .zip(p.par_iter())
                .for_each(|(s, &p)| *s = d * *s + (1.0 - d) * p);
        }
        Ok(())
    }

    /// Shadow weights under the parameter names, prefixed by `prefix` (e.g. `"ema."` or `""`).
    pub fn tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        self.shadow
            .iter()
            .map(|(n, v, s)| {
                Ok((
                    format!("{prefix}{n}"),
                    Tensor::from_slice(s, v.shape().clone(), v.device())?,
                ))
            })
            .collect()
    }

    /// Restores shadows saved with prefix `prefix`.
    pub fn load(&mut self, prefix: &str, get: impl Fn(&str) -> Option<Tensor>) -> Result<()> {
        for (n, _, s) in &mut self.shadow {
            let key = format!("{prefix}{n}");
            let t = get(&key)
                .ok_or_else(|| candle_core::Error::msg(format!("checkpoint lacks {key}")))?;
            let values = host_values(&t)?;
            if values.len() != s.len() {
                candle_core::bail!("{key}: {} values, expected {}", values.len(), s.len());
            }
            *s = values;
        }
        Ok(())
    }
}
