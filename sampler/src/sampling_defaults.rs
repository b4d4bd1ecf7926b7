//! The sampling setting a model file recommends: scheduler, step count and exit/reuse policy,
//! chosen from the model's measured trade-off chart (FID against compute per image, BENCHMARKS.md)
//! and stored in its metadata, so a user who names none samples at the point that chart found
//! best instead of at a guess.

use deediff_schedules::SCHEDULER_NAMES;
use deediff_uem::ExitPolicy;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a sampler uses for each setting the caller leaves open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    /// A scheduler preset name (`SCHEDULER_NAMES`).
    pub scheduler: String,
    pub steps: usize,
    /// In the CLI's `--policy` syntax with its threshold, e.g. `full` or `per-sample:0.97`.
    pub policy: String,
}

impl SamplingDefaults {
    /// Parses and checks the metadata value; the error says what is wrong with it.
    pub fn from_json(json: &str) -> Result<Self> {
        let d: Self = serde_json::from_str(json).map_err(|e| Error::Defaults(e.to_string()))?;
        if !SCHEDULER_NAMES.contains(&d.scheduler.as_str()) {
            return Err(Error::Defaults(format!(
                "unknown scheduler {:?}",
                d.scheduler
            )));
        }
        if d.steps == 0 {
            return Err(Error::Defaults("steps must be at least 1".to_string()));
        }
        d.exit_policy()?;
        Ok(d)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain fields serialise")
    }

    pub fn exit_policy(&self) -> Result<ExitPolicy> {
        self.policy
            .parse()
            .map_err(|e| Error::Defaults(format!("policy {:?}: {e}", self.policy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let d = SamplingDefaults::from_json(
            r#"{"scheduler":"dpmpp-2m","steps":10,"policy":"per-sample:0.97"}"#,
        )
        .unwrap();
        assert_eq!(
            d.exit_policy().unwrap(),
            ExitPolicy::per_sample(0.97).unwrap()
        );
        assert_eq!(SamplingDefaults::from_json(&d.to_json()).unwrap(), d);
        for (json, why) in [
            (
                r#"{"scheduler":"ddpm2","steps":10,"policy":"full"}"#,
                "unknown scheduler",
            ),
            (
                r#"{"scheduler":"ddim","steps":0,"policy":"full"}"#,
                "at least 1",
            ),
            (
                r#"{"scheduler":"ddim","steps":5,"policy":"per-sample:2"}"#,
                "policy",
            ),
            (r#"{"scheduler":"ddim","steps":5}"#, "missing field"),
        ] {
            let e = SamplingDefaults::from_json(json).unwrap_err().to_string();
            assert!(e.contains(why), "{json}: {e}");
        }
    }
}
