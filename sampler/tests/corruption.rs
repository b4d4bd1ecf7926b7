//! Randomised corruption of model files, through the loaders the command-line tools use: deediff
//! model files (safetensors with metadata), official U-ViT safetensors and `.pth` checkpoints.
//! Thousands of mutated files per run: none may panic, and every error names the file.

use candle_core::Device;
use deediff_sampler::{ModelBundle, DEFAULT_MODEL};
use deediff_uem::EarlyExitUVit;
use deediff_unet::ConfigHints;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> Vec<u8> {
    let p = deediff_testkit::fixtures().join("uvit").join(name);
    std::fs::read(p).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deediff-model-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Loads `path` the way `txt2img --model PATH --num-heads 4` does.
fn load(path: &Path) -> Result<(), String> {
    let dev = Device::Cpu;
    let is_bundle = ModelBundle::is_bundle(path).map_err(|e| e.to_string())?;
    if is_bundle {
        ModelBundle::load(path, &dev)
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        let hints = ConfigHints {
            num_heads: Some(4),
            ..ConfigHints::default()
        };
        EarlyExitUVit::load(path, &hints, &dev)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn check(path: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    if let Err(msg) = load(path) {
        prop_assert!(
            msg.contains(&path.display().to_string()),
            "{msg:?} does not name the file"
        );
        prop_assert!(!msg.trim_end().contains('\n'), "{msg:?} is not one line");
    }
    Ok(())
}

/// Byte-level damage: cut, flipped bytes (positions in ‰ of `span`), or garbage.
fn damage(bytes: &[u8], span: usize, cut: Option<u16>, flips: &[(u16, u8)]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(p, x) in flips {
        let i = (span * p as usize / 1000).min(b.len() - 1);
        b[i] ^= x;
    }
    if let Some(c) = cut {
        b.truncate(bytes.len() * c as usize / 1000);
    }
    b
}

/// Metadata-level damage of a safetensors file: the `k`-th number of its JSON header replaced by
/// `value` (shapes, offsets, config fields such as `num_heads`), the length prefix kept right.
fn renumber(bytes: &[u8], k: usize, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let runs: Vec<(usize, usize)> = header
        .char_indices()
        .filter(|&(i, c)| {
            c.is_ascii_digit() && !header[..i].ends_with(|p: char| p.is_ascii_digit())
        })
        .map(|(i, _)| {
            (
                i,
                i + header[i..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(header.len() - i),
            )
        })
        .collect();
    let (a, b) = runs[k % runs.len()];
    let edited = format!("{}{value}{}", &header[..a], &header[b..]);
    let mut out = (edited.len() as u64).to_le_bytes().to_vec();
    out.extend(edited.as_bytes());
    out.extend(&bytes[8 + n..]);
    out
}

fn numbers() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("18446744073709551615".to_string()),
        Just("99999999999999999999999".to_string()),
        any::<u32>().prop_map(|v| v.to_string()),
    ]
}

fn flips() -> impl Strategy<Value = Vec<(u16, u8)>> {
    prop::collection::vec((0u16..1000, 1u8..=255), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 700, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_official_safetensors(cut in prop::option::of(0u16..1000), f in flips(), k in any::<usize>(), v in numbers(), edit in any::<bool>()) {
        let good = fixture("uvit_cond.weights.safetensors");
        let bytes = if edit { renumber(&good, k, &v) } else { damage(&good, 4096, cut, &f) };
        check(&scratch("official.safetensors"), &bytes)?;
    }

    #[test]
    fn damaged_pth_checkpoints(cut in prop::option::of(0u16..1000), f in flips(), tail in any::<bool>()) {
        let good = fixture("uvit_cond.weights.pth");
        // The zip directory sits at the end: damage there as often as in the first entries.
        let bytes = if tail {
            let mut b = good.clone();
            let start = b.len() - 4096;
            let t = damage(&b[start..], 4096, None, &f);
            b[start..].copy_from_slice(&t);
            damage(&b, 0, cut, &[])
        } else {
            damage(&good, 4096, cut, &f)
        };
        check(&scratch("official.pth"), &bytes)?;
    }

    #[test]
    fn damaged_model_files_and_their_metadata(cut in prop::option::of(0u16..1000), f in flips(), k in any::<usize>(), v in numbers(), edit in any::<bool>()) {
        let header = 8 + u64::from_le_bytes(DEFAULT_MODEL[..8].try_into().unwrap()) as usize;
        let bytes = if edit { renumber(DEFAULT_MODEL, k, &v) } else { damage(DEFAULT_MODEL, header, cut, &f) };
        check(&scratch("bundle.safetensors"), &bytes)?;
    }
}
