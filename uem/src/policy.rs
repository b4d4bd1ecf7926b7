//! Exit policies and the official exit rule (strict `score > threshold`; patience on `uvit`
//! in-blocks, none for `uvit_t2i`).

use std::fmt;
use std::str::FromStr;

use deediff_unet::Variant;

use crate::error::Error;

/// How a forward pass decides where to stop, and what stands in for the blocks it skips.
///
/// The string syntax (`FromStr`/`Display`, what `--policy` takes) is:
///
/// | syntax | variant |
/// |---|---|
/// | `per-sample:T`, or a bare `T` | [`PerSample`](Self::PerSample) |
/// | `official:T` | [`Official`](Self::Official) |
/// | `full` | [`Full`](Self::Full) |
/// | `static:K` | [`Static`](Self::Static) |
/// | `cached:T:R`, `cached:T` (R = [`DEFAULT_REFRESH`]) | [`Cached`](Self::Cached), [`FillHeads::Filled`] |
/// | `cached-trunc:T:R`, `cached-trunc:T` | [`Cached`](Self::Cached), [`FillHeads::Truncation`] |
/// | `deepcache:N:M`, `deepcache:N` (M = 1) | [`DeepCache`](Self::DeepCache) |
/// | `l2c` | [`Learned`](Self::Learned) |
///
/// `T` is a certainty threshold in (0, 1]; `K`, `R`, `N`, `M` are counts ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExitPolicy {
    /// The official rule on the **batch-mean** certainty: the whole batch exits together.
    Official { threshold: f32 },
    /// The official rule per sample on its own mean certainty; exited samples leave the batch.
    /// Each sample's output equals running it alone under `Official`. The default.
    PerSample { threshold: f32 },
    /// Never exit (full depth, no certainty heads run).
    Full,
    /// Always stop after `blocks` blocks (the static truncation baseline; clamped to the model).
    Static { blocks: usize },
    /// Cache-filled exits: a sample stops where the per-sample rule says, and every block it
    /// skips adds its most recent cached contribution (`output − input`, from an earlier
    /// evaluation of the same sample and guidance pass), so the exit decodes an estimate of the
    /// full-depth state instead of a truncated one. A pass runs to full depth (refreshing every
    /// cache) at least once every `refresh` evaluations; `refresh = 1` is full depth. `heads`
    /// says which certainty heads the exit rule reads.
    Cached {
        threshold: f32,
        refresh: usize,
        heads: FillHeads,
    },
    /// DeepCache on a U-ViT: every `interval`-th evaluation runs the full network; in between only
    /// the first `depth` in-blocks and the last `depth` out-blocks run, and the feature that
    /// entered those out-blocks at the last full pass is reused through the long skips.
    /// `interval = 1` is full depth.
    DeepCache { interval: usize, depth: usize },
    /// A static per-evaluation, per-block reuse schedule in the style of Learning-to-Cache,
    /// fitted on calibration trajectories (see [`ReuseSchedule`](crate::ReuseSchedule)); the
    /// schedule itself is set on the model.
    Learned,
}

/// Which certainty heads a cache-filled exit decides with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillHeads {
    /// The filled-exit heads, trained on the error of the filled prediction (`calibrate
    /// filled`), when the model has them; else the truncation heads.
    Filled,
    /// Always the truncation heads, which rate the exit as if the skipped blocks were dropped
    /// (kept to compare the two in one benchmark).
    Truncation,
}

impl FillHeads {
    /// The policy's name in `--policy` syntax.
    fn policy_name(self) -> &'static str {
        match self {
            Self::Filled => "cached",
            Self::Truncation => "cached-trunc",
        }
    }
}

/// The refresh interval of `cached:T` when none is given: a full pass every 2nd evaluation.
pub const DEFAULT_REFRESH: usize = 2;

fn check_threshold(t: f32) -> Result<f32, Error> {
    if t > 0.0 && t <= 1.0 {
        Ok(t)
    } else {
        Err(Error::Threshold(t))
    }
}

impl ExitPolicy {
    pub fn official(threshold: f32) -> Result<Self, Error> {
        Ok(Self::Official {
            threshold: check_threshold(threshold)?,
        })
    }

    pub fn per_sample(threshold: f32) -> Result<Self, Error> {
        Ok(Self::PerSample {
            threshold: check_threshold(threshold)?,
        })
    }

    pub fn fixed_depth(blocks: usize) -> Result<Self, Error> {
        if blocks == 0 {
            return Err(Error::StaticDepth(blocks));
        }
        Ok(Self::Static { blocks })
    }

    /// Cache-filled exits deciding with the filled-exit heads (when the model has them).
    pub fn cached(threshold: f32, refresh: usize) -> Result<Self, Error> {
        Self::cached_with(threshold, refresh, FillHeads::Filled)
    }

    pub fn cached_with(threshold: f32, refresh: usize, heads: FillHeads) -> Result<Self, Error> {
        Ok(Self::Cached {
            threshold: check_threshold(threshold)?,
            refresh: check_count("cache refresh interval", refresh)?,
            heads,
        })
    }

    pub fn deep_cache(interval: usize, depth: usize) -> Result<Self, Error> {
        Ok(Self::DeepCache {
            interval: check_count("DeepCache interval", interval)?,
            depth: check_count("DeepCache depth", depth)?,
        })
    }

    /// Re-checks a policy built as a literal (thresholds in (0, 1], counts ≥ 1).
    pub fn validate(&self) -> Result<(), Error> {
        match *self {
            Self::Official { threshold } | Self::PerSample { threshold } => {
                check_threshold(threshold).map(|_| ())
            }
            Self::Static { blocks } => Self::fixed_depth(blocks).map(|_| ()),
            Self::Full | Self::Learned => Ok(()),
            Self::Cached {
                threshold,
                refresh,
                heads,
            } => Self::cached_with(threshold, refresh, heads).map(|_| ()),
            Self::DeepCache { interval, depth } => Self::deep_cache(interval, depth).map(|_| ()),
        }
    }

    /// Whether the policy reads the certainty heads (a model without them cannot run it).
    pub fn needs_heads(&self) -> bool {
        matches!(
            self,
            Self::Official { .. } | Self::PerSample { .. } | Self::Cached { .. }
        )
    }
}

fn check_count(what: &'static str, value: usize) -> Result<usize, Error> {
    if value >= 1 {
        Ok(value)
    } else {
        Err(Error::Count { what, value })
    }
}

impl FromStr for ExitPolicy {
    type Err = Error;

    /// `official:0.9`, `per-sample:0.9`, a bare `0.9` (per-sample), `full`, `static:8`,
    /// `cached:0.95:3`, `cached:0.95`, `cached-trunc:0.95:2`, `deepcache:3:1`, `deepcache:3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || Error::Syntax(s.to_string());
        let num = |v: &str| v.trim().parse::<f32>().map_err(|_| syntax());
        let count = |v: &str| v.trim().parse::<usize>().map_err(|_| syntax());
        match s.trim().split_once(':') {
            Some(("official", v)) => Self::official(num(v)?),
            Some(("per-sample", v)) => Self::per_sample(num(v)?),
            Some(("static", v)) => Self::fixed_depth(count(v)?),
            Some((name @ ("cached" | "cached-trunc"), v)) => {
                let (t, r) = with_count(v, DEFAULT_REFRESH).ok_or_else(syntax)?;
                let heads = [FillHeads::Filled, FillHeads::Truncation]
                    .into_iter()
                    .find(|h| h.policy_name() == name)
                    .ok_or_else(syntax)?;
                Self::cached_with(num(t)?, r, heads)
            }
            Some(("deepcache", v)) => {
                let (n, m) = with_count(v, 1).ok_or_else(syntax)?;
                Self::deep_cache(count(n)?, m)
            }
            None if s.trim() == "full" => Ok(Self::Full),
            None if s.trim() == "l2c" => Ok(Self::Learned),
            None => Self::per_sample(num(s)?),
            Some(_) => Err(syntax()),
        }
    }
}

/// `A:B` → `(A, B)`, or `A` → `(A, default)`; `None` when `B` is not a count.
fn with_count(v: &str, default: usize) -> Option<(&str, usize)> {
    match v.split_once(':') {
        Some((a, b)) => Some((a, b.trim().parse().ok()?)),
        None => Some((v, default)),
    }
}

impl fmt::Display for ExitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Official { threshold } => write!(f, "official:{threshold}"),
            Self::PerSample { threshold } => write!(f, "per-sample:{threshold}"),
            Self::Full => write!(f, "full"),
            Self::Static { blocks } => write!(f, "static:{blocks}"),
            Self::Cached {
                threshold,
                refresh,
                heads,
            } => write!(f, "{}:{threshold}:{refresh}", heads.policy_name()),
            Self::DeepCache { interval, depth } => write!(f, "deepcache:{interval}:{depth}"),
            Self::Learned => write!(f, "l2c"),
        }
    }
}

/// The official per-forward exit decision, fed one block score at a time.
#[derive(Debug, Clone)]
pub struct ExitRule {
    threshold: f32,
    /// `Some(depth/2)` for `uvit` (patience on blocks below it); `None` for `uvit_t2i`.
    patience_below: Option<usize>,
    /// An earlier in-block crossed the threshold (never reset).
    armed: bool,
}

impl ExitRule {
    pub fn new(variant: Variant, num_in_blocks: usize, threshold: f32) -> Self {
        Self {
            threshold,
            patience_below: (variant == Variant::Uvit).then_some(num_in_blocks),
            armed: false,
        }
    }

    /// Whether to exit after block `i` whose certainty mean is `score`. Call for blocks in order.
    pub fn exits(&mut self, i: usize, score: f32) -> bool {
        if score <= self.threshold {
            return false;
        }
        match self.patience_below {
            Some(n_in) if i < n_in => std::mem::replace(&mut self.armed, true),
            _ => true,
        }
    }

    /// Blocks run (exit block + 1) for a whole sequence of per-block scores, as the official
    /// code scores every block: no exit runs them all.
    pub fn blocks_run(self, scores: &[f32]) -> usize {
        self.depth(scores, scores.len())
    }

    /// Blocks a pass of a `num_blocks`-block network runs given the scores its heads gave
    /// (deediff scores every block but the last; budget calibration replays recorded passes).
    pub fn depth(mut self, scores: &[f32], num_blocks: usize) -> usize {
        scores
            .iter()
            .enumerate()
            .position(|(i, &s)| self.exits(i, s))
            .map_or(num_blocks, |i| i + 1)
    }
}
