//! Parity of the latent pipeline's helper networks with their PyTorch implementations, on tiny
//! random-weight models made by `scripts/make_latent_fixtures.py`: the autoencoder decoder
//! (diffusers `AutoencoderKL`, both file layouts), the CLIP text model and a BERT (transformers),
//! tokenization included. The folder is `$DEEDIFF_REFERENCE/latent` when that variable is set,
//! else the committed `tests/fixtures/latent`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use deediff_unet::{LatentDecoder, PretrainedText, UVitConfig, Variant};

/// Decoder output (pixels, |x| ≲ 3): float32 reordering across ~30 convolutions.
const TOL_VAE: f32 = 1e-4;
/// Text features after the final layer norm (|x| ≲ 4).
const TOL_TEXT: f32 = 1e-4;

fn dir() -> PathBuf {
    deediff_testkit::reference_dir("latent")
}

fn io(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn ids(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::U32).unwrap().to_vec2().unwrap()
}

/// A text encoder's reference tensors, its prompts, and the `[B, len, width]` of its output.
struct TextCase {
    io: HashMap<String, Tensor>,
    prompts: Vec<String>,
    len: usize,
    width: usize,
}

impl TextCase {
    fn load(dir: &Path, name: &str) -> Self {
        let io = io(&dir.join(format!("{name}_io.safetensors")));
        let prompts =
            serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json")).unwrap())
                .unwrap();
        let (_, len, width) = io["last_hidden_state"].dims3().unwrap();
        Self {
            io,
            prompts,
            len,
            width,
        }
    }

    fn texts(&self) -> Vec<&str> {
        self.prompts.iter().map(String::as_str).collect()
    }
}

/// A `uvit_t2i` config that reads `tokens` context tokens of width `clip_dim`.
fn t2i(clip_dim: usize, tokens: usize) -> UVitConfig {
    UVitConfig {
        variant: Variant::UvitT2i,
        img_size: 8,
        patch_size: 2,
        in_chans: 4,
        embed_dim: 64,
        depth: 4,
        num_heads: 4,
        mlp_ratio: 4.0,
        qkv_bias: false,
        mlp_time_embed: false,
        num_classes: None,
        clip_dim,
        num_clip_token: tokens,
        conv: true,
        skip: true,
    }
}

#[test]
fn vae_decoder_matches_diffusers_in_both_layouts() {
    let dir = dir();
    let io = io(&dir.join("vae_io.safetensors"));
    let (z, want) = (&io["z"], &io["image"]);
    for path in [
        dir.join("vae"),
        dir.join("vae/diffusion_pytorch_model.safetensors"),
        dir.join("autoencoder_kl.pth"),
    ] {
        let vae = LatentDecoder::load(&path, &Device::Cpu).unwrap();
        assert_eq!(vae.latent_channels(), z.dim(1).unwrap());
        let got = vae.decode(z).unwrap();
        assert_eq!(got.dim(2).unwrap(), z.dim(2).unwrap() * vae.upscale());
        let d = deediff_testkit::assert_close(&path.display().to_string(), &got, want, TOL_VAE);
        eprintln!("{}: max |Δ| {d:.2e}", path.display());
    }
    // Another latent scale divides z by it instead.
    let s = 0.5;
    let vae = LatentDecoder::load(dir.join("vae"), &Device::Cpu).unwrap();
    let rescaled = (z * (s / vae.scale_factor())).unwrap();
    let vae = vae.with_scale_factor(s).unwrap();
    deediff_testkit::assert_close(
        "scale factor",
        &vae.decode(&rescaled).unwrap(),
        want,
        TOL_VAE,
    );
    assert!(LatentDecoder::load(dir.join("vae"), &Device::Cpu)
        .unwrap()
        .with_scale_factor(0.0)
        .is_err());
    eprintln!("3 autoencoder cases ran");
}

#[test]
fn clip_text_matches_transformers() {
    let dir = dir();
    let case = TextCase::load(&dir, "clip");
    let (io, texts, width) = (&case.io, case.texts(), case.width);
    let enc = PretrainedText::load(dir.join("clip"), &Device::Cpu).unwrap();
    assert_eq!(enc.tokenize(&texts).unwrap().ids, ids(&io["ids"]));

    let want = &io["last_hidden_state"];
    let enc = enc.fit_to(&t2i(width, case.len)).unwrap();
    let nulls: Vec<Option<&str>> = texts
        .iter()
        .map(|t| Some(*t).filter(|t| !t.is_empty()))
        .collect();
    let got = enc.encode(&nulls, &Device::Cpu).unwrap();
    let d = deediff_testkit::assert_close("clip", &got, want, TOL_TEXT);
    eprintln!("clip: max |Δ| {d:.2e} over {} prompts", texts.len());

    // Truncated to a short context as U-ViT's tokenizer call does (the end token kept).
    let short = io["ids_5"].dim(1).unwrap();
    let enc = enc.fit_to(&t2i(width, short)).unwrap();
    assert_eq!(enc.tokenize(&texts).unwrap().ids, ids(&io["ids_5"]));
    let long = texts.join(" ").repeat(4);
    assert!(enc.overflow(&long).unwrap() > 0);
    assert_eq!(enc.overflow("").unwrap(), 0);
}

#[test]
fn bert_matches_transformers() {
    let dir = dir();
    let case = TextCase::load(&dir, "bert");
    let (io, texts) = (&case.io, case.texts());
    let want = &io["last_hidden_state"];
    let enc = PretrainedText::load(dir.join("bert"), &Device::Cpu)
        .unwrap()
        .fit_to(&t2i(case.width, case.len))
        .unwrap();
    let tokens = enc.tokenize(&texts).unwrap();
    assert_eq!(tokens.ids, ids(&io["ids"]));
    assert_eq!(tokens.attention_mask, ids(&io["attention_mask"]));
    let some: Vec<Option<&str>> = texts.iter().map(|t| Some(*t)).collect();
    let got = enc.encode(&some, &Device::Cpu).unwrap();
    let d = deediff_testkit::assert_close("bert", &got, want, TOL_TEXT);
    eprintln!("bert: max |Δ| {d:.2e} over {} prompts", texts.len());
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = dir();
    let err = |r: Result<PretrainedText, deediff_unet::Error>| {
        let e = r.err().expect("should fail").to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    };
    let clip = || PretrainedText::load(dir.join("clip"), &Device::Cpu).unwrap();
    let width = clip().width();
    let e = err(clip().fit_to(&t2i(width + 1, 5)));
    assert!(e.contains("clip_dim"), "{e}");
    let e = err(clip().fit_to(&t2i(width, clip().context_len() + 1)));
    assert!(e.contains("positions"), "{e}");

    // A folder without tokenizer.json.
    let tmp = std::env::temp_dir().join(format!("deediff-latent-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(dir.join("clip").join(f), tmp.join(f)).unwrap();
    }
    let e = err(PretrainedText::load(&tmp, &Device::Cpu));
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();

    // A U-ViT checkpoint is no autoencoder.
    let uvit = deediff_testkit::fixtures().join("uvit/uvit_t2i.weights.safetensors");
    let e = LatentDecoder::load(&uvit, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("decoder.conv_in"), "{e}");
}
