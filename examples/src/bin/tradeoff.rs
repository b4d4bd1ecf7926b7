//! The speed/quality trade-off benchmark: FID (pytorch-fid-exact features, same N, same
//! reference) and wall-clock for full depth, DeeDiff exits at several thresholds, and static
//! truncation at the depths those thresholds reached; for several schedulers and step counts.
//! Prints a markdown table and draws FID against mean blocks executed.
//!
//! `cargo run --release -p deediff-examples --bin tradeoff -- --num 500` (see bench/tradeoff.sh)

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use deediff_eval::{frechet_distance, DeviceArg, FidInception, Stats};
use deediff_examples::cli::{load_model, ModelArgs};
use deediff_sampler::{to_images, Condition, Guidance, Hooks, Pipeline, RunReport, TimestepBand};
use deediff_schedules::SchedulerConfig;
use deediff_uem::data::captions::CONCEPTS;
use deediff_uem::data::idx::load_idx;
use deediff_uem::ExitPolicy;
use plotters::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Cli {
    /// Generated and reference images per FID.
    #[arg(long, default_value_t = 500)]
    num: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Fashion-MNIST test images (reference set; the prompts cycle through its 10 classes).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    fashion_mnist: PathBuf,
    /// Exit thresholds of the DeeDiff runs.
    #[arg(long, value_delimiter = ',', default_value = "0.97,0.95,0.93,0.9,0.85")]
    thresholds: Vec<f32>,
    /// `scheduler:steps` pairs; the first gets the full threshold sweep and static baselines.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ddim:25,ddim:50,dpmpp-2m:10,dpmpp-2m:20"
    )]
    schedulers: Vec<String>,
    /// Extra runs on the first scheduler: full depth except in these timestep bands
    /// (`LO-HI:POLICY`, comma-separated; repeat the flag for another run), e.g. `640-1000:static:2`.
    #[arg(long)]
    band_run: Vec<String>,
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    /// Where the plot goes.
    #[arg(long, default_value = "docs/tradeoff.png")]
    plot: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    device: DeviceArg,
}

/// One measured configuration.
struct Row {
    scheduler: String,
    method: String,
    /// A `--band-run` (its own experiment, not a point on a method's curve).
    banded: bool,
    report: RunReport,
    fid: f64,
}

/// u8 images (as a PNG would hold them) → pytorch-fid statistics.
fn stats_of(net: &FidInception, images: &[image::RgbImage]) -> Result<Stats> {
    Ok(Stats::from_features(&net.features_rgb8(images, 2048)?)?)
}

/// The first `--num` images of a Fashion-MNIST IDX split (`t10k` = the reference, `train` = the
/// real-data floor of FID at this N).
fn fashion(cli: &Cli, split: &str) -> Result<Vec<image::RgbImage>> {
    let dir = &cli.fashion_mnist;
    let set = load_idx(
        &dir.join(format!("{split}-images-idx3-ubyte.gz")),
        &dir.join(format!("{split}-labels-idx1-ubyte.gz")),
        false,
    )?;
    Ok((0..cli.num.min(set.len()))
        .map(|i| {
            let px: Vec<u8> = set
                .image(i)
                .iter()
                .map(|&v| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
                .collect();
            image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(28, 28, px).expect("28×28"))
                .to_rgb8()
        })
        .collect())
}

fn measure(
    pipeline: &Pipeline,
    cli: &Cli,
    net: &FidInception,
    real: &Stats,
) -> Result<(RunReport, f64)> {
    let mut report: Option<RunReport> = None;
    let mut images = Vec::with_capacity(cli.num);
    let idx: Vec<usize> = (0..cli.num).collect();
    for chunk in idx.chunks(cli.batch) {
        let conds: Vec<Condition> = chunk
            .iter()
            .map(|&i| Condition::Text(CONCEPTS[i % 10].phrases[0].to_string()))
            .collect();
        let seeds: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
        let g = pipeline.generate(&conds, &seeds, Hooks::default())?;
        images.extend(to_images(&g.samples)?.into_iter().map(|i| i.to_rgb8()));
        match &mut report {
            Some(r) => r.merge(&g.report),
            None => report = Some(g.report),
        }
    }
    let fid = frechet_distance(&stats_of(net, &images)?, real)?;
    Ok((report.expect("at least one batch"), fid))
}

/// Text needs a TrueType font (plotters' ab_glyph backend reads none by itself).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn plot(rows: &[Row], path: &PathBuf) -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| {
        format!("{FONT}: needed for the plot's labels (apt-get install fonts-dejavu-core)")
    })?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT}: not a usable TrueType font"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let max_fid = rows.iter().map(|r| r.fid).fold(0.0, f64::max) * 1.1;
    let blocks = rows[0].report.num_blocks as f64;
    let root = BitMapBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("FID vs mean blocks executed", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..blocks + 0.5, 0.0..max_fid)?;
    chart
        .configure_mesh()
        .x_desc("mean blocks executed per network pass")
        .y_desc("FID")
        .draw()?;
    // One curve per scheduler and method, each ending at that scheduler's full-depth point;
    // timestep-band runs are separate experiments, drawn as points only.
    struct Curve {
        name: String,
        line: bool,
        pts: Vec<(f64, f64)>,
    }
    let mut curves: Vec<Curve> = Vec::new();
    for r in rows.iter().filter(|r| r.method != "full") {
        let (kind, line) = if r.banded {
            ("timestep bands", false)
        } else {
            (r.method.split(':').next().unwrap_or(""), true)
        };
        let name = format!("{} {kind}", r.scheduler);
        let point = (r.report.mean_blocks(), r.fid);
        match curves.iter_mut().find(|c| c.name == name) {
            Some(c) => c.pts.push(point),
            None => {
                let full = rows
                    .iter()
                    .filter(|f| line && f.scheduler == r.scheduler && f.method == "full")
                    .map(|f| (f.report.mean_blocks(), f.fid));
                let pts = full.chain([point]).collect();
                curves.push(Curve { name, line, pts });
            }
        }
    }
    for (k, mut c) in curves.into_iter().enumerate() {
        c.pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = Palette99::pick(k).to_rgba();
        let path = if c.line { c.pts.clone() } else { Vec::new() };
        chart
            .draw_series(LineSeries::new(path, color.stroke_width(2)))?
            .label(c.name)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        chart.draw_series(c.pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    deediff_examples::exit_on_error(run());
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let device = cli.device.open()?;
    let net = FidInception::load(None)?.on_device(&device)?;
    let real = stats_of(&net, &fashion(&cli, "t10k")?).context("reference statistics")?;
    let floor = frechet_distance(&stats_of(&net, &fashion(&cli, "train")?)?, &real)?;
    eprintln!("real-data floor (train vs test images): FID {floor:.2}");
    let mut rows: Vec<Row> = Vec::new();
    let bundle = load_model(&cli.model, &device)?;
    let betas = bundle.training.betas();
    // Built once with DDIM; each `--schedulers` entry swaps the scheduler in.
    let mut p = Pipeline::from_bundle(
        bundle,
        SchedulerConfig::by_name("ddim", betas.clone())?,
        1,
        device.clone(),
    )?;
    p.set_guidance(Guidance {
        scale: cli.guidance,
        shared_exit: false,
    })?;
    for (k, spec) in cli.schedulers.iter().enumerate() {
        let (name, steps) = spec
            .split_once(':')
            .and_then(|(n, s)| Some((n, s.parse::<usize>().ok()?)))
            .with_context(|| format!("--schedulers entry {spec:?}: expected name:steps"))?;
        p.set_scheduler(SchedulerConfig::by_name(name, betas.clone())?, steps)?;
        let mut policies = vec![ExitPolicy::Full];
        let sweep: &[f32] = if k == 0 {
            &cli.thresholds
        } else {
            &cli.thresholds[..1]
        };
        policies.extend(
            sweep
                .iter()
                .map(|&t| ExitPolicy::per_sample(t))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let mut static_depths = Vec::new();
        for policy in policies {
            p.set_policy(policy)?;
            let (report, fid) = measure(&p, &cli, &net, &real)?;
            eprintln!(
                "{spec} {policy}: depth {:.2} FID {fid:.2} {:.1} s",
                report.mean_blocks(),
                report.seconds
            );
            if k == 0 && matches!(policy, ExitPolicy::PerSample { .. }) {
                static_depths.push(report.mean_blocks().round() as usize);
            }
            rows.push(Row {
                scheduler: spec.clone(),
                method: policy.to_string(),
                banded: false,
                report,
                fid,
            });
        }
        static_depths.sort_unstable();
        static_depths.dedup();
        let full_depth = p.model().model().num_blocks();
        for depth in static_depths.into_iter().filter(|&d| d < full_depth) {
            p.set_policy(ExitPolicy::fixed_depth(depth)?)?;
            let (report, fid) = measure(&p, &cli, &net, &real)?;
            eprintln!(
                "{spec} static:{depth}: FID {fid:.2} {:.1} s",
                report.seconds
            );
            rows.push(Row {
                scheduler: spec.clone(),
                method: format!("static:{depth}"),
                banded: false,
                report,
                fid,
            });
        }
        for spec in cli.band_run.iter().filter(|_| k == 0) {
            let bands = spec
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<TimestepBand>, _>>()?;
            p.set_policy(ExitPolicy::Full)?;
            p.set_timestep_bands(bands)?;
            let (report, fid) = measure(&p, &cli, &net, &real)?;
            let method = p.describe_policy();
            eprintln!(
                "{method}: depth {:.2} FID {fid:.2} {:.1} s",
                report.mean_blocks(),
                report.seconds
            );
            rows.push(Row {
                scheduler: cli.schedulers[0].clone(),
                method,
                banded: true,
                report,
                fid,
            });
            p.set_timestep_bands(Vec::new())?;
        }
    }

    println!("| scheduler | method | mean blocks | depth % | MACs % | FID (N={}) | s/image | speed-up vs full |", cli.num);
    println!("|---|---|---|---|---|---|---|---|");
    println!("| — | real train images (floor) | — | — | — | {floor:.2} | — | — |");
    for r in &rows {
        let full = rows
            .iter()
            .find(|f| f.scheduler == r.scheduler && f.method == "full")
            .map_or(r.report.seconds, |f| f.report.seconds);
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.2} | {:.4} | {:.2}× |",
            r.scheduler,
            r.method,
            r.report.mean_blocks(),
            100.0 * r.report.depth_fraction(),
            100.0 * r.report.macs_fraction(),
            r.fid,
            r.report.seconds / r.report.images as f64,
            full / r.report.seconds
        );
    }
    plot(&rows, &cli.plot)?;
    eprintln!("plot: {}", cli.plot.display());
    Ok(())
}
