//! Certainty heads, exit sweep and per-sample exits against the official reference vectors,
//! from every weight file (safetensors and `.pth`) of every reference config.

use candle_core::Tensor;
use deediff_uem::{EarlyExitUVit, ExitPolicy};
use deediff_unet::{Conditioning, ConfigHints};

const TOL_OUT: f32 = 1e-4;
const TOL_MEAN: f32 = 1e-5;

fn load(path: &std::path::Path) -> EarlyExitUVit {
    EarlyExitUVit::load(path, &ConfigHints::default(), &deediff_testkit::device())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn certainty_maps_and_means_match() {
    let mut runs = 0;
    for case in deediff_testkit::cases() {
        for path in &case.weights {
            let ee = load(path);
            let (model, heads) = (ee.model(), ee.heads().expect("reference has heads"));
            let cond = case.conditioning();
            let mut h = model
                .embed(case.get("x_t"), case.get("timesteps"), &cond)
                .unwrap();
            let mut skips = Vec::new();
            let ref_means = case.get("certainty_mean").to_vec1::<f32>().unwrap();
            let ref_per_sample = case
                .get("certainty_mean_per_sample")
                .to_vec2::<f32>()
                .unwrap();
            let (mut worst_map, mut worst_mean) = (0f32, 0f32);
            for i in 0..model.num_blocks() {
                h = model.block(i, &h, &mut skips).unwrap();
                let what = format!("{} ({}): certainty.{i}", case.name, path.display());
                let map = heads.map(i, &h).unwrap();
                worst_map = worst_map.max(deediff_testkit::assert_close(
                    &what,
                    &map,
                    case.get(&format!("certainty.{i}")),
                    TOL_OUT,
                ));
                let mean = map.mean_all().unwrap().to_scalar::<f32>().unwrap();
                let per_sample = heads.sample_means(i, &h).unwrap().to_vec1::<f32>().unwrap();
                for (got, want) in std::iter::once(&mean)
                    .chain(&per_sample)
                    .zip(std::iter::once(&ref_means[i]).chain(&ref_per_sample[i]))
                {
                    let d = (got - want).abs();
                    assert!(d <= TOL_MEAN, "{what} mean {got} vs {want}");
                    worst_mean = worst_mean.max(d);
                }
            }
            eprintln!(
                "{}: {}: max diff certainty maps {worst_map:.1e}, means {worst_mean:.1e}",
                case.name,
                path.display()
            );
            runs += 1;
        }
    }
    eprintln!(
        "{runs} weight files checked {}",
        deediff_testkit::isa_marker()
    );
}

/// The certainty heads' fused kernel on the fallback instruction sets.
#[test]
fn certainty_means_match_on_fallback_kernels() {
    deediff_testkit::rerun_on_fallback_isas("certainty_maps_and_means_match");
}

#[test]
fn official_exit_sweep_matches() {
    let mut runs = 0;
    for case in deediff_testkit::cases() {
        for path in &case.weights {
            let ee = load(path);
            let cond = case.conditioning();
            let thresholds = case.get("exit_thresholds").to_vec1::<f32>().unwrap();
            let blocks = case.get("exit_num_blocks").to_vec1::<i64>().unwrap();
            for (&th, &want) in thresholds.iter().zip(&blocks) {
                let out = ee
                    .forward(
                        case.get("x_t"),
                        case.get("timesteps"),
                        &cond,
                        &ExitPolicy::official(th).unwrap(),
                    )
                    .unwrap();
                let what = format!("{} ({}): threshold {th}", case.name, path.display());
                for s in &out.samples {
                    assert_eq!(s.blocks_executed as i64, want, "{what}");
                    assert_eq!(s.exit_block + 1, s.blocks_executed);
                    assert!(
                        s.macs <= s.full_depth_macs || s.blocks_executed == ee.model().num_blocks(),
                        "{what}: {s:?}"
                    );
                }
                let reference = case.get(&format!("exit_eps.{}", want - 1));
                deediff_testkit::assert_close(&what, &out.eps, reference, TOL_OUT);
                runs += 1;
            }
        }
    }
    eprintln!("{runs} (weight file, threshold) sweep points matched");
}

/// Thresholds between every pair of adjacent per-sample means (plus the extremes), so samples of
/// one batch exit at different blocks.
fn per_sample_thresholds(per_sample: &[Vec<f32>]) -> Vec<f32> {
    let mut v: Vec<f32> = per_sample.iter().flatten().copied().collect();
    v.sort_by(f32::total_cmp);
    let mut th: Vec<f32> = v
        .windows(2)
        .filter(|w| w[1] - w[0] > 1e-4)
        .map(|w| 0.5 * (w[0] + w[1]))
        .collect();
    th.push(1.0);
    th.push(v[0] * 0.5);
    th
}

#[test]
fn per_sample_batch_equals_one_by_one_official() {
    let (mut runs, mut mixed) = (0, 0);
    for case in deediff_testkit::cases() {
        let ee = load(&case.weights[0]);
        let (x, t, cond) = (case.get("x_t"), case.get("timesteps"), case.conditioning());
        let b = x.dim(0).unwrap();
        let per_sample = case
            .get("certainty_mean_per_sample")
            .to_vec2::<f32>()
            .unwrap();
        for th in per_sample_thresholds(&per_sample) {
            let batch = ee
                .forward(x, t, &cond, &ExitPolicy::per_sample(th).unwrap())
                .unwrap();
            let mut depths = Vec::new();
            for j in 0..b {
                let idx = Tensor::new(&[j as u32], &deediff_testkit::device()).unwrap();
                let single_cond: Conditioning = cond.index_select(&idx).unwrap();
                let single = ee
                    .forward(
                        &x.narrow(0, j, 1).unwrap(),
                        &t.narrow(0, j, 1).unwrap(),
                        &single_cond,
                        &ExitPolicy::official(th).unwrap(),
                    )
                    .unwrap();
                let what = format!("{}: threshold {th} sample {j}", case.name);
                let (got, want) = (&batch.samples[j], &single.samples[0]);
                assert_eq!(
                    (got.blocks_executed, got.macs),
                    (want.blocks_executed, want.macs),
                    "{what}"
                );
                assert_eq!(got.scores.len(), want.scores.len(), "{what}");
                for (a, b) in got.scores.iter().zip(&want.scores) {
                    assert!(
                        (a - b).abs() <= 1e-6,
                        "{what}: scores {:?} vs {:?}",
                        got.scores,
                        want.scores
                    );
                }
                deediff_testkit::assert_close(
                    &what,
                    &batch.eps.narrow(0, j, 1).unwrap(),
                    &single.eps,
                    1e-5,
                );
                depths.push(batch.samples[j].blocks_executed);
            }
            mixed += usize::from(depths.iter().any(|&d| d != depths[0]));
            runs += 1;
        }
    }
    eprintln!("{runs} thresholds checked, {mixed} with samples exiting at different blocks");
    assert!(mixed > 0, "no threshold split a batch");
}
