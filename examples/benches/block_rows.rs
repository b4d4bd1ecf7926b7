//! What a per-sample exit pays per block as its batch shrinks: the embedded default model's
//! block times, one certainty head's time (`CertaintyHeads::sample_means`, read after every
//! block of an exit pass), and the embed and output head every pass pays however early it
//! stops, at batches of 32 … 1 images, medians of 60 (random input and context, timestep 500).
//! Timed on a rayon worker, where an exit pass runs (`deediff_unet::pool`): from the main thread
//! every parallel kernel adds two thread hand-offs.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p deediff-examples --bench block_rows`

use std::time::Instant;

use candle_core::{Device, Tensor};
use deediff_sampler::ModelBundle;
use deediff_uem::Backbone;
use deediff_unet::Conditioning;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPEATS: usize = 60;

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2] * 1e3
}

fn main() -> anyhow::Result<()> {
    deediff_unet::pool::park_candle_workers();
    deediff_unet::alloc::tune();
    let dev = Device::Cpu;
    let bundle = ModelBundle::default_model(&dev)?;
    let (model, heads) = (bundle.model.model(), bundle.model.heads());
    let heads = heads.ok_or_else(|| anyhow::anyhow!("the default model has certainty heads"))?;
    let cfg = model.config();
    let n = Backbone::num_blocks(model);
    println!(
        "| images | embed ms | block ms (0 … {}) | all blocks ms / image | head ms | head / mean block | decode ms |",
        n - 1
    );
    println!("|---|---|---|---|---|---|---|");
    for images in [32usize, 16, 8, 4, 2, 1] {
        let x = Tensor::randn(
            0f32,
            1.0,
            (images, cfg.in_chans, cfg.img_size, cfg.img_size),
            &dev,
        )?;
        let t = Tensor::full(500f32, images, &dev)?;
        let c = Conditioning::Context(Tensor::randn(
            0f32,
            1.0,
            (images, cfg.num_clip_token, cfg.clip_dim),
            &dev,
        )?);
        let times = deediff_unet::pool::on_worker(|| time_pass(model, heads, &x, &t, &c))?;
        let ms: Vec<f64> = times.blocks.into_iter().map(median_ms).collect();
        let total: f64 = ms.iter().sum();
        let head = median_ms(times.head);
        let (embed, decode) = (median_ms(times.embed), median_ms(times.decode));
        println!(
            "| {images} | {embed:.3} | {} | {:.3} | {head:.3} | {:.1} % | {decode:.3} |",
            ms.iter()
                .map(|m| format!("{m:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            total / images as f64,
            100.0 * head * n as f64 / total
        );
    }
    Ok(())
}

/// Seconds of every timed repeat, per part of a pass.
#[derive(Default)]
struct Times {
    embed: Vec<f64>,
    blocks: Vec<Vec<f64>>,
    head: Vec<f64>,
    decode: Vec<f64>,
}

/// `f`'s result and its seconds appended to `times`.
fn timed<T>(times: &mut Vec<f64>, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    times.push(start.elapsed().as_secs_f64());
    out
}

/// [`REPEATS`] passes: the embed, every block then its head, the output head on the last block.
fn time_pass(
    model: &deediff_unet::UVit,
    heads: &deediff_uem::CertaintyHeads,
    x: &Tensor,
    t: &Tensor,
    c: &Conditioning,
) -> anyhow::Result<Times> {
    let n = Backbone::num_blocks(model);
    let mut all = Times {
        blocks: vec![Vec::new(); n],
        ..Times::default()
    };
    for _ in 0..REPEATS {
        let mut h = timed(&mut all.embed, || Backbone::embed(model, x, t, c))?;
        let mut pass = Backbone::start_pass(model, x.dim(0)?);
        for (i, times) in all.blocks.iter_mut().enumerate() {
            h = timed(times, || Backbone::block(model, i, &h, &mut pass))?;
            timed(&mut all.head, || {
                heads.sample_means(i, &h)?.to_vec1::<f32>()
            })?;
        }
        timed(&mut all.decode, || Backbone::decode(model, &h))?;
    }
    Ok(all)
}
