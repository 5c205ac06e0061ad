//! Hot reload of the policy: watches the rules directory and SIGHUP, waits until the files
//! stop changing, then reloads; a policy with errors is logged and the running one is kept.
//!
//! Triggers arrive on a bounded channel of capacity one: a trigger that finds the channel full
//! is dropped, because the reload already pending will read the files as they are then. The
//! reload itself (reading and checking the files) runs in the blocking pool.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A file in the rules directory changed.
    Files,
    /// The daemon received SIGHUP.
    Signal,
}

/// What a successful reload loaded, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// One line, e.g. "5 rule files, 4 departments, 1 schedule".
    pub description: String,
    /// Checker warnings, rendered.
    pub warnings: Vec<String>,
}

/// What the reload task drives: the engine's policy.
pub trait PolicyReloader: Send + Sync + 'static {
    /// Loads and checks the policy again and switches to it. On error the running policy
    /// stays and every problem is returned, rendered for people (file, line, column, the
    /// offending text underlined). Blocks (it reads files).
    fn reload(&self) -> Result<ReloadSummary, Vec<String>>;
}

/// Tuning of the reload task.
#[derive(Debug, Clone)]
pub struct ReloadOptions {
    /// Quiet time after the last trigger before reloading: editors and deploy tools write a
    /// file in several steps, and a half-written file must not be judged.
    pub debounce: Duration,
    /// The longest a reload is put off by triggers that keep coming.
    pub max_delay: Duration,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions {
            debounce: Duration::from_millis(300),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// A channel for reload triggers, bounded at one pending trigger.
pub fn trigger_channel() -> (mpsc::Sender<Trigger>, mpsc::Receiver<Trigger>) {
    mpsc::channel(1)
}

/// Watches `dir` and everything below it (templates included); every change sends a
/// [`Trigger::Files`]. The watch lasts as long as the returned watcher lives.
///
/// Editor droppings (hidden files, `~` backups, swap files) are ignored. If `dir` itself is
/// replaced (a symlink switched by a deploy), the watch does not follow: send SIGHUP then.
pub fn watch_rules_dir(
    dir: &Path,
    triggers: mpsc::Sender<Trigger>,
) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) => {
                if is_relevant(&event) {
                    // A full channel already holds a pending reload.
                    let _ = triggers.try_send(Trigger::Files);
                }
            }
            Err(error) => tracing::warn!(%error, "reload: watching the rules directory failed"),
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

fn is_relevant(event: &notify::Event) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|path| {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        !(name.starts_with('.')
            || name.ends_with('~')
            || name.ends_with(".swp")
            || name.ends_with(".swx"))
    })
}

/// Listens for SIGHUP (installed now, so a SIGHUP during start-up does not end the process)
/// and returns the future that sends a [`Trigger::Signal`] for each until `shutdown` is
/// cancelled.
#[cfg(unix)]
pub fn forward_sighup(
    triggers: mpsc::Sender<Trigger>,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!("reload: SIGHUP received");
                    let _ = triggers.try_send(Trigger::Signal);
                }
            }
        }
    })
}

/// Runs reloads on triggers until `shutdown` is cancelled or every trigger sender is gone.
/// `on_reloaded` is called after a successful reload (schedules may have changed).
pub async fn run_reloader<R: PolicyReloader>(
    reloader: Arc<R>,
    mut triggers: mpsc::Receiver<Trigger>,
    options: ReloadOptions,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    on_reloaded: impl Fn() + Send,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            trigger = triggers.recv() => match trigger {
                Some(trigger) => trigger,
                None => break,
            },
        };
        let Some(cause) = settle(first, &mut triggers, &options, &shutdown).await else {
            break;
        };
        let worker = Arc::clone(&reloader);
        let outcome = match tokio::task::spawn_blocking(move || worker.reload()).await {
            Ok(outcome) => outcome,
            Err(join) => Err(vec![format!("the reload failed: {join}")]),
        };
        let at = clock.now();
        match outcome {
            Ok(summary) => {
                metrics.rules_reloaded(true, at);
                tracing::info!(?cause, policy = %summary.description, "reload: new policy running");
                for warning in &summary.warnings {
                    tracing::warn!("reload: policy warning\n{warning}");
                }
                on_reloaded();
            }
            Err(errors) => {
                metrics.rules_reloaded(false, at);
                tracing::error!(
                    ?cause,
                    errors = errors.len(),
                    "reload: the policy has errors; the previous policy keeps running"
                );
                for error in &errors {
                    tracing::error!("reload: policy error\n{error}");
                }
            }
        }
    }
    tracing::info!("reload: stopped");
}

/// Waits until no trigger came for `debounce` (at most `max_delay` in all); returns what asked
/// for the reload (a signal wins over file changes), or `None` on shutdown.
async fn settle(
    first: Trigger,
    triggers: &mut mpsc::Receiver<Trigger>,
    options: &ReloadOptions,
    shutdown: &CancellationToken,
) -> Option<Trigger> {
    let mut cause = first;
    let give_up_at = Instant::now() + options.max_delay;
    loop {
        let quiet_until = (Instant::now() + options.debounce).min(give_up_at);
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep_until(quiet_until) => return Some(cause),
            more = triggers.recv() => match more {
                Some(Trigger::Signal) => cause = Trigger::Signal,
                Some(Trigger::Files) => {}
                // Every sender is gone: reload once more with what is there.
                None => return Some(cause),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use chrono::{TimeZone, Utc};

    use crate::clock::ManualClock;

    /// A reloader that succeeds or fails as told and reports each reload on a channel.
    struct FakeReloader {
        fail: Mutex<bool>,
        done: mpsc::Sender<Instant>,
    }

    impl PolicyReloader for FakeReloader {
        fn reload(&self) -> Result<ReloadSummary, Vec<String>> {
            // Read the outcome before reporting: the test flips `fail` as soon as it hears.
            let fail = *self.fail.lock().unwrap();
            // The reload runs in the blocking pool, where tokio's paused clock still reads.
            let _ = self.done.try_send(Instant::now());
            if fail {
                Err(vec![
                    "10-classify.rules:3:5: error: unknown field `severty`".into(),
                ])
            } else {
                Ok(ReloadSummary {
                    description: "1 rule file".into(),
                    warnings: Vec::new(),
                })
            }
        }
    }

    struct Harness {
        triggers: mpsc::Sender<Trigger>,
        reloads: mpsc::Receiver<Instant>,
        reloader: Arc<FakeReloader>,
        metrics: Metrics,
        succeeded: Arc<AtomicUsize>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(options: ReloadOptions) -> Harness {
        let (done, reloads) = mpsc::channel(16);
        let reloader = Arc::new(FakeReloader {
            fail: Mutex::new(false),
            done,
        });
        let (triggers, receiver) = trigger_channel();
        let metrics = Metrics::new();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap(),
        ));
        let succeeded = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_reloader(
            Arc::clone(&reloader),
            receiver,
            options,
            metrics.clone(),
            clock,
            {
                let succeeded = Arc::clone(&succeeded);
                move || {
                    succeeded.fetch_add(1, Ordering::SeqCst);
                }
            },
            shutdown.clone(),
        ));
        Harness {
            triggers,
            reloads,
            reloader,
            metrics,
            succeeded,
            shutdown,
            task,
        }
    }

    fn has_line(metrics: &Metrics, line: &str) -> bool {
        metrics.encode().lines().any(|l| l == line)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_reload_after_the_quiet_time() {
        let options = ReloadOptions::default();
        let debounce = options.debounce;
        let mut h = start(options);
        let started = Instant::now();
        for _ in 0..5 {
            h.triggers.send(Trigger::Files).await.unwrap();
            tokio::time::sleep(debounce / 3).await;
        }
        let last_trigger = Instant::now() - debounce / 3;
        let at = h.reloads.recv().await.unwrap();
        assert!(at >= last_trigger + debounce, "reloaded too early");
        assert!(at < started + debounce * 3, "reloaded too late");
        h.shutdown.cancel();
        h.task.await.unwrap();
        assert!(h.reloads.try_recv().is_err(), "exactly one reload");
        assert_eq!(h.succeeded.load(Ordering::SeqCst), 1);
        assert!(has_line(
            &h.metrics,
            "complaintd_rule_reloads_total{outcome=\"success\"} 1"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_that_never_stop_delay_the_reload_at_most_max_delay() {
        let options = ReloadOptions::default();
        let (debounce, max_delay) = (options.debounce, options.max_delay);
        let mut h = start(options);
        let started = Instant::now();
        let reloaded_at = loop {
            // Sending waits while the one slot is taken, so this never outruns the reloader.
            h.triggers.send(Trigger::Files).await.unwrap();
            if let Ok(at) = h.reloads.try_recv() {
                break at;
            }
            tokio::time::sleep(debounce / 2).await;
        };
        assert!(
            reloaded_at >= started + max_delay,
            "reloaded before max_delay"
        );
        assert!(
            reloaded_at <= started + max_delay + debounce,
            "reloaded late"
        );
        h.shutdown.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reload_is_counted_and_does_not_call_back() {
        let mut h = start(ReloadOptions::default());
        *h.reloader.fail.lock().unwrap() = true;
        h.triggers.send(Trigger::Signal).await.unwrap();
        h.reloads.recv().await.unwrap();
        *h.reloader.fail.lock().unwrap() = false;
        h.triggers.send(Trigger::Files).await.unwrap();
        h.reloads.recv().await.unwrap();
        h.shutdown.cancel();
        h.task.await.unwrap();
        assert_eq!(h.succeeded.load(Ordering::SeqCst), 1);
        assert!(has_line(
            &h.metrics,
            "complaintd_rule_reloads_total{outcome=\"failure\"} 1"
        ));
        assert!(has_line(
            &h.metrics,
            "complaintd_rule_reloads_total{outcome=\"success\"} 1"
        ));
    }

    #[tokio::test]
    async fn the_watcher_reports_a_changed_template() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        let (tx, mut rx) = trigger_channel();
        let _watcher = watch_rules_dir(dir.path(), tx).unwrap();
        std::fs::write(dir.path().join("templates/ack.en.txt"), "hello").unwrap();
        let trigger = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a change below the rules directory is reported")
            .unwrap();
        assert_eq!(trigger, Trigger::Files);
    }

    #[test]
    fn editor_droppings_and_reads_are_not_relevant() {
        let event = |kind, path: &str| notify::Event::new(kind).add_path(path.into());
        let modify = EventKind::Modify(notify::event::ModifyKind::Any);
        assert!(is_relevant(&event(modify, "/r/10-classify.rules")));
        assert!(is_relevant(&event(
            EventKind::Remove(notify::event::RemoveKind::File),
            "/r/templates/ack.zh.txt"
        )));
        assert!(!is_relevant(&event(modify, "/r/.10-classify.rules.swp")));
        assert!(!is_relevant(&event(modify, "/r/10-classify.rules~")));
        assert!(!is_relevant(&event(
            EventKind::Access(notify::event::AccessKind::Any),
            "/r/10-classify.rules"
        )));
    }
}
