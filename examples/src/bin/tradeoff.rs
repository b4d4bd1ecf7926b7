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
use plotters::coord::types::RangedCoordf64;
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
    /// Image k of a point uses seed `first_seed + k`: another value draws another sample of the
    /// same point (its own rows, its own table and plot), to tell a setting from a lucky draw.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Where the plot goes.
    #[arg(long, default_value = "docs/tradeoff.png")]
    plot: PathBuf,
    /// Upper end of the overview's FID axis (default: 15 % above the worst full-depth point);
    /// points above it sit on its top edge, the table has their FID.
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
    /// The seed of image 0 (rows written before the flag existed used 0).
    #[serde(default)]
    first_seed: u64,
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
            first_seed: cli.first_seed,
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

    /// Whether the row was measured as `cli` asks (same N, guidance, model and seeds).
    fn measured_as(&self, cli: &Cli, model: &str) -> bool {
        (self.num, self.guidance, self.first_seed) == (cli.num, cli.guidance, cli.first_seed)
            && self.model == model
    }

    fn is_frontier(&self) -> bool {
        self.method == "full"
    }

    /// The command that measures this row alone.
    fn command(&self) -> String {
        let seeds = match self.first_seed {
            0 => String::new(),
            s => format!(" --first-seed {s}"),
        };
        format!(
            "bench/tradeoff.sh --num {}{seeds} --point '{}'",
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
        let seeds: Vec<u64> = chunk.iter().map(|&i| cli.first_seed + i as u64).collect();
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

/// FID against compute per image, in two panels: every row (left) and the frontier's knee
/// magnified with every point labelled (right). The frontier is one thick line per solver over
/// its step counts (full depth) with its lower envelope dashed — the best full-depth FID at ≤
/// each compute, the line a policy has to get under. Exit/reuse points are triangles, one colour
/// per method family (cached, l2c, deepcache, …) so the legend stays readable however many
/// thresholds and schedule files were measured, joined over step counts within one setting.
/// Points above a panel sit on its top edge; the model's stored default is ringed.
fn plot(rows: &[&Row], floor: Option<f64>, default: Option<&str>, cli: &Cli) -> Result<()> {
    register_font()?;
    if let Some(dir) = cli.plot.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(&cli.plot, (1800, 850)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "FID (N = {}, seeds {}–{}) vs compute per image",
            cli.num,
            cli.first_seed,
            cli.first_seed + cli.num as u64 - 1
        ),
        ("sans-serif", 24),
    )?;
    let (left, right) = root.split_horizontally(900);
    let worst = |frontier: bool| {
        let rs = rows.iter().filter(|r| !frontier || r.is_frontier());
        rs.map(|r| r.fid).fold(0.0, f64::max)
    };
    // By default the overview ends a little above the worst full-depth point: the region where
    // policies compete with the frontier, not the collapsed settings (the table has their FID).
    let top = match rows.iter().any(|r| r.is_frontier()) {
        true => worst(true) * 1.15,
        false => worst(false) * 1.05,
    };
    let x_max = rows.iter().map(|r| r.compute_pct()).fold(0.0, f64::max) * 1.05;
    let y_min = rows.iter().map(|r| r.fid).fold(f64::MAX, f64::min) * 0.97;
    let overview = View {
        title: "every point".into(),
        x: 0.0..x_max,
        y: y_min..cli.fid_max.unwrap_or(top),
        labels: false,
    };
    let colours = colours(rows);
    draw_panel(&left, rows, &colours, floor, default, overview)?;
    if let Some((_, knee)) = knee(rows) {
        let (kx, ky) = (knee.compute_pct(), knee.fid);
        let zoom = View {
            title: format!("around the frontier's knee, {} ({kx:.0} %)", knee.spec),
            x: kx * 0.6..kx * 1.25,
            y: y_min..ky * 1.12,
            labels: true,
        };
        draw_panel(&right, rows, &colours, floor, default, zoom)?;
    }
    root.present()?;
    Ok(())
}

/// One panel's axes. `labels`: a magnified view — every policy point named, points outside it
/// left out (the overview has them); otherwise points above it sit on its top edge, and the
/// legend is drawn.
struct View {
    title: String,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    labels: bool,
}

impl View {
    /// Where row `r` is drawn, if it is.
    fn place(&self, r: &Row) -> Option<(f64, f64)> {
        let inside = self.x.contains(&r.compute_pct()) && self.y.contains(&r.fid);
        (inside || !self.labels).then(|| (r.compute_pct(), r.fid.min(self.y.end)))
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    rows: &[&Row],
    colours: &Colours,
    floor: Option<f64>,
    default: Option<&str>,
    view: View,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&view.title, ("sans-serif", 17))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(view.x.clone(), view.y.clone())?;
    chart
        .configure_mesh()
        .x_desc("compute per image, % of DDIM 25 steps at full depth (MACs over all steps)")
        .y_desc("FID")
        .draw()?;
    let frontier: Vec<&Row> = rows.iter().copied().filter(|r| r.is_frontier()).collect();
    draw_envelope(&mut chart, &frontier, view.x.end)?;
    for ((policy, name), colour) in colours {
        draw_family(&mut chart, rows, (*policy, name), *colour, &view)?;
    }
    draw_labels(&mut chart, rows, default, &view)?;
    if view.labels {
        return Ok(());
    }
    if let Some(f) = floor {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label(format!(
                "real training images: FID {f:.1} (the floor at this N)"
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], WHITE));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// A chart on a compute (x) × FID (y) plane.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One colour per method family, keyed `(is a policy, family)`: frontier solvers first, in the
/// rows' order, so both panels colour a family alike.
type Colours = BTreeMap<(bool, String), RGBAColor>;

fn colours(rows: &[&Row]) -> Colours {
    let mut colours = Colours::new();
    for r in rows {
        let n = colours.len();
        colours
            .entry((!r.is_frontier(), family(r)))
            .or_insert_with(|| Palette99::pick(n).to_rgba());
    }
    colours
}

/// One family's points (circles on the frontier, triangles for policies), joined over step
/// counts within one setting, with its legend entry.
fn draw_family<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    rows: &[&Row],
    (policy, name): (bool, &str),
    colour: RGBAColor,
    view: &View,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let width = if policy { 1 } else { 3 };
    let mut curves: BTreeMap<(&str, &str), Vec<(f64, f64)>> = BTreeMap::new();
    let members = rows
        .iter()
        .filter(|r| r.is_frontier() != policy && family(r) == name);
    for r in members {
        if let Some(pt) = view.place(r) {
            let curve = curves.entry((&r.scheduler, &r.method)).or_default();
            curve.push(pt);
        }
    }
    for pts in curves.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(width)))?;
    }
    let legend = match policy {
        false => format!("{name} full depth"),
        true => name.to_string(),
    };
    let pts = curves.into_values().flatten();
    let style = colour.filled();
    match policy {
        false => chart
            .draw_series(pts.map(|p| Circle::new(p, 4, style)))?
            .label(legend)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, style)),
        true => chart
            .draw_series(pts.map(|p| TriangleMarker::new(p, 6, style)))?
            .label(legend)
            .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, style)),
    };
    Ok(())
}

/// The policy points' names (in a magnified view) and the ring around the stored default.
fn draw_labels<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    rows: &[&Row],
    default: Option<&str>,
    view: &View,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    for r in rows.iter().filter(|r| !r.is_frontier()) {
        let Some(at) = view.place(r) else { continue };
        if view.labels {
            let label =
                EmptyElement::at(at) + Text::new(short_label(r), (7, -4), ("sans-serif", 12));
            chart.draw_series(std::iter::once(label))?;
        }
        if default == Some(r.spec.as_str()) {
            let ring = Circle::new(at, 11, BLACK.stroke_width(2));
            chart
                .draw_series(std::iter::once(ring))?
                .label("the model's stored default")
                .legend(|(x, y)| Circle::new((x + 8, y), 6, BLACK.stroke_width(2)));
        }
    }
    Ok(())
}

/// The frontier's lower envelope: at each compute, the best full-depth FID at ≤ that compute.
fn draw_envelope<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    frontier: &[&Row],
    x_max: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut pts: Vec<(f64, f64)> = frontier.iter().map(|r| (r.compute_pct(), r.fid)).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut steps = Vec::new();
    let mut best = f64::MAX;
    for (x, fid) in pts {
        if fid < best {
            if let Some(&(_, y)) = steps.last() {
                steps.push((x, y));
            }
            best = fid;
            steps.push((x, fid));
        }
    }
    if let Some(&(_, y)) = steps.last() {
        steps.push((x_max, y));
    }
    let style = BLACK.mix(0.6).stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(steps, 8, 5, style))?
        .label("frontier: best full depth at ≤ this compute")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
    Ok(())
}

/// What a row's colour groups by: the solver for full depth, else the policy's kind
/// (`cached`, `l2c`, `per-sample`, …; `… + bands` with timestep bands).
fn family(r: &Row) -> String {
    if r.is_frontier() {
        return r.scheduler.clone();
    }
    let kind = r.method.split([':', '=', '+']).next().unwrap_or_default();
    match r.method.contains('+') {
        true => format!("{kind} + bands"),
        false => kind.to_string(),
    }
}

/// A policy point's label: solver, steps and setting, e.g. `3m 8 0.985:2`; an `l2c` schedule
/// by its file's stem, less the `SCHEDULER_STEPS_` that `bench/l2c/` names repeat; each timestep
/// band as its range and setting, e.g. `3m 8 0.95:2 +800-1000:0.975`.
fn short_label(r: &Row) -> String {
    let solver = r.scheduler.trim_start_matches("dpmpp-");
    let mut parts = r.method.split('+');
    let base = parts.next().unwrap_or_default();
    let setting = match base.split_once('=') {
        Some((_, file)) => {
            let stem = Path::new(file).file_stem().map(|s| s.to_string_lossy());
            let stem = stem.map_or(file.to_string(), |s| s.into_owned());
            let repeated = format!("{}_{}_", r.scheduler, r.steps);
            stem.strip_prefix(&repeated).unwrap_or(&stem).to_string()
        }
        None => policy_setting(base).to_string(),
    };
    let bands = parts.map(|band| match band.split_once(':') {
        Some((range, policy)) => format!(" +{range}:{}", policy_setting(policy)),
        None => format!(" +{band}"),
    });
    format!(
        "{solver} {} {setting}{}",
        r.steps,
        bands.collect::<String>()
    )
}

/// A policy's setting without its kind (`per-sample:0.975` → `0.975`, `deepcache:2:1` → `2:1`);
/// `static:5` and `full` whole, as a bare number would not say what it counts.
fn policy_setting(policy: &str) -> &str {
    match policy.split_once(':') {
        Some((kind, setting)) if kind != "static" => setting,
        _ => policy,
    }
}

/// The best full-depth row and the frontier's knee: the cheapest full-depth row within +3 % of
/// the best FID (at equal compute, the lower FID).
fn knee<'a>(rows: &[&'a Row]) -> Option<(&'a Row, &'a Row)> {
    let frontier = rows.iter().copied().filter(|r| r.is_frontier());
    let best = frontier.clone().min_by(|a, b| a.fid.total_cmp(&b.fid))?;
    let knee = frontier
        .filter(|r| r.fid <= best.fid * 1.03)
        .min_by(|a, b| {
            a.compute
                .total_cmp(&b.compute)
                .then(a.fid.total_cmp(&b.fid))
        })?;
    Some((best, knee))
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
    if let Some((best, knee)) = knee(rows) {
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
        done.iter()
            .any(|r| matches!(r, Record::Point(r) if r.spec == spec && r.measured_as(cli, &model)))
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
    if cli.first_seed.checked_add(cli.num as u64).is_none() {
        bail!(
            "--first-seed {}: the seeds of {} images overflow",
            cli.first_seed,
            cli.num
        );
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
            Record::Point(r) if r.measured_as(&cli, &model) => Some(r),
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
    if let Some(spec) = &cli.store_default {
        store_default(&cli, &rows, spec)?;
    }
    plot(&rows, floor, stored_default(&cli).as_deref(), &cli)?;
    eprintln!("plot: {}", cli.plot.display());
    Ok(())
}

/// The spec of the point the model file stores as its sampling default (`--store-default`);
/// `None` for a model without one (or one that is not a deediff model file: loading it reports
/// what is wrong, the plot only rings what it finds).
fn stored_default(cli: &Cli) -> Option<String> {
    // The file `--store-default` writes; the embedded copy where that file is not at hand.
    let meta = match model_file::read_metadata_file(&model_path(cli)) {
        Ok(meta) => meta,
        Err(_) if cli.model.model.is_none() => {
            model_file::read_metadata(deediff_sampler::DEFAULT_MODEL, "<embedded>").ok()?
        }
        Err(_) => return None,
    };
    let d = SamplingDefaults::from_json(meta.get(key::SAMPLING_DEFAULTS)?).ok()?;
    let point = Point::parse(&format!("{}:{}@{}", d.scheduler, d.steps, d.policy)).ok()?;
    Some(point.spec())
}

/// The model file of the rows: `--model`, or the file the embedded model is compiled from.
fn model_path(cli: &Cli) -> PathBuf {
    let path = cli.model.model.clone();
    path.unwrap_or_else(|| PathBuf::from(EMBEDDED_MODEL_FILE))
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
    let path = model_path(cli);
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

    /// A row as the results file stores it, written before `first_seed` existed.
    const OLD_ROW: &str = r#"{"kind":"point","spec":"dpmpp-3m:8@l2c=bench/l2c/dpmpp-3m_8_f0.16.json","scheduler":"dpmpp-3m","steps":8,"method":"l2c=bench/l2c/dpmpp-3m_8_f0.16.json","num":1000,"guidance":1.0,"model":"default","evals":8,"mean_blocks":7.5,"macs_fraction":0.83,"compute":6.64,"fid":43.57,"seconds":14.0}"#;

    #[test]
    fn rows_written_before_first_seed_count_as_seed_zero() {
        let Record::Point(row) = serde_json::from_str(OLD_ROW).unwrap() else {
            panic!("a point row")
        };
        assert_eq!(row.first_seed, 0);
        let mut cli = Cli::parse_from(["tradeoff"]);
        assert!(row.measured_as(&cli, "default"));
        cli.first_seed = 1000;
        assert!(!row.measured_as(&cli, "default"));
        assert!(!row.command().contains("--first-seed"));
    }

    #[test]
    fn plot_groups_and_labels_points_by_method() {
        let Record::Point(mut row) = serde_json::from_str(OLD_ROW).unwrap() else {
            panic!("a point row")
        };
        for (method, family_want, label_want) in [
            (row.method.clone(), "l2c", "3m 8 f0.16"),
            ("cached:0.985:2".into(), "cached", "3m 8 0.985:2"),
            (
                "full+640-1000:static:2".into(),
                "full + bands",
                "3m 8 full +640-1000:static:2",
            ),
            (
                "l2c=bench/l2c/dpmpp-3m_8_f0.16.json+800-1000:per-sample:0.975".into(),
                "l2c + bands",
                "3m 8 f0.16 +800-1000:0.975",
            ),
            (
                "cached-trunc:0.95:2+800-1000:per-sample:0.975".into(),
                "cached-trunc + bands",
                "3m 8 0.95:2 +800-1000:0.975",
            ),
        ] {
            row.method = method;
            assert_eq!(
                (family(&row).as_str(), short_label(&row).as_str()),
                (family_want, label_want)
            );
        }
        row.method = "full".into();
        assert_eq!(family(&row), "dpmpp-3m");
    }
}
