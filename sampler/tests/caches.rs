//! Cache policies in the pipeline, on the class-conditional reference U-ViT with heads: an
//! always-fresh cache and DeepCache every step are full depth; a cached exit gives an image the
//! same alone or in a batch of mixed exits; the run's caches are reported and freed.

use candle_core::{Device, Tensor};
use deediff_sampler::{Condition, Generated, Guidance, Hooks, Pipeline, TrainingSchedule};
use deediff_schedules::{BetaConfig, SchedulerConfig};
use deediff_uem::{EarlyExitUVit, ExitPolicy, FillHeads};
use deediff_unet::ConfigHints;

/// DDIM over 8 steps on the reference weights (random, non-degenerate), guided at `scale`.
fn pipeline(policy: &str, scale: f64) -> Pipeline {
    let weights = deediff_testkit::fixtures().join("uvit/uvit_cond.weights.safetensors");
    let hints = ConfigHints {
        num_heads: Some(4),
        ..ConfigHints::default()
    };
    let model = EarlyExitUVit::load(weights, &hints, &Device::Cpu).unwrap();
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
    p.set_policy(policy.parse().unwrap()).unwrap();
    p.set_guidance(Guidance {
        scale,
        shared_exit: false,
    })
    .unwrap();
    p
}

const CONDS: [Condition; 3] = [
    Condition::Class(0),
    Condition::Class(7),
    Condition::Class(3),
];
const SEEDS: [u64; 3] = [10, 11, 12];

fn run(policy: &str, scale: f64) -> Generated {
    pipeline(policy, scale)
        .generate(&CONDS, &SEEDS, Hooks::default())
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    d.max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn always_fresh_caches_and_deepcache_every_step_are_full_depth() {
    for scale in [1.0, 2.5] {
        let full = run("full", scale);
        for policy in ["cached:0.6:1", "deepcache:1:1"] {
            let out = run(policy, scale);
            let d = max_abs_diff(&out.samples, &full.samples);
            assert!(
                d <= 1e-5,
                "{policy} (guidance {scale}) differs from full by {d}"
            );
            assert_eq!(out.report.mean_blocks(), 5.0, "{policy}");
        }
    }
}

#[test]
fn cached_exits_fill_and_reuse_and_differ_from_truncation() {
    let full = run("full", 1.0);
    let cached = run("cached:0.55:3", 1.0);
    let truncated = run("per-sample:0.6", 1.0);
    let depth = cached.report.mean_blocks();
    assert!(depth > 1.0 && depth < 5.0, "mean depth {depth}");
    // Filling the skipped blocks lands nearer full depth than dropping them.
    let (dc, dt) = (
        max_abs_diff(&cached.samples, &full.samples),
        max_abs_diff(&truncated.samples, &full.samples),
    );
    assert!(dc > 1e-4 && dc < dt, "cached {dc} vs truncated {dt}");
    // DeepCache every 2nd evaluation with one block each side: 2 of 5 blocks at odd evaluations.
    let deep = run("deepcache:2:1", 1.0);
    assert_eq!(deep.report.mean_blocks(), (4.0 * 5.0 + 4.0 * 2.0) / 8.0);
    assert!(max_abs_diff(&deep.samples, &full.samples) > 1e-4);
}

#[test]
fn a_cached_exit_image_is_the_same_alone_or_in_a_batch() {
    for (policy, scale) in [
        ("cached:0.55:3", 1.0),
        ("cached:0.55:3", 2.5),
        ("per-sample:0.6", 2.5),
    ] {
        let p = pipeline(policy, scale);
        let batch = p.generate(&CONDS, &SEEDS, Hooks::default()).unwrap();
        let alone = p
            .generate(
                std::slice::from_ref(&CONDS[1]),
                &[SEEDS[1]],
                Hooks::default(),
            )
            .unwrap();
        let d = max_abs_diff(&batch.samples.narrow(0, 1, 1).unwrap(), &alone.samples);
        assert!(
            d <= 1e-5,
            "{policy}: batched image 1 differs from alone by {d}"
        );
        // Exits in the batch were mixed: some passes stopped early, others did not.
        let h = &batch.report.evals.iter().fold(vec![0; 6], |mut acc, e| {
            acc.iter_mut().zip(&e.histogram).for_each(|(a, n)| *a += n);
            acc
        });
        assert!(
            h[5] > 0 && h[..5].iter().sum::<u64>() > 0,
            "{policy}: {h:?}"
        );
    }
}

#[test]
fn caches_are_counted_and_freed_at_the_end_of_a_run() {
    let p = pipeline("cached:0.55:3", 2.5);
    let out = p.generate(&CONDS, &SEEDS, Hooks::default()).unwrap();
    let cfg = p.model().model().config();
    // One [S, D] f32 contribution per block but the first (no exit skips it), per image and
    // guidance pass.
    let per_slot = (cfg.num_blocks() - 1) * cfg.seq_len() * cfg.embed_dim * 4;
    assert_eq!(out.report.cache_bytes_peak, 2 * CONDS.len() * per_slot);
    assert_eq!(out.report.cache_bytes_after_run, 0);
    // Truncating exits keep nothing.
    let plain = pipeline("per-sample:0.6", 2.5);
    let out = plain.generate(&CONDS, &SEEDS, Hooks::default()).unwrap();
    assert_eq!(out.report.cache_bytes_peak, 0);
}

#[test]
fn cache_policy_syntax_round_trips() {
    let e = ExitPolicy::cached(0.9, 0).unwrap_err().to_string();
    assert!(e.contains("refresh") && e.contains("at least 1"), "{e}");
    assert_eq!(
        "cached:0.95".parse(),
        Ok(ExitPolicy::Cached {
            threshold: 0.95,
            refresh: deediff_uem::DEFAULT_REFRESH,
            heads: FillHeads::Filled,
        })
    );
    assert_eq!(
        "cached-trunc:0.95"
            .parse::<ExitPolicy>()
            .unwrap()
            .to_string(),
        "cached-trunc:0.95:2"
    );
    for s in ["cached:0.9:4", "cached-trunc:0.9:4", "deepcache:3:2"] {
        assert_eq!(s.parse::<ExitPolicy>().unwrap().to_string(), s);
    }
    assert_eq!(
        "deepcache:3".parse(),
        Ok(ExitPolicy::DeepCache {
            interval: 3,
            depth: 1
        })
    );
    assert!("deepcache:0".parse::<ExitPolicy>().is_err());
    assert!("cached:1.5:2".parse::<ExitPolicy>().is_err());
}

#[test]
fn an_l2c_schedule_reuses_the_fitted_fraction_and_round_trips() {
    let full = run("full", 1.0);
    let mut p = pipeline("full", 1.0);
    let none = p.fit_reuse_schedule(0.0, &CONDS, &SEEDS).unwrap();
    assert_eq!(none.reuse_fraction(), 0.0);
    let out = p.generate(&CONDS, &SEEDS, Hooks::default()).unwrap();
    assert!(max_abs_diff(&out.samples, &full.samples) <= 1e-5);

    // 8 evaluations × 5 blocks: a quarter of the 40 pairs reused, never at evaluation 0.
    let schedule = p.fit_reuse_schedule(0.25, &CONDS, &SEEDS).unwrap();
    assert!(schedule.reuse[0].is_empty());
    assert_eq!(schedule.reuse.iter().map(Vec::len).sum::<usize>(), 10);
    let out = p.generate(&CONDS, &SEEDS, Hooks::default()).unwrap();
    assert_eq!(out.report.mean_blocks(), 30.0 / 8.0);
    assert!(max_abs_diff(&out.samples, &full.samples) > 1e-4);

    let path = std::env::temp_dir().join(format!("deediff-l2c-{}.json", std::process::id()));
    schedule.save(&path).unwrap();
    assert_eq!(deediff_uem::ReuseSchedule::load(&path).unwrap(), schedule);
    std::fs::remove_file(&path).unwrap();
    // A schedule for another step count is refused.
    p.set_scheduler(p.scheduler_config().clone(), 4).unwrap();
    let e = p
        .set_reuse_schedule(Some(schedule))
        .unwrap_err()
        .to_string();
    assert!(e.contains("8 evaluations") && e.contains("runs 4"), "{e}");
}

/// An evaluation splits its batch into one part per rayon thread, each with its own slots of the
/// run's caches: in pools of 2 and 3 threads (parts of 1–2 images) every policy gives what one
/// thread gives, the same images, exits and cache sizes (guided passes in one batch or, with a
/// shared exit, the unconditional pass after the conditional one).
#[test]
fn a_batch_split_across_threads_equals_one_thread() {
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    for (policy, scale, shared_exit) in [
        ("cached:0.55:3", 2.5, false),
        ("per-sample:0.6", 2.5, false),
        ("per-sample:0.6", 2.5, true),
        ("per-sample:0.6", 1.0, false),
        ("deepcache:2:1", 1.0, false),
        ("official:0.6", 1.0, false),
    ] {
        let mut p = pipeline(policy, scale);
        p.set_guidance(Guidance { scale, shared_exit }).unwrap();
        let run = |threads| {
            pool(threads).install(|| p.generate(&CONDS, &SEEDS, Hooks::default()).unwrap())
        };
        let one = run(1);
        for threads in [2, 3] {
            let split = run(threads);
            let what = format!("{policy} (shared exit {shared_exit}) on {threads} threads");
            let d = max_abs_diff(&split.samples, &one.samples);
            assert!(d <= 1e-6, "{what}: differs by {d}");
            assert_eq!(split.report.evals, one.report.evals, "{what}: exits");
            assert_eq!(
                split.report.cache_bytes_peak, one.report.cache_bytes_peak,
                "{what}: cache bytes"
            );
        }
    }
}
