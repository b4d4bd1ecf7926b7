//! DeeDiff losses against an independent f64 implementation on tiny tensors: values, and
//! gradients by central finite differences (with the certainty target held fixed, as it is detached).

use candle_core::{Device, Tensor, Var};
use deediff_train::loss::{deediff_loss, LayerWeighting, LossConfig};

const SHAPE: (usize, usize, usize, usize) = (2, 1, 2, 3);
const P: usize = 12;
const BLOCKS: usize = 3;

/// Deterministic values in roughly [-1.5, 1.5] (a small LCG, so no test data depends on candle).
fn values(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

struct Case {
    noise: Vec<f64>,
    exits: Vec<Vec<f64>>,
    certs: Vec<Vec<f64>>,
}

fn case() -> Case {
    Case {
        noise: values(1, P, -1.5, 1.5),
        exits: (0..BLOCKS)
            .map(|i| values(10 + i as u64, P, -1.5, 1.5))
            .collect(),
        certs: (0..BLOCKS)
            .map(|i| values(20 + i as u64, P, 0.05, 0.95))
            .collect(),
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// (simple, certainty, layer) in f64, with the certainty targets `targets` given (detached).
fn reference(
    noise: &[f64],
    exits: &[Vec<f64>],
    certs: &[Vec<f64>],
    targets: &[Vec<f64>],
    weighting: LayerWeighting,
) -> (f64, f64, f64) {
    let n = exits.len();
    let mse = |e: &[f64]| mean(e.iter().zip(noise).map(|(a, b)| (a - b) * (a - b)));
    let simple = mse(&exits[n - 1]);
    let certainty = (0..n)
        .map(|i| {
            mean(
                certs[i]
                    .iter()
                    .zip(&targets[i])
                    .map(|(c, t)| (c - t) * (c - t)),
            )
        })
        .sum::<f64>()
        / n as f64;
    let layer = match weighting {
        LayerWeighting::BatchMeanCertainty => {
            let m: Vec<f64> = certs.iter().map(|c| mean(c.iter().copied())).collect();
            let total: f64 = m.iter().sum();
            (0..n).map(|i| m[i] / total * mse(&exits[i])).sum()
        }
        LayerWeighting::PixelCertainty => (0..n)
            .map(|i| {
                mean(
                    (0..noise.len())
                        .map(|k| certs[i][k] * (exits[i][k] - noise[k]) * (exits[i][k] - noise[k])),
                )
            })
            .sum(),
    };
    (simple, certainty, layer)
}

fn targets(c: &Case) -> Vec<Vec<f64>> {
    c.exits
        .iter()
        .map(|e| {
            e.iter()
                .zip(&c.noise)
                .map(|(a, b)| 1.0 - (a - b).abs().tanh())
                .collect()
        })
        .collect()
}

fn tensor(v: &[f64]) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(f, SHAPE, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn check(weighting: LayerWeighting, lambda: f64, beta: f64) {
    let c = case();
    let tg = targets(&c);
    let cfg = LossConfig {
        lambda,
        beta,
        layer_weighting: weighting,
    };
    let exit_vars: Vec<Var> = c
        .exits
        .iter()
        .map(|e| Var::from_tensor(&tensor(e)).unwrap())
        .collect();
    let cert_vars: Vec<Var> = c
        .certs
        .iter()
        .map(|e| Var::from_tensor(&tensor(e)).unwrap())
        .collect();
    let exits: Vec<Tensor> = exit_vars.iter().map(|v| v.as_tensor().clone()).collect();
    let certs: Vec<Tensor> = cert_vars.iter().map(|v| v.as_tensor().clone()).collect();
    let terms = deediff_loss(&tensor(&c.noise), &exits, &certs, &cfg).unwrap();

    let (s, u, l) = reference(&c.noise, &c.exits, &c.certs, &tg, weighting);
    let got = |t: &Tensor| t.to_scalar::<f32>().unwrap() as f64;
    for (name, g, want) in [
        ("simple", got(&terms.simple), s),
        ("certainty", got(&terms.certainty), u),
        ("layer", got(&terms.layer), l),
        ("total", got(&terms.total), s + lambda * u + beta * l),
    ] {
        assert!(
            (g - want).abs() < 1e-5 * want.abs().max(1.0),
            "{weighting:?} {name}: {g} vs {want}"
        );
    }
    let means = terms.certainty_means.to_vec1::<f32>().unwrap();
    for (i, m) in means.iter().enumerate() {
        assert!((*m as f64 - mean(c.certs[i].iter().copied())).abs() < 1e-6);
    }

    let grads = terms.total.backward().unwrap();
    let total_of = |exits: &[Vec<f64>], certs: &[Vec<f64>]| {
        let (s, u, l) = reference(&c.noise, exits, certs, &tg, weighting);
        s + lambda * u + beta * l
    };
    let h = 1e-6;
    let mut checked = 0;
    for i in 0..BLOCKS {
        // A term with weight 0 leaves no gradient at all: read that as zeros.
        let ge = grads
            .get(exit_vars[i].as_tensor())
            .map(flat)
            .unwrap_or(vec![0.0; P]);
        let gc = flat(
            grads
                .get(cert_vars[i].as_tensor())
                .expect("certainty gradient"),
        );
        for k in 0..P {
            let fd = |which: usize| {
                let (mut e, mut cc) = (c.exits.clone(), c.certs.clone());
                let slot = if which == 0 {
                    &mut e[i][k]
                } else {
                    &mut cc[i][k]
                };
                *slot += h;
                let up = total_of(&e, &cc);
                let slot = if which == 0 {
                    &mut e[i][k]
                } else {
                    &mut cc[i][k]
                };
                *slot -= 2.0 * h;
                (up - total_of(&e, &cc)) / (2.0 * h)
            };
            let (want_e, want_c) = (fd(0), fd(1));
            assert!(
                (ge[k] - want_e).abs() < 2e-5,
                "{weighting:?} d/d exit[{i}][{k}]: {} vs {want_e}",
                ge[k]
            );
            assert!(
                (gc[k] - want_c).abs() < 2e-5,
                "{weighting:?} d/d cert[{i}][{k}]: {} vs {want_c}",
                gc[k]
            );
            checked += 2;
        }
    }
    println!(
        "{weighting:?} λ={lambda} β={beta}: values and {checked} gradients match the f64 reference"
    );
}

#[test]
fn official_loss_values_and_gradients() {
    check(LayerWeighting::BatchMeanCertainty, 1.0, 1.0);
}

#[test]
fn paper_variant_values_and_gradients() {
    check(LayerWeighting::PixelCertainty, 1.0, 1.0);
}

#[test]
fn lambda_and_beta_weight_the_terms() {
    check(LayerWeighting::BatchMeanCertainty, 0.3, 2.5);
    check(LayerWeighting::PixelCertainty, 2.0, 0.0);
}

#[test]
fn certainty_target_is_detached() {
    // With λ = 1, β = 0 the exits before the last get no gradient at all: the certainty target
    // depends on them only through a stop-gradient.
    let c = case();
    let exit_vars: Vec<Var> = c
        .exits
        .iter()
        .map(|e| Var::from_tensor(&tensor(e)).unwrap())
        .collect();
    let exits: Vec<Tensor> = exit_vars.iter().map(|v| v.as_tensor().clone()).collect();
    let certs: Vec<Tensor> = c.certs.iter().map(|e| tensor(e)).collect();
    let cfg = LossConfig {
        lambda: 1.0,
        beta: 0.0,
        layer_weighting: LayerWeighting::BatchMeanCertainty,
    };
    let terms = deediff_loss(&tensor(&c.noise), &exits, &certs, &cfg).unwrap();
    let grads = terms.total.backward().unwrap();
    for v in &exit_vars[..BLOCKS - 1] {
        let g = grads.get(v.as_tensor()).map(flat).unwrap_or(vec![0.0; P]);
        assert!(g.iter().all(|&x| x == 0.0), "early exit got gradient {g:?}");
    }
}

#[test]
fn mismatched_inputs_are_errors() {
    let c = case();
    let exits: Vec<Tensor> = c.exits.iter().map(|e| tensor(e)).collect();
    let certs: Vec<Tensor> = c.certs.iter().map(|e| tensor(e)).collect();
    let cfg = LossConfig::default();
    assert!(deediff_loss(&tensor(&c.noise), &exits, &certs[..2], &cfg).is_err());
    assert!(deediff_loss(&tensor(&c.noise), &[], &[], &cfg).is_err());
}
