//! Settings of mimalloc, the allocator the daemon and the benchmarks install.

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (`mimalloc.h`, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc returns it
/// to the OS. mimalloc's default of 10 ms made a busy ingest give pages back
/// and fault fresh, zeroed ones in again a moment later: about a fifth of
/// its CPU time (docs/PERFORMANCE.md, "Ingest"). One second keeps memory
/// through a burst and still returns it soon after the daemon goes idle.
pub const PURGE_DELAY_MS: i64 = 1_000;

/// Applies the settings above. Call it first thing in `main`, in a binary
/// whose global allocator is `mimalloc::MiMalloc`; elsewhere it has no effect
/// on allocation.
pub fn configure_mimalloc() {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table,
    // which is safe at any time and from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) }
}
