//! The daemon's clock: the only place that reads the wall clock; tests inject their own.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// Called after a clock was moved by hand. Returns `false` once whoever listened is gone, so
/// the clock forgets it.
pub type ClockListener = Box<dyn Fn() -> bool + Send + Sync>;

/// A source of "now". Everything time-dependent takes one of these.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// Asks to be told when the clock is moved by hand (a test's [`ManualClock`]), so a task
    /// sleeping until a due time looks again at once. The wall clock is never moved on
    /// request, so by default nobody is ever told.
    fn on_change(&self, listener: ClockListener) {
        drop(listener);
    }
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to: for tests, `simulate` and `replay`.
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    listeners: Arc<Mutex<Vec<ClockListener>>>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish_non_exhaustive()
    }
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            listeners: Arc::default(),
        }
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().expect("clock lock poisoned") = to;
        self.tell_listeners();
    }

    pub fn advance(&self, by: chrono::Duration) {
        *self.now.lock().expect("clock lock poisoned") += by;
        self.tell_listeners();
    }

    fn tell_listeners(&self) {
        self.listeners
            .lock()
            .expect("clock listeners lock poisoned")
            .retain(|listener| listener());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock lock poisoned")
    }

    fn on_change(&self, listener: ClockListener) {
        self.listeners
            .lock()
            .expect("clock listeners lock poisoned")
            .push(listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_manual_clock_tells_its_listeners_when_moved_until_they_are_gone() {
        let start = DateTime::parse_from_rfc3339("2026-11-24T10:00:00+08:00")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(start);
        let told = Arc::new(AtomicUsize::new(0));
        let listening = Arc::new(());
        let (count, alive) = (Arc::clone(&told), Arc::downgrade(&listening));
        clock.clone().on_change(Box::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
            alive.upgrade().is_some()
        }));
        clock.advance(chrono::Duration::hours(1));
        clock.set(start);
        assert_eq!(told.load(Ordering::SeqCst), 2);
        assert_eq!(clock.now(), start);
        drop(listening);
        clock.advance(chrono::Duration::hours(1));
        clock.advance(chrono::Duration::hours(1));
        assert_eq!(
            told.load(Ordering::SeqCst),
            3,
            "a gone listener is told once more, then forgotten"
        );
    }
}
