//! What a per-sample exit pays per block as its batch shrinks: the embedded default model's
//! block times and one certainty head's time (`CertaintyHeads::sample_means`, read after every
//! block of an exit pass) at batches of 32 … 1 images, medians of 60 (random input and context,
//! timestep 500). Timed on a rayon worker, where an exit pass runs (`deediff_unet::pool`): from
//! the main thread every parallel kernel adds two thread hand-offs.
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
    deediff_unet::alloc::keep_freed_pages();
    let dev = Device::Cpu;
    let bundle = ModelBundle::default_model(&dev)?;
    let (model, heads) = (bundle.model.model(), bundle.model.heads());
    let heads = heads.ok_or_else(|| anyhow::anyhow!("the default model has certainty heads"))?;
    let cfg = model.config();
    let n = Backbone::num_blocks(model);
    println!(
        "| images | block ms (0 … {}) | all blocks ms / image | head ms | head / mean block |",
        n - 1
    );
    println!("|---|---|---|---|---|");
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
        let (blocks, head) = deediff_unet::pool::on_worker(|| time_pass(model, heads, &x, &t, &c))?;
        let ms: Vec<f64> = blocks.into_iter().map(median_ms).collect();
        let total: f64 = ms.iter().sum();
        let head = median_ms(head);
        println!(
            "| {images} | {} | {:.3} | {head:.3} | {:.1} % |",
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

/// [`REPEATS`] passes of every block then its head: the seconds of each block and of every head.
fn time_pass(
    model: &deediff_unet::UVit,
    heads: &deediff_uem::CertaintyHeads,
    x: &Tensor,
    t: &Tensor,
    c: &Conditioning,
) -> anyhow::Result<(Vec<Vec<f64>>, Vec<f64>)> {
    let n = Backbone::num_blocks(model);
    let mut blocks = vec![Vec::new(); n];
    let mut head = Vec::new();
    for _ in 0..REPEATS {
        let mut h = Backbone::embed(model, x, t, c)?;
        let mut pass = Backbone::start_pass(model, x.dim(0)?);
        for (i, times) in blocks.iter_mut().enumerate() {
            let start = Instant::now();
            h = Backbone::block(model, i, &h, &mut pass)?;
            times.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            heads.sample_means(i, &h)?.to_vec1::<f32>()?;
            head.push(start.elapsed().as_secs_f64());
        }
    }
    Ok((blocks, head))
}
