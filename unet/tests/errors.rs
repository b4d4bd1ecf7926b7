//! Bad checkpoints give one-line errors naming the file and the offending tensors.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use deediff_unet::{Checkpoint, ConfigHints};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deediff-unet-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn load_err(path: &Path, hints: &ConfigHints) -> String {
    match Checkpoint::load(path, hints, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should fail", path.display()),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
            assert!(
                msg.contains(&path.display().to_string()),
                "error does not name the file: {msg}"
            );
            msg
        }
    }
}

fn weights_of(case: &str) -> (PathBuf, HashMap<String, Tensor>) {
    let path = deediff_testkit::reference_dir("uvit").join(format!("{case}.weights.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    (path, tensors)
}

/// num_heads comes from the reference config; the tmp copies have no side config.
fn hints_for(case: &str) -> ConfigHints {
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            deediff_testkit::reference_dir("uvit").join(format!("{case}.config.json")),
        )
        .unwrap(),
    )
    .unwrap();
    ConfigHints {
        num_heads: cfg["num_heads"].as_u64().map(|v| v as usize),
        ..Default::default()
    }
}

#[test]
fn safetensors_missing_and_misshaped_tensors_are_named() {
    let (_, mut tensors) = weights_of("uvit_cond");
    let hints = hints_for("uvit_cond");
    let removed = "out_blocks.0.mlp.fc2.bias";
    let w = tensors.remove(removed).unwrap();
    let path = tmp("missing.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let msg = load_err(&path, &hints);
    assert!(msg.contains(&format!("missing {removed}")), "{msg}");

    // A damaged name (here a newline in it, as a flipped byte makes) is quoted, not printed
    // raw: `load_err` checks that the message stays one line.
    tensors.insert("out_blocks.0.mlp.fc2.bi\nas".into(), w.clone());
    let path = tmp("renamed.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let msg = load_err(&path, &hints);
    assert!(
        msg.contains("unexpected out_blocks.0.mlp.fc2.bi\\nas"),
        "{msg}"
    );
    tensors.remove("out_blocks.0.mlp.fc2.bi\nas");

    tensors.insert(removed.into(), w);
    let bad = "in_blocks.1.attn.proj.weight";
    let d = tensors[bad].dim(0).unwrap();
    tensors.insert(
        bad.into(),
        Tensor::zeros((d, d + 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let path = tmp("misshaped.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let msg = load_err(&path, &hints);
    assert!(
        msg.contains(&format!("{bad} expected [{d}, {d}] found [{d}, {}]", d + 1)),
        "{msg}"
    );
}

#[test]
fn num_heads_is_required() {
    let (_, tensors) = weights_of("uvit_cond");
    let path = tmp("noconfig.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let msg = load_err(&path, &ConfigHints::default());
    assert!(msg.contains("num_heads"), "{msg}");
    assert!(Checkpoint::load(&path, &hints_for("uvit_cond"), &Device::Cpu).is_ok());
}

#[test]
fn corrupt_files_are_named() {
    for name in ["corrupt.safetensors", "corrupt.pth"] {
        let path = tmp(name);
        std::fs::write(&path, b"this is not a checkpoint").unwrap();
        load_err(&path, &ConfigHints::default());
    }
}

/// Rewrites `data.pkl` of a torch zip checkpoint with `edit` (same-length byte substitutions keep
/// the pickle valid).
fn rewrite_pth(src: &Path, dst: &Path, edit: impl Fn(&mut Vec<u8>)) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        if name.ends_with("data.pkl") {
            edit(&mut data);
        }
        zout.start_file(name, opts).unwrap();
        zout.write_all(&data).unwrap();
    }
    zout.finish().unwrap();
}

fn replace_all(data: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= data.len() {
        if &data[i..i + from.len()] == from {
            data[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    n
}

#[test]
fn pth_missing_and_misshaped_tensors_are_named() {
    let src = deediff_testkit::reference_dir("uvit").join("uvit_cond.weights.pth");
    let hints = hints_for("uvit_cond");
    // Renaming a key: the original name goes missing and an unexpected one appears.
    let path = tmp("missing.pth");
    rewrite_pth(&src, &path, |d| {
        assert_eq!(
            replace_all(d, b"mid_block.norm2.bias", b"mid_block.norm2.biaz"),
            1
        )
    });
    let msg = load_err(&path, &hints);
    assert!(msg.contains("missing mid_block.norm2.bias"), "{msg}");
    assert!(msg.contains("unexpected mid_block.norm2.biaz"), "{msg}");

    // Swapping two equal-length names of different shapes: both are then mis-shaped.
    let path = tmp("misshaped.pth");
    rewrite_pth(&src, &path, |d| {
        let (a, b) = (b"in_blocks.0.mlp.fc1.bias", b"in_blocks.0.mlp.fc2.bias");
        assert_eq!(replace_all(d, a, b"in_blocks.0.mlp.fcX.bias"), 1);
        assert_eq!(replace_all(d, b, a), 1);
        assert_eq!(replace_all(d, b"in_blocks.0.mlp.fcX.bias", b), 1);
    });
    let msg = load_err(&path, &hints);
    assert!(
        msg.contains("wrong shape in_blocks.0.mlp.fc1.bias expected"),
        "{msg}"
    );
    assert!(msg.contains("in_blocks.0.mlp.fc2.bias expected"), "{msg}");
}
