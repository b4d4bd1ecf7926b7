//! Shared test helpers: locating the reference folder and reading safetensors fixtures.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

/// `$DEEDIFF_REFERENCE/fid` when set, else the committed fixtures.
pub fn reference_dir() -> PathBuf {
    let dir = match std::env::var_os("DEEDIFF_REFERENCE") {
        Some(r) => PathBuf::from(r).join("fid"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid"),
    };
    println!("reference folder: {}", dir.display());
    dir
}

/// A tensor read from a safetensors file, widened to f64.
pub struct Ref {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn read_safetensors(name: &str) -> HashMap<String, Ref> {
    let path = reference_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let data = match v.dtype() {
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::F64 => v
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                d => panic!("{k}: unexpected dtype {d:?}"),
            };
            (
                k,
                Ref {
                    shape: v.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
