//! The calibration data of the filled-exit heads: what a recording run keeps equals a filled exit
//! worked out by hand from two full-depth passes, on every reference config with heads.

use candle_core::Tensor;
use deediff_uem::{Backbone, EarlyExitUVit, ExitPolicy, Passes, RunState};
use deediff_unet::{Conditioning, ConfigHints, UVit};

/// Every block's output `h_0 … h_{n−1}` of one full-depth pass.
fn block_outputs(model: &UVit, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Vec<Tensor> {
    let mut h = Backbone::embed(model, x, t, cond).unwrap();
    let mut pass = Backbone::start_pass(model, x.dim(0).unwrap());
    (0..Backbone::num_blocks(model))
        .map(|i| {
            h = Backbone::block(model, i, &h, &mut pass).unwrap();
            h.clone()
        })
        .collect()
}

#[test]
fn recorded_fills_equal_a_fill_by_hand() {
    let mut checked = 0;
    for case in deediff_testkit::cases() {
        let Some(path) = case.weights.first() else {
            continue;
        };
        let ee = EarlyExitUVit::load(path, &ConfigHints::default(), &deediff_testkit::device())
            .unwrap_or_else(|e| panic!("{e}"));
        if ee.heads().is_none() {
            continue;
        }
        let model = ee.model();
        let cond = case.conditioning();
        let (x0, t0) = (case.get("x_t"), case.get("timesteps"));
        // A second evaluation nearby, as the next step of a sampler would ask for.
        let x1 = ((x0 * 0.9).unwrap() + 0.05).unwrap();
        let t1 = (t0 * 0.8).unwrap();
        let passes = Passes {
            cond: &cond,
            guidance: None,
        };
        let never_exits = ExitPolicy::cached(1.0, 2).unwrap();
        let mut state = RunState::recording_fills();
        ee.evaluate(&mut state, x0, t0, &passes, &never_exits)
            .unwrap();
        let out1 = ee
            .evaluate(&mut state, &x1, &t1, &passes, &never_exits)
            .unwrap();
        let records = state.take_fill_records().unwrap();

        let (s0, s1) = (
            block_outputs(model, x0, t0, &cond),
            block_outputs(model, &x1, &t1, &cond),
        );
        let n = s0.len();
        let rows = x0.dim(0).unwrap();
        // No cache at the first evaluation; at the second, every row after every block but the
        // last.
        assert_eq!(records.samples.len(), rows * (n - 1), "{}", case.name);
        for r in &records.samples {
            assert_eq!(r.evaluation, 1);
            let row = |t: &Tensor| t.narrow(0, r.slot, 1).unwrap();
            let mut fill = row(&s1[r.block]);
            for j in r.block + 1..n {
                fill = (fill + (row(&s0[j]) - row(&s0[j - 1])).unwrap()).unwrap();
            }
            let eps_fill = Backbone::decode(model, &fill).unwrap();
            let err = (eps_fill - row(&out1.eps)).unwrap().abs().unwrap();
            let target = (1.0 - err.tanh().unwrap()).unwrap();
            let what = format!("{} block {} row {}", case.name, r.block, r.slot);
            deediff_testkit::assert_close(&what, &r.target, &target, 1e-5);
            deediff_testkit::assert_close(&what, &r.input, &row(&s1[r.block]), 0.0);
            checked += 1;
        }
    }
    assert!(checked > 0, "no reference config with certainty heads");
}
