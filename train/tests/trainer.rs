//! Trainer behaviour on tiny models: learning, certainty calibration, exact resume, fine-tuning.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use deediff_train::data::{Captioner, ImageDataset};
use deediff_train::loss::LossConfig;
use deediff_train::optim::AdamWConfig;
use deediff_train::trainer::{LrSchedule, TrainConfig, Trainer};
use deediff_unet::text_encoder::{TextEncoder, TextEncoderConfig};
use deediff_unet::{UVitConfig, Variant};

fn tiny_model(variant: Variant) -> UVitConfig {
    UVitConfig {
        variant,
        img_size: 8,
        patch_size: 2,
        in_chans: 1,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 2.0,
        qkv_bias: false,
        mlp_time_embed: false,
        num_classes: (variant == Variant::Uvit).then_some(3),
        clip_dim: if variant == Variant::UvitT2i { 8 } else { 0 },
        num_clip_token: if variant == Variant::UvitT2i { 4 } else { 0 },
        conv: true,
        skip: true,
    }
}

fn config(model: UVitConfig, text_encoder: Option<TextEncoderConfig>) -> TrainConfig {
    TrainConfig {
        model,
        text_encoder,
        loss: LossConfig::default(),
        optim: AdamWConfig::default(),
        lr: 3e-3,
        warmup_steps: 5,
        schedule: LrSchedule::Constant,
        total_steps: 200,
        batch_size: 8,
        grad_clip: Some(1.0),
        ema_decay: 0.9,
        cond_drop_prob: 0.1,
        seed: 7,
        num_train_timesteps: 100,
        scheduler: serde_json::json!({"beta_schedule": "linear"}),
        freeze_backbone: false,
    }
}

fn alphas() -> Vec<f64> {
    let mut acc = 1.0;
    (0..100)
        .map(|i| {
            acc *= 1.0 - (1e-3 + (0.2 - 1e-3) * i as f64 / 99.0);
            acc
        })
        .collect()
}

/// 16 images of 8×8: label 0 horizontal stripes, label 1 vertical stripes, with a per-image phase.
fn stripes() -> ImageDataset {
    let mut px = Vec::new();
    let mut labels = Vec::new();
    for n in 0..16usize {
        let label = (n % 2) as u32;
        for y in 0..8usize {
            for x in 0..8usize {
                let k = if label == 0 { y } else { x };
                px.push(if (k + n / 2) % 4 < 2 { 0.8 } else { -0.8 });
            }
        }
        labels.push(label);
    }
    ImageDataset::new(px, labels, [1, 8, 8], false).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deediff-trainer-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn loss_decreases_and_certainty_tracks_accurate_exits() {
    let data = stripes();
    let mut tr = Trainer::new(
        config(tiny_model(Variant::Uvit), None),
        &alphas(),
        &Device::Cpu,
    )
    .unwrap();
    let stats: Vec<_> = (0..160).map(|_| tr.train_step(&data).unwrap()).collect();
    let avg = |s: &[deediff_train::trainer::StepStats]| {
        s.iter().map(|x| x.simple).sum::<f32>() / s.len() as f32
    };
    let (first, last) = (avg(&stats[..10]), avg(&stats[150..]));
    println!("L_simple: first 10 steps {first:.4}, last 10 steps {last:.4}");
    assert!(
        last < 0.6 * first,
        "L_simple did not fall enough: {first} -> {last}"
    );

    // Heads start at ≈0.5; exits whose error is small (target 1 − tanh|err| above 0.5) must push
    // their certainty up, and the block with the lowest error must end up the most certain.
    let end = &stats[stats.len() - 1];
    let mean_over = |f: &dyn Fn(&deediff_train::trainer::StepStats) -> Vec<f32>| {
        let window = &stats[130..];
        let n = end.certainty_means.len();
        (0..n)
            .map(|i| window.iter().map(|s| f(s)[i]).sum::<f32>() / window.len() as f32)
            .collect::<Vec<f32>>()
    };
    let cert = mean_over(&|s| s.certainty_means.clone());
    let mse = mean_over(&|s| s.exit_mse.clone());
    println!(
        "late certainty means {cert:?}, exit mse {mse:?}, initial {:?}",
        stats[0].certainty_means
    );
    let best = (0..mse.len())
        .min_by(|&a, &b| mse[a].total_cmp(&mse[b]))
        .unwrap();
    let worst = (0..mse.len())
        .max_by(|&a, &b| mse[a].total_cmp(&mse[b]))
        .unwrap();
    assert!(
        cert[best] > stats[0].certainty_means[best] + 0.03,
        "certainty of the best exit did not rise"
    );
    assert!(
        cert[best] > cert[worst],
        "best exit ({best}) is not more certain than worst ({worst})"
    );
}

#[test]
fn frozen_backbone_trains_only_the_heads() {
    let mut cfg = config(tiny_model(Variant::Uvit), None);
    cfg.freeze_backbone = true;
    let mut tr = Trainer::new(cfg, &alphas(), &Device::Cpu).unwrap();
    // Copied out: the parameter tensors share storage with the variables AdamW updates in place.
    let before: Vec<(String, Vec<f32>)> = tr
        .parameters()
        .iter()
        .map(|(n, t)| (n.clone(), values(t)))
        .collect();
    let data = stripes();
    for _ in 0..5 {
        tr.train_step(&data).unwrap();
    }
    let mut heads_moved = 0;
    for ((name, a), (_, b)) in before.iter().zip(tr.parameters()) {
        let moved = *a != values(&b);
        if name.starts_with("lte_classifer.") {
            heads_moved += moved as usize;
        } else {
            assert!(!moved, "{name} changed although the backbone is frozen");
        }
    }
    assert_eq!(
        heads_moved,
        2 * tr.model().num_blocks(),
        "every head weight and bias trains"
    );
}

#[test]
fn resume_is_bit_identical() {
    let data = stripes();
    let make = || {
        Trainer::new(
            config(tiny_model(Variant::Uvit), None),
            &alphas(),
            &Device::Cpu,
        )
        .unwrap()
    };
    let mut straight = make();
    for _ in 0..6 {
        straight.train_step(&data).unwrap();
    }
    let dir = tmp("resume");
    let ckpt = dir.join("ckpt.safetensors");
    let mut first = make();
    for _ in 0..3 {
        first.train_step(&data).unwrap();
    }
    first.save_checkpoint(&ckpt).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ckpt.safetensors"], "a temporary file left behind");
    drop(first);
    let mut resumed = Trainer::resume(&ckpt, &alphas(), &Device::Cpu, |_| {}).unwrap();
    assert_eq!(resumed.step(), 3);
    for _ in 0..3 {
        resumed.train_step(&data).unwrap();
    }
    let (a, b) = (straight.parameters(), resumed.parameters());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(
            values(ta),
            values(tb),
            "parameter {na} differs after resume"
        );
    }
    // EMA and optimiser state also continue exactly: compare the next checkpoints tensor by tensor.
    let (pa, pb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    straight.save_checkpoint(&pa).unwrap();
    resumed.save_checkpoint(&pb).unwrap();
    let ta = candle_core::safetensors::load(&pa, &Device::Cpu).unwrap();
    let tb = candle_core::safetensors::load(&pb, &Device::Cpu).unwrap();
    assert_eq!(ta.len(), tb.len());
    for (k, v) in &ta {
        assert_eq!(values(v), values(&tb[k]), "{k} differs after resume");
    }
    println!(
        "{} parameters and {} checkpoint tensors identical",
        a.len(),
        ta.len()
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn text_to_image_model_trains_and_exports() {
    let captions: Vec<String> = ["a t-shirt", "a pair of trousers"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let te = TextEncoderConfig::from_corpus(&captions, captions.clone(), 8, 1, 2);
    let mut model = tiny_model(Variant::UvitT2i);
    model.num_clip_token = te.max_tokens;
    let mut tr = Trainer::new(config(model, Some(te)), &alphas(), &Device::Cpu)
        .unwrap()
        .with_captions(Captioner);
    // Labels 0/1 are the Fashion-MNIST concepts t-shirt and trouser.
    let s = tr.train_step(&stripes()).unwrap();
    assert!(s.loss.is_finite());
    let dir = tmp("export");
    let path = dir.join("model.safetensors");
    tr.export_model(&path).unwrap();
    let meta = deediff_unet::model_file::read_metadata_file(&path).unwrap();
    for key in [
        "uvit_config",
        "text_encoder_config",
        "scheduler_config",
        "train_config",
    ] {
        assert!(
            meta.contains_key(key),
            "exported model lacks metadata {key}"
        );
    }
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    // Bias-corrected EMA: after one update the average is exactly the current parameters.
    for (name, t) in tr.parameters() {
        let (a, b) = (values(&t), values(&tensors[&name]));
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1.0)),
            "{name}"
        );
    }
    // The text encoder ships inside the model file, tokenizer included.
    let te = TextEncoder::load(&path, &Device::Cpu).unwrap();
    let ctx = te
        .encode_prompts(&["a pair of trousers"], &Device::Cpu)
        .unwrap();
    assert_eq!(ctx.dims(), &[1, te.config().max_tokens, 8]);
    let err = te
        .encode_prompts(&["zebra"], &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a t-shirt"), "{err}");
    assert!(tensors.contains_key("text_encoder.token_embed.weight"));
    assert!(tensors.contains_key("lte_classifer.2.lte.weight"));
    assert!(tensors.contains_key("context_embed.weight"));
    std::fs::remove_dir_all(dir).ok();
}

/// The official reference U-ViT (config A, with heads) from `DEEDIFF_REFERENCE` or the unet fixtures.
fn reference_dir() -> PathBuf {
    deediff_testkit::reference_dir("uvit")
}

#[test]
fn fine_tune_loads_official_weights_and_adds_missing_heads() {
    let dir = reference_dir();
    let cfg_json = std::fs::read_to_string(dir.join("uvit_cond.config.json")).unwrap();
    let model: UVitConfig = serde_json::from_str(&cfg_json).unwrap();
    let official = candle_core::safetensors::load(
        dir.join("uvit_cond.weights.pth")
            .with_extension("safetensors"),
        &Device::Cpu,
    )
    .unwrap();

    // From the .pth, heads included: every parameter equals the file.
    let mut tr = Trainer::new(config(model.clone(), None), &alphas(), &Device::Cpu).unwrap();
    let fresh = tr
        .load_pretrained(&dir.join("uvit_cond.weights.pth"))
        .unwrap();
    assert!(fresh.is_empty(), "unexpected fresh tensors {fresh:?}");
    for (name, t) in tr.parameters() {
        assert_eq!(values(&t), values(&official[&name]), "{name} not loaded");
    }

    // Without the heads: they are initialised fresh and reported.
    let tmpdir = tmp("finetune");
    let no_heads = tmpdir.join("no_heads.safetensors");
    let kept: std::collections::HashMap<String, Tensor> = official
        .iter()
        .filter(|(k, _)| !k.starts_with("lte_classifer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    candle_core::safetensors::save(&kept, &no_heads).unwrap();
    let mut tr = Trainer::new(config(model.clone(), None), &alphas(), &Device::Cpu).unwrap();
    let fresh = tr.load_pretrained(&no_heads).unwrap();
    assert_eq!(fresh.len(), 2 * model.num_blocks(), "{fresh:?}");
    let data = ImageDataset::new(
        vec![0.1; 4 * 3 * 16 * 16],
        vec![0, 1, 2, 9],
        [3, 16, 16],
        true,
    )
    .unwrap();
    assert!(tr.train_step(&data).unwrap().loss.is_finite());

    // A file missing a backbone tensor is an error naming it.
    let mut broken = kept.clone();
    broken.remove("norm.weight");
    let bad = tmpdir.join("broken.safetensors");
    candle_core::safetensors::save(&broken, &bad).unwrap();
    let mut tr = Trainer::new(config(model, None), &alphas(), &Device::Cpu).unwrap();
    let err = tr.load_pretrained(&bad).unwrap_err().to_string();
    assert!(
        err.contains("broken.safetensors") && err.contains("norm.weight"),
        "{err}"
    );
    std::fs::remove_dir_all(tmpdir).ok();
}

#[test]
fn labels_outside_the_model_are_an_error() {
    let mut tr = Trainer::new(
        config(tiny_model(Variant::Uvit), None),
        &alphas(),
        &Device::Cpu,
    )
    .unwrap();
    let data = ImageDataset::new(vec![0.0; 64], vec![5], [1, 8, 8], false).unwrap();
    let err = tr.train_step(&data).unwrap_err().to_string();
    assert!(err.contains("label 5"), "{err}");
}

#[test]
fn learning_rate_warms_up_then_follows_the_schedule() {
    let mut cfg = config(tiny_model(Variant::Uvit), None);
    cfg.lr = 1e-3;
    cfg.warmup_steps = 10;
    cfg.total_steps = 110;
    assert!((cfg.lr_at(0) - 1e-4).abs() < 1e-12);
    assert!((cfg.lr_at(4) - 5e-4).abs() < 1e-12);
    assert!((cfg.lr_at(9) - 1e-3).abs() < 1e-12);
    assert_eq!(cfg.lr_at(50), 1e-3);
    cfg.schedule = LrSchedule::Cosine { min_lr: 1e-4 };
    assert!((cfg.lr_at(10) - 1e-3).abs() < 1e-12);
    // Halfway through the cosine: the mean of peak and floor.
    assert!((cfg.lr_at(60) - 5.5e-4).abs() < 1e-12);
    assert!((cfg.lr_at(110) - 1e-4).abs() < 1e-12);
    assert!((cfg.lr_at(500) - 1e-4).abs() < 1e-12);
}

/// The whole training path — official `uvit_t2i` forward, every exit and certainty head, the
/// DeeDiff losses (λ = β = 1), candle's backward through the network — against PyTorch autograd
/// in float64 on the same weights and batch (`scripts/train_torch.py grads`).
#[test]
fn deediff_gradients_match_pytorch() {
    let dir = reference_dir();
    let cfg_json = std::fs::read_to_string(dir.join("uvit_t2i.config.json")).unwrap();
    let model: UVitConfig = serde_json::from_str(&cfg_json).unwrap();
    let io =
        candle_core::safetensors::load(dir.join("uvit_t2i.io.safetensors"), &Device::Cpu).unwrap();
    let fixture = candle_core::safetensors::load(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deediff_grads.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // Context comes from the fixture, so the text encoder only has to fit the model's shape.
    let captions = vec!["a t-shirt".to_string()];
    let mut te = TextEncoderConfig::from_corpus(&captions, captions.clone(), model.clip_dim, 1, 2);
    te.max_tokens = model.num_clip_token;
    let mut tr = Trainer::new(config(model, Some(te)), &alphas(), &Device::Cpu)
        .unwrap()
        .with_captions(Captioner);
    tr.load_pretrained(&dir.join("uvit_t2i.weights.safetensors"))
        .unwrap();

    let terms = tr
        .losses(
            &io["x_t"],
            &io["timesteps"],
            &deediff_unet::Conditioning::Context(io["context"].clone()),
            &fixture["noise"],
        )
        .unwrap();
    for (name, t) in [
        ("total", &terms.total),
        ("simple", &terms.simple),
        ("certainty", &terms.certainty),
        ("layer", &terms.layer),
    ] {
        let (ours, theirs) = (values(t)[0], values(&fixture[&format!("loss.{name}")])[0]);
        assert!(
            (ours - theirs).abs() <= 1e-5 * theirs.abs(),
            "L_{name}: candle {ours} vs PyTorch {theirs}"
        );
    }

    // Relative to each gradient's largest entry: f32 against f64 through ~20 layers.
    let grads = terms.total.backward().unwrap();
    let mut worst = (0.0f32, String::new());
    let mut checked = 0;
    for (name, var) in tr.parameters() {
        let Some(reference) = fixture.get(&format!("grad.{name}")) else {
            assert!(
                name.starts_with("text_encoder."),
                "no PyTorch gradient for {name}"
            );
            continue;
        };
        let g = grads
            .get(&var)
            .unwrap_or_else(|| panic!("no candle gradient for {name}"));
        let (a, b) = (values(g), values(reference));
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        if err > worst.0 {
            worst = (err, name.clone());
        }
        checked += 1;
    }
    println!(
        "{checked} gradients, worst relative error {:.2e} ({})",
        worst.0, worst.1
    );
    assert_eq!(checked, 80);
    assert!(
        worst.0 < 1e-4,
        "gradient of {} off by {:.2e}",
        worst.1,
        worst.0
    );
}
