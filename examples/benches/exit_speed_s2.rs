//! Issue 11's exit benchmark on a U-ViT-S/2-sized model: do per-sample exits deliver their ideal
//! speed-up (full-depth time × executed-MAC fraction) where blocks are large, as
//! `bench/exit_speed.sh` measures on the embedded model?
//!
//! The model: random weights (U-ViT-S/2 in its CIFAR-10 configuration, seeded: the same model
//! every run) with random certainty heads whose biases make exits happen at mixed depths: on 16
//! unit-noise images at each of 5 timesteps, head `n`'s bias puts the *median* image's mean
//! certainty at `0.9 + (n − 6) · 0.005`, and the heads' weights (5× the official init) spread the
//! other images around it by 3–4 such steps (printed per head). Threshold 0.9 then stops images
//! after 7–9 blocks with the U-ViT patience rule, 0.915 after 9–11; each per-sample point is
//! compared with static truncation at its own mean depth (the static-equivalent depth), all
//! through [`EarlyExit::forward`], the evaluation the sampler runs at every step.
//!
//! Timing: batch 16, one evaluation per point per repeat, points interleaved (each repeat runs
//! each once on fresh noise at the next timestep), medians over repeats. Refuses to run when the
//! 1-minute load average exceeds 0.5 (`FORCE=1` for a look, not to record). A random network
//! fed unit noise, not a sampling run: random weights make no usable trajectory (their outputs
//! blow the samples up within a few steps), and one evaluation is what an exit decides over.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p deediff-examples --bench exit_speed_s2 [-- REPEATS]`

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use deediff_sampler::RunReport;
use deediff_schedules::{NoiseSource, SeededNoise};
use deediff_train::trainer::seeded_init;
use deediff_uem::{CertaintyHeads, EarlyExit, ExitPolicy};
use deediff_unet::model_file::CERTAINTY_HEAD_PREFIX;
use deediff_unet::{Conditioning, UVit, UVitConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `configs/cifar10_uvit_small.py` of the official code, as its `config.json`.
const S2_CIFAR10: &str = r#"{"module": "uvit", "img_size": 32, "patch_size": 2, "in_chans": 3,
    "embed_dim": 512, "depth": 12, "num_heads": 8, "mlp_ratio": 4.0, "qkv_bias": false,
    "mlp_time_embed": false, "num_classes": -1, "conv": true, "skip": true}"#;

/// The heads' weights over the official init's (std 0.02): widens the spread of the images'
/// mean certainty to about one ramp step, so that images exit at different blocks.
const WEIGHT_SCALE: f64 = 5.0;

/// The timesteps the inputs cycle through.
const TIMES: [f32; 5] = [801., 601., 401., 201., 1.];

const BATCH: usize = 16;

/// Mean certainty of the median calibration image at block `n`.
fn target(n: usize) -> f64 {
    0.9 + (n as f64 - 6.0) * 0.005
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    deediff_unet::pool::park_candle_workers();
    deediff_unet::alloc::tune();
    let repeats: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or(Ok(9), |a| a.parse())?;
    let load = load_average()?;
    println!(
        "{} | CPU: {} | {} threads | load before the run: {load:.2}",
        utc_now(),
        cpu_model(),
        rayon::current_num_threads()
    );
    if load > 0.5 && std::env::var_os("FORCE").is_none() {
        return Err(format!(
            "load average {load:.2} > 0.5: refusing (FORCE=1 for a look, not to record)"
        )
        .into());
    }
    let model = exit_model()?;
    let per_sample = [0.9f32, 0.915];
    // Each per-sample point's static twin: truncation at its mean depth.
    let mut points: Vec<ExitPolicy> = vec![ExitPolicy::Full];
    for &threshold in &per_sample {
        let policy = ExitPolicy::PerSample { threshold };
        let mut depth = 0.0;
        for k in 1..=TIMES.len() {
            depth += model.forward_on(k, &policy)?.mean_blocks() / TIMES.len() as f64;
        }
        points.push(policy);
        points.push(ExitPolicy::Static {
            blocks: depth.round() as usize,
        });
    }
    let mut runs: Vec<Vec<RunReport>> = vec![Vec::new(); points.len()];
    for r in 0..repeats {
        for (p, policy) in points.iter().enumerate() {
            runs[p].push(model.forward_on(r + 1, policy)?);
        }
    }
    print_table(&points, &runs);
    Ok(())
}

/// The benchmark model and its input shape.
struct Bench {
    model: EarlyExit,
    cfg: UVitConfig,
}

impl Bench {
    /// Unit noise for input `k` (seeded) at the `k`-th timestep of [`TIMES`] (cycling).
    fn input(&self, k: usize) -> Res<(Tensor, Tensor)> {
        let c = &self.cfg;
        let mut z = vec![0.0; BATCH * c.in_chans * c.img_size * c.img_size];
        SeededNoise::new(k as u64).fill(&mut z)?;
        let x = Tensor::from_iter(z.into_iter().map(|v| v as f32), &Device::Cpu)?
            .reshape((BATCH, c.in_chans, c.img_size, c.img_size))?;
        let t = Tensor::full(TIMES[k % TIMES.len()], BATCH, &Device::Cpu)?;
        Ok((x, t))
    }

    /// One timed evaluation of input `k` under `policy`: the sampler's report of it.
    fn forward_on(&self, k: usize, policy: &ExitPolicy) -> Res<RunReport> {
        let (x, t) = self.input(k)?;
        let t0 = Instant::now();
        let out = self.model.forward(&x, &t, &Conditioning::None, policy)?;
        let mut report = RunReport::new(BATCH, self.cfg.num_blocks(), 1);
        report.seconds = t0.elapsed().as_secs_f64();
        report.record(f64::from(TIMES[k % TIMES.len()]), &out.samples);
        Ok(report)
    }
}

/// The U-ViT-S/2 with calibrated random heads (see the module docs).
fn exit_model() -> Res<Bench> {
    let cfg: UVitConfig = serde_json::from_str(S2_CIFAR10)?;
    let mut weights = seeded_weights(&cfg)?;
    let build = |weights: &HashMap<String, Tensor>| -> Res<Bench> {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        let model = UVit::new(&cfg, vb.clone())?;
        let heads = CertaintyHeads::new(&cfg, vb)?;
        Ok(Bench {
            model: EarlyExit::new(model, Some(heads)),
            cfg: cfg.clone(),
        })
    };
    for (n, logits) in head_logits(&build(&weights)?)?.iter().enumerate() {
        let bias = median_bias(logits, target(n))?;
        let (lo, median, hi) = spread(logits, bias)?;
        println!("head {n:2}: bias {bias:+.3}, mean certainty {lo:.4}–{hi:.4} over the images (median {median:.4})");
        let b = weights
            .get_mut(&format!("{CERTAINTY_HEAD_PREFIX}.{n}.lte.bias"))
            .expect("head bias");
        *b = (b.ones_like()? * bias)?;
    }
    build(&weights)
}

/// Every weight of the model and its heads: the official init, seeded by parameter name (candle
/// cannot seed its CPU generator), the heads' weights scaled by [`WEIGHT_SCALE`]. Plain tensors,
/// not `Var`s: a forward over variables records the graph for backprop and ran 2.4× slower.
fn seeded_weights(cfg: &UVitConfig) -> Res<HashMap<String, Tensor>> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    UVit::new(cfg, vb.clone())?;
    CertaintyHeads::new(cfg, vb)?;
    let vars: Vec<_> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .clone()
        .into_iter()
        .collect();
    seeded_init(&vars, 11)?;
    vars.into_iter()
        .map(|(name, var)| {
            let head_weight = name.starts_with(CERTAINTY_HEAD_PREFIX) && name.ends_with("weight");
            let scale = if head_weight { WEIGHT_SCALE } else { 1.0 };
            Ok((name, (var.as_tensor().detach() * scale)?))
        })
        .collect()
}

/// Per block: the heads' pre-sigmoid outputs `[images, pixels]` (bias 0, as initialised) on
/// one input at each of the timesteps.
fn head_logits(bench: &Bench) -> Res<Vec<Tensor>> {
    let (model, heads) = (
        bench.model.model(),
        bench.model.heads().expect("built with heads"),
    );
    let mut per_block: Vec<Vec<Tensor>> = vec![Vec::new(); model.num_blocks()];
    for k in 0..TIMES.len() {
        let (x, t) = bench.input(1000 + k)?;
        let mut h = model.embed(&x, &t, &Conditioning::None)?;
        let mut skips = Vec::new();
        for (i, logits) in per_block.iter_mut().enumerate() {
            h = model.block(i, &h, &mut skips)?;
            // The heads' bias is 0 here, so logit(certainty) is `W h`.
            let c = heads.map(i, &h)?.flatten_from(1)?;
            logits.push(((&c / (1.0 - &c)?)?).log()?);
        }
    }
    Ok(per_block
        .iter()
        .map(|l| Tensor::cat(l, 0))
        .collect::<candle_core::Result<_>>()?)
}

/// Each image's mean certainty with `bias` added to every logit.
fn means(logits: &Tensor, bias: f64) -> Res<Vec<f32>> {
    Ok(candle_nn::ops::sigmoid(&(logits + bias)?)?
        .mean(D::Minus1)?
        .to_vec1()?)
}

/// The bias at which the median image's mean certainty is `target` (bisection: the mean is
/// increasing in the bias).
fn median_bias(logits: &Tensor, target: f64) -> Res<f64> {
    let (mut lo, mut hi) = (-20.0, 20.0);
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if (spread(logits, mid)?.1 as f64) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// (lowest, median, highest) mean certainty over the images.
fn spread(logits: &Tensor, bias: f64) -> Res<(f32, f32, f32)> {
    let mut m = means(logits, bias)?;
    m.sort_by(f32::total_cmp);
    Ok((m[0], m[m.len() / 2], m[m.len() - 1]))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The table of `bench/exit_speed.sh`: speed-up against the first point and the share of the
/// speed-up the compute promises that arrives.
fn print_table(points: &[ExitPolicy], runs: &[Vec<RunReport>]) {
    let base = median(runs[0].iter().map(|r| r.seconds).collect());
    println!("| point | mean blocks | blocks per image | compute vs full | median s / batch of {BATCH} | speed-up | of ideal |");
    println!("|---|---|---|---|---|---|---|");
    for (policy, rs) in points.iter().zip(runs) {
        let mut all = rs[0].clone();
        rs[1..].iter().for_each(|r| all.merge(r));
        let s = median(rs.iter().map(|r| r.seconds).collect());
        let compute = all.macs_fraction();
        let depths: Vec<usize> = all
            .evals
            .iter()
            .flat_map(|e| e.histogram.iter().enumerate())
            .filter(|&(_, &n)| n > 0)
            .map(|(k, _)| k)
            .collect();
        let (lo, hi) = (
            depths.iter().min().unwrap_or(&0),
            depths.iter().max().unwrap_or(&0),
        );
        println!(
            "| {policy} | {:.2} | {lo}–{hi} | {:.1} % | {s:.3} | {:.2}× | {:.0} % |",
            all.mean_blocks(),
            100.0 * compute,
            base / s,
            100.0 * base / s * compute
        );
    }
}

fn load_average() -> Res<f64> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    Ok(text.split_whitespace().next().unwrap_or("").parse()?)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%F %R UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
