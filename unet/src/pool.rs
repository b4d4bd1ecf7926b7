//! Where a forward runs: on one of rayon's worker threads, not on the caller's.
//!
//! A forward is a few dozen parallel kernels in a row. Called from a thread outside rayon's pool
//! (every tool's main thread), each kernel is handed to the pool while the caller sleeps until it
//! is done: two thread hand-offs per kernel, and on a 2-vCPU machine a third thread competing
//! with the two workers. Run on a worker, a kernel's tasks go to that worker's own queue and the
//! others steal them. Interleaved in one process (Emerald Rapids, 2 threads), forwards run this
//! way were 13 % faster for the embedded model at batch 1, 10 % for the small config at batch 1,
//! 1–5 % at batch 16 and for U-ViT-S/2.

/// Runs `f` on a rayon worker thread (in place when called from one), the caller waiting.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
