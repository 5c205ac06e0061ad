//! The scheduler task: sleeps until the engine's next timer or schedule is due, fires it, and
//! wakes the SMTP sender when that queued mail.
//!
//! The loop asks one question per wake-up — "when is the next thing due?" — which the store
//! answers from the first key of its time-ordered timer index, so the idle cost does not grow
//! with the number of open cases. Due work is done in the blocking pool (it commits to the
//! store). Anything that commits new timers (ingest, reload) notifies [`Scheduler::wake`], so a
//! deadline that is nearer than the one being slept on is not missed. Timers and schedules that
//! fell due while the daemon was down are all due at the first wake-up and fire then, once.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// What the scheduler drives: the engine's timers and cron schedules.
///
/// Both methods block (they read or commit the store); the scheduler calls them from the
/// blocking pool.
pub trait Timekeeper: Send + Sync + 'static {
    type Error: Display + Send + 'static;

    /// When the earliest timer or schedule is due; `None` when nothing is pending.
    fn next_wakeup(&self) -> Result<Option<DateTime<Utc>>, Self::Error>;

    /// Fires every timer and schedule due at `now` and commits the outcome; returns how many
    /// fired. A timer step that fired before (and was committed) must do nothing again.
    fn fire_due(&self, now: DateTime<Utc>) -> Result<usize, Self::Error>;
}

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// The longest single sleep. The sleep is measured on the monotonic clock, the due times on
    /// the wall clock; a bounded sleep notices a wall clock that was stepped (NTP, a resumed
    /// virtual machine) within this long.
    pub max_sleep: Duration,
    /// The pause after an error, or after a firing that left something due without firing it,
    /// so a persistent fault is retried instead of spinning.
    pub retry_delay: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            max_sleep: Duration::from_secs(60),
            retry_delay: Duration::from_secs(10),
        }
    }
}

/// The scheduler task's handles, shared with the tasks that commit timers.
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    wake: Arc<Notify>,
}

impl Scheduler {
    pub fn new() -> Self {
        Scheduler::default()
    }

    /// Tells the scheduler that timers or schedules changed: it looks again at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the scheduler until `shutdown` is cancelled. `on_fired` is called after every
    /// firing that did something (it wakes the sender). A firing in progress when shutdown
    /// comes is finished first: its commit is never cut short.
    pub async fn run<T: Timekeeper>(
        &self,
        keeper: Arc<T>,
        clock: Arc<dyn Clock>,
        options: SchedulerOptions,
        on_fired: impl Fn(usize) + Send,
        shutdown: CancellationToken,
    ) {
        // A clock moved by hand (tests, simulation) wakes the scheduler like a new timer would;
        // the listener lapses when this scheduler's handles are gone.
        let wake = Arc::downgrade(&self.wake);
        clock.on_change(Box::new(move || match wake.upgrade() {
            Some(wake) => {
                wake.notify_one();
                true
            }
            None => false,
        }));
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Registering before looking means a wake-up sent in between is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();

            let now = clock.now();
            let sleep = match blocking(&keeper, |k| k.next_wakeup()).await {
                Err(error) => {
                    tracing::error!(%error, "scheduler: cannot read the next due time");
                    options.retry_delay
                }
                Ok(Some(due)) if due <= now => {
                    match blocking(&keeper, move |k| k.fire_due(now)).await {
                        // Something stays due that cannot fire: pause rather than spin.
                        Ok(0) => {
                            tracing::warn!(%due, "scheduler: something is due but nothing fired");
                            options.retry_delay
                        }
                        Ok(fired) => {
                            tracing::debug!(fired, %now, "scheduler: fired");
                            on_fired(fired);
                            continue;
                        }
                        Err(error) => {
                            tracing::error!(%error, "scheduler: firing due timers failed");
                            options.retry_delay
                        }
                    }
                }
                Ok(Some(due)) => (due - now)
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(options.max_sleep),
                Ok(None) => options.max_sleep,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut woken => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        tracing::info!("scheduler: stopped");
    }
}

/// Runs `work` on the keeper in the blocking pool; a panic there is reported as a message.
async fn blocking<T: Timekeeper, R: Send + 'static>(
    keeper: &Arc<T>,
    work: impl FnOnce(&T) -> Result<R, T::Error> + Send + 'static,
) -> Result<R, String> {
    let keeper = Arc::clone(keeper);
    match tokio::task::spawn_blocking(move || work(&keeper)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(join) => Err(format!("the scheduler's blocking task failed: {join}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use chrono::TimeZone;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    /// A clock that follows tokio's (paused, auto-advancing) time, so the scheduler's sleeps
    /// and its idea of "now" agree in tests that span days in milliseconds.
    #[derive(Debug)]
    struct VirtualClock {
        wall_origin: DateTime<Utc>,
        origin: Instant,
    }

    impl Clock for VirtualClock {
        fn now(&self) -> DateTime<Utc> {
            let elapsed = chrono::Duration::from_std(self.origin.elapsed()).unwrap();
            self.wall_origin + elapsed
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
    }

    /// A keeper with an in-memory set of due times that reports every firing on a channel.
    struct FakeKeeper {
        due: Mutex<BTreeSet<DateTime<Utc>>>,
        /// When true, firing removes nothing (a keeper that cannot make progress).
        stuck: bool,
        lookups: AtomicUsize,
        fired: mpsc::Sender<(DateTime<Utc>, usize)>,
    }

    impl FakeKeeper {
        fn new(
            due: impl IntoIterator<Item = DateTime<Utc>>,
        ) -> (Arc<FakeKeeper>, mpsc::Receiver<(DateTime<Utc>, usize)>) {
            let (tx, rx) = mpsc::channel(64);
            let keeper = FakeKeeper {
                due: Mutex::new(due.into_iter().collect()),
                stuck: false,
                lookups: AtomicUsize::new(0),
                fired: tx,
            };
            (Arc::new(keeper), rx)
        }

        fn add(&self, at: DateTime<Utc>) {
            self.due.lock().unwrap().insert(at);
        }
    }

    impl Timekeeper for FakeKeeper {
        type Error = String;

        fn next_wakeup(&self) -> Result<Option<DateTime<Utc>>, String> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Ok(self.due.lock().unwrap().first().copied())
        }

        fn fire_due(&self, now: DateTime<Utc>) -> Result<usize, String> {
            let mut due = self.due.lock().unwrap();
            let count = due.range(..=now).count();
            if !self.stuck {
                due.retain(|at| *at > now);
            }
            let fired = if self.stuck { 0 } else { count };
            self.fired
                .try_send((now, fired))
                .map_err(|e| e.to_string())?;
            Ok(fired)
        }
    }

    struct Running {
        scheduler: Scheduler,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        notified_sender: Arc<AtomicUsize>,
    }

    fn start(keeper: Arc<FakeKeeper>, options: SchedulerOptions) -> Running {
        let clock: Arc<dyn Clock> = Arc::new(VirtualClock {
            wall_origin: t0(),
            origin: Instant::now(),
        });
        let scheduler = Scheduler::new();
        let shutdown = CancellationToken::new();
        let notified_sender = Arc::new(AtomicUsize::new(0));
        let task = {
            let scheduler = scheduler.clone();
            let shutdown = shutdown.clone();
            let notified = Arc::clone(&notified_sender);
            tokio::spawn(async move {
                scheduler
                    .run(
                        keeper,
                        clock,
                        options,
                        move |_| {
                            notified.fetch_add(1, Ordering::SeqCst);
                        },
                        shutdown,
                    )
                    .await;
            })
        };
        Running {
            scheduler,
            shutdown,
            task,
            notified_sender,
        }
    }

    async fn stop(running: Running) {
        running.shutdown.cancel();
        running.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_moved_by_hand_wakes_the_scheduler_at_once() {
        let clock = crate::clock::ManualClock::new(t0());
        let due = t0() + chrono::Duration::days(1);
        let (keeper, mut fired) = FakeKeeper::new([due]);
        let options = SchedulerOptions {
            max_sleep: Duration::from_secs(3600),
            ..SchedulerOptions::default()
        };
        let scheduler = Scheduler::new();
        let shutdown = CancellationToken::new();
        let task = {
            let (keeper, shutdown) = (Arc::clone(&keeper), shutdown.clone());
            let clock: Arc<dyn Clock> = Arc::new(clock.clone());
            tokio::spawn(async move {
                scheduler
                    .run(keeper, clock, options, |_| {}, shutdown)
                    .await;
            })
        };
        // Once it has looked, it sleeps for an hour of virtual time.
        while keeper.lookups.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let moved_at = Instant::now();
        clock.set(due);
        assert_eq!(fired.recv().await.unwrap(), (due, 1));
        assert!(
            moved_at.elapsed() < Duration::from_secs(1),
            "woken by the clock, not by the end of its sleep: {:?}",
            moved_at.elapsed()
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn timers_missed_while_down_fire_once_at_start() {
        let missed = [
            t0() - chrono::Duration::hours(30),
            t0() - chrono::Duration::hours(2),
            t0() - chrono::Duration::minutes(1),
        ];
        let (keeper, mut fired) = FakeKeeper::new(missed);
        let running = start(Arc::clone(&keeper), SchedulerOptions::default());
        let (at, count) = fired.recv().await.unwrap();
        assert_eq!(at, t0(), "fired at start, at the daemon's now");
        assert_eq!(count, 3, "all missed timers in one firing");
        // A virtual day with nothing due: no further firing.
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        assert!(fired.try_recv().is_err());
        assert_eq!(running.notified_sender.load(Ordering::SeqCst), 1);
        stop(running).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_timer_fires_when_due_and_not_before() {
        let due = t0() + chrono::Duration::minutes(90);
        let (keeper, mut fired) = FakeKeeper::new([due]);
        let running = start(keeper, SchedulerOptions::default());
        let (at, count) = fired.recv().await.unwrap();
        assert_eq!(count, 1);
        assert!(at >= due, "fired at {at}, before {due}");
        assert!(
            at < due + chrono::Duration::seconds(1),
            "fired at {at}, late"
        );
        stop(running).await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_wakeups_do_not_depend_on_the_number_of_pending_timers() {
        // Not a multiple of `max_sleep`, so the end never ties with a wake-up.
        let horizon = Duration::from_secs(7 * 24 * 3600 + 30);
        let mut lookups = Vec::new();
        for pending in [0usize, 10_000] {
            let far = t0() + chrono::Duration::days(400);
            let (keeper, _fired) =
                FakeKeeper::new((0..pending).map(|i| far + chrono::Duration::seconds(i as i64)));
            let running = start(Arc::clone(&keeper), SchedulerOptions::default());
            tokio::time::sleep(horizon).await;
            stop(running).await;
            lookups.push(keeper.lookups.load(Ordering::SeqCst));
        }
        assert_eq!(lookups[0], lookups[1], "{lookups:?}");
        // One look per `max_sleep` (a minute) over the week, plus the first.
        let per_minute = horizon.as_secs() as usize / 60;
        assert!(
            lookups[0] <= per_minute + 2,
            "{} lookups in a week",
            lookups[0]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wakeup_brings_forward_a_timer_committed_during_a_long_sleep() {
        let (keeper, mut fired) = FakeKeeper::new([t0() + chrono::Duration::days(3)]);
        let options = SchedulerOptions {
            max_sleep: Duration::from_secs(3600),
            ..SchedulerOptions::default()
        };
        let running = start(Arc::clone(&keeper), options);
        // Let the scheduler settle into its sleep (virtual time moves on only when it sleeps).
        tokio::time::sleep(Duration::from_secs(60)).await;
        let soon = t0() + chrono::Duration::minutes(5);
        keeper.add(soon);
        running.scheduler.wake();
        let (at, count) = fired.recv().await.unwrap();
        assert_eq!(count, 1);
        assert!(
            at >= soon && at < soon + chrono::Duration::seconds(1),
            "fired at {at}"
        );
        stop(running).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_keeper_that_cannot_make_progress_is_retried_not_spun() {
        let (tx, mut fired) = mpsc::channel(1024);
        let keeper = Arc::new(FakeKeeper {
            due: Mutex::new([t0() - chrono::Duration::minutes(1)].into_iter().collect()),
            stuck: true,
            lookups: AtomicUsize::new(0),
            fired: tx,
        });
        let options = SchedulerOptions::default();
        let retry = options.retry_delay;
        let running = start(keeper, options);
        tokio::time::sleep(retry * 10 + retry / 2).await;
        stop(running).await;
        let mut firings = 0;
        while fired.try_recv().is_ok() {
            firings += 1;
        }
        // One attempt at start and one after each retry pause, no more.
        assert_eq!(firings, 11);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_sleeping_scheduler() {
        let (keeper, _fired) = FakeKeeper::new([]);
        let running = start(keeper, SchedulerOptions::default());
        tokio::time::sleep(Duration::from_secs(1)).await;
        running.shutdown.cancel();
        let before = Instant::now();
        running.task.await.unwrap();
        assert_eq!(Instant::now(), before, "no virtual time passed");
    }
}
