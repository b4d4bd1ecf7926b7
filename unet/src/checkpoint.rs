//! Loading official U-ViT / AdaDiff state dicts from `.pth` (PyTorch zip pickle) or safetensors:
//! configuration inference from tensor shapes, strict key/shape validation, clear errors.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::config::{UVitConfig, Variant};
use crate::model_file::{CERTAINTY_HEAD_PREFIX, FILLED_HEAD_PREFIX};
use crate::uvit::UVit;
use crate::{one_line, Error, Result};

/// Constructor arguments that tensor shapes cannot reveal. Unset fields are looked up in a JSON
/// config beside the checkpoint (`<stem>.config.json`, the stem without `.weights`, or
/// `config.json`, official field names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigHints {
    /// Attention heads: never inferable (any divisor of D fits the shapes).
    pub num_heads: Option<usize>,
    /// Image (or latent) side; needed for `uvit_t2i` unless `num_clip_token` is given.
    pub img_size: Option<usize>,
    /// Text tokens; needed for `uvit_t2i` unless `img_size` is given.
    pub num_clip_token: Option<usize>,
}

impl ConfigHints {
    /// These hints with each unset field taken from the side JSON, when it has it.
    fn filled_from(&self, json: Option<&serde_json::Value>) -> Self {
        let from_json = |key: &str| json.and_then(|j| j.get(key)?.as_u64()).map(|v| v as usize);
        Self {
            num_heads: self.num_heads.or_else(|| from_json("num_heads")),
            img_size: self.img_size.or_else(|| from_json("img_size")),
            num_clip_token: self.num_clip_token.or_else(|| from_json("num_clip_token")),
        }
    }
}

enum Source {
    Pth(PthTensors),
    Safetensors(MmapedSafetensors),
}

/// An opened checkpoint: tensor names and shapes are read, data stays on disk (mmapped for
/// safetensors, read lazily from the zip for `.pth`).
pub struct Checkpoint {
    path: PathBuf,
    shapes: BTreeMap<String, Vec<usize>>,
    source: Source,
}

/// A validated model plus the `VarBuilder` it came from, so `deediff-uem` can build the
/// certainty heads (`lte_classifer.*`) from the same file.
pub struct LoadedUVit {
    pub model: UVit,
    pub config: UVitConfig,
    pub vb: VarBuilder<'static>,
    pub has_certainty_heads: bool,
    /// The file also carries filled-exit heads (`filled_certainty.*`).
    pub has_filled_heads: bool,
    pub path: PathBuf,
}

impl Checkpoint {
    /// Opens `path`; `.pth`/`.pt`/`.bin`/`.ckpt` as a PyTorch zip state dict, anything else as
    /// safetensors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let read_err = |reason: String| Error::CheckpointRead {
            path: path.clone(),
            reason,
        };
        let is_pth = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pth" | "pt" | "bin" | "ckpt")
        );
        let (source, shapes): (Source, BTreeMap<_, _>) = if is_pth {
            let pth = deediff_eval::pth::open(&path).map_err(read_err)?;
            let shapes = pth
                .tensor_infos()
                .iter()
                .map(|(k, v)| (k.clone(), v.layout.dims().to_vec()))
                .collect();
            (Source::Pth(pth), shapes)
        } else {
            // SAFETY: the file is mapped read-only; like every mmap user we assume it is not
            // truncated while the model is alive.
            let st =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| read_err(one_line(&e)))?;
            let shapes = st
                .tensors()
                .into_iter()
                .map(|(k, v)| (k, v.shape().to_vec()))
                .collect();
            (Source::Safetensors(st), shapes)
        };
        if shapes.is_empty() {
            return Err(read_err("no tensors found (not a state dict?)".into()));
        }
        Ok(Self {
            path,
            shapes,
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor name → shape, as stored.
    pub fn shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    /// True when the file carries `lte_classifer.*` tensors.
    pub fn has_certainty_heads(&self) -> bool {
        self.has_prefix(CERTAINTY_HEAD_PREFIX)
    }

    /// True when the file carries filled-exit heads (`filled_certainty.*`).
    pub fn has_filled_heads(&self) -> bool {
        self.has_prefix(FILLED_HEAD_PREFIX)
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.shapes
            .keys()
            .any(|k| k.starts_with(&format!("{prefix}.")))
    }

    /// The head sets the file carries, by tensor prefix.
    fn head_prefixes(&self) -> Vec<&'static str> {
        [CERTAINTY_HEAD_PREFIX, FILLED_HEAD_PREFIX]
            .into_iter()
            .filter(|p| self.has_prefix(p))
            .collect()
    }

    /// Infers the configuration from tensor shapes (variant, D, depth, patch, channels, classes,
    /// context width, MLP ratio, qkv bias, time MLP, conv, skip, image size for `uvit`) and takes
    /// `num_heads` (and for `uvit_t2i` the image size or token count) from `hints`, else from a
    /// JSON config beside the file. Values in that JSON that contradict the shapes are an error.
    pub fn infer_config(&self, hints: &ConfigHints) -> Result<UVitConfig> {
        let mut cfg = self.config_from_shapes()?;
        let json = self.side_config()?;
        let hints = hints.filled_from(json.as_ref());
        cfg.num_heads = hints.num_heads.unwrap_or(0);
        let patch_tokens = self.conditioning_and_patch_tokens(&mut cfg, &hints)?;
        cfg.img_size = self.patch_grid(&cfg, patch_tokens)? * cfg.patch_size;
        cfg.validate().map_err(|e| self.config_err(e.to_string()))?;
        match &json {
            Some(json) => self.check_side_config(&cfg, json).map(|()| cfg),
            None => Ok(cfg),
        }
    }

    fn config_err(&self, reason: String) -> Error {
        Error::CheckpointConfig {
            path: self.path.clone(),
            reason,
        }
    }

    /// The shape of tensor `name`, which must exist with rank `rank`.
    fn shape_of(&self, name: &str, rank: usize) -> Result<&[usize]> {
        match self.shapes.get(name) {
            Some(s) if s.len() == rank => Ok(s),
            Some(s) => Err(self.config_err(format!(
                "tensor {name} has shape {s:?}, expected rank {rank}"
            ))),
            None => Err(self.config_err(format!("tensor {name} is missing"))),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// Every field the shapes alone reveal; image size, heads and conditioning are left unset.
    fn config_from_shapes(&self) -> Result<UVitConfig> {
        let d = self.shape_of("pos_embed", 3)?[2];
        let pe = self.shape_of("patch_embed.proj.weight", 4)?;
        let (in_chans, patch) = (pe[1], pe[2]);
        let hidden = self.shape_of("mid_block.mlp.fc1.weight", 2)?[0];
        let n_in = self.count_in_blocks();
        Ok(UVitConfig {
            variant: if self.has("context_embed.weight") {
                Variant::UvitT2i
            } else {
                Variant::Uvit
            },
            img_size: 0,
            patch_size: patch,
            in_chans,
            embed_dim: d,
            depth: 2 * n_in,
            num_heads: 0,
            mlp_ratio: hidden as f64 / d as f64,
            qkv_bias: self.has("mid_block.attn.qkv.bias"),
            mlp_time_embed: self.has("time_embed.0.weight"),
            num_classes: None,
            clip_dim: 0,
            num_clip_token: 0,
            conv: self.has("final_layer.weight"),
            skip: n_in == 0 || self.has("out_blocks.0.skip_linear.weight"),
        })
    }

    /// One past the highest `in_blocks.<i>` index.
    fn count_in_blocks(&self) -> usize {
        self.shapes
            .keys()
            .filter_map(|k| {
                k.strip_prefix("in_blocks.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .filter_map(|i| i.checked_add(1))
            .max()
            .unwrap_or(0)
    }

    /// Fills the class count (`uvit`) or context width and token count (`uvit_t2i`) and returns
    /// the number of patch tokens left in `pos_embed` (`None` when the extras do not fit). Every
    /// value neither the shapes nor `hints` supply is named in one error.
    fn conditioning_and_patch_tokens(
        &self,
        cfg: &mut UVitConfig,
        hints: &ConfigHints,
    ) -> Result<Option<usize>> {
        let seq = self.shape_of("pos_embed", 3)?[1];
        let mut unknown = Vec::new();
        if hints.num_heads.is_none() {
            unknown.push("num_heads");
        }
        let patch_tokens = match cfg.variant {
            Variant::Uvit => {
                if self.has("label_emb.weight") {
                    cfg.num_classes = Some(self.shape_of("label_emb.weight", 2)?[0]);
                }
                seq.checked_sub(cfg.extras())
            }
            Variant::UvitT2i => {
                cfg.clip_dim = self.shape_of("context_embed.weight", 2)?[1];
                let patch = cfg.patch_size;
                match (hints.img_size, hints.num_clip_token) {
                    (Some(img), _) if patch > 0 => {
                        let l = (img / patch).pow(2);
                        cfg.num_clip_token = seq.checked_sub(1 + l).unwrap_or(usize::MAX);
                        Some(l)
                    }
                    (_, Some(n)) => {
                        cfg.num_clip_token = n;
                        seq.checked_sub(1 + n)
                    }
                    _ => {
                        unknown.push("img_size or num_clip_token (uvit_t2i)");
                        Some(0)
                    }
                }
            }
        };
        if !unknown.is_empty() {
            return Err(self.config_err(format!(
                "not inferable from tensor shapes: {}; pass them explicitly or put them in a config.json beside the checkpoint",
                unknown.join(", ")
            )));
        }
        Ok(patch_tokens)
    }

    /// The side of the square patch grid holding `patch_tokens` tokens.
    fn patch_grid(&self, cfg: &UVitConfig, patch_tokens: Option<usize>) -> Result<usize> {
        patch_tokens
            .map(|l| ((l as f64).sqrt().round() as usize, l))
            .filter(|&(g, l)| g * g == l && g > 0)
            .map(|(g, _)| g)
            .ok_or_else(|| {
                let seq = self.shapes["pos_embed"][1];
                self.config_err(format!(
                    "pos_embed length {seq} minus {} extra tokens is not a square patch grid",
                    cfg.extras()
                ))
            })
    }

    fn check_side_config(&self, cfg: &UVitConfig, json: &serde_json::Value) -> Result<()> {
        let clashes = json_clashes(cfg, json);
        if clashes.is_empty() {
            return Ok(());
        }
        Err(self.config_err(format!(
            "side config contradicts the tensor shapes: {}",
            clashes.join(", ")
        )))
    }

    /// Checks that the file holds exactly the tensors of `cfg` (each set of certainty heads
    /// either all present or all absent) with the right shapes; one error lists every problem.
    pub fn validate(&self, cfg: &UVitConfig) -> Result<()> {
        let expected: BTreeMap<String, Vec<usize>> = expected_tensors(cfg, &self.head_prefixes())
            .into_iter()
            .collect();
        let missing: Vec<&str> = expected
            .keys()
            .filter(|k| !self.shapes.contains_key(*k))
            .map(String::as_str)
            .collect();
        // Names read from the file, escaped: a damaged one may hold a newline or other control
        // characters, and the error must stay one line.
        let extra: Vec<String> = self
            .shapes
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .map(|k| k.escape_debug().to_string())
            .collect();
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|(k, want)| {
                let got = self.shapes.get(k)?;
                (got != want).then(|| format!("{k} expected {want:?} found {got:?}"))
            })
            .collect();
        if missing.is_empty() && extra.is_empty() && wrong.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing {}", missing.join(", ")));
        }
        if !extra.is_empty() {
            parts.push(format!("unexpected {}", extra.join(", ")));
        }
        if !wrong.is_empty() {
            parts.push(format!("wrong shape {}", wrong.join(", ")));
        }
        Err(Error::CheckpointMismatch {
            path: self.path.clone(),
            summary: format!(
                "{} missing, {} unexpected, {} wrong shape",
                missing.len(),
                extra.len(),
                wrong.len()
            ),
            details: parts.join("; "),
        })
    }

    /// Loads every tensor (e.g. to copy a `.pth` into a training `VarMap`).
    pub fn tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let backend = self.backend();
        self.shapes
            .iter()
            .map(|(name, shape)| {
                let t = backend
                    .get(
                        shape.as_slice().into(),
                        name,
                        candle_nn::Init::Const(0.0),
                        DType::F32,
                        device,
                    )
                    .map_err(|e| Error::CheckpointRead {
                        path: self.path.clone(),
                        reason: format!("tensor {name}: {}", one_line(&e)),
                    })?;
                Ok((name.clone(), t))
            })
            .collect()
    }

    fn backend(&self) -> &dyn SimpleBackend {
        match &self.source {
            Source::Pth(p) => p,
            Source::Safetensors(s) => s,
        }
    }

    /// The tensor source itself, for models other than the U-ViT (the autoencoder and text
    /// encoders read their files through it).
    pub fn into_backend(self) -> Box<dyn SimpleBackend> {
        match self.source {
            Source::Pth(p) => Box::new(p),
            Source::Safetensors(s) => Box::new(s),
        }
    }

    /// A f32 `VarBuilder` over the file (call [`Checkpoint::validate`] first).
    pub fn into_var_builder(self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(self.into_backend(), DType::F32, device.clone())
    }

    /// Opens, infers the config, validates and builds the model in one go.
    pub fn load(
        path: impl AsRef<Path>,
        hints: &ConfigHints,
        device: &Device,
    ) -> Result<LoadedUVit> {
        let ckpt = Self::open(path)?;
        let config = ckpt.infer_config(hints)?;
        ckpt.validate(&config)?;
        let has_certainty_heads = ckpt.has_certainty_heads();
        let has_filled_heads = ckpt.has_filled_heads();
        let path = ckpt.path.clone();
        let vb = ckpt.into_var_builder(device);
        let model = UVit::new(&config, vb.clone()).map_err(|e| Error::CheckpointRead {
            path: path.clone(),
            reason: one_line(&e),
        })?;
        Ok(LoadedUVit {
            model,
            config,
            vb,
            has_certainty_heads,
            has_filled_heads,
            path,
        })
    }

    /// The first existing JSON config beside the checkpoint, parsed.
    fn side_config(&self) -> Result<Option<serde_json::Value>> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let mut candidates = vec![dir.join(format!("{stem}.config.json"))];
        if let Some(base) = stem.strip_suffix(".weights") {
            candidates.push(dir.join(format!("{base}.config.json")));
        }
        candidates.push(dir.join("config.json"));
        let Some(file) = candidates.into_iter().find(|p| p.is_file()) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::CheckpointConfig {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::CheckpointConfig {
                path: file,
                reason: format!("invalid JSON: {e}"),
            })
    }
}

/// Fields of the side JSON that disagree with the inferred config.
fn json_clashes(cfg: &UVitConfig, json: &serde_json::Value) -> Vec<String> {
    let Ok(serde_json::Value::Object(ours)) = serde_json::to_value(cfg) else {
        return Vec::new();
    };
    let Some(theirs) = json.as_object() else {
        return vec!["not a JSON object".into()];
    };
    ours.iter()
        .filter_map(|(k, v)| {
            let t = theirs.get(k)?;
            let same = match (v.as_f64(), t.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => v == t,
            };
            (!same).then(|| format!("{k}: file says {t}, tensors say {v}"))
        })
        .collect()
}

/// The official state-dict keys and shapes for `cfg`, plus one head per block for each of
/// `head_prefixes` (`lte_classifer`, `filled_certainty`).
pub fn expected_tensors(cfg: &UVitConfig, head_prefixes: &[&str]) -> Vec<(String, Vec<usize>)> {
    let d = cfg.embed_dim;
    let (c, p, pd, hidden) = (
        cfg.in_chans,
        cfg.patch_size,
        cfg.patch_dim(),
        cfg.mlp_hidden(),
    );
    let mut out: Vec<(String, Vec<usize>)> = vec![
        ("pos_embed".into(), vec![1, cfg.seq_len(), d]),
        ("patch_embed.proj.weight".into(), vec![d, c, p, p]),
        ("patch_embed.proj.bias".into(), vec![d]),
        ("norm.weight".into(), vec![d]),
        ("norm.bias".into(), vec![d]),
        ("decoder_pred.weight".into(), vec![pd, d]),
        ("decoder_pred.bias".into(), vec![pd]),
    ];
    if let (Some(n), Variant::Uvit) = (cfg.num_classes, cfg.variant) {
        out.push(("label_emb.weight".into(), vec![n, d]));
    }
    if cfg.mlp_time_embed {
        out.push(("time_embed.0.weight".into(), vec![4 * d, d]));
        out.push(("time_embed.0.bias".into(), vec![4 * d]));
        out.push(("time_embed.2.weight".into(), vec![d, 4 * d]));
        out.push(("time_embed.2.bias".into(), vec![d]));
    }
    if cfg.variant == Variant::UvitT2i {
        out.push(("context_embed.weight".into(), vec![d, cfg.clip_dim]));
        out.push(("context_embed.bias".into(), vec![d]));
    }
    if cfg.conv {
        out.push(("final_layer.weight".into(), vec![c, c, 3, 3]));
        out.push(("final_layer.bias".into(), vec![c]));
    }
    let n_in = cfg.num_in_blocks();
    let names = (0..n_in)
        .map(|i| (format!("in_blocks.{i}"), false))
        .chain(std::iter::once(("mid_block".to_string(), false)))
        .chain((0..n_in).map(|i| (format!("out_blocks.{i}"), cfg.skip)));
    for (b, with_skip) in names {
        let mut push = |k: &str, s: Vec<usize>| out.push((format!("{b}.{k}"), s));
        push("norm1.weight", vec![d]);
        push("norm1.bias", vec![d]);
        push("attn.qkv.weight", vec![3 * d, d]);
        if cfg.qkv_bias {
            push("attn.qkv.bias", vec![3 * d]);
        }
        push("attn.proj.weight", vec![d, d]);
        push("attn.proj.bias", vec![d]);
        push("norm2.weight", vec![d]);
        push("norm2.bias", vec![d]);
        push("mlp.fc1.weight", vec![hidden, d]);
        push("mlp.fc1.bias", vec![hidden]);
        push("mlp.fc2.weight", vec![d, hidden]);
        push("mlp.fc2.bias", vec![d]);
        if with_skip {
            push("skip_linear.weight", vec![d, 2 * d]);
            push("skip_linear.bias", vec![d]);
        }
    }
    for prefix in head_prefixes {
        for n in 0..cfg.num_blocks() {
            out.push((format!("{prefix}.{n}.lte.weight"), vec![pd, d]));
            out.push((format!("{prefix}.{n}.lte.bias"), vec![pd]));
        }
    }
    out
}
