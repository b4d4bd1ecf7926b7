//! Exit policies by timestep: inside a band `lo ≤ t ≤ hi` of the trajectory (on the model's
//! training-time labels, 0 = clean … 999 = noise) a pass follows the band's policy, elsewhere the
//! pipeline's. Where a shallow pass is cheap depends on the noise level (BENCHMARKS.md: at high
//! noise it costs least FID); bands measure that and let a run spend depth only where it pays.

use std::fmt;
use std::str::FromStr;

use deediff_uem::ExitPolicy;

use crate::error::Error;

/// One band: `lo-hi:POLICY`, e.g. `640-1000:static:2` or `0-300:per-sample:0.9`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestepBand {
    pub lo: f64,
    pub hi: f64,
    pub policy: ExitPolicy,
}

impl TimestepBand {
    pub fn contains(&self, t: f64) -> bool {
        self.lo <= t && t <= self.hi
    }
}

impl FromStr for TimestepBand {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            Error::Band(format!(
                "timestep band {s:?}: {why} (expected LO-HI:POLICY, e.g. 640-1000:static:2)"
            ))
        };
        let (range, policy) = s.split_once(':').ok_or_else(|| bad("no policy"))?;
        let (lo, hi) = range.split_once('-').ok_or_else(|| bad("no LO-HI range"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| bad("LO and HI must be timesteps ≥ 0"))
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi {
            return Err(bad("LO is above HI"));
        }
        Ok(Self {
            lo,
            hi,
            policy: policy.parse()?,
        })
    }
}

impl fmt::Display for TimestepBand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}:{}", self.lo, self.hi, self.policy)
    }
}

/// Bands must not overlap, so that which policy a timestep gets never depends on their order.
pub(crate) fn check_disjoint(bands: &[TimestepBand]) -> Result<(), Error> {
    for (i, a) in bands.iter().enumerate() {
        if let Some(b) = bands[i + 1..].iter().find(|b| a.lo <= b.hi && b.lo <= a.hi) {
            return Err(Error::Band(format!("timestep bands {a} and {b} overlap")));
        }
    }
    Ok(())
}

/// The policy of a pass at timestep `t`: its band's, else `default`.
pub fn policy_at(bands: &[TimestepBand], t: f64, default: ExitPolicy) -> ExitPolicy {
    bands
        .iter()
        .find(|b| b.contains(t))
        .map_or(default, |b| b.policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_parse_and_pick_the_policy_of_their_timesteps() {
        let hi: TimestepBand = "640-1000:static:2".parse().unwrap();
        let mid: TimestepBand = " 300 - 639.5:per-sample:0.9".parse().unwrap();
        assert_eq!(hi.to_string(), "640-1000:static:2");
        let bands = [hi, mid];
        check_disjoint(&bands).unwrap();
        let full = ExitPolicy::Full;
        assert_eq!(
            policy_at(&bands, 960.0, full),
            ExitPolicy::Static { blocks: 2 }
        );
        assert_eq!(
            policy_at(&bands, 640.0, full),
            ExitPolicy::Static { blocks: 2 }
        );
        assert_eq!(
            policy_at(&bands, 639.5, full),
            ExitPolicy::PerSample { threshold: 0.9 }
        );
        assert_eq!(policy_at(&bands, 299.0, full), full);

        for bad in [
            "640-1000",
            "1000-640:full",
            "a-3:full",
            "0-3:static:0",
            "0-3:fast",
        ] {
            assert!(bad.parse::<TimestepBand>().is_err(), "{bad} accepted");
        }
        let overlap = [
            "0-500:full".parse().unwrap(),
            "500-999:static:3".parse().unwrap(),
        ];
        let err = check_disjoint(&overlap).unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");
    }
}
