//! Work queued on rayon's pool that the thread needing its result may do itself.
//!
//! The ingest queues parsing and rendering on the pool so they run beside
//! its serial pass. A job can sit queued behind others (the next fetch's
//! parsing behind this fetch's rendering), and waiting for it then would
//! leave the serial pass idle: whoever takes a job's work first does it,
//! the pool when it gets to the job or the thread that asks for the result.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

/// The work of a [`PoolJob`] until someone takes it.
type Unstarted<T> = Arc<Mutex<Option<Box<dyn FnOnce() -> T + Send>>>>;

/// Work queued on the pool ([`spawn`]).
pub struct PoolJob<T> {
    work: Unstarted<T>,
    result: Receiver<std::thread::Result<T>>,
}

impl<T> Drop for PoolJob<T> {
    /// Work nobody wants any more (a batch given up, a render-ahead that
    /// does not match its batch) is not started.
    fn drop(&mut self) {
        if let Ok(mut work) = self.work.lock() {
            work.take();
        }
    }
}

impl<T> PoolJob<T> {
    /// The result: computed here if the pool has not started the work,
    /// else waited for; `Err` carries a panic of the work on the pool.
    /// `None` if the pool dropped the job unfinished.
    pub fn outcome(&self) -> Option<std::thread::Result<T>> {
        let unstarted = self.work.lock().ok().and_then(|mut work| work.take());
        match unstarted {
            Some(work) => Some(Ok(work())),
            None => self.result.recv().ok(),
        }
    }
}

/// Queues `work` on rayon's global pool, whose threads (and so the
/// allocator's per-thread memory) stay from batch to batch.
pub fn spawn<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> PoolJob<T> {
    let (sender, result) = std::sync::mpsc::sync_channel(1);
    let work: Unstarted<T> = Arc::new(Mutex::new(Some(Box::new(work))));
    let queued = Arc::clone(&work);
    rayon::spawn(move || {
        // Taken already: the thread that needed it first did it.
        let Some(work) = queued.lock().ok().and_then(|mut work| work.take()) else {
            return;
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(work));
        // The receiver is gone only if the job was given up meanwhile.
        let _ = sender.send(outcome);
    });
    PoolJob { work, result }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_the_pool_has_not_started_is_done_by_the_thread_that_needs_it() {
        // Every thread of the global pool waits until released, so the job
        // queued behind them cannot start.
        let threads = rayon::current_num_threads();
        let (started, all_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        for _ in 0..threads {
            let started = started.clone();
            let released = Arc::clone(&released);
            rayon::spawn(move || {
                started.send(()).expect("the test waits");
                // One blocker at a time holds the lock; the others wait on it.
                let _ = released.lock().expect("lock").recv();
            });
        }
        for _ in 0..threads {
            all_started.recv().expect("a pool thread started");
        }
        let job = spawn(|| std::thread::current().id());
        let done_by = job.outcome().expect("an outcome").expect("no panic");
        assert_eq!(done_by, std::thread::current().id());
        for _ in 0..threads {
            release.send(()).expect("a blocker waits");
        }
    }

    #[test]
    fn work_the_pool_did_is_handed_over_and_its_panic_too() {
        let job = spawn(|| 6 * 7);
        assert_eq!(job.outcome().expect("an outcome").expect("no panic"), 42);
        let job = spawn(|| -> u32 { panic!("on purpose") });
        // The pool may not have started it yet: then the panic is here.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job.outcome()));
        match outcome {
            Ok(Some(Err(_))) | Err(_) => {}
            Ok(other) => panic!("expected the panic, got {:?}", other.map(|r| r.is_ok())),
        }
    }
}
