//! Forward-pass parity with the official PyTorch U-ViT (reference vectors, README tolerances),
//! loading every weight file (safetensors and `.pth`) of every reference config.

use deediff_unet::embedding::timestep_embedding;

const TOL_OUT: f32 = 1e-4;
const TOL_INTERMEDIATE: f32 = 2e-4;

#[test]
fn forward_matches_reference_tensors() {
    let mut runs = 0;
    for case in deediff_testkit::cases() {
        for path in &case.weights {
            let loaded = deediff_testkit::load(path);
            let model = &loaded.model;
            let what = |k: &str| format!("{} ({}): {k}", case.name, path.display());
            let x = case.get("x_t");
            let t = case.get("timesteps");
            let cond = case.conditioning();

            let sinusoid = timestep_embedding(t, loaded.config.embed_dim).unwrap();
            let d_time = deediff_testkit::assert_close(
                &what("time_sinusoid"),
                &sinusoid,
                case.get("time_sinusoid"),
                TOL_INTERMEDIATE,
            );
            let tokens = model.embed(x, t, &cond).unwrap();
            deediff_testkit::assert_close(
                &what("tokens_in"),
                &tokens,
                case.get("tokens_in"),
                TOL_INTERMEDIATE,
            );

            assert_eq!(model.num_blocks(), case.num_blocks());
            let mut h = tokens;
            let mut skips = Vec::new();
            let mut worst = (0f32, 0f32);
            for i in 0..model.num_blocks() {
                h = model.block(i, &h, &mut skips).unwrap();
                let d_blk = deediff_testkit::assert_close(
                    &what(&format!("block_out.{i}")),
                    &h,
                    case.get(&format!("block_out.{i}")),
                    TOL_INTERMEDIATE,
                );
                let eps_i = model.decode(&h).unwrap();
                let d_eps = deediff_testkit::assert_close(
                    &what(&format!("exit_eps.{i}")),
                    &eps_i,
                    case.get(&format!("exit_eps.{i}")),
                    TOL_OUT,
                );
                worst = (worst.0.max(d_blk), worst.1.max(d_eps));
            }
            let eps = model.forward(x, t, &cond).unwrap();
            let d_final =
                deediff_testkit::assert_close(&what("eps"), &eps, case.get("eps"), TOL_OUT);
            eprintln!(
                "{}: {}: max diff time {d_time:.1e}, blocks {:.1e}, exit_eps {:.1e}, eps {d_final:.1e}",
                case.name,
                path.file_name().unwrap().to_string_lossy(),
                worst.0,
                worst.1
            );
            runs += 1;
        }
    }
    eprintln!(
        "{runs} weight files checked {}",
        deediff_testkit::isa_marker()
    );
    assert!(runs >= 1);
}

/// The fallback kernels pass the same checks: the forward test above re-runs with `DEEDIFF_ISA`
/// capping the instruction set (AVX2, then baseline).
#[test]
fn forward_matches_reference_tensors_on_fallback_kernels() {
    deediff_testkit::rerun_on_fallback_isas("forward_matches_reference_tensors");
}

/// A sample's output does not depend on its batch: a forward and each block run a batch as one
/// part per thread (`pool::part_ranges`; the batch here on 3 threads, so it is split whatever
/// the machine) and every kernel computes a row the same in any batch, so each sample of a
/// reference batch run alone gives the batch's bits exactly. Not on the baseline kernels
/// (`DEEDIFF_ISA=generic`, no CPU here lacks AVX2): their linear layers run on `gemm`, whose
/// blocking follows the row count, so the last bits may differ there.
#[test]
fn each_sample_alone_gives_its_bits_in_the_batch() {
    use candle_core::Tensor;
    use deediff_unet::isa::{isa, Isa};
    let tol = if isa() >= Isa::Avx2 { 0.0 } else { 1e-5 };
    for case in deediff_testkit::cases() {
        let model = deediff_testkit::load(&case.weights[0]).model;
        let (x, t, cond) = (case.get("x_t"), case.get("timesteps"), case.conditioning());
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let batch = threads.install(|| model.forward(x, t, &cond)).unwrap();
        for k in 0..x.dim(0).unwrap() {
            let idx = Tensor::new(&[k as u32], x.device()).unwrap();
            let pick = |v: &Tensor| v.index_select(&idx, 0).unwrap();
            let alone = model
                .forward(&pick(x), &pick(t), &cond.index_select(&idx).unwrap())
                .unwrap();
            let d = deediff_testkit::max_abs_diff(&alone, &pick(&batch));
            assert!(d <= tol, "{}: sample {k} alone differs by {d}", case.name);
        }
    }
    eprintln!(
        "batch independence checked {}",
        deediff_testkit::isa_marker()
    );
}

/// The fallback kernels keep a sample's bits independent of its batch too.
#[test]
fn each_sample_alone_gives_its_bits_in_the_batch_on_fallback_kernels() {
    deediff_testkit::rerun_on_fallback_isas("each_sample_alone_gives_its_bits_in_the_batch");
}

/// The differentiable path (VarMap-backed model, no fused kernels) gives the same output, and
/// gradients reach the layer-norm, MLP and embedding parameters.
#[test]
fn training_path_matches_and_backpropagates() {
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use deediff_unet::{Checkpoint, ConfigHints, UVit};

    for case in deediff_testkit::cases() {
        let ckpt = Checkpoint::open(&case.weights[0]).unwrap();
        let cfg = ckpt.infer_config(&ConfigHints::default()).unwrap();
        let varmap = VarMap::new();
        let model = UVit::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let tensors = ckpt.tensors(&Device::Cpu).unwrap();
        {
            let data = varmap.data().lock().unwrap();
            for (name, var) in data.iter() {
                var.set(&tensors[name]).unwrap();
            }
            let backbone = tensors
                .keys()
                .filter(|k| !k.starts_with("lte_classifer."))
                .count();
            assert_eq!(
                data.len(),
                backbone,
                "{}: VarMap holds every backbone tensor",
                case.name
            );
        }
        let eps = model
            .forward(case.get("x_t"), case.get("timesteps"), &case.conditioning())
            .unwrap();
        assert!(eps.track_op());
        let d = deediff_testkit::assert_close(
            &format!("{}: training-path eps", case.name),
            &eps,
            case.get("eps"),
            TOL_OUT,
        );
        let grads = eps.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for name in [
            "mid_block.norm1.weight",
            "mid_block.mlp.fc1.bias",
            "mid_block.attn.qkv.weight",
            "pos_embed",
        ] {
            let g = grads
                .get(data[name].as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", case.name));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{}: zero gradient for {name}", case.name);
        }
        eprintln!(
            "{}: training path eps diff {d:.1e}, gradients present",
            case.name
        );
    }
}
