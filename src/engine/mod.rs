//! The engine: the synchronous core that turns incoming mail, due timers,
//! lifecycle events and schedules into cases, events, timers and outgoing mail.
//!
//! It is the only place where the parts meet: `mail` (parse, classify,
//! tokens, MIME), `rules` (evaluate, apply), `store` (one transaction per
//! batch). The daemon drives it from its async tasks, `simulate` and the tests
//! drive it with a [`ManualClock`](crate::clock::ManualClock); it does no
//! network I/O and reads the time only from its [`Clock`] or a `now`
//! argument. Writes are serialised by one lock, so concurrent callers never
//! make conflicting commits; reads (`store()`) need no lock.
//!
//! See `docs/engine.md` for the flows, the events each one writes and the
//! guarantees.

mod clocks;
mod compose;
mod ingest;
pub mod inspect;
mod lookup;
mod policy;
mod retention;
mod schedules;
mod timers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

pub use ingest::{
    IngestReport, MessageReport, Outcome, ParseAhead, RawMessage, CUSTOMER_REPLY,
    DEFAULT_REOPEN_WINDOW_DAYS, DEPARTMENT_REPLY,
};
pub use policy::{ActivePolicy, ACKNOWLEDGEMENT_TEMPLATE, FORWARD_TEMPLATE};
pub use retention::PURGE_INTERVAL_HOURS;
pub use timers::DUE_TIMER_STEP;

/// Sizes rayon's global pool, which parses fetched mail and renders queued
/// mail beside the ingest's serial pass: one thread fewer than there are
/// cores, so that the pool and the serial pass do not take turns on one core.
/// `RAYON_NUM_THREADS` in the environment overrides the size. Call it once,
/// early, in a binary; without it rayon starts a thread per core.
pub fn configure_worker_pool() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = rayon::ThreadPoolBuilder::new();
    // rayon reads RAYON_NUM_THREADS itself when no size is given.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        builder = builder.num_threads(cores.saturating_sub(1).max(1));
    }
    let built = builder
        .thread_name(|index| format!("complaintd-pool-{index}"))
        .build_global();
    if let Err(error) = built {
        tracing::debug!(%error, "the worker pool was already running");
    }
}

use crate::case::{Address, CaseId};
use crate::clock::Clock;
use crate::config::Config;
use crate::mail::classify::OwnMailboxes;
use crate::mail::token::ReplySecret;
use crate::store::{DeliveryFailure, OutboxEntry, Store, StoreError, StoreSettings};
use compose::Letterhead;

/// What the engine needs to know besides the policy.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The policy directory (`*.rules` and `templates/`).
    pub rules_dir: PathBuf,
    /// The complaint address; reply-token addresses are its plus-addresses.
    pub complaint_address: String,
    /// From (header and envelope) of every mail the daemon sends.
    pub sender_address: String,
    /// Further addresses that are the daemon itself (loops).
    pub own_addresses: Vec<String>,
    pub reply_secret: ReplySecret,
    /// How long a department's reply token stays valid.
    pub token_valid_days: u32,
    /// Domain of the daemon's Message-IDs.
    pub message_id_host: String,
    /// Most acknowledgements one sender gets per hour.
    pub acks_per_sender_per_hour: u32,
    pub case_prefix: String,
    pub case_number_width: usize,
    /// The store's page cache, in MiB.
    pub store_cache_mb: u64,
    /// The zone case numbers take their year from, and times are shown in
    /// when the policy has no calendar.
    pub time_zone: Tz,
    /// Larger messages are quarantined with their headers only.
    pub max_message_bytes: u64,
    /// The organisation's name, for templates.
    pub organisation: String,
    /// How many days after closing a customer's new mail reopens the case.
    pub reopen_window_days: u32,
    /// Days a closed case is kept after its last event (the daily purge,
    /// [`Engine::purge_if_due`]); 0 keeps everything for ever.
    pub retention_days: u32,
}

impl EngineSettings {
    /// The settings of a configuration file; reads the reply-token secret.
    pub fn from_config(config: &Config) -> Result<EngineSettings, EngineError> {
        let secret_path = &config.mail.reply_token_secret_file;
        let bytes = std::fs::read(secret_path).map_err(|e| {
            EngineError::Config(format!(
                "mail.reply_token_secret_file: cannot read {}: {e}",
                secret_path.display()
            ))
        })?;
        let reply_secret = ReplySecret::new(bytes.trim_ascii().to_vec())
            .map_err(|e| EngineError::Config(format!("mail.reply_token_secret_file: {e}")))?;
        let time_zone = config.time_zone.parse::<Tz>().map_err(|_| {
            EngineError::Config(format!(
                "time_zone: unknown time zone `{}`",
                config.time_zone
            ))
        })?;
        Ok(EngineSettings {
            rules_dir: config.rules.dir.clone(),
            complaint_address: config.mail.complaint_address.clone(),
            sender_address: config.smtp.from.clone(),
            own_addresses: config.mail.own_addresses.clone(),
            reply_secret,
            token_valid_days: config.mail.token_valid_days,
            message_id_host: config.mail.message_id_host.clone(),
            acks_per_sender_per_hour: config.mail.acks_per_sender_per_hour,
            case_prefix: config.store.case_prefix.clone(),
            case_number_width: usize::from(config.store.case_number_width),
            store_cache_mb: config.store.cache_mb,
            time_zone,
            max_message_bytes: config.mail.max_message_bytes,
            organisation: config.mail.organisation.clone(),
            reopen_window_days: config.mail.reopen_window_days,
            retention_days: config.store.retention_days,
        })
    }

    /// How the store numbers cases and names mail.
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            case_prefix: self.case_prefix.clone(),
            case_number_width: self.case_number_width,
            case_number_tz: self.time_zone,
            cache_mb: self.store_cache_mb,
        }
    }

    /// Every address that is the daemon: mail from them is a loop.
    fn all_own_addresses(&self) -> Vec<String> {
        let mut all = self.own_addresses.clone();
        all.push(self.complaint_address.clone());
        all.push(self.sender_address.clone());
        for address in &mut all {
            *address = address.trim().to_lowercase();
        }
        all.sort();
        all.dedup();
        all
    }
}

/// Why an engine operation failed. Nothing of a failed operation was committed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy could not be loaded (at start; a reload keeps the old one).
    #[error("the policy cannot be loaded:\n{}", .0.join("\n"))]
    Policy(Vec<String>),
    #[error("configuration: {0}")]
    Config(String),
    #[error("unknown case {0}")]
    UnknownCase(CaseId),
    /// A state change the lifecycle does not allow.
    #[error("{0}")]
    Transition(String),
}

/// What a successful [`Engine::reload`] loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub dir: PathBuf,
    pub rule_files: usize,
    pub departments: usize,
    pub schedules: usize,
    /// Checker warnings, rendered.
    pub warnings: Vec<String>,
    pub loaded_at: DateTime<Utc>,
}

/// An outbox entry that is due, with the bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMail {
    pub entry: OutboxEntry,
    pub bytes: Vec<u8>,
}

/// The engine. `Send + Sync`; share it in an `Arc`.
pub struct Engine {
    store: Store,
    settings: EngineSettings,
    own_addresses: Vec<String>,
    /// `own_addresses` as classification compares them.
    own_mailboxes: OwnMailboxes,
    clock: Arc<dyn Clock>,
    active: RwLock<Arc<ActivePolicy>>,
    /// Serialises everything that commits case changes.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("rules_dir", &self.settings.rules_dir)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the store at `store_path` and loads the policy from `settings.rules_dir`.
    pub fn open(
        settings: EngineSettings,
        store_path: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        let store = Store::open_with(store_path, settings.store_settings())?;
        let active =
            ActivePolicy::load(&settings.rules_dir, clock.now()).map_err(EngineError::Policy)?;
        Engine::with_policy(store, settings, clock, active)
    }

    /// Opens everything a configuration file names.
    pub fn from_config(config: &Config, clock: Arc<dyn Clock>) -> Result<Engine, EngineError> {
        let settings = EngineSettings::from_config(config)?;
        Engine::open(settings, &config.store.path, clock)
    }

    /// An engine over an open store and a policy loaded elsewhere.
    pub fn with_policy(
        store: Store,
        settings: EngineSettings,
        clock: Arc<dyn Clock>,
        active: ActivePolicy,
    ) -> Result<Engine, EngineError> {
        let own_addresses = settings.all_own_addresses();
        let engine = Engine {
            store,
            own_mailboxes: OwnMailboxes::new(&own_addresses),
            own_addresses,
            settings,
            clock,
            active: RwLock::new(Arc::new(active)),
            writer: Mutex::new(()),
        };
        engine.record_schedule_baselines()?;
        Ok(engine)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The policy running now.
    pub fn policy(&self) -> Arc<ActivePolicy> {
        // A poisoned lock still holds a complete policy: swapping an Arc cannot half-happen.
        match self.active.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the policy directory again. On any error the running policy
    /// stays and the rendered errors are returned for the log.
    pub fn reload(&self) -> Result<ReloadReport, Vec<String>> {
        let now = self.clock.now();
        let dir = self.settings.rules_dir.clone();
        let active = ActivePolicy::load(&dir, now)?;
        let report = ReloadReport {
            rule_files: active.policy.sources.files().count(),
            departments: active.policy.departments.len(),
            schedules: active.policy.schedules.len(),
            warnings: active.warnings.clone(),
            loaded_at: now,
            dir,
        };
        match self.active.write() {
            Ok(mut guard) => *guard = Arc::new(active),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(active),
        }
        if let Err(error) = self.record_schedule_baselines() {
            tracing::error!(%error, "reload: cannot record the new schedules' start");
        }
        Ok(report)
    }

    fn write_lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere leaves nothing half-written here.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the daemon signs its mail at `at`.
    fn letterhead(&self, active: &ActivePolicy, at: DateTime<Utc>) -> Arc<Letterhead> {
        let name =
            (!self.settings.organisation.is_empty()).then_some(self.settings.organisation.as_str());
        let expires = (at + Duration::days(i64::from(self.settings.token_valid_days))).date_naive();
        Arc::new(Letterhead {
            from: Address::new(&self.settings.sender_address, name),
            complaint_address: self.settings.complaint_address.clone(),
            secret: self.settings.reply_secret.clone(),
            token_expires: expires,
            organisation: self.settings.organisation.clone(),
            host: self.settings.message_id_host.clone(),
            zone: active.display_zone(self.settings.time_zone),
            at,
        })
    }

    // ----- the outbox, for the SMTP sender -----

    /// Outbox entries due at `now` with their bytes, earliest first, at most
    /// `limit`. An entry whose bytes are missing can never be sent: it is
    /// marked permanently failed instead of blocking the queue.
    pub fn due_mail(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueMail>, EngineError> {
        let mut due = Vec::new();
        for entry in self.store.due_outbox(now, limit)? {
            match self.store.outbox_message(&entry.id)? {
                Some(bytes) => due.push(DueMail { entry, bytes }),
                None => {
                    tracing::error!(id = %entry.id, "outbox entry without its message bytes");
                    self.store.outbox_failed(
                        &entry.id,
                        DeliveryFailure::Permanent {
                            error: "the stored message is missing".into(),
                        },
                        now,
                    )?;
                }
            }
        }
        Ok(due)
    }

    /// The SMTP server accepted the mail.
    pub fn mail_sent(&self, id: &str, at: DateTime<Utc>) -> Result<OutboxEntry, EngineError> {
        Ok(self.store.outbox_sent(id, at)?)
    }

    /// A delivery attempt failed (retry later, or give up).
    pub fn mail_failed(
        &self,
        id: &str,
        failure: DeliveryFailure,
        at: DateTime<Utc>,
    ) -> Result<OutboxEntry, EngineError> {
        Ok(self.store.outbox_failed(id, failure, at)?)
    }

    /// When the next outbox entry is due, for the sender's sleep.
    pub fn next_mail_due(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        Ok(self.store.next_outbox_due()?)
    }
}

// The daemon shares one engine between its tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
};
