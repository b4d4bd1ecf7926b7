//! Statistics and Fréchet distance against numpy/scipy (reference README §4), plus `.npz`
//! round trips and mergeable moments.

mod common;
use common::read_safetensors;
use deediff_eval::{frechet_distance, Moments, Stats};
use std::collections::BTreeSet;

fn cases() -> (std::collections::HashMap<String, common::Ref>, Vec<String>) {
    let r = read_safetensors("frechet_vectors.safetensors");
    let names: BTreeSet<String> = r
        .keys()
        .filter_map(|k| k.strip_suffix(".fid").map(str::to_string))
        .collect();
    assert!(!names.is_empty(), "no cases in frechet_vectors.safetensors");
    (r, names.into_iter().collect())
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    common::max_abs_diff(a, b) / scale
}

fn stats_of(r: &std::collections::HashMap<String, common::Ref>, key: &str) -> Stats {
    let x = &r[key];
    Stats::from_rows(&x.data, x.shape[0], x.shape[1]).unwrap()
}

#[test]
fn mean_and_covariance_match_numpy() {
    let (r, names) = cases();
    for c in &names {
        for i in ["1", "2"] {
            let s = stats_of(&r, &format!("{c}.x{i}"));
            let (em, sigma) = (
                &r[&format!("{c}.mu{i}")].data,
                &r[&format!("{c}.sigma{i}")].data,
            );
            let (dm, ds) = (rel_err(&s.mu, em), rel_err(&s.sigma, sigma));
            println!("{c}.x{i}: mu rel {dm:.1e}, sigma rel {ds:.1e}");
            assert!(dm <= 1e-12 && ds <= 1e-12, "{c}.x{i}: mu {dm}, sigma {ds}");
        }
    }
    println!("{} cases", names.len());
}

#[test]
fn frechet_distance_matches_pytorch_fid() {
    let (r, names) = cases();
    for c in &names {
        let s = |i: &str| Stats {
            dims: r[&format!("{c}.mu{i}")].data.len(),
            mu: r[&format!("{c}.mu{i}")].data.clone(),
            sigma: r[&format!("{c}.sigma{i}")].data.clone(),
        };
        let (s1, s2) = (s("1"), s("2"));
        let ours = frechet_distance(&s1, &s2).unwrap();
        let expected = r[&format!("{c}.fid")].data[0];
        let identical = r[&format!("{c}.x1")].data == r[&format!("{c}.x2")].data;
        let tol = if identical {
            1e-9
        } else {
            1e-6 * expected.abs().max(1.0)
        };
        let target = if identical { 0.0 } else { expected };
        println!(
            "{c}: fid {ours:.15} vs pytorch-fid {expected:.15} (diff {:.2e})",
            ours - expected
        );
        assert!((ours - target).abs() <= tol, "{c}: {ours} vs {target}");
    }
    println!("{} cases", names.len());
}

#[test]
fn npz_round_trip() {
    let (r, names) = cases();
    let dir = std::env::temp_dir().join(format!("deediff-eval-npz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for c in &names {
        let s = stats_of(&r, &format!("{c}.x1"));
        let path = dir.join(format!("{c}.npz"));
        s.save(&path).unwrap();
        assert_eq!(Stats::load(&path).unwrap(), s, "{c}: stats round trip");
        let mut m = Moments::new(s.dims);
        let x = &r[&format!("{c}.x1")];
        m.add_rows(&x.data, x.shape[0]);
        m.save(&path).unwrap();
        assert_eq!(Moments::load(&path).unwrap(), m, "{c}: moments round trip");
        assert_eq!(
            Stats::load(&path).unwrap(),
            m.stats().unwrap(),
            "{c}: moments file read as stats"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merged_shards_equal_whole_set() {
    let (r, names) = cases();
    for c in &names {
        let x = &r[&format!("{c}.x1")];
        let (n, d) = (x.shape[0], x.shape[1]);
        let mut whole = Moments::new(d);
        whole.add_rows(&x.data, n);
        let cuts = [0, n / 3, n / 3 + 1, n];
        let mut merged = Moments::new(d);
        for w in cuts.windows(2) {
            let mut shard = Moments::new(d);
            shard.add_rows(&x.data[w[0] * d..w[1] * d], w[1] - w[0]);
            merged.merge(&shard).unwrap();
        }
        assert_eq!(merged.n, n as u64);
        let (a, b) = (merged.stats().unwrap(), whole.stats().unwrap());
        let numpy = &r[&format!("{c}.sigma1")].data;
        let (dm, ds, dn) = (
            rel_err(&a.mu, &b.mu),
            rel_err(&a.sigma, &b.sigma),
            rel_err(&a.sigma, numpy),
        );
        println!("{c}: merged vs whole mu {dm:.1e} sigma {ds:.1e}; vs numpy sigma {dn:.1e}");
        assert!(
            dm <= 1e-13 && ds <= 1e-13 && dn <= 1e-12,
            "{c}: {dm} {ds} {dn}"
        );
    }
}
