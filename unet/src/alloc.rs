//! The allocator setting every deediff binary applies at start-up ([`keep_freed_pages`]).
//!
//! All binaries use mimalloc as the global allocator. By default mimalloc hands freed memory back
//! to the OS after 10 ms; the U-ViT forward frees and re-allocates the same multi-megabyte
//! activations every block and every forward, so it kept paying for fresh pages: on a Sapphire
//! Rapids the kernel's page zeroing (`clear_page_erms`) was 9 % of a U-ViT-S/2 batch-16 bf16
//! forward under `perf`, still 7 % with a 1 s delay (buffers used once per 3 s forward expire),
//! 3.5 % (the first forward's own faults) with none.

/// mimalloc's `mi_option_purge_delay` (index 15 in both bundled mimalloc versions, v2 and v3; the
/// Rust bindings name the options around it but not this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in mimalloc instead of returning it to the OS. A sampling process reaches
/// its peak footprint in its first forward and needs it again at every one after, so its
/// resident size stays that peak.
pub fn keep_freed_pages() {
    // SAFETY: sets one documented mimalloc option (-1: never purge); valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
