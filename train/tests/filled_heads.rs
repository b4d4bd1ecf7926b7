//! Fitting the filled-exit heads on a recording run of a reference U-ViT: on held-out slots the
//! fitted heads predict the filled exits' accuracy better than the truncation heads they start
//! from, and they come back as `filled_certainty.{n}.lte.*` tensors of the heads' shapes.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use deediff_train::filled_heads::{fit_filled_heads, FitOptions};
use deediff_uem::{EarlyExitUVit, ExitPolicy, Passes, RunState};
use deediff_unet::ConfigHints;

#[test]
fn fitted_filled_heads_beat_the_truncation_heads_on_held_out_exits() {
    let case = deediff_testkit::cases()
        .into_iter()
        .find(|c| c.name == "uvit_cond")
        .expect("the uvit_cond reference");
    let path = &case.weights[0];
    let dev = deediff_testkit::device();
    let ee = EarlyExitUVit::load(path, &ConfigHints::default(), &dev).unwrap();
    let cond = case.conditioning();
    let passes = Passes {
        cond: &cond,
        guidance: None,
    };
    let (x0, t0) = (case.get("x_t"), case.get("timesteps"));
    let mut state = RunState::recording_fills();
    // A made-up trajectory: the noise shrinks and the input moves a little every evaluation.
    for e in 0..8 {
        let t = (t0 * (1.0 - e as f64 / 9.0)).unwrap();
        let x = (x0 * (1.0 - 0.04 * e as f64)).unwrap();
        ee.evaluate(
            &mut state,
            &x,
            &t,
            &passes,
            &ExitPolicy::cached(1.0, 2).unwrap(),
        )
        .unwrap();
    }
    let records = state.take_fill_records().unwrap();
    let cfg = ee.model().config().clone();
    let vb = VarBuilder::from_tensors(
        candle_core::safetensors::load(path, &dev).unwrap(),
        DType::F32,
        &dev,
    );
    let opts = FitOptions {
        steps: 150,
        batch: 16,
        heldout_every: 2,
        ..FitOptions::default()
    };
    let fit = fit_filled_heads(&cfg, &vb, &records, &opts).unwrap();
    assert_eq!(
        fit.blocks.len(),
        cfg.num_blocks() - 1,
        "every block but the last"
    );
    for b in &fit.blocks {
        assert!(b.heldout > 0 && b.train > 0, "{b:?}");
        assert!(
            b.mse_filled < 0.8 * b.mse_truncated,
            "block {}: filled {} vs truncated {}",
            b.block,
            b.mse_filled,
            b.mse_truncated
        );
    }
    let (pd, d) = (cfg.patch_dim(), cfg.embed_dim);
    assert_eq!(fit.tensors.len(), 2 * cfg.num_blocks());
    for (name, t) in &fit.tensors {
        let want: &[usize] = if name.ends_with(".weight") {
            &[pd, d]
        } else {
            &[pd]
        };
        assert!(name.starts_with("filled_certainty."), "{name}");
        assert_eq!(t.dims(), want, "{name}");
    }
    // The last block's head never decides (nothing is left to skip): it stays the truncation head.
    let last = cfg.num_blocks() - 1;
    let kept = fit
        .tensors
        .iter()
        .find(|(n, _)| *n == format!("filled_certainty.{last}.lte.weight"))
        .map(|(_, t)| t.clone())
        .unwrap();
    let original: Tensor = vb
        .pp(format!("lte_classifer.{last}.lte"))
        .get((pd, d), "weight")
        .unwrap();
    assert_eq!(deediff_testkit::max_abs_diff(&kept, &original), 0.0);
}
