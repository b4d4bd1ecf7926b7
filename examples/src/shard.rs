//! Which slice of a `generate` run this process makes: `--shard k/n`, else the index a batch
//! scheduler gives each task of an array job (Slurm job arrays, Kubernetes Indexed Jobs), so one
//! job script starts every shard with the same command line.

use anyhow::{anyhow, bail, Result};

/// Slice `k` of `n` (0 ≤ k < n), and where it came from (printed, so a log says which it used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
    pub source: String,
}

/// Environment variable giving an Indexed Job's completion count when `--num-shards` is absent
/// (Kubernetes does not expose `spec.completions` to the pod).
pub const NUM_SHARDS_ENV: &str = "DEEDIFF_NUM_SHARDS";

impl Shard {
    /// The shard from `--shard` (`spec`), else from the environment (`env` looks a variable
    /// up): a Slurm array task (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN` of
    /// `SLURM_ARRAY_TASK_COUNT`, a contiguous `--array=MIN-MAX`), else a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX` of `num_shards` or `$DEEDIFF_NUM_SHARDS`), else the whole run.
    pub fn resolve(
        spec: Option<&str>,
        num_shards: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        if let Some(spec) = spec {
            let (k, n) = parse_k_of_n(spec)?;
            return Self::new(k, n, "--shard");
        }
        let var = |name: &str| -> Result<Option<usize>> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| anyhow!("{name}={v:?} is not a non-negative integer"))
                })
                .transpose()
        };
        if let Some(id) = var("SLURM_ARRAY_TASK_ID")? {
            let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = var("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                anyhow!("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
            })?;
            let k = id.checked_sub(min).ok_or_else(|| {
                anyhow!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}")
            })?;
            let source = format!(
                "Slurm array (SLURM_ARRAY_TASK_ID={id}, SLURM_ARRAY_TASK_MIN={min}, SLURM_ARRAY_TASK_COUNT={count})"
            );
            return Self::new(k, count, &source);
        }
        if let Some(k) = var("JOB_COMPLETION_INDEX")? {
            let (n, from) = match num_shards {
                Some(n) => (n, "--num-shards".to_string()),
                None => (
                    var(NUM_SHARDS_ENV)?.ok_or_else(|| {
                        anyhow!(
                            "JOB_COMPLETION_INDEX is set: give the Job's completions as \
                             --num-shards or ${NUM_SHARDS_ENV}"
                        )
                    })?,
                    format!("${NUM_SHARDS_ENV}"),
                ),
            };
            let source = format!(
                "Kubernetes Indexed Job (JOB_COMPLETION_INDEX={k}, {n} completions from {from})"
            );
            return Self::new(k, n, &source);
        }
        Self::new(0, 1, "default: one process makes the whole run")
    }

    fn new(k: usize, n: usize, source: &str) -> Result<Self> {
        if n == 0 || k >= n {
            bail!("{source}: shard {k} of {n} is not a slice (need 0 ≤ k < n)");
        }
        Ok(Self {
            k,
            n,
            source: source.to_string(),
        })
    }

    /// The half-open index range of this shard of a `num`-image run (shards partition it).
    pub fn range(&self, num: usize) -> std::ops::Range<usize> {
        // u128: k · num cannot overflow for any usize inputs.
        let at = |k: usize| (k as u128 * num as u128 / self.n as u128) as usize;
        at(self.k)..at(self.k + 1)
    }
}

fn parse_k_of_n(spec: &str) -> Result<(usize, usize)> {
    let bad = || anyhow!("--shard {spec:?}: expected k/n with 0 ≤ k < n");
    let (k, n) = spec.split_once('/').ok_or_else(bad)?;
    let (k, n) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shards_partition_the_run() {
        let parts: Vec<_> = (0..3)
            .map(|k| Shard::resolve(Some(&format!("{k}/3")), None, env(&[])).unwrap())
            .map(|s| s.range(10))
            .collect();
        assert_eq!(parts, vec![0..3, 3..6, 6..10]);
        assert!(Shard::resolve(Some("3/3"), None, env(&[])).is_err());
        assert!(Shard::resolve(Some("x"), None, env(&[])).is_err());
        let huge = Shard::resolve(Some("1/2"), None, env(&[])).unwrap();
        assert_eq!(huge.range(usize::MAX).end, usize::MAX);
    }

    #[test]
    fn array_jobs_give_the_shard_through_the_environment() {
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "12"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("JOB_COMPLETION_INDEX", "0"),
        ];
        let s = Shard::resolve(None, None, env(&slurm)).unwrap();
        assert_eq!((s.k, s.n), (2, 4));
        assert!(s.source.starts_with("Slurm array"), "{}", s.source);
        // The flag wins over the environment.
        let s = Shard::resolve(Some("0/2"), None, env(&slurm)).unwrap();
        assert_eq!((s.k, s.n, s.source.as_str()), (0, 2, "--shard"));

        let k8s = [("JOB_COMPLETION_INDEX", "3"), (NUM_SHARDS_ENV, "5")];
        let s = Shard::resolve(None, None, env(&k8s)).unwrap();
        assert_eq!((s.k, s.n), (3, 5));
        let s = Shard::resolve(None, Some(8), env(&k8s)).unwrap();
        assert_eq!((s.k, s.n), (3, 8));
        assert!(s.source.contains("--num-shards"), "{}", s.source);

        for bad in [
            &[("JOB_COMPLETION_INDEX", "3")][..],
            &[("JOB_COMPLETION_INDEX", "5"), (NUM_SHARDS_ENV, "5")],
            &[("SLURM_ARRAY_TASK_ID", "1")],
            &[
                ("SLURM_ARRAY_TASK_ID", "-1"),
                ("SLURM_ARRAY_TASK_COUNT", "2"),
            ],
        ] {
            assert!(Shard::resolve(None, None, env(bad)).is_err(), "{bad:?}");
        }
        let s = Shard::resolve(None, None, env(&[])).unwrap();
        assert_eq!((s.k, s.n), (0, 1));
    }
}
