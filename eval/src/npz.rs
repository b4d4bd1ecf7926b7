//! Minimal `.npy`/`.npz` support: what `np.savez_compressed` writes and `np.load` reads
//! (little-endian f8/f4/i8/i4 and u1 arrays, C or Fortran order, deflated or stored members).
//! Statistics are written as float64, sample images as uint8 `arr_0` (the layout of the
//! guided-diffusion / ADM evaluation batches).

use crate::atomic::{write_atomic, FirstError};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

/// An n-d array widened to f64, in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Reads every member `<key>.npy` of an `.npz` file.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>> {
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::file(path, format!("not an .npz (zip) file: {e}")))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| Error::file(path, e))?;
        let name = member
            .name()
            .map_err(|e| Error::file(path, e))?
            .into_owned();
        let Some(key) = name.strip_suffix(".npy").map(str::to_string) else {
            continue;
        };
        // The declared size is only a hint: a corrupt header may claim exabytes.
        let mut bytes = Vec::with_capacity(member.size().min(1 << 24) as usize);
        member
            .read_to_end(&mut bytes)
            .map_err(|e| Error::file(path, format!("member {key}.npy: {e}")))?;
        let array =
            parse_npy(&bytes).map_err(|e| Error::file(path, format!("member {key}.npy: {e}")))?;
        out.insert(key, array);
    }
    Ok(out)
}

/// Writes `arrays` as a deflated `.npz` (float64 members), like `np.savez_compressed`; atomic
/// and checked to the end (see [`crate::atomic`]).
pub fn write_npz(path: &Path, arrays: &[(&str, &Array)]) -> Result<()> {
    let largest = arrays
        .iter()
        .map(|(_, a)| 8 * a.data.len())
        .max()
        .unwrap_or(0);
    write_zip(path, largest, |zip, options| {
        for (key, array) in arrays {
            zip.start_file(format!("{key}.npy"), options)?;
            zip.write_all(&npy_bytes(array))?;
        }
        Ok(())
    })
}

/// Streams uint8 images `[N, H, W, C]` into `arr_0` of a deflated `.npz`, what
/// `np.savez_compressed(path, images)` writes (the sample-batch format of FID evaluators).
/// `image(i)` returns image i's `H·W·C` bytes; only one image is held at a time.
pub fn write_images_npz<E: std::fmt::Display>(
    path: &Path,
    shape: [usize; 4],
    mut image: impl FnMut(usize) -> std::result::Result<Vec<u8>, E>,
) -> Result<()> {
    let per_image = shape[1..].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let total = per_image.and_then(|p| p.checked_mul(shape[0]));
    let (Some(per_image), Some(total)) = (per_image, total) else {
        return Err(Error::file(
            path,
            format!("{shape:?} images are too many bytes"),
        ));
    };
    write_zip(path, total, |zip, options| {
        zip.start_file("arr_0.npy", options)?;
        zip.write_all(&npy_header(&shape, "|u1"))?;
        for i in 0..shape[0] {
            let bytes = image(i).map_err(|e| io::Error::other(format!("image {i}: {e}")))?;
            if bytes.len() != per_image {
                return Err(io::Error::other(format!(
                    "image {i} has {} bytes, expected {per_image} for {}x{}x{}",
                    bytes.len(),
                    shape[1],
                    shape[2],
                    shape[3]
                )));
            }
            zip.write_all(&bytes)?;
        }
        Ok(())
    })
}

type NpzWriter<'a> = zip::ZipWriter<FirstError<&'a mut std::io::BufWriter<std::fs::File>>>;

/// Fills a deflated zip at `path` through `fill` (atomic, checked to the end). Zip64 is on when
/// a member may pass 2 GiB.
fn write_zip(
    path: &Path,
    largest_member: usize,
    fill: impl FnOnce(&mut NpzWriter, zip::write::SimpleFileOptions) -> io::Result<()>,
) -> Result<()> {
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(largest_member >= u32::MAX as usize / 2);
    write_atomic(path, |file| {
        let mut zip = zip::ZipWriter::new(FirstError::new(file));
        fill(&mut zip, options)?;
        zip.finish().map_err(io::Error::other)?.flush()
    })
    .map_err(|e| Error::file(path, format!("cannot write: {e}")))
}

/// `.npy` version 1.0 bytes of a little-endian float64 C-order array.
pub fn npy_bytes(a: &Array) -> Vec<u8> {
    let mut out = npy_header(&a.shape, "<f8");
    a.data
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

/// The `.npy` 1.0 magic and header of a C-order array (header padded to 64 bytes).
fn npy_header(shape: &[usize], descr: &str) -> Vec<u8> {
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.extend(std::iter::repeat_n(' ', pad % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Parses `.npy` bytes (versions 1–3).
pub fn parse_npy(bytes: &[u8]) -> Result<Array> {
    npy_array(bytes).map_err(Error::Invalid)
}

fn npy_array(bytes: &[u8]) -> std::result::Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    let descr = dict_value(header, "descr")
        .ok_or("header lacks 'descr'")?
        .trim_matches(|c| c == '\'' || c == '"');
    let fortran =
        dict_value(header, "fortran_order").ok_or("header lacks 'fortran_order'")? == "True";
    let shape_text = dict_value(header, "shape").ok_or("header lacks 'shape'")?;
    let shape = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_text}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let body = &bytes[start + header_len..];
    let width = match descr {
        "<f8" | "<i8" => 8,
        "<f4" | "<i4" => 4,
        "|u1" | "<u1" => 1,
        d => {
            return Err(format!(
                "unsupported dtype {d} (expected little-endian float64/float32/int or uint8)"
            ))
        }
    };
    let expected = shape
        .iter()
        .try_fold(width, |a: usize, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    if body.len() != expected {
        return Err(format!(
            "holds {} data bytes, expected {expected} for shape {shape:?} {descr}",
            body.len(),
        ));
    }
    let mut data: Vec<f64> = body
        .chunks_exact(width)
        .map(|b| match descr {
            "<f8" => f64::from_le_bytes(b.try_into().unwrap()),
            "<i8" => i64::from_le_bytes(b.try_into().unwrap()) as f64,
            "<f4" => f32::from_le_bytes(b.try_into().unwrap()) as f64,
            "<i4" => i32::from_le_bytes(b.try_into().unwrap()) as f64,
            _ => b[0] as f64,
        })
        .collect();
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&data, &shape);
    }
    Ok(Array { shape, data })
}

/// Value text of `'key': value` in a numpy header dict (tuples kept whole).
fn dict_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let rest = &header[header.find(&format!("'{key}'"))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

/// Reorders column-major data into row-major.
fn fortran_to_c(data: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = data.len();
    let mut out = vec![0.0; n];
    let mut idx = vec![0usize; shape.len()];
    for &v in data {
        let c_pos = idx.iter().zip(shape).fold(0, |acc, (&i, &s)| acc * s + i);
        out[c_pos] = v;
        for (i, &s) in idx.iter_mut().zip(shape) {
            *i += 1;
            if *i < s {
                break;
            }
            *i = 0;
        }
    }
    out
}
