//! The network's state dict: pytorch-fid tensor names, the manifest of what is needed, the
//! safetensors cache and pytorch-fid's own `.pth`.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Map from `default_1.pt` zip entries to pytorch-fid names and shapes (reference README §3).
pub const INDEX_MAP_TSV: &str = include_str!("../data/fidhelper_default1_index_map.tsv");

/// File name of the imported weights inside the cache directory.
pub const WEIGHTS_FILE: &str = "pt_inception-2015-12-05.safetensors";

/// A dense row-major f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// pytorch-fid state dict (`Conv2d_1a_3x3.conv.weight`, `Mixed_7c.branch_pool.bn.running_var`, ...).
pub type StateDict = BTreeMap<String, Tensor32>;

/// One row of the index map.
pub struct IndexEntry {
    pub zip_entry: &'static str,
    pub name: &'static str,
    pub shape: Vec<usize>,
}

/// Parses the embedded index map (376 rows; header skipped).
pub fn index_map() -> Vec<IndexEntry> {
    INDEX_MAP_TSV
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let shape = cols[3]
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|s| s.trim().parse().expect("index map shapes are integers"))
                .collect();
            IndexEntry {
                zip_entry: cols[0],
                name: cols[2],
                shape,
            }
        })
        .collect()
}

/// Every tensor the network reads, with its shape: the index map plus the `bn.weight` (γ) the
/// TF graph lacks.
pub fn manifest() -> impl Iterator<Item = (String, Vec<usize>)> {
    index_map().into_iter().flat_map(|e| {
        let gamma = e
            .name
            .strip_suffix(".bn.bias")
            .map(|layer| (format!("{layer}.bn.weight"), e.shape.clone()));
        std::iter::once((e.name.to_string(), e.shape)).chain(gamma)
    })
}

/// Checks that `sd` holds every tensor of the manifest with the right shape.
pub fn validate(sd: &StateDict, source: &Path) -> Result<()> {
    for (name, shape) in manifest() {
        match sd.get(&name) {
            None => return Err(Error::file(source, format!("missing tensor `{name}`"))),
            Some(t) if t.shape != shape || t.data.len() != shape.iter().product::<usize>() => {
                return Err(Error::file(
                    source,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.shape
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The cache directory: `$DEEDIFF_CACHE`, else `$XDG_CACHE_HOME/deediff`, else `~/.cache/deediff`.
pub fn cache_dir() -> PathBuf {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("DEEDIFF_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("deediff")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("deediff")))
        .unwrap_or_else(|| PathBuf::from(".cache/deediff"))
}

/// Where imported weights live by default.
pub fn default_weights_path() -> PathBuf {
    cache_dir().join(WEIGHTS_FILE)
}

/// Loads weights from a `.safetensors` file in pytorch-fid names or from pytorch-fid's own
/// `pt_inception-2015-12-05-6726825d.pth`, and validates them.
pub fn load_weights(path: &Path) -> Result<StateDict> {
    if !path.exists() {
        return Err(Error::MissingWeights {
            path: path.to_path_buf(),
        });
    }
    let sd = if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(path)?
    } else {
        read_pth(path)?
    };
    validate(&sd, path)?;
    Ok(sd)
}

fn read_safetensors(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a safetensors file: {e}")))?;
    let mut sd = StateDict::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::file(
                path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        sd.insert(
            name,
            Tensor32 {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(sd)
}

/// pytorch-fid's `.pth` (a torch pickle), read with candle's pickle reader ([`crate::pth`]).
fn read_pth(path: &Path) -> Result<StateDict> {
    let tensors = crate::pth::read_all(path).map_err(|e| {
        Error::file(
            path,
            format!("not a safetensors file or torch .pth state dict: {e}"),
        )
    })?;
    let mut sd = StateDict::new();
    for (name, t) in tensors {
        if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
            continue;
        }
        let shape = t.dims().to_vec();
        let data = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        sd.insert(name, Tensor32 { shape, data });
    }
    Ok(sd)
}

/// Writes `sd` as safetensors (f32, pytorch-fid names), creating the parent folder.
pub fn save_safetensors(sd: &StateDict, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = sd
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (k.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::file(path, e))?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| Error::file(path, e))
}
