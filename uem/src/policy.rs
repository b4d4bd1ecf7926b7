//! Exit policies and the official exit rule (strict `score > threshold`; patience on `uvit`
//! in-blocks, none for `uvit_t2i`).

use std::fmt;
use std::str::FromStr;

use deediff_unet::Variant;

/// A rejected policy string or threshold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("exit threshold {0} must be in (0, 1]")]
    Threshold(f32),
    #[error("static exit depth {0} must be at least 1")]
    StaticDepth(usize),
    #[error("unknown exit policy {0:?}: expected official:T, per-sample:T, T, full or static:K")]
    Syntax(String),
}

/// How a forward pass decides where to stop.
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
}

fn check_threshold(t: f32) -> Result<f32, PolicyError> {
    if t > 0.0 && t <= 1.0 {
        Ok(t)
    } else {
        Err(PolicyError::Threshold(t))
    }
}

impl ExitPolicy {
    pub fn official(threshold: f32) -> Result<Self, PolicyError> {
        Ok(Self::Official {
            threshold: check_threshold(threshold)?,
        })
    }

    pub fn per_sample(threshold: f32) -> Result<Self, PolicyError> {
        Ok(Self::PerSample {
            threshold: check_threshold(threshold)?,
        })
    }

    pub fn fixed_depth(blocks: usize) -> Result<Self, PolicyError> {
        if blocks == 0 {
            return Err(PolicyError::StaticDepth(blocks));
        }
        Ok(Self::Static { blocks })
    }

    /// Re-checks a policy built as a literal (thresholds in (0, 1], static depth ≥ 1).
    pub fn validate(&self) -> Result<(), PolicyError> {
        match *self {
            Self::Official { threshold } | Self::PerSample { threshold } => {
                check_threshold(threshold).map(|_| ())
            }
            Self::Static { blocks } => Self::fixed_depth(blocks).map(|_| ()),
            Self::Full => Ok(()),
        }
    }
}

impl FromStr for ExitPolicy {
    type Err = PolicyError;

    /// `official:0.9`, `per-sample:0.9`, a bare `0.9` (per-sample), `full`, `static:8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PolicyError::Syntax(s.to_string());
        let num = |v: &str| v.trim().parse::<f32>().map_err(|_| syntax());
        match s.trim().split_once(':') {
            Some(("official", v)) => Self::official(num(v)?),
            Some(("per-sample", v)) => Self::per_sample(num(v)?),
            Some(("static", v)) => Self::fixed_depth(v.trim().parse().map_err(|_| syntax())?),
            None if s.trim() == "full" => Ok(Self::Full),
            None => Self::per_sample(num(s)?),
            Some(_) => Err(syntax()),
        }
    }
}

impl fmt::Display for ExitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Official { threshold } => write!(f, "official:{threshold}"),
            Self::PerSample { threshold } => write!(f, "per-sample:{threshold}"),
            Self::Full => write!(f, "full"),
            Self::Static { blocks } => write!(f, "static:{blocks}"),
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

    /// Blocks run (exit block + 1) for a whole sequence of per-block scores.
    pub fn blocks_run(mut self, scores: &[f32]) -> usize {
        scores
            .iter()
            .enumerate()
            .position(|(i, &s)| self.exits(i, s))
            .map_or(scores.len(), |i| i + 1)
    }
}
