//! Throughput of the FID feature extractor (2048-d, 28×28 and 32×32 inputs upsampled to 299)
//! and the time of the Fréchet distance at D = 2048. Prints one JSON object per line;
//! `bench/fid.py` runs it next to pytorch-fid and prints the ratios.
//!
//! `cargo bench -p deediff-eval --bench fid -- [--images N] [--reps R] [--skip-frechet]`

use deediff_eval::hashinit::{hash_state_dict, SplitMix64};
use deediff_eval::weights::{default_weights_path, load_weights};
use deediff_eval::{frechet_distance, FidInception, Stats};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect(name))
}

fn main() {
    let (images, reps) = (arg("--images", 50), arg("--reps", 3));
    let cached = default_weights_path();
    let (sd, weights) = match cached.exists() {
        true => (load_weights(&cached).expect("cached weights"), "real"),
        false => (hash_state_dict(), "hash-init"),
    };
    let net = FidInception::from_state_dict(&sd).expect("network");
    let mut rng = SplitMix64(7);
    for side in [28usize, 32] {
        let data: Vec<f32> = (0..images * 3 * side * side)
            .map(|_| (rng.next_u64() >> 56) as f32 / 255.0)
            .collect();
        net.features_nchw(&data[..2 * 3 * side * side], 2, side, side, 2048)
            .expect("warm-up");
        let times: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                net.features_nchw(&data, images, side, side, 2048)
                    .expect("features");
                t.elapsed().as_secs_f64()
            })
            .collect();
        let s = median(times);
        println!(
            r#"{{"bench":"features","side":{side},"images":{images},"threads":{},"weights":"{weights}","seconds":{s},"images_per_s":{}}}"#,
            rayon::current_num_threads(),
            images as f64 / s
        );
    }
    if std::env::args().any(|a| a == "--skip-frechet") {
        return;
    }
    let (n, d) = (2 * 2048, 2048);
    let mut rows = |scale: f64| -> Vec<f64> {
        (0..n * d)
            .map(|_| scale * (rng.next_unit() as f64).powi(2))
            .collect()
    };
    let (a, b) = (rows(1.0), rows(1.1));
    let (s1, s2) = (
        Stats::from_rows(&a, n, d).unwrap(),
        Stats::from_rows(&b, n, d).unwrap(),
    );
    let times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            frechet_distance(&s1, &s2).expect("fid");
            t.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        r#"{{"bench":"frechet","dims":{d},"seconds":{}}}"#,
        median(times)
    );
}
