//! What the network predicts, and the conversions every solver shares: from a raw model output
//! at a VP noise level (α, σ) to the data prediction x̂₀ or the noise prediction ε̂.

use serde::{Deserialize, Serialize};

/// diffusers `prediction_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The network predicts the noise ε.
    Epsilon,
    /// The network predicts v = α ε − σ x₀.
    VPrediction,
    /// The network predicts x₀ directly.
    Sample,
}

impl PredictionType {
    /// x̂₀ from the model output `out` at the VP sample `x` with x = α x₀ + σ ε.
    pub fn to_x0(self, out: &[f64], x: &[f64], alpha: f64, sigma: f64) -> Vec<f64> {
        match self {
            Self::Epsilon => x
                .iter()
                .zip(out)
                .map(|(x, e)| (x - sigma * e) / alpha)
                .collect(),
            Self::VPrediction => x
                .iter()
                .zip(out)
                .map(|(x, v)| alpha * x - sigma * v)
                .collect(),
            Self::Sample => out.to_vec(),
        }
    }

    /// ε̂ from the model output `out` at the VP sample `x`.
    pub fn to_eps(self, out: &[f64], x: &[f64], alpha: f64, sigma: f64) -> Vec<f64> {
        match self {
            Self::Epsilon => out.to_vec(),
            Self::VPrediction => x
                .iter()
                .zip(out)
                .map(|(x, v)| alpha * v + sigma * x)
                .collect(),
            Self::Sample => x
                .iter()
                .zip(out)
                .map(|(x, x0)| (x - alpha * x0) / sigma)
                .collect(),
        }
    }

    /// The model term an exponential integrator carries: x̂₀ when it solves in data
    /// prediction (`data`), else ε̂.
    pub(crate) fn to_term(
        self,
        data: bool,
        out: &[f64],
        x: &[f64],
        alpha: f64,
        sigma: f64,
    ) -> Vec<f64> {
        if data {
            self.to_x0(out, x, alpha, sigma)
        } else {
            self.to_eps(out, x, alpha, sigma)
        }
    }
}

impl PredictionType {
    /// x̂₀ for the Euler family, whose sample lives in the VE scale x = x₀ + σ_ve ε and whose
    /// model saw x/√(σ_ve² + 1) (diffusers' own expressions, kept for bitwise closeness).
    pub fn to_x0_ve(self, out: &[f64], x: &[f64], sigma_ve: f64) -> Vec<f64> {
        let s = sigma_ve;
        match self {
            Self::Epsilon => x.iter().zip(out).map(|(x, e)| x - s * e).collect(),
            Self::VPrediction => {
                let c_out = -s / (s * s + 1.0).sqrt();
                out.iter()
                    .zip(x)
                    .map(|(v, x)| v * c_out + x / (s * s + 1.0))
                    .collect()
            }
            Self::Sample => out.to_vec(),
        }
    }
}

/// VP (α, σ) of a VE noise level σ_ve: α = 1/√(σ_ve² + 1), σ = σ_ve·α.
pub fn vp_from_ve(sigma_ve: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma_ve * sigma_ve + 1.0).sqrt();
    (alpha, sigma_ve * alpha)
}

/// Half log-SNR λ = log α − log σ; +∞ at σ = 0 (the IEEE semantics the solvers rely on).
pub fn lambda(alpha: f64, sigma: f64) -> f64 {
    alpha.ln() - sigma.ln()
}
