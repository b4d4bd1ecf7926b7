//! The embedded default model loads as a bundle, grounds prompts, and samples end to end.

use candle_core::Device;
use deediff_sampler::{Condition, Error, Hooks, ModelBundle, Pipeline};
use deediff_schedules::SchedulerConfig;

#[test]
fn the_embedded_model_loads_refuses_ungrounded_prompts_and_samples() {
    let dev = Device::Cpu;
    let bundle = ModelBundle::default_model(&dev).unwrap();
    let cfg = bundle.model.model().config().clone();
    assert_eq!((cfg.img_size, cfg.in_chans), (28, 1));
    assert!(bundle.model.heads().is_some() && bundle.text.is_some());
    let scheduler = SchedulerConfig::by_name("ddim", bundle.training.betas()).unwrap();
    let p = Pipeline::from_bundle(bundle, scheduler, 3, dev).unwrap();

    let bad = p.generate(
        &[Condition::Text("a purple elephant".into())],
        &[0],
        Hooks::default(),
    );
    match bad {
        Err(Error::Text(msg)) => assert!(msg.contains("an ankle boot"), "{msg}"),
        other => panic!("expected a text error, got {:?}", other.map(|_| ())),
    }

    let out = p
        .generate(
            &[
                Condition::Text("an ankle boot".into()),
                Condition::Text("a handwritten 7".into()),
            ],
            &[0, 1],
            Hooks::default(),
        )
        .unwrap();
    assert_eq!(out.samples.dims(), &[2, 1, 28, 28]);
    assert_eq!(out.report.evals.len(), 3);
    let blocks = out.report.mean_blocks();
    assert!((1.0..=9.0).contains(&blocks), "mean blocks {blocks}");
}

/// The concept a softmax-regression classifier on raw pixels (84.7 % accurate on the Fashion-MNIST
/// test set, 91.4 % on held-out MNIST digits; `scripts/make_concept_classifier.py`) sees in each
/// sample.
fn classify(samples: &candle_core::Tensor) -> Vec<usize> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/concept_classifier.f32"
    );
    let w: Vec<f32> = std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let px: Vec<f32> = samples.flatten_all().unwrap().to_vec1().unwrap();
    px.chunks_exact(28 * 28)
        .map(|img| {
            let logit = |row: &[f32]| -> f32 {
                let dot: f32 = img
                    .iter()
                    .zip(row)
                    .map(|(&x, &wi)| (x.clamp(-1.0, 1.0) + 1.0) / 2.0 * wi)
                    .sum();
                dot + row[28 * 28]
            };
            let z: Vec<f32> = w.chunks_exact(28 * 28 + 1).map(logit).collect();
            (0..z.len()).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap()
        })
        .collect()
}

/// The model draws what it is asked for: two samples per concept, at full depth and with
/// per-sample exits at 0.97 (FID within 2 % of full depth, BENCHMARKS.md), classified by a linear pixel classifier.
#[test]
fn samples_of_every_concept_look_like_that_concept() {
    let dev = Device::Cpu;
    let bundle = ModelBundle::default_model(&dev).unwrap();
    let prompts = bundle.text.as_ref().unwrap().example_prompts();
    let scheduler = SchedulerConfig::by_name("dpmpp-2m", bundle.training.betas()).unwrap();
    let mut p = Pipeline::from_bundle(bundle, scheduler, 15, dev).unwrap();
    let conds: Vec<Condition> = (0..2)
        .flat_map(|_| prompts.iter().map(|s| Condition::Text(s.clone())))
        .collect();
    let seeds: Vec<u64> = (0..conds.len() as u64).collect();
    // Measured 29 and 27 of 40 (the classifier itself gets ≈ 35 of 40 right on real images;
    // chance is 2).
    for (policy, min_correct) in [("full", 25), ("per-sample:0.97", 23)] {
        p.set_policy(policy.parse().unwrap()).unwrap();
        let out = p.generate(&conds, &seeds, Hooks::default()).unwrap();
        let got = classify(&out.samples);
        let correct = got.iter().enumerate().filter(|(i, &k)| k == i % 20).count();
        println!(
            "{policy}: {correct}/40 classified as their concept, mean depth {:.2}; got {got:?}",
            out.report.mean_blocks()
        );
        assert!(
            correct >= min_correct,
            "{policy}: only {correct}/40 recognisable"
        );
        if policy != "full" {
            assert!(out.report.mean_blocks() < 8.5, "no early exits at {policy}");
        }
    }
}

/// The embedded model file with its `exit_threshold` metadata replaced.
fn with_exit_threshold(value: &str) -> Vec<u8> {
    let bytes = deediff_sampler::DEFAULT_MODEL;
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][deediff_unet::model_file::key::EXIT_THRESHOLD] = value.into();
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn the_models_own_exit_threshold_is_the_default_policy() {
    let dev = Device::Cpu;
    let bundle = ModelBundle::from_bytes(&with_exit_threshold("0.8"), "m", &dev).unwrap();
    assert_eq!(bundle.exit_threshold, Some(0.8));
    let scheduler = SchedulerConfig::by_name("ddim", bundle.training.betas()).unwrap();
    let p = Pipeline::from_bundle(bundle, scheduler, 3, dev.clone()).unwrap();
    assert_eq!(p.policy().to_string(), "per-sample:0.8");
    for bad in ["1.5", "zero"] {
        let err = ModelBundle::from_bytes(&with_exit_threshold(bad), "m.safetensors", &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("m.safetensors: exit_threshold"), "{err}");
    }
}

/// The embedded model carries filled-exit heads; a copy that lost one of them (here the first,
/// which the loader once probed for) is refused with the file named, not loaded without them.
#[test]
fn a_partial_set_of_filled_heads_is_refused() {
    let dev = Device::Cpu;
    let bundle = ModelBundle::default_model(&dev).unwrap();
    assert!(bundle.model.filled_heads().is_some());
    let bytes = deediff_sampler::DEFAULT_MODEL;
    let metadata = deediff_unet::model_file::read_metadata(bytes, "embedded").unwrap();
    let tensors: Vec<_> = candle_core::safetensors::load_buffer(bytes, &dev)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name != "filled_certainty.0.lte.weight")
        .collect();
    let path = std::env::temp_dir().join(format!(
        "deediff-partial-{}.safetensors",
        std::process::id()
    ));
    std::fs::write(
        &path,
        deediff_unet::model_file::serialize(tensors, metadata).unwrap(),
    )
    .unwrap();
    let err = ModelBundle::load(&path, &dev)
        .map(drop)
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("filled_certainty.0.lte.weight"), "{err}");
}
