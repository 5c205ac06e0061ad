//! The daemon (`complaintd run`): wires the engine to its tasks — one IMAP task per mailbox,
//! the SMTP sender, the scheduler, hot reload, the metrics endpoint — and runs them until
//! shutdown, then stops them in an order that loses nothing.
//!
//! Shutdown order: stop taking work (IMAP tasks finish the batch they are committing, the
//! scheduler finishes its firing, reload its reload), wait for the last blocking engine call,
//! stop the sender (it finishes the mail it is sending and records the result), stop the
//! metrics endpoint, flush the store. See `docs/daemon.md`.
//!
//! At start, before the sender runs, mail whose SMTP attempt began before the last stop and
//! whose outcome was never recorded is settled as `smtp.in_doubt` says ([`admin`]); the
//! endpoint also answers case queries and releases held mail ([`admin::AdminApi`]).

pub mod adapters;
pub mod admin;
pub mod client;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LogConfig, LogFormat};
use crate::engine::{ActivePolicy, Engine, EngineError, EngineSettings};
use crate::imap::{self, ImapError, ImapOptions};
use crate::metrics::{Metrics, MetricsServer};
use crate::reload::{self, ReloadOptions};
use crate::scheduler::{Scheduler, SchedulerOptions};
use crate::smtp::{self, SenderError, SenderOptions};
use crate::store::{Store, StoreError};
use adapters::{BlockingWork, EngineOutbox, EngineSink};

/// Why the daemon did not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The policy has errors: the daemon refuses to start with it.
    #[error("the policy has errors; not starting:\n{}", .0.join("\n"))]
    Policy(Vec<String>),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(EngineError),
    #[error("metrics endpoint on {address}: {source}")]
    Http {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("mailbox {mailbox}: {source}")]
    Imap { mailbox: String, source: ImapError },
    #[error(transparent)]
    Smtp(SenderError),
    #[error("flushing the store at shutdown: {0}")]
    Flush(StoreError),
    #[error("a daemon task failed: {0}")]
    Task(String),
}

impl From<EngineError> for DaemonError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Policy(errors) => DaemonError::Policy(errors),
            other => DaemonError::Engine(other),
        }
    }
}

/// What a running daemon tells whoever started it.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The engine the tasks drive (tests read the store through it).
    pub engine: Arc<Engine>,
    /// Where the metrics endpoint listens, if configured (the real port when 0 was asked).
    pub http: Option<SocketAddr>,
}

/// Everything about the daemon that the configuration file does not say.
pub struct DaemonOptions {
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// IMAP tuning; `max_message_bytes` is always taken from the configuration.
    pub imap: ImapOptions,
    pub sender: SenderOptions,
    pub scheduler: SchedulerOptions,
    pub reload: ReloadOptions,
    /// Reload on SIGHUP. Signals belong to the process: on in `complaintd run`, off in tests
    /// that run daemons side by side.
    pub handle_sighup: bool,
    /// Sent once every task runs.
    pub ready: Option<oneshot::Sender<Ready>>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            clock: Arc::new(SystemClock),
            metrics: Metrics::new(),
            imap: ImapOptions::new(0),
            sender: SenderOptions::default(),
            scheduler: SchedulerOptions::default(),
            reload: ReloadOptions::default(),
            handle_sighup: false,
            ready: None,
        }
    }
}

/// Runs the daemon with the wall clock until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    run_with(config, DaemonOptions::default(), shutdown).await
}

/// Runs the daemon until `shutdown` completes, or until a task fails for a reason retrying
/// cannot mend (TLS settings that cannot be built).
pub async fn run_with(
    config: Config,
    mut options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let clock = Arc::clone(&options.clock);
    let metrics = options.metrics.clone();

    // Checking the policy and opening sled read files: blocking work. The policy comes
    // first, so a broken one is refused before anything is opened for writing.
    let engine = {
        let config = config.clone();
        let clock = Arc::clone(&clock);
        tokio::task::spawn_blocking(move || open_engine(&config, clock))
            .await
            .map_err(|e| DaemonError::Task(e.to_string()))??
    };
    let engine = Arc::new(engine);
    check_channels(&config, &engine)?;
    metrics.rules_reloaded(true, clock.now());
    let active = engine.policy();
    tracing::info!(
        store = %config.store.path.display(),
        rules = %config.rules.dir.display(),
        departments = active.policy.departments.len(),
        warnings = active.warnings.len(),
        "daemon: store open, policy loaded"
    );
    for warning in &active.warnings {
        tracing::warn!("daemon: policy warning\n{warning}");
    }
    drop(active);

    // Mail handed to SMTP before the last stop, outcome unknown: settled before the sender
    // runs, as `smtp.in_doubt` says.
    let in_doubt = {
        let store = engine.store().clone();
        let policy = config.smtp.in_doubt;
        let now = clock.now();
        tokio::task::spawn_blocking(move || admin::settle_in_doubt(&store, policy, now))
            .await
            .map_err(|e| DaemonError::Task(e.to_string()))?
            .map_err(|e| DaemonError::Engine(e.into()))?
    };
    metrics.mail_in_doubt((in_doubt.resent.len() + in_doubt.held.len()) as u64);
    metrics.set_outbox_held(in_doubt.held_total as u64);
    if in_doubt.held_total > 0 {
        tracing::warn!(
            held = in_doubt.held_total,
            "outbox: mail is held for an operator (complaintd outbox list --held; complaintd outbox release ID|--all)"
        );
    }

    let (http, http_address) = match &config.http {
        None => (None, None),
        Some(http) => {
            let (server, address) = bind_metrics(http.listen).await?;
            (Some(server), Some(address))
        }
    };

    // Intake (mailboxes, scheduler, reload) stops first; delivery and the endpoint after it.
    let intake = CancellationToken::new();
    let delivery = CancellationToken::new();
    let endpoint = CancellationToken::new();
    let work = BlockingWork::default();
    let scheduler = Scheduler::new();
    let outbox = Arc::new(
        EngineOutbox::new(Arc::clone(&engine), metrics.clone(), work.clone())
            .with_in_doubt(config.smtp.in_doubt),
    );
    let channels: HashMap<String, String> = config
        .mailboxes
        .iter()
        .map(|m| (m.name.clone(), m.channel.clone()))
        .collect();
    let sink = Arc::new(EngineSink::new(
        Arc::clone(&engine),
        channels,
        Arc::clone(&outbox),
        scheduler.clone(),
        metrics.clone(),
        work.clone(),
    ));

    let mut mailboxes: JoinSet<(String, Result<(), ImapError>)> = JoinSet::new();
    let mut imap_options = options.imap.clone();
    imap_options.max_message_bytes = config.mail.max_message_bytes;
    for mailbox in &config.mailboxes {
        let name = mailbox.name.clone();
        let task = imap::run_mailbox(
            mailbox.clone(),
            imap_options.clone(),
            Arc::clone(&sink),
            metrics.clone(),
            intake.clone(),
        );
        mailboxes.spawn(async move { (name, task.await) });
    }

    let mut sender = tokio::spawn(smtp::run_sender(
        config.smtp.clone(),
        options.sender.clone(),
        Arc::clone(&outbox),
        Arc::clone(&clock),
        metrics.clone(),
        delivery.clone(),
    ));

    let scheduler_task = {
        let scheduler = scheduler.clone();
        let engine = Arc::clone(&engine);
        let clock = Arc::clone(&clock);
        let outbox = Arc::clone(&outbox);
        let options = options.scheduler.clone();
        let intake = intake.clone();
        let metrics = metrics.clone();
        let store = engine.store().clone();
        tokio::spawn(async move {
            scheduler
                .run(
                    engine,
                    clock,
                    options,
                    move |_| {
                        // Also tells the change feed that the run is durable.
                        metrics.refresh_outbox_depth(|| store.queue_depth());
                        outbox.notify_queued();
                    },
                    intake,
                )
                .await;
        })
    };

    let (triggers, trigger_rx) = reload::trigger_channel();
    // The watcher lives until the daemon returns.
    let _watcher = if config.rules.watch {
        match reload::watch_rules_dir(&config.rules.dir, triggers.clone()) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, dir = %config.rules.dir.display(), "reload: cannot watch the rules directory; SIGHUP still reloads");
                None
            }
        }
    } else {
        None
    };
    #[cfg(unix)]
    let sighup_task = if options.handle_sighup {
        match reload::forward_sighup(triggers.clone(), intake.clone()) {
            Ok(forward) => Some(tokio::spawn(forward)),
            Err(error) => {
                tracing::warn!(%error, "reload: cannot listen for SIGHUP");
                None
            }
        }
    } else {
        None
    };
    #[cfg(not(unix))]
    let sighup_task: Option<tokio::task::JoinHandle<()>> = None;
    drop(triggers);
    let reload_task = {
        let scheduler = scheduler.clone();
        tokio::spawn(reload::run_reloader(
            Arc::clone(&engine),
            trigger_rx,
            options.reload.clone(),
            metrics.clone(),
            Arc::clone(&clock),
            // New schedules may be due sooner than what the scheduler sleeps on.
            move || scheduler.wake(),
            intake.clone(),
        ))
    };

    let http_task = http.map(|server| {
        let outbox = Arc::clone(&outbox);
        let api = admin::AdminApi::new(
            engine.store().clone(),
            Arc::clone(&clock),
            metrics.clone(),
            work.clone(),
            move || outbox.notify_queued(),
        );
        tokio::spawn(server.serve_with(metrics.clone(), Some(Arc::new(api)), endpoint.clone()))
    });

    tracing::info!(
        mailboxes = config.mailboxes.len(),
        smtp = %format!("{}:{}", config.smtp.host, config.smtp.port),
        http = ?http_address,
        "daemon: running"
    );
    if let Some(ready) = options.ready.take() {
        // Whoever asked may have stopped listening; the daemon runs on regardless.
        let _ = ready.send(Ready {
            engine: Arc::clone(&engine),
            http: http_address,
        });
    }

    // Run until shutdown, or until a task ends by itself (it only does on an error that
    // retrying cannot mend).
    let mut failure: Option<DaemonError> = None;
    let mut sender_ended = false;
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => tracing::info!("daemon: shutting down"),
        Some(ended) = mailboxes.join_next() => {
            failure = Some(match ended {
                Ok((mailbox, Err(source))) => DaemonError::Imap { mailbox, source },
                Ok((mailbox, Ok(()))) => DaemonError::Task(format!("the task of mailbox {mailbox} ended")),
                Err(join) => DaemonError::Task(join.to_string()),
            });
        }
        ended = &mut sender => {
            sender_ended = true;
            failure = Some(match ended {
                Ok(Err(error)) => DaemonError::Smtp(error),
                Ok(Ok(())) => DaemonError::Task("the SMTP sender ended".into()),
                Err(join) => DaemonError::Task(join.to_string()),
            });
        }
    }
    if let Some(error) = &failure {
        tracing::error!(%error, "daemon: a task failed; shutting down");
    }

    // 1. Stop taking work; each task finishes what it is committing.
    intake.cancel();
    while let Some(ended) = mailboxes.join_next().await {
        match ended {
            Ok((mailbox, Err(error))) => {
                tracing::error!(%mailbox, %error, "daemon: mailbox task failed")
            }
            Ok((_, Ok(()))) => {}
            Err(join) => tracing::error!(error = %join, "daemon: mailbox task panicked"),
        }
    }
    for (name, task) in [
        ("scheduler", Some(scheduler_task)),
        ("reload", Some(reload_task)),
        ("sighup", sighup_task),
    ] {
        if let Some(task) = task {
            if let Err(join) = task.await {
                tracing::error!(task = name, error = %join, "daemon: task panicked");
            }
        }
    }
    // 2. The last engine call in flight commits.
    work.wait_idle().await;
    // 3. The sender finishes the mail it is on and records the outcome.
    delivery.cancel();
    if !sender_ended {
        match sender.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "daemon: sender failed"),
            Err(join) => tracing::error!(error = %join, "daemon: sender panicked"),
        }
    }
    work.wait_idle().await;
    // 4. The endpoint answers until here, so a scraper sees the shutdown progress.
    endpoint.cancel();
    if let Some(task) = http_task {
        if let Err(join) = task.await {
            tracing::error!(error = %join, "daemon: metrics endpoint panicked");
        }
    }
    // 5. Everything committed is on disk.
    let store = engine.store().clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))?
        .map_err(DaemonError::Flush)?;
    tracing::info!("daemon: stopped");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Binds the metrics endpoint; returns it with the address it listens on (the real port when
/// port 0 was asked for).
async fn bind_metrics(listen: SocketAddr) -> Result<(MetricsServer, SocketAddr), DaemonError> {
    let error = |source| DaemonError::Http {
        address: listen,
        source,
    };
    let server = MetricsServer::bind(listen).await.map_err(error)?;
    let address = server.local_addr().map_err(error)?;
    Ok((server, address))
}

/// Loads the policy, then opens the store, then builds the engine over both.
fn open_engine(config: &Config, clock: Arc<dyn Clock>) -> Result<Engine, DaemonError> {
    let settings = EngineSettings::from_config(config)?;
    let active =
        ActivePolicy::load(&settings.rules_dir, clock.now()).map_err(DaemonError::Policy)?;
    let store = Store::open_with(&config.store.path, settings.store_settings())
        .map_err(|e| DaemonError::Engine(e.into()))?;
    Ok(Engine::with_policy(store, settings, clock, active)?)
}

/// Every mailbox's channel must be one the policy declares, or its complaints could not be
/// classified.
fn check_channels(config: &Config, engine: &Engine) -> Result<(), DaemonError> {
    let active = engine.policy();
    let declared: Vec<&str> = active
        .policy
        .channels
        .iter()
        .map(|c| c.name.node.as_str())
        .collect();
    let unknown: Vec<String> = config
        .mailboxes
        .iter()
        .enumerate()
        .filter(|(_, m)| !declared.contains(&m.channel.as_str()))
        .map(|(i, m)| {
            format!(
                "mailbox[{i}].channel: `{}` is not a channel of the policy (declared: {})",
                m.channel,
                declared.join(", ")
            )
        })
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::Config(unknown.join("; ")))
    }
}

/// Installs the global `tracing` subscriber the configuration asks for (text or JSON lines on
/// standard error). A `RUST_LOG` variable overrides the configured level.
pub fn init_logging(config: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(&config.level),
    }
    .map_err(|e| format!("log.level `{}`: {e}", config.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// A future that completes on the first SIGTERM or SIGINT (Ctrl-C). The handlers are
/// installed when this is called, not when the future is first polled, so a signal that
/// comes while the daemon starts is not lost. Call it inside the runtime.
pub fn termination_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("daemon: SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("daemon: SIGINT received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C; stopping");
            }
        })
    }
}
