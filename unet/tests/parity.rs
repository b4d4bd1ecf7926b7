//! Forward-pass parity with the official PyTorch U-ViT (reference vectors, README tolerances),
//! loading every weight file (safetensors and `.pth`) of every reference config.

mod common;

use deediff_unet::embedding::timestep_embedding;

const TOL_OUT: f32 = 1e-4;
const TOL_INTERMEDIATE: f32 = 2e-4;

#[test]
fn forward_matches_reference_tensors() {
    let mut runs = 0;
    for case in common::cases() {
        for path in &case.weights {
            let loaded = common::load(path);
            let model = &loaded.model;
            let what = |k: &str| format!("{} ({}): {k}", case.name, path.display());
            let x = case.get("x_t");
            let t = case.get("timesteps");
            let cond = case.conditioning();

            let sinusoid = timestep_embedding(t, loaded.config.embed_dim).unwrap();
            let d_time = common::assert_close(
                &what("time_sinusoid"),
                &sinusoid,
                case.get("time_sinusoid"),
                TOL_INTERMEDIATE,
            );
            let tokens = model.embed(x, t, &cond).unwrap();
            common::assert_close(
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
                let d_blk = common::assert_close(
                    &what(&format!("block_out.{i}")),
                    &h,
                    case.get(&format!("block_out.{i}")),
                    TOL_INTERMEDIATE,
                );
                let eps_i = model.decode(&h).unwrap();
                let d_eps = common::assert_close(
                    &what(&format!("exit_eps.{i}")),
                    &eps_i,
                    case.get(&format!("exit_eps.{i}")),
                    TOL_OUT,
                );
                worst = (worst.0.max(d_blk), worst.1.max(d_eps));
            }
            let eps = model.forward(x, t, &cond).unwrap();
            let d_final = common::assert_close(&what("eps"), &eps, case.get("eps"), TOL_OUT);
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
    eprintln!("{runs} weight files checked");
    assert!(runs >= 1);
}
