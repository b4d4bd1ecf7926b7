//! The pipeline over a real U-ViT with certainty heads (the class-conditional reference weights of
//! the official code, random but non-degenerate): batching, guidance, shared exits, budget
//! calibration and cancellation behave as documented.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use deediff_sampler::{Condition, Error, Guidance, Hooks, Pipeline, TrainingSchedule};
use deediff_schedules::{BetaConfig, SchedulerConfig};
use deediff_testkit::max_abs_diff;
use deediff_uem::{EarlyExitUVit, ExitPolicy};
use deediff_unet::ConfigHints;

fn weights() -> PathBuf {
    deediff_testkit::reference_dir("uvit").join("uvit_cond.weights.safetensors")
}

/// DDIM over 8 steps on DDPM linear betas, with the exit policy given.
fn pipeline(policy: ExitPolicy) -> Pipeline {
    let hints = ConfigHints {
        num_heads: Some(4),
        ..ConfigHints::default()
    };
    let model = EarlyExitUVit::load(weights(), &hints, &Device::Cpu).unwrap();
    let betas = BetaConfig::ddpm_linear(1000);
    let mut p = Pipeline::new(
        model,
        TrainingSchedule::Diffusers(betas.clone()),
        None,
        SchedulerConfig::by_name("ddim", betas).unwrap(),
        8,
        Device::Cpu,
    )
    .unwrap();
    p.set_policy(policy).unwrap();
    p
}

/// A threshold at which these weights exit at mixed depths (the reference means are 0.3–0.7).
const MIXED: f32 = 0.6;

#[test]
fn an_image_is_the_same_alone_or_in_a_batch() {
    let p = pipeline(ExitPolicy::per_sample(MIXED).unwrap());
    let conds = [
        Condition::Class(0),
        Condition::Class(7),
        Condition::Class(3),
    ];
    let batch = p.generate(&conds, &[10, 11, 12], Hooks::default()).unwrap();
    let alone = p
        .generate(&[Condition::Class(7)], &[11], Hooks::default())
        .unwrap();
    let row = batch.samples.narrow(0, 1, 1).unwrap();
    let d = max_abs_diff(&row, &alone.samples);
    assert!(
        d <= 1e-4,
        "batched image 1 differs from running it alone by {d}"
    );
    // Different seeds give different images, and exits were mixed.
    assert!(max_abs_diff(&batch.samples.narrow(0, 0, 1).unwrap(), &row) > 1e-2);
    let depth = batch.report.mean_blocks();
    assert!(depth > 1.0 && depth < 5.0, "mean depth {depth}");
}

#[test]
fn guided_passes_in_one_batch_equal_separate_official_passes() {
    let guidance = Guidance {
        scale: 2.5,
        shared_exit: false,
    };
    let mut joint = pipeline(ExitPolicy::per_sample(MIXED).unwrap());
    joint.set_guidance(guidance).unwrap();
    let mut separate = pipeline(ExitPolicy::official(MIXED).unwrap());
    separate.set_guidance(guidance).unwrap();
    let a = joint
        .generate(&[Condition::Class(4)], &[3], Hooks::default())
        .unwrap();
    let b = separate
        .generate(&[Condition::Class(4)], &[3], Hooks::default())
        .unwrap();
    assert!(max_abs_diff(&a.samples, &b.samples) <= 1e-4);
    assert_eq!(a.report.passes_per_eval, 2);
    for (x, y) in a.report.evals.iter().zip(&b.report.evals) {
        assert_eq!(x.histogram, y.histogram);
    }
}

#[test]
fn a_shared_exit_runs_the_unconditional_pass_to_the_same_depth() {
    let mut p = pipeline(ExitPolicy::per_sample(MIXED).unwrap());
    p.set_guidance(Guidance {
        scale: 2.0,
        shared_exit: true,
    })
    .unwrap();
    let out = p
        .generate(
            &[Condition::Class(1), Condition::Class(2)],
            &[5, 6],
            Hooks::default(),
        )
        .unwrap();
    // Every histogram counts each depth an even number of times (cond + uncond at equal depth).
    for e in &out.report.evals {
        assert!(e.histogram.iter().all(|n| n % 2 == 0), "{:?}", e.histogram);
    }
}

#[test]
fn budget_calibration_lands_near_the_requested_depth() {
    let mut p = pipeline(ExitPolicy::Full);
    let conds = [Condition::Class(0), Condition::Class(5)];
    let cal = p.calibrate_budget(0.6, &conds, &[1, 2]).unwrap();
    assert!(
        (cal.depth_fraction - 0.6).abs() <= 0.1,
        "calibrated depth {}",
        cal.depth_fraction
    );
    assert_eq!(p.policy(), ExitPolicy::per_sample(cal.threshold).unwrap());
    assert!(p.calibrate_budget(1.5, &conds, &[1, 2]).is_err());
    assert!(p.calibrate_budget(0.0, &conds, &[1, 2]).is_err());
}

#[test]
fn timestep_bands_run_their_own_policy() {
    let conds = [Condition::Class(0), Condition::Class(5)];
    let static2 = pipeline(ExitPolicy::fixed_depth(2).unwrap())
        .generate(&conds, &[1, 2], Hooks::default())
        .unwrap();

    // A band over every timestep is the band's policy.
    let mut p = pipeline(ExitPolicy::Full);
    p.set_timestep_bands(vec!["0-1000:static:2".parse().unwrap()])
        .unwrap();
    let banded = p.generate(&conds, &[1, 2], Hooks::default()).unwrap();
    assert_eq!(max_abs_diff(&banded.samples, &static2.samples), 0.0);

    // A band over the noisy half: static there, the pipeline's policy (full) below.
    p.set_timestep_bands(vec!["500-1000:static:2".parse().unwrap()])
        .unwrap();
    assert_eq!(p.describe_policy(), "full, 500-1000:static:2");
    let r = p
        .generate(&conds, &[1, 2], Hooks::default())
        .unwrap()
        .report;
    let full = r.num_blocks as f64;
    assert!(r.evals.iter().any(|e| e.t >= 500.0) && r.evals.iter().any(|e| e.t < 500.0));
    for e in &r.evals {
        let want = if e.t >= 500.0 { 2.0 } else { full };
        assert_eq!(e.mean_blocks, want, "t = {}", e.t);
    }

    // Overlapping bands and budget calibration with bands are refused.
    let overlap = vec![
        "0-600:full".parse().unwrap(),
        "500-1000:static:2".parse().unwrap(),
    ];
    assert!(p.set_timestep_bands(overlap).is_err());
    let err = p
        .calibrate_budget(0.5, &conds, &[1, 2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("timestep bands"), "{err}");
}

#[test]
fn bad_requests_are_errors() {
    let p = pipeline(ExitPolicy::Full);
    let cancel = AtomicBool::new(true);
    let r = p.generate(
        &[Condition::Class(0)],
        &[0],
        Hooks {
            progress: None,
            cancel: Some(&cancel),
        },
    );
    assert!(matches!(r, Err(Error::Cancelled)));
    // Class 10 is the null class of this 11-row table; prompts need a text model.
    for c in [Condition::Class(10), Condition::Text("a cat".into())] {
        assert!(p.generate(&[c], &[0], Hooks::default()).is_err());
    }
    assert!(p
        .generate(&[Condition::Class(0)], &[], Hooks::default())
        .is_err());
}
