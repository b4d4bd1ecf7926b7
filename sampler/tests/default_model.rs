//! The embedded default model loads as a bundle, grounds prompts, and samples end to end.

use candle_core::Device;
use deediff_sampler::{Condition, Hooks, ModelBundle, Pipeline, SamplerError};
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
        Err(SamplerError::Text(msg)) => assert!(msg.contains("an ankle boot"), "{msg}"),
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
