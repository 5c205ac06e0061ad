//! The calling thread's CPU time, which the benchmarks report beside wall
//! time: on a shared machine it says more about the work done.

use std::time::Duration;

/// CPU time of the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`: user
/// and system).
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through a valid pointer.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the thread CPU clock is readable");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
