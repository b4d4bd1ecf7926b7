//! The memory settings every deediff binary applies at start-up ([`tune`]).
//!
//! All binaries use mimalloc as the global allocator. By default mimalloc hands freed memory back
//! to the OS after 10 ms; the U-ViT forward frees and re-allocates the same multi-megabyte
//! activations every block and every forward, so it kept paying for fresh pages: on a Sapphire
//! Rapids the kernel's page zeroing (`clear_page_erms`) was 9 % of a U-ViT-S/2 batch-16 bf16
//! forward under `perf`, still 7 % with a 1 s delay (buffers used once per 3 s forward expire),
//! 3.5 % (the first forward's own faults) with none.
//!
//! mimalloc also asks Linux for transparent huge pages on its arenas, so the first touch of any
//! byte in a fresh 2 MiB region zeroes all of it. A sampling run's activations come in many sizes
//! (a batch narrows as samples exit), spread over many such regions. On an AMD EPYC (Zen 4), a
//! `txt2img` run of the embedded model (16 images, DDIM 25, per-sample 0.9) peaked at 129–148 MB
//! resident with huge pages and 77–87 MB without, and `clear_page_erms` took 23 % of its CPU
//! samples under `perf` with them against 0.3 % without. Hot loops of large blocks lose nothing:
//! U-ViT-S/2 at batch 16 (`--bench exit_speed_s2`) ran as fast either way.

/// mimalloc's `mi_option_purge_delay` (index 15 in both bundled mimalloc versions, v2 and v3; the
/// Rust bindings name the options around it but not this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in mimalloc instead of returning it to the OS, and turns transparent huge
/// pages off for the process. A sampling process reaches its peak footprint in its first forward
/// and needs it again at every one after, so its resident size stays that peak — in 4 KiB pages,
/// touched only where something was written.
pub fn tune() {
    // SAFETY: sets one documented mimalloc option (-1: never purge); valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    disable_huge_pages();
}

/// `PR_SET_THP_DISABLE` marks the whole address space, so it also covers the arenas mimalloc
/// reserved (and advised as huge) before `main`; mimalloc's own switch (`MIMALLOC_ALLOW_THP=0`)
/// is read only when the process starts.
#[cfg(target_os = "linux")]
fn disable_huge_pages() {
    // SAFETY: prctl with these arguments only sets the process's THP-disable flag; a kernel
    // without THP answers with an error, which leaves nothing to undo.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(not(target_os = "linux"))]
fn disable_huge_pages() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn tune_turns_huge_pages_off_for_the_process() {
        super::tune();
        // SAFETY: PR_GET_THP_DISABLE only reads the process's flag (1 = disabled).
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
    }
}
