//! Hostile inputs to `txt2img`, `sample_grid`, `generate` and `train` on the embedded model: a
//! full disk, bad flags, damaged model files. Each must end with one line naming the file or flag
//! and a non-zero exit, never a panic, a success message over a failed write, or a replaced file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deediff-robust-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The embedded model at 2 steps (fast) with `args`.
fn txt2img(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_txt2img"))
        .args(["--steps", "2", "--scheduler", "ddim"])
        .args(args)
        .output()
        .unwrap()
}

/// `generate` on the embedded model at 2 DDIM steps, batches of 2, with `args`; the shard comes
/// from the flags alone (no cluster variables).
fn generate(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(["--steps", "2", "--scheduler", "ddim", "--batch", "2"])
        .args(args)
        .arg("--out")
        .arg(out)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap()
}

/// Asserts a failed run whose stderr is one `error:` line containing every one of `expect`.
fn fails_with(o: &Output, expect: &[&str]) -> String {
    let line = deediff_testkit::cli_error(o);
    for e in expect {
        assert!(line.contains(e), "{line:?} lacks {e:?}");
    }
    line
}

fn png_of(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A shell that runs `cmd` with a file-size limit of 0 and SIGXFSZ ignored, so writes fail with
/// EFBIG (what a full disk looks like to the program) instead of killing it.
fn with_no_space(bin: &str, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 0; exec \"$@\"")
        .arg("sh")
        .arg(bin)
        .args(args)
        .output()
        .unwrap()
}

/// A 16 KB tmpfs at `dir` when mounting is allowed (root outside a locked-down container).
fn mount_tiny_tmpfs(dir: &Path) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_full_disk_fails_and_leaves_the_previous_image_byte_identical() {
    let dir = temp("full");
    let out = dir.join("existing.png");
    png_of(&txt2img(&[
        "--prompt",
        "a sneaker",
        "--out",
        out.to_str().unwrap(),
    ]));
    let before = std::fs::read(&out).unwrap();
    let out_s = out.to_str().unwrap();

    // The file-size limit: every write fails, as on a disk with no space left.
    for (bin, args) in [
        (
            env!("CARGO_BIN_EXE_txt2img"),
            vec!["--prompt", "a bag", "--num", "4"],
        ),
        (env!("CARGO_BIN_EXE_sample_grid"), vec!["--rows", "1"]),
    ] {
        let mut args: Vec<&str> = args;
        args.extend(["--steps", "2", "--scheduler", "ddim", "--out", out_s]);
        let o = with_no_space(bin, &args);
        fails_with(&o, &[out_s, "cannot write the image"]);
        assert!(
            String::from_utf8_lossy(&o.stdout).is_empty(),
            "success printed"
        );
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind");

    // A real 16 KB tmpfs, filled up, where mounting is allowed; else the limit above stands in.
    let mnt = dir.join("tmpfs");
    std::fs::create_dir_all(&mnt).unwrap();
    if mount_tiny_tmpfs(&mnt) {
        let target = mnt.join("existing.png");
        std::fs::write(&target, &before).unwrap();
        let _ = std::fs::write(mnt.join("filler"), vec![0u8; 16 << 10]);
        let o = txt2img(&[
            "--prompt",
            "a bag",
            "--num",
            "9",
            "--out",
            target.to_str().unwrap(),
        ]);
        let line = fails_with(&o, &["cannot write the image"]);
        assert_eq!(std::fs::read(&target).unwrap(), before, "{line}");
        let umount = Command::new("umount").arg(&mnt).status().unwrap();
        assert!(umount.success());
    } else {
        eprintln!("mount -t tmpfs not allowed here: the disk-full case ran with ulimit -f only");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model file like the embedded one with its text encoder's `num_heads` set to 0.
fn model_with_zero_heads(path: &Path) {
    let bytes = deediff_sampler::DEFAULT_MODEL;
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &mut header["__metadata__"];
    let mut te: serde_json::Value =
        serde_json::from_str(meta["text_encoder_config"].as_str().unwrap()).unwrap();
    te["num_heads"] = 0.into();
    meta["text_encoder_config"] = te.to_string().into();
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn damaged_model_files_say_what_is_wrong_with_them() {
    let dir = temp("models");
    let png = dir.join("image.png");
    png_of(&txt2img(&[
        "--prompt",
        "a sneaker",
        "--out",
        png.to_str().unwrap(),
    ]));
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty.safetensors", Vec::new(), &["cannot read checkpoint"]),
        (
            "truncated.safetensors",
            deediff_sampler::DEFAULT_MODEL[..5000].to_vec(),
            &[],
        ),
        (
            "random.safetensors",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            &["cannot read checkpoint"],
        ),
        (
            "picture.safetensors",
            std::fs::read(&png).unwrap(),
            &["cannot read checkpoint"],
        ),
        (
            "garbage.pth",
            b"PK\x03\x04garbage zip".repeat(10),
            &["cannot read checkpoint"],
        ),
        (
            // One flipped byte in the storage class every tensor refers to: candle's reader
            // reported each tensor on stderr (with a backtrace under RUST_BACKTRACE).
            "storage.pth",
            deediff_testkit::pth_with_unknown_storage(),
            &["tensor ", "unsupported storage type FloatStoragf"],
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = dir.join("x.png");
        let o = txt2img(&[
            "--prompt",
            "a bag",
            "--model",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let line = fails_with(&o, expect);
        assert!(line.contains(path.to_str().unwrap()), "{line}");
        assert!(!line.contains("--trained-with"), "{line}");
        // Nothing else on stderr either (a reader's own reports, warnings).
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).lines().count(),
            1,
            "{name}"
        );
    }
    let zero = dir.join("zero-heads.safetensors");
    model_with_zero_heads(&zero);
    let o = txt2img(&[
        "--prompt",
        "a bag",
        "--model",
        zero.to_str().unwrap(),
        "--out",
        dir.join("y.png").to_str().unwrap(),
    ]);
    fails_with(&o, &["num_heads 0"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_flags_get_one_line_before_any_work() {
    let dir = temp("flags");
    let x = dir.join("x.png");
    let xs = x.to_str().unwrap();
    let folder = format!("{}/", dir.display());
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--seed", "18446744073709551615", "--num", "2"],
            vec!["--seed", "past 2^64"],
        ),
        (vec!["--out", &folder], vec!["is a folder"]),
        (
            vec!["--out", xs, "--report", xs],
            vec!["--report", "the same file as --out"],
        ),
        (
            vec!["--out", "/dev/full"],
            vec!["/dev/full", "No space left on device"],
        ),
        (vec!["--out", "x.gif"], vec!["x.gif", ".png"]),
        (
            vec!["--budget", "0.6", "--policy", "full"],
            vec!["--budget", "--policy full"],
        ),
        (
            vec!["--policy", "static:999"],
            vec!["static:999", "only 9 blocks"],
        ),
        (vec!["--threshold", "1e-300"], vec!["1e-300"]),
        (vec!["--batch", "100000"], vec!["--batch 100000"]),
        (vec!["--num", "18446744073709551615"], vec!["grid", "MiB"]),
    ];
    for (args, expect) in cases {
        let mut all = vec!["--prompt", "a bag"];
        if !args.contains(&"--out") {
            all.extend(["--out", xs]);
        }
        all.extend(&args);
        let o = txt2img(&all);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{err}");
        for e in expect {
            assert!(err.contains(e), "{args:?}: {err:?} lacks {e:?}");
        }
        assert!(!x.exists(), "{args:?} wrote an image");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn jpeg_names_get_jpeg_bytes() {
    let dir = temp("jpeg");
    let out = dir.join("out.jpg");
    png_of(&txt2img(&[
        "--prompt",
        "a bag",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(&std::fs::read(&out).unwrap()[..3], b"\xff\xd8\xff");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_subject_past_the_context_is_refused_and_truncation_is_named() {
    let dir = temp("prompt");
    let out = dir.join("x.png");
    let outs = out.to_str().unwrap();
    // Nine filler words the model knows fill its 9-word context before the subject.
    let o = txt2img(&[
        "--prompt",
        "a small black picture photo of a the of an ankle boot",
        "--out",
        outs,
    ]);
    fails_with(&o, &["put the subject first"]);
    let o = txt2img(&[
        "--prompt",
        "an ankle boot a small black picture photo of a the of",
        "--out",
        outs,
    ]);
    png_of(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("prompt truncated"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn training_refuses_hyper_parameters_outside_their_meaning() {
    let dir = temp("train");
    for (flag, value) in [
        ("--lr", "nan"),
        ("--ema-decay", "2"),
        ("--cond-drop", "2"),
        ("--batch-size", "10000000"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(["--out-dir", dir.to_str().unwrap(), flag, value])
            .output()
            .unwrap();
        fails_with(&o, &[flag]);
        assert!(!dir.join("model.safetensors").exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A learning rate that blows the weights up: the first non-finite loss stops training with an
/// error, and no model is written.
#[test]
fn a_non_finite_loss_stops_training_without_writing_a_model() {
    let dir = temp("nan-loss");
    let data = dir.join("data/boots");
    std::fs::create_dir_all(&data).unwrap();
    for k in 0..2u8 {
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * 9 + y * k as u32) as u8]))
            .save(data.join(format!("{k}.png")))
            .unwrap();
    }
    let out = dir.join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_train"))
        .args([
            "--out-dir",
            out.to_str().unwrap(),
            "--image-folder",
            dir.join("data").to_str().unwrap(),
        ])
        .args([
            "--steps",
            "5",
            "--batch-size",
            "2",
            "--lr",
            "1e30",
            "--warmup",
            "0",
            "--plain",
        ])
        .output()
        .unwrap();
    fails_with(&o, &["step", "training stopped"]);
    assert!(!out.join("model.safetensors").exists());
    assert!(!out.join("checkpoint.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The README's `generate --num 10000 --batch 16 --out samples/` on the embedded model, at a
/// small --num: without a prompt the images cycle through the model's example prompts.
#[test]
fn generate_without_a_prompt_cycles_through_the_example_prompts() {
    let dir = temp("cycle");
    let o = generate(&["--num", "3"], &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("no --prompt: image i gets the model's example prompt i mod 20"),
        "{err}"
    );
    for i in 0..3 {
        assert!(dir.join(format!("{i:06}.png")).is_file());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A prompt the model cannot ground, on the last line of a `generate --prompts` file or as
/// txt2img's `--negative-prompt`, is refused before any image in one line naming the file or
/// flag and the prompt, not when its image comes up (in a long run, hours in).
#[test]
fn an_ungroundable_prompt_is_refused_before_any_image() {
    let dir = temp("ungroundable");
    let file = dir.join("prompts.txt");
    std::fs::write(&file, "a shirt\nan ankle boot\nzzz qqq\n").unwrap();
    let out = dir.join("samples");
    let o = generate(&["--num", "6", "--prompts", file.to_str().unwrap()], &out);
    let line = fails_with(&o, &["\"zzz qqq\"", "no word this model knows"]);
    deediff_testkit::assert_one_line_naming(&line, &file);
    assert!(!out.exists(), "output folder created before the refusal");
    let x = dir.join("x.png");
    let o = txt2img(&[
        "--prompt",
        "a bag",
        "--negative-prompt",
        "zzz",
        "--out",
        x.to_str().unwrap(),
    ]);
    fails_with(&o, &["--negative-prompt", "\"zzz\""]);
    assert!(!x.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
