//! The speed/quality trade-off benchmark against the real frontier: FID (pytorch-fid-exact
//! features, N generated garments against the first N Fashion-MNIST test images) against compute
//! per image, for full depth at several step counts of several solvers (the frontier: simply
//! taking fewer steps) and for exit/reuse policies at the step counts near its knee.
//!
//! Compute per image is the MACs a run executed, summed over all its steps, in units of one
//! full-depth network evaluation, and shown relative to DDIM 25 at full depth: a policy must beat
//! the cheaper solvers, not just its own full-depth run (`shared/spec/peers.md`).
//!
//! Every measured point is appended to a results file (JSON lines) as soon as it is done, so a
//! long benchmark can be split over several invocations, killed and resumed: points already in
//! the file are not re-run, and the table and plot cover every row of the file at this N.
//!
//! `bench/tradeoff.sh --num 1000 --frontier ddim:5,10,25 --point 'dpmpp-2m:10@per-sample:0.95'`

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use deediff_eval::{frechet_distance, DeviceArg, FidInception, Stats};
use deediff_examples::cli::{load_model, ModelArgs};
use deediff_sampler::{
    to_images, Condition, Guidance, Hooks, Pipeline, RunReport, SamplingDefaults, TimestepBand,
};
use deediff_schedules::{BetaConfig, SchedulerConfig};
use deediff_train::data::captions::CONCEPTS;
use deediff_train::data::idx::load_idx;
use deediff_uem::{ExitPolicy, ReuseSchedule};
use deediff_unet::model_file::{self, key};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Cli {
    /// Generated and reference images per FID.
    #[arg(long, default_value_t = 1000)]
    num: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Fashion-MNIST test images (reference set; the prompts cycle through its 10 classes).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    fashion_mnist: PathBuf,
    /// Full-depth points of one solver, `SCHEDULER:STEPS,STEPS,…` (repeat the flag per solver).
    #[arg(long)]
    frontier: Vec<String>,
    /// One point, `SCHEDULER:STEPS[@POLICY[+LO-HI:POLICY,…]]`: the policy in `--policy`'s syntax
    /// (default full), optionally with timestep bands; e.g. `ddim:25@per-sample:0.95`,
    /// `ddim:25@full+640-1000:static:2`; `l2c=FILE` is `l2c` with the reuse schedule FILE
    /// (from `calibrate l2c`). Repeat the flag for more points.
    #[arg(long)]
    point: Vec<String>,
    /// Where measured rows are appended (and read back for the table and plot).
    #[arg(long, default_value = "bench/tradeoff_results.jsonl")]
    results: PathBuf,
    /// Where the reference statistics are cached (computed once per N).
    #[arg(long, default_value = ".cache/tradeoff")]
    cache: PathBuf,
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    /// Where the plot goes.
    #[arg(long, default_value = "docs/tradeoff.png")]
    plot: PathBuf,
    /// Upper end of the plot's FID axis (points above it are left out of the plot, not the table).
    #[arg(long)]
    fid_max: Option<f64>,
    /// Store this measured point (a `--point` spec at this N) in the model file's metadata as
    /// the setting samplers use when given no flags; the embedded model's file is
    /// `models/uvit_t2i_fashion_digits.safetensors`.
    #[arg(long)]
    store_default: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    device: DeviceArg,
}

/// The file the embedded default model is compiled from.
const EMBEDDED_MODEL_FILE: &str = "models/uvit_t2i_fashion_digits.safetensors";

/// One point to measure: a solver at a step count with an exit/reuse policy.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    scheduler: String,
    steps: usize,
    policy: ExitPolicy,
    bands: Vec<TimestepBand>,
    /// The reuse schedule of an `l2c=FILE` point (part of the point: another file is another
    /// point).
    reuse_schedule: Option<PathBuf>,
}

impl Point {
    fn parse(spec: &str) -> Result<Self> {
        let bad = || format!("--point {spec:?}: expected SCHEDULER:STEPS[@POLICY[+BANDS]]");
        let (head, policy) = spec.split_once('@').unwrap_or((spec, "full"));
        let (scheduler, steps) = head.split_once(':').with_context(bad)?;
        let steps = steps
            .trim()
            .parse()
            .ok()
            .filter(|&s| s > 0)
            .with_context(bad)?;
        // An unknown scheduler is refused here, before minutes of reference statistics.
        SchedulerConfig::by_name(scheduler.trim(), BetaConfig::ddpm_linear(1000))
            .with_context(|| format!("--point {spec:?}"))?;
        let (policy, bands) = policy.split_once('+').unwrap_or((policy, ""));
        let (policy, reuse_schedule) = match policy.split_once('=') {
            Some(("l2c", file)) => ("l2c", Some(PathBuf::from(file))),
            _ => (policy, None),
        };
        let bands = bands
            .split(',')
            .filter(|b| !b.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<TimestepBand>, _>>()
            .with_context(|| format!("--point {spec:?}"))?;
        Ok(Self {
            scheduler: scheduler.trim().to_string(),
            steps,
            policy: policy
                .parse()
                .with_context(|| format!("--point {spec:?}"))?,
            bands,
            reuse_schedule,
        })
    }

    /// The policy part of the spec, canonical (what the table and plot group by).
    fn method(&self) -> String {
        let bands: Vec<String> = self.bands.iter().map(ToString::to_string).collect();
        let policy = match &self.reuse_schedule {
            Some(file) => format!("{}={}", self.policy, file.display()),
            None => self.policy.to_string(),
        };
        match bands.is_empty() {
            true => policy,
            false => format!("{policy}+{}", bands.join(",")),
        }
    }

    fn spec(&self) -> String {
        match self.method().as_str() {
            "full" => format!("{}:{}", self.scheduler, self.steps),
            m => format!("{}:{}@{m}", self.scheduler, self.steps),
        }
    }
}

/// Every point the flags ask for, frontier first.
fn points(cli: &Cli) -> Result<Vec<Point>> {
    let mut out = Vec::new();
    for f in &cli.frontier {
        let (name, steps) = f
            .split_once(':')
            .with_context(|| format!("--frontier {f:?}: expected SCHEDULER:STEPS,STEPS,…"))?;
        for s in steps.split(',') {
            out.push(Point::parse(&format!("{name}:{s}"))?);
        }
    }
    for p in &cli.point {
        out.push(Point::parse(p)?);
    }
    Ok(out)
}

/// One measured point as stored in the results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    spec: String,
    scheduler: String,
    steps: usize,
    method: String,
    num: usize,
    guidance: f64,
    model: String,
    /// Network evaluations per image (solver steps × evaluations per step).
    evals: usize,
    mean_blocks: f64,
    macs_fraction: f64,
    /// MACs per image summed over all steps, in full-depth network evaluations.
    compute: f64,
    fid: f64,
    seconds: f64,
}

impl Row {
    fn new(point: &Point, cli: &Cli, report: &RunReport, fid: f64) -> Self {
        let evals = report.evals.len();
        Self {
            spec: point.spec(),
            scheduler: point.scheduler.clone(),
            steps: point.steps,
            method: point.method(),
            num: cli.num,
            guidance: cli.guidance,
            model: model_name(cli),
            evals,
            mean_blocks: report.mean_blocks(),
            macs_fraction: report.macs_fraction(),
            compute: report.macs_fraction() * evals as f64,
            fid,
            seconds: report.seconds,
        }
    }

    /// Compute per image as a percentage of DDIM 25 at full depth.
    fn compute_pct(&self) -> f64 {
        100.0 * self.compute / 25.0
    }

    fn is_frontier(&self) -> bool {
        self.method == "full"
    }

    /// The command that measures this row alone.
    fn command(&self) -> String {
        format!(
            "bench/tradeoff.sh --num {} --point '{}'",
            self.num, self.spec
        )
    }
}

/// Which model rows belong to (rows of different models never share a table); bf16 products
/// count as another model.
fn model_name(cli: &Cli) -> String {
    let name = cli
        .model
        .model
        .as_ref()
        .map_or("default".to_string(), |p| p.display().to_string());
    match cli.model.dtype.manifest_value() {
        Some(dtype) => format!("{name} ({dtype})"),
        None => name,
    }
}

/// What the results file holds: measured rows and, per N, the real-data floor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    Point(Row),
    Floor { num: usize, fid: f64 },
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {}: not a result row", path.display(), i + 1))
        })
        .collect()
}

fn append_record(path: &Path, record: &Record) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(record)?)?;
    Ok(())
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
    if set.len() < cli.num {
        bail!(
            "--num {}: {} holds only {} {split} images",
            cli.num,
            dir.display(),
            set.len()
        );
    }
    Ok((0..cli.num)
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

/// The reference statistics (first N test images), computed once and cached.
fn reference(cli: &Cli, net: &FidInception) -> Result<Stats> {
    let path = cli.cache.join(format!("fashion-t10k-{}.npz", cli.num));
    if path.exists() {
        return Ok(Stats::load(&path)?);
    }
    let stats = stats_of(net, &fashion(cli, "t10k")?).context("reference statistics")?;
    std::fs::create_dir_all(&cli.cache)?;
    stats.save(&path)?;
    Ok(stats)
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

fn register_font() -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| {
        format!("{FONT}: needed for the plot's labels (apt-get install fonts-dejavu-core)")
    })?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT}: not a usable TrueType font"))
}

/// FID against compute per image: one line per solver and method over its step counts, the
/// full-depth lines (the frontier) thicker, the real-data floor dashed.
fn plot(rows: &[&Row], floor: Option<f64>, cli: &Cli) -> Result<()> {
    register_font()?;
    if let Some(dir) = cli.plot.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let top = rows.iter().map(|r| r.fid).fold(0.0, f64::max) * 1.05;
    let fid_max = cli.fid_max.unwrap_or(top);
    let x_max = rows.iter().map(|r| r.compute_pct()).fold(0.0, f64::max) * 1.05;
    let floor_y = floor.unwrap_or(0.0);
    let root = BitMapBackend::new(&cli.plot, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("FID (N = {}) vs compute per image", cli.num),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, (floor_y * 0.9)..fid_max)?;
    chart
        .configure_mesh()
        .x_desc("compute per image, % of DDIM 25 steps at full depth (MACs over all steps)")
        .y_desc("FID")
        .draw()?;
    if let Some(f) = floor {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, f), (x_max, f)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?
            .label(format!("real training images ({f:.1})"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
    }
    let mut curves: BTreeMap<(bool, String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        let key = (!r.is_frontier(), r.scheduler.clone(), r.method.clone());
        curves
            .entry(key)
            .or_default()
            .push((r.compute_pct(), r.fid));
    }
    for (k, ((policy, scheduler, method), mut pts)) in curves.into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts.retain(|p| p.1 <= fid_max);
        let color = Palette99::pick(k).to_rgba();
        let width = if policy { 1 } else { 3 };
        let name = match policy {
            false => format!("{scheduler} full depth"),
            true => format!("{scheduler} {method}"),
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?
            .label(name)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        let marker = move |p| -> DynElement<_, _> {
            match policy {
                false => Circle::new(p, 4, color.filled()).into_dyn(),
                true => TriangleMarker::new(p, 6, color.filled()).into_dyn(),
            }
        };
        chart.draw_series(pts.into_iter().map(marker))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The cheapest-compute frontier point that is at least as good as `row`, if any: a policy row
/// beats the frontier when no full-depth point at ≤ its compute reaches its FID.
fn best_full_depth_within(rows: &[&Row], compute: f64) -> Option<(String, f64)> {
    rows.iter()
        .filter(|r| r.is_frontier() && r.compute <= compute + 1e-9)
        .min_by(|a, b| a.fid.total_cmp(&b.fid))
        .map(|r| (r.spec.clone(), r.fid))
}

fn print_table(rows: &[&Row], floor: Option<f64>, num: usize) {
    println!(
        "| scheduler | steps | method | mean blocks | MACs % of its full depth | compute % of DDIM 25 | FID (N={num}) | best full depth at ≤ this compute | command |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    if let Some(f) = floor {
        println!("| — | — | real training images (floor) | — | — | — | {f:.2} | — | — |");
    }
    for r in rows {
        let best = match best_full_depth_within(rows, r.compute) {
            Some((spec, fid)) if spec != r.spec => format!("{fid:.2} ({spec})"),
            Some(_) => "this row".to_string(),
            None => "none".to_string(),
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.2} | {best} | `{}` |",
            r.scheduler,
            r.steps,
            r.method,
            r.mean_blocks,
            100.0 * r.macs_fraction,
            r.compute_pct(),
            r.fid,
            r.command()
        );
    }
    let frontier: Vec<&&Row> = rows.iter().filter(|r| r.is_frontier()).collect();
    if let Some(best) = frontier.iter().min_by(|a, b| a.fid.total_cmp(&b.fid)) {
        let knee = frontier
            .iter()
            .filter(|r| r.fid <= best.fid * 1.03)
            // At equal compute (same step count, another solver) the lower FID.
            .min_by(|a, b| {
                a.compute
                    .total_cmp(&b.compute)
                    .then(a.fid.total_cmp(&b.fid))
            })
            .expect("the best point qualifies");
        println!();
        println!(
            "Best full depth: {} FID {:.2} at {:.1} %; cheapest within +3 %: {} FID {:.2} at {:.1} %.",
            best.spec,
            best.fid,
            best.compute_pct(),
            knee.spec,
            knee.fid,
            knee.compute_pct()
        );
    }
}

fn main() {
    deediff_examples::main(run);
}

/// Measures the points not yet in the results file, appending each row as it finishes.
fn measure_new(cli: &Cli, todo: Vec<Point>, done: &[Record]) -> Result<()> {
    let model = model_name(cli);
    let known = |spec: &str| {
        done.iter().any(|r| {
            matches!(r, Record::Point(r) if r.spec == spec && r.num == cli.num
                && r.guidance == cli.guidance && r.model == model)
        })
    };
    let todo: Vec<Point> = todo.into_iter().filter(|p| !known(&p.spec())).collect();
    let has_floor = done
        .iter()
        .any(|r| matches!(r, Record::Floor { num, .. } if *num == cli.num));
    if todo.is_empty() && has_floor {
        return Ok(());
    }
    let device = cli.device.open()?;
    let net = FidInception::load(None)?.on_device(&device)?;
    let real = reference(cli, &net)?;
    if !has_floor {
        let fid = frechet_distance(&stats_of(&net, &fashion(cli, "train")?)?, &real)?;
        eprintln!(
            "real-data floor (train vs test images, N = {}): FID {fid:.2}",
            cli.num
        );
        append_record(&cli.results, &Record::Floor { num: cli.num, fid })?;
    }
    let bundle = load_model(&cli.model, &device)?;
    let betas = bundle.training.betas();
    let mut p = Pipeline::from_bundle(
        bundle,
        SchedulerConfig::by_name("ddim", betas.clone())?,
        1,
        device,
    )?;
    p.set_guidance(Guidance {
        scale: cli.guidance,
        shared_exit: false,
    })?;
    for point in todo {
        p.set_scheduler(
            SchedulerConfig::by_name(&point.scheduler, betas.clone())?,
            point.steps,
        )?;
        let schedule = point.reuse_schedule.as_deref().map(ReuseSchedule::load);
        p.set_reuse_schedule(schedule.transpose()?)?;
        p.set_policy(point.policy)?;
        p.set_timestep_bands(point.bands.clone())?;
        let (report, fid) = measure(&p, cli, &net, &real)?;
        let row = Row::new(&point, cli, &report, fid);
        eprintln!(
            "{}: blocks {:.2} compute {:.1} % FID {fid:.2} ({:.0} s sampling)",
            row.spec,
            row.mean_blocks,
            row.compute_pct(),
            row.seconds
        );
        append_record(&cli.results, &Record::Point(row))?;
    }
    Ok(())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if cli.num < 2 {
        bail!("--num {}: FID needs at least 2 images", cli.num);
    }
    let todo = points(&cli)?;
    measure_new(&cli, todo, &read_records(&cli.results)?)?;
    let records = read_records(&cli.results)?;
    let model = model_name(&cli);
    let floor = records.iter().find_map(|r| match r {
        Record::Floor { num, fid } if *num == cli.num => Some(*fid),
        _ => None,
    });
    let mut rows: Vec<&Row> = records
        .iter()
        .filter_map(|r| match r {
            Record::Point(r)
                if r.num == cli.num && r.guidance == cli.guidance && r.model == model =>
            {
                Some(r)
            }
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        bail!(
            "{}: no rows at --num {} yet (measure some with --frontier or --point)",
            cli.results.display(),
            cli.num
        );
    }
    rows.sort_by(|a, b| {
        (!a.is_frontier(), &a.scheduler, &a.method, a.steps).cmp(&(
            !b.is_frontier(),
            &b.scheduler,
            &b.method,
            b.steps,
        ))
    });
    print_table(&rows, floor, cli.num);
    plot(&rows, floor, &cli)?;
    eprintln!("plot: {}", cli.plot.display());
    if let Some(spec) = &cli.store_default {
        store_default(&cli, &rows, spec)?;
    }
    Ok(())
}

/// Writes a measured point into the model file's metadata as its sampling defaults; the tensors
/// are copied unchanged, so every row measured on the file stays valid.
fn store_default(cli: &Cli, rows: &[&Row], spec: &str) -> Result<()> {
    let point = Point::parse(spec)?;
    if !point.bands.is_empty() {
        bail!("--store-default {spec:?}: timestep bands cannot be a model's default");
    }
    let row = rows
        .iter()
        .find(|r| r.spec == point.spec())
        .with_context(|| {
            format!(
                "--store-default {spec:?}: not measured at --num {} yet",
                cli.num
            )
        })?;
    let defaults = SamplingDefaults::from_json(
        &serde_json::json!({
            "scheduler": point.scheduler,
            "steps": point.steps,
            "policy": point.policy.to_string(),
        })
        .to_string(),
    )
    .map_err(|e| anyhow::anyhow!("--store-default {spec:?}: {e}"))?;
    let path = cli
        .model
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(EMBEDDED_MODEL_FILE));
    let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
    let origin = path.display().to_string();
    let mut metadata = model_file::read_metadata(&bytes, &origin)?;
    metadata.insert(key::SAMPLING_DEFAULTS.to_string(), defaults.to_json());
    // Written atomically: an interrupted write leaves the previous model file in place.
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
    let bytes = model_file::serialize(tensors.into_iter().collect(), metadata)?;
    deediff_examples::write_checked(&path, "model file", |w| w.write_all(&bytes))?;
    eprintln!(
        "{}: sampling defaults {} (FID {:.2} at {:.1} % of DDIM 25's compute)",
        path.display(),
        defaults.to_json(),
        row.fid,
        row.compute_pct()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_checked_before_any_work() {
        assert!(Point::parse("dpmpp-3m:8@cached:0.985:2").is_ok());
        for name in deediff_schedules::SCHEDULER_NAMES {
            assert!(Point::parse(&format!("{name}:8")).is_ok(), "{name}");
        }
        let err = format!("{:#}", Point::parse("bogus:5").unwrap_err());
        assert!(
            err.contains("--point \"bogus:5\"") && err.contains("unknown scheduler"),
            "{err}"
        );
    }
}
