//! `calibrate filled` on the embedded model: it writes a model file with filled-exit heads and
//! how they were made, samplers load it and decide `cached` exits with them; a file it cannot
//! write or a source that is not a model file is one error line, with the source untouched.

use std::path::Path;
use std::process::{Command, Output};

fn calibrate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calibrate"))
        .args(["filled", "--num", "6", "--batch", "3", "--updates", "20"])
        .args(args)
        .output()
        .unwrap()
}

fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    deediff_unet::model_file::read_metadata_file(path).unwrap()
}

#[test]
fn filled_heads_are_written_recorded_and_used() {
    let dir = deediff_testkit::scratch_dir("calibrate-filled");
    let out = dir.join("model.safetensors");
    let o = calibrate(&["--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let blocks = (0..)
        .take_while(|n| {
            file.tensor(&format!("lte_classifer.{n}.lte.weight"))
                .is_ok()
        })
        .count();
    assert!(blocks > 1);
    for n in 0..blocks {
        let filled = file
            .tensor(&format!("filled_certainty.{n}.lte.weight"))
            .unwrap();
        let truncated = file
            .tensor(&format!("lte_classifer.{n}.lte.weight"))
            .unwrap();
        assert_eq!(filled.shape(), truncated.shape());
    }
    let how: serde_json::Value =
        serde_json::from_str(&metadata(&out)[deediff_unet::model_file::key::FILLED_HEADS]).unwrap();
    assert_eq!(how["images"], 6);
    // Six images, every evaluation after the first, every block but the last.
    let evals = how["evaluations"].as_u64().unwrap();
    assert_eq!(how["exits_recorded"], 6 * (evals - 1) * (blocks as u64 - 1));
    assert!(how["command"]
        .as_str()
        .unwrap()
        .starts_with("calibrate filled"));

    // The same cached exits decided by the two head sets of the new file: both sample, and
    // the filled heads (more confident where fills are accurate) stop at other depths.
    let depth = |policy: &str| -> f64 {
        let report = dir.join(format!("{policy}.json"));
        let o = Command::new(env!("CARGO_BIN_EXE_txt2img"))
            .args([
                "--model",
                out.to_str().unwrap(),
                "--prompt",
                "a handwritten 3",
            ])
            .args(["--num", "4", "--policy", policy])
            .args(["--out", dir.join("x.png").to_str().unwrap()])
            .args(["--report", report.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        r["mean_blocks"].as_f64().unwrap()
    };
    let (filled, truncated) = (depth("cached:0.95:2"), depth("cached-trunc:0.95:2"));
    assert!(
        filled < truncated,
        "filled {filled} vs truncation {truncated}"
    );
}

#[test]
fn unwritable_outputs_and_foreign_sources_are_one_line() {
    let dir = deediff_testkit::scratch_dir("calibrate-bad");
    // --out inside a regular file: the write fails after the work, the message names the file.
    let blocker = dir.join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("model.safetensors");
    let line = deediff_testkit::cli_error(&calibrate(&["--out", out.to_str().unwrap()]));
    deediff_testkit::assert_one_line_naming(&line, &blocker);
    assert_eq!(std::fs::read(&blocker).unwrap(), b"x");

    // An official checkpoint has nowhere to keep the heads' record.
    let pth = deediff_testkit::fixtures().join("uvit/uvit_cond.weights.safetensors");
    let out = dir.join("m.safetensors");
    let o = calibrate(&[
        "--model",
        pth.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let line = deediff_testkit::cli_error(&o);
    deediff_testkit::assert_one_line_naming(&line, &pth);
    assert!(line.contains("not a deediff model file"), "{line}");
    assert!(!out.exists());
}
