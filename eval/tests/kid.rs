//! KID against a direct f64 evaluation of torch-fidelity's unbiased MMD² formula.

use deediff_eval::hashinit::hash_uniforms;
use deediff_eval::{kid, Features, KidOptions};

fn features(name: &str, n: usize, dims: usize, scale: f32) -> Features {
    Features {
        n,
        dims,
        data: hash_uniforms(name, n * dims)
            .into_iter()
            .map(|u| u * scale)
            .collect(),
    }
}

/// (Σ_{i≠j} k(xi,xj) + Σ_{i≠j} k(yi,yj)) / (m(m−1)) − 2 Σ k(xi,yj) / m².
fn naive_mmd2(x: &Features, y: &Features) -> f64 {
    let d = x.dims as f64;
    let k = |a: &[f32], b: &[f32]| {
        (a.iter()
            .zip(b)
            .map(|(&p, &q)| p as f64 * q as f64)
            .sum::<f64>()
            / d
            + 1.0)
            .powi(3)
    };
    let m = x.n;
    let mut same = 0.0;
    let mut cross = 0.0;
    for i in 0..m {
        for j in 0..m {
            if i != j {
                same += k(x.row(i), x.row(j)) + k(y.row(i), y.row(j));
            }
            cross += k(x.row(i), y.row(j));
        }
    }
    let m = m as f64;
    same / (m * (m - 1.0)) - 2.0 * cross / (m * m)
}

#[test]
fn kid_equals_unbiased_mmd2_on_full_subsets() {
    let (x, y) = (
        features("kid.x", 40, 16, 1.0),
        features("kid.y", 40, 16, 1.3),
    );
    let expected = naive_mmd2(&x, &y);
    // Subsets as large as the sets are permutations of them, so every subset gives the same MMD².
    let r = kid(
        &x,
        &y,
        &KidOptions {
            subset_size: 40,
            subsets: 5,
            seed: 1,
        },
    )
    .unwrap();
    println!("KID {} ± {} vs direct {expected}", r.mean, r.std);
    assert!(expected > 1e-3, "test sets should differ: {expected}");
    assert!(
        (r.mean - expected).abs() <= 1e-6 * expected.abs(),
        "{} vs {expected}",
        r.mean
    );
    assert!(r.std <= 1e-6 * expected.abs());

    let sub = kid(
        &x,
        &y,
        &KidOptions {
            subset_size: 10,
            subsets: 50,
            seed: 3,
        },
    )
    .unwrap();
    assert!(
        sub.std > 0.0 && (sub.mean - expected).abs() < 4.0 * sub.std,
        "{sub:?} vs {expected}"
    );
    let err = kid(
        &x,
        &y,
        &KidOptions {
            subset_size: 41,
            subsets: 1,
            seed: 0,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("41"), "{err}");
}
