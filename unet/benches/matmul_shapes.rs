//! GFLOP/s of every linked matmul kernel at the U-ViT's shapes (the evidence behind
//! `deediff_unet::matmul::kernel_for`), and of the packed-panel kernel the linear layers use on
//! AVX2 and AVX-512 (`deediff_unet::panels`, its weight packed once outside the timing, as a
//! layer keeps it), kernels interleaved round by round so a shared machine's load hits all of
//! them alike; medians of the rounds.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p deediff-unet --bench matmul_shapes [-- --rounds 7] [--json]`
//! `--json` prints one JSON line per shape (read by `bench/uvit_forward.py`).

use std::time::Instant;

use deediff_unet::isa::isa;
use deediff_unet::matmul::{kernel_for, matmul_with, Kernel, Operand, Product};
use deediff_unet::panels::{self, PanelWeight};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `(model, layer, m, n, k, parallel)`: `x [m, k] · Wᵀ` for the linears (parallel over the
/// threads), one attention tile product per task for attention (single-threaded, as it runs).
fn shapes() -> Vec<(&'static str, String, usize, usize, usize, bool)> {
    let mut v = Vec::new();
    // (model, tokens, D, attention tile rows, head dim, patches, patch values p²·C)
    for (model, s, d, tile, dh, patches, pd) in [
        ("uvit_s2", 257, 512, 86, 64, 256, 12),
        ("small_p4", 65, 256, 65, 32, 64, 48),
        ("default", 59, 128, 59, 32, 49, 16),
    ] {
        for batch in [1, 16] {
            let m = s * batch;
            let b = if batch == 1 { "b1" } else { "b16" };
            let name = |l: &str| format!("{l} {b}");
            v.push((model, name("qkv"), m, 3 * d, d, true));
            v.push((model, name("proj"), m, d, d, true));
            v.push((model, name("fc1"), m, 4 * d, d, true));
            v.push((model, name("fc2"), m, d, 4 * d, true));
            v.push((model, name("skip_linear"), m, d, 2 * d, true));
            // The output head and each certainty head: patch tokens only.
            v.push((model, name("decoder/head"), patches * batch, pd, d, true));
        }
        v.push((model, "attn q·kᵀ tile".into(), tile, tile, dh, false));
        v.push((model, "attn p·v tile".into(), tile, dh, tile, false));
    }
    v
}

/// The packed-panel kernel's column name.
const PANELS: &str = "panels";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(7usize);
    let json = args.iter().any(|a| a == "--json");
    let kernels = Kernel::available();
    if !json {
        println!(
            "isa {} | threads {} | medians of {rounds} interleaved rounds, GFLOP/s",
            isa().name(),
            rayon::current_num_threads()
        );
        let head: Vec<&str> = kernels.iter().map(|k| k.name()).collect();
        println!(
            "| model | layer | m×n×k | {} | {PANELS} | chosen |\n|---|---|---|{}---|---|",
            head.join(" | "),
            "---|".repeat(kernels.len())
        );
    }
    for (model, layer, m, n, k, parallel) in shapes() {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut out = vec![0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        // Enough repetitions per timing for ~2 ms, so timer and scheduler noise stay small.
        let reps = ((2e-3 * 20e9 / flop) as usize).max(1);
        // Linear layers (the parallel shapes) run on packed panels where the CPU allows.
        let packed = (parallel && panels::eligible(n, k)).then(|| PanelWeight::new(&w, n, k));
        let mut times = vec![Vec::new(); kernels.len() + 1];
        for round in 0..=rounds {
            if let Some(packed) = &packed {
                let t0 = Instant::now();
                for _ in 0..reps {
                    panels::linear(&a, packed, &mut out, false);
                }
                if round > 0 {
                    times[kernels.len()].push(t0.elapsed().as_secs_f64() / reps as f64);
                }
            }
            for (ki, &kernel) in kernels.iter().enumerate() {
                let t0 = Instant::now();
                for _ in 0..reps {
                    let p = Product {
                        m,
                        n,
                        k,
                        dst: out.as_mut_ptr(),
                        dst_ld: n,
                        accumulate: false,
                        lhs: Operand::rows(a.as_ptr(), k),
                        rhs: Operand::transposed(w.as_ptr(), k),
                        alpha: 1.0,
                    };
                    // SAFETY: a is m×k, w is n×k (read transposed), out is m×n.
                    unsafe { matmul_with(kernel, &p, parallel) };
                }
                // Round 0 is the warm-up.
                if round > 0 {
                    times[ki].push(t0.elapsed().as_secs_f64() / reps as f64);
                }
            }
        }
        let gflops: Vec<Option<f64>> = times
            .iter_mut()
            .map(|t| {
                t.sort_by(f64::total_cmp);
                Some(flop / *t.get(t.len() / 2)? / 1e9)
            })
            .collect();
        let (chosen, column) = match packed {
            Some(_) => (PANELS, kernels.len()),
            None => {
                let kernel = kernel_for(m, n, k);
                let column = kernels.iter().position(|&k| k == kernel).unwrap_or(0);
                (kernel.name(), column)
            }
        };
        if json {
            println!(
                "{}",
                serde_json::json!({"model": model, "layer": layer, "m": m, "n": n, "k": k,
                    "parallel": parallel, "kernel": chosen, "gflops": gflops[column]})
            );
        } else {
            let cells: Vec<String> = gflops
                .iter()
                .map(|g| g.map_or("–".into(), |g| format!("{g:.1}")))
                .collect();
            println!(
                "| {model} | {layer} | {m}×{n}×{k} | {} | {chosen} |",
                cells.join(" | ")
            );
        }
    }
}
