//! Where a forward runs: on one of rayon's worker threads, not on the caller's.
//!
//! A forward is a few dozen parallel kernels in a row. Called from a thread outside rayon's pool
//! (every tool's main thread), each kernel is handed to the pool while the caller sleeps until it
//! is done: two thread hand-offs per kernel, and on a 2-vCPU machine a third thread competing
//! with the two workers. Run on a worker, a kernel's tasks go to that worker's own queue and the
//! others steal them. Interleaved in one process (Emerald Rapids, 2 threads), forwards run this
//! way were 13 % faster for the embedded model at batch 1, 10 % for the small config at batch 1,
//! 1–5 % at batch 16 and for U-ViT-S/2.

/// The contiguous row ranges that a batch of `rows` splits into, one part per rayon thread
/// (fewer when there are fewer rows; one for a single row or none). Each part runs a whole piece
/// of work — a block, a forward, an evaluation — so the threads meet once per piece rather than
/// after each of its kernels, and a thread whose part is done steals from the others' kernels.
pub fn part_ranges(rows: usize) -> Vec<std::ops::Range<usize>> {
    let parts = rows.min(rayon::current_num_threads()).max(1);
    (0..parts)
        .map(|p| p * rows / parts..(p + 1) * rows / parts)
        .collect()
}

/// Runs `f` on a rayon worker thread (in place when called from one), the caller waiting.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The environment variable that sets how long candle's own CPU workers spin after each op.
const CANDLE_SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Makes candle's own CPU workers park as soon as an op ends (sets `CANDLE_BARRIER_POOL_SPIN_LIMIT`
/// to 0 unless the environment sets it). Call first thing in `main`, before other threads exist.
///
/// candle runs element-wise ops on 64 Ki values or more (`broadcast_add`, `+`, the scheduler's
/// arithmetic on large latents) on a pool of its own, `RAYON_NUM_THREADS − 1` threads beside
/// rayon's, which after every op spin for 25 000 pauses before parking. Such an op in the embed —
/// the position embedding added to a batch of 16 — left that thread spinning on one of two vCPUs
/// through the first block: block 0 took 3.3 ms where every other in-block took 2.6 (embedded
/// model, batch 16, Zen 4; 5.6 vs 5.0 at 32), and parked at once, all took 2.5. Whole runs,
/// alternated with and without (AMD EPYC, 15 repeats): full depth −5 %, exits −3 to −8 %.
pub fn park_candle_workers() {
    if std::env::var_os(CANDLE_SPIN_ENV).is_none() {
        std::env::set_var(CANDLE_SPIN_ENV, "0");
    }
}

#[cfg(test)]
mod tests {
    use super::part_ranges;

    #[test]
    fn parts_cover_the_rows_one_per_thread() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!(part_ranges(7), [0..2, 2..4, 4..7]);
            assert_eq!(part_ranges(2), [0..1, 1..2]);
            for rows in [0, 1] {
                let parts = part_ranges(rows);
                assert_eq!((parts.len(), parts[0].clone()), (1, 0..rows));
            }
        });
    }
}
