//! Settings of mimalloc, the allocator the daemon and the benchmarks install.

/// `mi_option_purge_decommits` and `mi_option_purge_delay` in mimalloc's
/// `mi_option_t` (`mimalloc.h`, the same in v2 and v3).
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc purges it.
/// mimalloc's default of 10 ms made a busy ingest give pages back and fault
/// fresh, zeroed ones in again a moment later. One second keeps memory
/// through a burst and still purges soon after the daemon goes idle.
pub const PURGE_DELAY_MS: i64 = 1_000;

/// Applies the settings. Call it first thing in `main`, in a binary whose
/// global allocator is `mimalloc::MiMalloc`; elsewhere it has no effect on
/// allocation.
///
/// Purged memory is reset (`MADV_FREE`: the kernel takes the pages when it
/// needs them) rather than decommitted: with decommit, every sled log buffer
/// and tree node written into recycled memory page-faulted and was zeroed
/// again — 30–40 thousand faults and about a fifth of the CPU per 10,000
/// ingested complaints (docs/PERFORMANCE.md, "Ingest").
pub fn configure_mimalloc() {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table,
    // which is safe at any time and from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0);
    }
}
