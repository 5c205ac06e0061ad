//! The engine on a temporary store and a manual clock, for tests that work
//! cases by raw mail (`tests/lifecycle.rs`, `tests/finished_cases.rs`).

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use complaintd::case::CaseId;
use complaintd::clock::ManualClock;
use complaintd::engine::{Engine, EngineSettings};
use complaintd::mail::token::ReplySecret;
use complaintd::store::{OutboxEntry, Store};
use tempfile::TempDir;

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

/// Where a harness takes its policy from, and who the daemon is.
pub struct Setup<'a> {
    /// The `*.rules` files, relative to the crate's root.
    pub rules: &'a str,
    /// The organisation's mail domain: the complaint address is
    /// `complaints@DOMAIN`, Message-IDs are `…@mail.DOMAIN`.
    pub domain: &'a str,
    pub organisation: &'a str,
    pub secret: &'a [u8],
}

/// Copies the `*.rules` files of `setup.rules` and the project's default
/// templates (`rules/templates/`) into `dir`.
fn copy_policy(setup: &Setup<'_>, dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    for entry in std::fs::read_dir(root.join(setup.rules)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rules") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    for entry in std::fs::read_dir(root.join("rules/templates")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("templates").join(path.file_name().unwrap())).unwrap();
    }
}

fn settings(setup: &Setup<'_>, rules: &Path) -> EngineSettings {
    let complaints = format!("complaints@{}", setup.domain);
    EngineSettings {
        rules_dir: rules.to_owned(),
        complaint_address: complaints.clone(),
        sender_address: complaints,
        own_addresses: Vec::new(),
        reply_secret: ReplySecret::new(setup.secret.to_vec()).unwrap(),
        token_valid_days: 90,
        message_id_host: format!("mail.{}", setup.domain),
        acks_per_sender_per_hour: 10,
        case_prefix: "TS".into(),
        case_number_width: 6,
        store_cache_mb: complaintd::store::DEFAULT_CACHE_MB,
        time_zone: chrono_tz::Asia::Shanghai,
        max_message_bytes: 1024 * 1024,
        organisation: setup.organisation.into(),
        reopen_window_days: 30,
        retention_days: complaintd::config::DEFAULT_RETENTION_DAYS,
    }
}

pub struct Harness {
    _dir: TempDir,
    pub clock: ManualClock,
    pub engine: Engine,
    pub next_uid: Cell<u32>,
    pub next_message: Cell<u32>,
}

impl Harness {
    /// The engine on a copy of `setup`'s policy, on a Tuesday morning in
    /// Shanghai, in working hours.
    pub fn open(setup: &Setup<'_>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        copy_policy(setup, &rules);
        let clock = ManualClock::new(at("2026-11-24T10:00:00+08:00"));
        let engine = Engine::open(
            settings(setup, &rules),
            &dir.path().join("store"),
            Arc::new(clock.clone()),
        )
        .unwrap_or_else(|e| panic!("the engine opens on {}: {e}", setup.rules));
        Harness {
            _dir: dir,
            clock,
            engine,
            next_uid: Cell::new(1),
            next_message: Cell::new(1),
        }
    }

    pub fn store(&self) -> &Store {
        self.engine.store()
    }

    pub fn outbox(&self, id: &CaseId) -> Vec<OutboxEntry> {
        self.store().outbox_of_case(id).unwrap()
    }

    /// The newest outbox entry of a purpose.
    pub fn last_mail(&self, id: &CaseId, purpose: &str) -> OutboxEntry {
        self.outbox(id)
            .into_iter()
            .filter(|e| e.purpose == purpose)
            .max_by_key(|e| e.sequence)
            .unwrap_or_else(|| panic!("no {purpose} mail"))
    }
}
