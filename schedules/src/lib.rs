//! Noise schedules and diffusion solvers in f64, numerically equal to diffusers 0.42.1 and
//! U-ViT (`dpm_solver_pp.py`, `dpm_solver_pytorch.py`, `sde.py`) — without their float32
//! constants, so a float64 run reproduces the float64 reference to ~1e-13.
//!
//! * diffusers: DDIM (η ≥ 0), DDPM, DPM-Solver(++) multistep 1–3 and SDE-DPM-Solver++,
//!   DPM-Solver(++) singlestep 1–3, Euler, Euler ancestral, UniPC (bh1/bh2), each with the
//!   family's own timestep spacing, Karras sigmas and prediction types ε / v / x₀. Configs come
//!   from `scheduler_config.json` ([`SchedulerConfig::from_file`]) or presets
//!   ([`SchedulerConfig::by_name`], names in [`SCHEDULER_NAMES`]).
//! * U-ViT: DPM-Solver `fast` / `singlestep` / `multistep` (discrete or continuous VP schedule,
//!   `time_uniform` / `logSNR`, data or noise prediction, the `denoise` quirk), the CIFAR
//!   `dpm_solver_pytorch` fast path, and Euler–Maruyama for the reverse SDE / ODE
//!   ([`UvitDpmConfig`], [`UvitEmConfig`]).
//!
//! Each solver is a settings type implementing [`SolverConfig`]: it builds the solver for a
//! number of steps and says which [`TimeConvention`] its model times follow. [`SchedulerConfig`]
//! holds any of them; the presets and diffusers classes come from one registry (the
//! `solvers!` list in this file), so a new scheduler is one file plus one line there.
//!
//! A sampler is a short loop over a model callback: the solver asks for evaluations
//! ([`Run::next_eval`]: a flat input buffer plus its [`ModelTime`] — the network's time label
//! and the VP (α, σ) it corresponds to), the caller runs the network and feeds the output back
//! ([`Run::feed`]). [`sample`] is that loop. Buffers are flat `f64` slices of any layout
//! (batch × features); noise comes from an injectable [`NoiseSource`] ([`SeededNoise`],
//! [`ReplayNoise`]) and is drawn exactly where the reference implementation draws.
//!
//! ```
//! use deediff_schedules::{sample, Scheduler, SchedulerConfig, SeededNoise};
//!
//! // A diffusers scheduler_config.json, as written by `save_config()` (bare -Infinity included).
//! let json = r#"{
//!   "_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.42.1",
//!   "algorithm_type": "dpmsolver++", "solver_order": 2, "beta_schedule": "linear",
//!   "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000,
//!   "lambda_min_clipped": -Infinity, "prediction_type": "epsilon", "trained_betas": null
//! }"#;
//! let config = SchedulerConfig::from_diffusers_json(json)?;
//! let scheduler = Scheduler::new(&config, 20)?;
//!
//! // An ε-model for data concentrated at 0.5: ε̂ = (x − α·0.5)/σ.
//! let model = |x: &[f64], t: deediff_schedules::ModelTime| {
//!     Ok(x.iter().map(|v| (v - t.alpha * 0.5) / t.sigma).collect())
//! };
//! let z = vec![1.0, -0.3, 0.7, 2.0]; // batch 2 × 2 features, flat
//! let out = sample(&scheduler, &z, model, &mut SeededNoise::new(0), |_, _| {})?;
//! assert_eq!(out.model_times.len(), 20);
//! assert!(out.x.iter().all(|v| (v - 0.5).abs() < 1e-6));
//! # Ok::<(), deediff_schedules::Error>(())
//! ```

#[macro_use]
mod registry;
mod betas;
mod config;
mod error;
mod exp_integrator;
mod noise;
mod ops;
mod prediction;
#[macro_use]
mod scheduler;
mod solver;
mod spacing;
mod uvit_schedule;

// The schedulers: one line each (see `registry`).
solvers! {
    ddim,
    ddpm,
    dpm_multistep,
    dpm_singlestep,
    euler,
    euler_ancestral,
    unipc,
    uvit_dpm,
    uvit_em,
    dpmpp_2s_ancestral,
}

pub use betas::{cumprod_one_minus, rescale_zero_terminal_snr, BetaConfig, BetaSchedule};
pub use config::quote_non_finite;
pub use ddim::DdimConfig;
pub use ddpm::{DdpmConfig, VarianceType};
pub use dpm_multistep::{AlgorithmType, DpmMultistepConfig, DpmSolverType};
pub use dpm_singlestep::DpmSinglestepConfig;
pub use error::{Error, ModelError, Result};
pub use euler::EulerConfig;
pub use euler_ancestral::EulerAncestralConfig;
pub use noise::{NoNoise, NoiseSource, ReplayNoise, SeededNoise};
pub use prediction::{lambda, vp_from_ve, PredictionType};
pub use registry::SCHEDULER_NAMES;
pub use scheduler::{
    sample, AnyConfig, Run, SampleOutput, Scheduler, SchedulerConfig, SolverConfig, TimeConvention,
};
pub use solver::{Evaluation, ModelTime, StepInfo};
pub use spacing::{karras_sigmas, linspace, sigma_to_t, ve_sigmas, FinalSigmas, Spacing};
pub use unipc::{UniPcConfig, UniPcSolverType};
pub use uvit_dpm::{SkipType, UvitDpmConfig, UvitMethod, UvitSolverType};
pub use uvit_em::{ReverseProcess, UvitEmConfig};
pub use uvit_schedule::UvitScheduleConfig;
