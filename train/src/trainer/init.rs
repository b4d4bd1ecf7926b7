//! Seeded from-scratch initialisation. candle cannot seed its CPU generator, so every parameter is
//! overwritten here with the official U-ViT scheme, drawn from a generator seeded by the run seed
//! and the parameter's name (independent of creation order).

use candle_core::{Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// FNV-1a, to derive a per-parameter seed from its name.
pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Biases 0; 1-D weights (LayerNorm) 1; convolution kernels uniform ±1/√fan_in (PyTorch's default);
/// all other weights, embeddings and `pos_embed` normal with std 0.02 (timm's trunc-normal at 100σ).
pub fn seeded_init(vars: &[(String, Var)], seed: u64) -> Result<()> {
    let normal = Normal::new(0f32, 0.02).map_err(candle_core::Error::wrap)?;
    for (name, var) in vars {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ name_hash(name));
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let values: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; n]
        } else if dims.len() == 1 {
            vec![1.0; n]
        } else if dims.len() == 4 {
            let bound = 1.0 / ((dims[1] * dims[2] * dims[3]) as f32).sqrt();
            (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
        } else {
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}
