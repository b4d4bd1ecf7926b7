//! Plots a `train.jsonl` log (from `train`) as a PNG: L_simple (full-depth loss), the certainty
//! loss and the layer-wise loss against the step, each smoothed over a window of steps. When a
//! run was resumed, the last record of each step wins.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Moving-average window in steps.
    #[arg(long, default_value_t = 50)]
    window: usize,
    /// A TrueType font for the labels.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

fn smooth(v: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    (0..v.len())
        .map(|i| {
            let lo = i.saturating_sub(w - 1);
            let s: f64 = v[lo..=i].iter().map(|p| p.1).sum();
            (v[i].0, s / (i - lo + 1) as f64)
        })
        .collect()
}

fn main() {
    deediff_examples::main(run);
}

/// Registers the TrueType font at `path` as plotters' "sans-serif".
fn load_font(path: &std::path::Path) -> Result<()> {
    let font =
        std::fs::read(path).with_context(|| format!("{}: cannot read font", path.display()))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{}: not a usable TrueType font", path.display()))
}

/// The training log (one JSON object per line, each with a `step`), keyed by step.
fn read_log(path: &std::path::Path) -> Result<BTreeMap<u64, serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut by_step = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not JSON", path.display(), n + 1))?;
        let step = v["step"]
            .as_u64()
            .with_context(|| format!("{}: line {}: no step", path.display(), n + 1))?;
        by_step.insert(step, v);
    }
    Ok(by_step)
}

fn run() -> Result<()> {
    let args = Args::parse();
    load_font(&args.font)?;
    let by_step = read_log(&args.log)?;
    let series = |key: &str| -> Vec<(f64, f64)> {
        by_step
            .iter()
            .filter_map(|(s, v)| Some((*s as f64, v[key].as_f64()?)))
            .collect()
    };
    let curves = [
        ("L_simple (full depth)", series("simple"), RED),
        ("L_u (certainty)", series("certainty"), BLUE),
        ("L_layer", series("layer"), GREEN),
    ];
    let max_step = by_step.keys().last().copied().unwrap_or(1) as f64;
    deediff_examples::image_format(&args.out)?;
    // Drawn into memory and saved by the checked writer: plotters' own file output would
    // report success over a failed write.
    let (w, h) = (900, 500);
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "DeeDiff training losses ({}-step moving average)",
                args.window
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_step, (0.01f64..1.5f64).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (name, data, color) in curves {
        chart
            .draw_series(LineSeries::new(
                smooth(&data, args.window.max(1)),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    drop(chart);
    drop(root);
    let img = image::RgbImage::from_raw(w, h, pixels).context("plot buffer has the plot's size")?;
    deediff_examples::save_image(&args.out, &image::DynamicImage::ImageRgb8(img))?;
    eprintln!("{} steps plotted -> {}", by_step.len(), args.out.display());
    Ok(())
}
