//! `fid --device`: malformed values are refused by the parser and (in the default, CPU-only
//! build) `cuda` stops with one line saying how to rebuild.

use std::process::{Command, Output};

fn fid(device: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fid"))
        .args(["--device", device, "/nonexistent/a", "/nonexistent/b"])
        .output()
        .unwrap()
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_on_a_cpu_build_is_one_line_and_a_failure() {
    let o = fid("cuda");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: --device cuda: this binary was built without CUDA support: rebuild with \
         --features cuda\n"
    );
}

#[test]
fn malformed_devices_are_refused_by_the_parser() {
    let o = fid("cuda:one");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"cuda:one\" is not a device: expected cpu, cuda or cuda:N"),
        "{err}"
    );
}
