//! The driving protocol: `sample` and a hand-written `Run` loop agree, seeded noise is
//! reproducible, and misuse gives errors instead of panics.

use deediff_schedules::{sample, ModelTime, NoNoise, Scheduler, SeededNoise};

/// ε-model of data concentrated at `c`: ε̂ = (x − α c)/σ.
fn point_model(
    c: f64,
) -> impl FnMut(&[f64], ModelTime) -> Result<Vec<f64>, deediff_schedules::ModelError> {
    move |x, t| Ok(x.iter().map(|v| (v - t.alpha * c) / t.sigma).collect())
}

#[test]
fn run_loop_equals_sample() {
    let z: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
    for name in ["dpmpp-2m-sde", "euler-a", "uvit-dpm", "unipc"] {
        let s = Scheduler::by_name(name, 12).unwrap();
        let a = sample(
            &s,
            &z,
            point_model(0.25),
            &mut SeededNoise::new(3),
            |_, _| {},
        )
        .unwrap();
        let mut run = s.start(&z);
        let mut noise = SeededNoise::new(3);
        let mut model = point_model(0.25);
        let mut steps = 0;
        while let Some(ev) = run.next_eval() {
            let out = model(ev.x, ev.time).unwrap();
            steps += run.feed(&out, &mut noise).unwrap().is_some() as usize;
        }
        assert_eq!(steps, s.num_steps(), "{name}");
        assert_eq!(run.into_sample(), a.x, "{name}");
        assert_eq!(a.model_times, s.model_times(), "{name}");
    }
}

#[test]
fn seeded_noise_is_reproducible() {
    let z = vec![0.3, -1.2, 0.8, 0.1];
    let s = Scheduler::by_name("ddpm", 50).unwrap();
    // The intermediate states carry the noise (the final one is the point mass itself).
    let run = |seed| {
        let mut states = vec![];
        sample(
            &s,
            &z,
            point_model(-0.5),
            &mut SeededNoise::new(seed),
            |_, x| states.push(x.to_vec()),
        )
        .unwrap();
        states
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11)[10], run(12)[10]);
}

#[test]
fn deterministic_solvers_converge_on_a_point_mass() {
    let z = vec![1.5, -0.7, 0.2];
    for name in [
        "ddim", "dpmpp-2m", "dpmpp-3m", "dpm-2s", "dpm-3s", "euler", "unipc", "uvit-dpm",
    ] {
        let s = Scheduler::by_name(name, 25).unwrap();
        assert!(!s.is_stochastic(), "{name}");
        let out = sample(&s, &z, point_model(0.5), &mut NoNoise, |_, _| {}).unwrap();
        let err = out.x.iter().map(|v| (v - 0.5).abs()).fold(0.0, f64::max);
        // uvit-dpm stops at t = 1e-3, where σ is still about 0.01.
        assert!(err < 2e-2, "{name}: {err}");
    }
}

#[test]
fn misuse_is_an_error() {
    let s = Scheduler::by_name("euler-a", 5).unwrap();
    let e = sample(&s, &[0.0; 4], point_model(0.0), &mut NoNoise, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("stochastic"), "{e}");
    let mut run = s.start(&[0.0; 4]);
    let e = run.feed(&[0.0; 3], &mut NoNoise).unwrap_err();
    assert!(e.to_string().contains("returned 3 values"), "{e}");
    let failing = |_: &[f64], _: ModelTime| Err("network exploded".into());
    let e = sample(&s, &[0.0; 4], failing, &mut SeededNoise::new(0), |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("network exploded"), "{e}");
    assert!(Scheduler::by_name("ddim", 0).is_err());
    assert!(Scheduler::by_name("ddim", 1001).is_err());
}

/// `--steps 1000` used to fail with "model evaluation 501 returned a non-finite value" for the
/// multistep solvers: their spacing repeats timestep 500 and the next update divided by h = 0.
/// The repeat is dropped (999 evaluations); the diffusers parity is in `reference.rs`.
#[test]
fn multistep_solvers_run_at_1000_steps() {
    let z = vec![1.5, -0.7, 0.2];
    for name in ["dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde", "unipc"] {
        let s = Scheduler::by_name(name, 1000).unwrap();
        assert_eq!(s.nfe(), 999, "{name}");
        let out = sample(
            &s,
            &z,
            point_model(0.5),
            &mut SeededNoise::new(1),
            |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = out.x.iter().map(|v| (v - 0.5).abs()).fold(0.0, f64::max);
        assert!(err < 1e-9, "{name}: {err}");
    }
}
