//! Noise schedules and diffusion solvers in f64, numerically equal to diffusers and U-ViT.
