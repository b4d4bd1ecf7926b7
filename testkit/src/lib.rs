//! Test support shared by the deediff crates (a dev-dependency only): where the reference
//! fixtures live, and the helpers the parity tests of `deediff-unet` and `deediff-uem` share.
//!
//! The U-ViT reference fixtures are committed in `unet/tests/fixtures` (made by the official
//! code); other crates' tests reach them through [`fixtures`] and [`reference_dir`] instead of
//! relative paths. A reference folder is `$DEEDIFF_REFERENCE/<kind>` when that variable is set
//! (held-back references, or the GPU check), else the committed fixtures. Cases are discovered
//! from `*.io.safetensors`, so held-back files with other values (or other configs) run without
//! code changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use deediff_unet::{Checkpoint, Conditioning, ConfigHints, LoadedUVit};

/// Where the reference cases run: the CPU, or `DEEDIFF_TEST_DEVICE=cuda` (a `--features cuda`
/// build on a GPU, scripts/gpu_check.sh) for the same checks on the GPU. Opened once: each
/// `Device::new_cuda` is a distinct device to candle, whose tensors cannot meet.
pub fn device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| match std::env::var("DEEDIFF_TEST_DEVICE").as_deref() {
            Ok("cuda") => Device::new_cuda(0).expect("DEEDIFF_TEST_DEVICE=cuda: no CUDA GPU"),
            _ => Device::Cpu,
        })
        .clone()
}

/// The committed fixtures (`unet/tests/fixtures`): `uvit/` (the official U-ViT reference cases)
/// and `latent/` (autoencoder and text-encoder references). Tests that damage or rewrite a
/// known file read it here; parity tests go through [`reference_dir`].
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../unet/tests/fixtures")
}

/// The reference folder `kind` (`uvit`, `latent`): under `$DEEDIFF_REFERENCE` when set, else the
/// committed [`fixtures`]. Printed, so a failing run says which references it compared against.
pub fn reference_dir(kind: &str) -> PathBuf {
    let dir = match std::env::var_os("DEEDIFF_REFERENCE") {
        Some(root) => PathBuf::from(root).join(kind),
        None => fixtures().join(kind),
    };
    eprintln!("reference folder: {}", dir.display());
    dir
}

/// The official-format `.pth` test checkpoint with its `FloatStorage` class name changed to
/// `FloatStoragf`, so candle's reader can read no tensor of it (it printed a report per tensor).
pub fn pth_with_unknown_storage() -> Vec<u8> {
    let src = reference_dir("uvit").join("uvit_cond.weights.pth");
    let mut bytes = std::fs::read(src).unwrap();
    let at = bytes
        .windows(12)
        .position(|w| w == b"FloatStorage")
        .expect("the checkpoint names FloatStorage");
    bytes[at + 11] = b'f';
    bytes
}

/// One reference config: its io tensors and the weight files present for it.
pub struct Case {
    pub name: String,
    pub io: HashMap<String, Tensor>,
    pub weights: Vec<PathBuf>,
}

impl Case {
    pub fn get(&self, key: &str) -> &Tensor {
        self.io
            .get(key)
            .unwrap_or_else(|| panic!("{}: io key {key} missing", self.name))
    }

    pub fn conditioning(&self) -> Conditioning {
        if let Some(y) = self.io.get("y") {
            Conditioning::Class(y.clone())
        } else if let Some(c) = self.io.get("context") {
            Conditioning::Context(c.clone())
        } else {
            Conditioning::None
        }
    }

    /// Number of blocks, from the `block_out.{i}` keys.
    pub fn num_blocks(&self) -> usize {
        (0..)
            .take_while(|i| self.io.contains_key(&format!("block_out.{i}")))
            .count()
    }
}

/// All cases in the reference folder, each with its `.weights.safetensors` and (if present)
/// `.weights.pth`.
pub fn cases() -> Vec<Case> {
    let dir = reference_dir("uvit");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".io.safetensors")?.to_string())
        })
        .collect();
    names.sort();
    assert!(
        !names.is_empty(),
        "no *.io.safetensors in {}",
        dir.display()
    );
    names
        .into_iter()
        .map(|name| {
            let io = candle_core::safetensors::load(
                dir.join(format!("{name}.io.safetensors")),
                &device(),
            )
            .unwrap();
            let weights = ["safetensors", "pth"]
                .iter()
                .map(|ext| dir.join(format!("{name}.weights.{ext}")))
                .filter(|p| p.is_file())
                .collect();
            Case { name, io, weights }
        })
        .collect()
}

/// Loads a reference checkpoint on [`device`], panicking with the loader's one-line error.
pub fn load(path: &Path) -> LoadedUVit {
    Checkpoint::load(path, &ConfigHints::default(), &device()).unwrap_or_else(|e| panic!("{e}"))
}

/// Max |a - b|, asserting equal shapes.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts `max |a - b| <= tol` with a message naming the case and the tensor.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) -> f32 {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
    d
}

/// A fresh, empty folder under the temp dir for test `tag` of this process.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deediff-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts a command-line tool's failed run keeps the error contract: exit status 1, no panic,
/// exactly one `error: ` line on stderr; returns that line without the prefix.
pub fn cli_error(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "not a clean failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "not one error line: {err}");
    lines[0].trim_start_matches("error: ").to_string()
}

/// Asserts the project's error contract: `msg` is one line and names `what` (a file or folder).
pub fn assert_one_line_naming(msg: &str, what: &Path) {
    println!("error: {msg}");
    assert!(
        msg.contains(&what.display().to_string()),
        "`{msg}` does not name {}",
        what.display()
    );
    assert!(!msg.trim_end().contains('\n'), "`{msg}` is not one line");
}

/// Re-runs the test `name` of the current test binary in child processes with `DEEDIFF_ISA`
/// capping the kernels at AVX2, then baseline x86-64, so a CI machine with AVX-512 checks all
/// three paths and an AVX2 machine both of its own. The test must print
/// [`isa_marker`] for the instruction set it ran on.
pub fn rerun_on_fallback_isas(name: &str) {
    use deediff_unet::isa::{detected, Isa, ISA_ENV};
    for cap in [Isa::Avx2, Isa::Generic] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture"])
            .env(ISA_ENV, cap.name())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{ISA_ENV}={}: {text}", cap.name());
        let want = marker(cap.min(detected()));
        assert!(
            text.contains(&want),
            "{ISA_ENV}={}: no `{want}` in {text}",
            cap.name()
        );
    }
}

/// What a test re-run by [`rerun_on_fallback_isas`] prints: the instruction set its kernels ran on.
pub fn isa_marker() -> String {
    marker(deediff_unet::isa::isa())
}

fn marker(isa: deediff_unet::isa::Isa) -> String {
    format!("on kernels for isa {}", isa.name())
}
