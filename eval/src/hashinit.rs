//! Hash-initialised weights (reference README §2): every tensor is filled from a hash of its
//! name, so tests can run the full network without any weight file, bit for bit like Python.

use crate::weights::{manifest, StateDict, Tensor32};

/// FNV-1a 64-bit hash of the UTF-8 bytes of `s`.
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64 stream seeded with `state`; yields raw 64-bit outputs.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform f32 in [0, 1) from the top 24 bits (exact).
    pub fn next_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / 16_777_216.0
    }
}

/// The `n` uniforms of the tensor called `name`.
pub fn hash_uniforms(name: &str, n: usize) -> Vec<f32> {
    let mut rng = SplitMix64(fnv1a64(name));
    (0..n).map(|_| rng.next_unit()).collect()
}

/// One tensor of the hash-initialised state dict, following the per-tensor formulas.
pub fn hash_tensor(name: &str, shape: &[usize]) -> Tensor32 {
    let u = hash_uniforms(name, shape.iter().product());
    let data: Vec<f32> = if name.ends_with("conv.weight") {
        let fan_in: usize = shape[1..].iter().product();
        let s = (6.0f64 / fan_in as f64).sqrt() as f32;
        u.iter().map(|&u| (u * 2.0 - 1.0) * s).collect()
    } else if name.ends_with("bn.weight") {
        u.iter().map(|&u| 0.75 + 0.5 * u).collect()
    } else if name.ends_with("bn.bias") || name.ends_with("bn.running_mean") {
        u.iter().map(|&u| 0.2f32 * (u * 2.0 - 1.0)).collect()
    } else if name.ends_with("bn.running_var") {
        u.iter().map(|&u| 0.5 + 1.5 * u).collect()
    } else {
        vec![0.0; u.len()]
    };
    Tensor32 {
        shape: shape.to_vec(),
        data,
    }
}

/// The complete hash-initialised pytorch-fid state dict (94 conv layers with batch norm).
pub fn hash_state_dict() -> StateDict {
    manifest()
        .map(|(name, shape)| {
            let t = hash_tensor(&name, &shape);
            (name, t)
        })
        .collect()
}
