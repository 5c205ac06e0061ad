//! The store's schema version and the migrations that bring an older store up to date.
//!
//! The version lives in the `meta` tree under `schema_version` (a big-endian
//! `u32`). A fresh store gets the current version; an older one runs its
//! migrations in order, recording each step, so a crash mid-way resumes from
//! the last finished step; a newer one is refused, untouched.

use std::collections::BTreeMap;

use super::error::StoreError;
use super::keys;
use super::records::TimerSlot;
use super::trees::{CaseCounters, TreeId};

/// The schema version this build writes.
///
/// 1. The first layout.
/// 2. The events one transaction appends to a case are one record (a JSON
///    array keyed by the first event's sequence number) instead of one
///    record per event.
/// 3. The `timers` index holds each clock's earliest slot only (the clock's
///    list in `timer_clocks` holds them all); a case's event and mail
///    sequence numbers are one record in `counters`; each outbox record
///    holds its mail's bytes (the `outbox_bodies` tree is gone); outgoing
///    Message-IDs of the
///    form `OUTBOX_ID@host` are no longer written to `message_ids` (the
///    ones written before stay valid, so that needs no step).
/// 4. Held outbox entries are listed in the `outbox_held` index, so listing
///    them (at every start, and for the operator) reads only held mail.
/// 5. The mails one transaction queues are found through one key of the
///    due index for all of them (`keys::outbox_due_batch_key`), not one
///    key each. The single keys written before stay valid, so the step
///    changes nothing; the version keeps an older build, which would take a
///    batch key for a mail's, away from the store.
/// 6. A case's clocks are part of its counter record in `counters`; the
///    `timer_clocks` tree (one record per clock) is gone: one key fewer per
///    new complaint.
pub const SCHEMA_VERSION: u32 = 6;

/// Key of the version in the `meta` tree.
pub const VERSION_KEY: &[u8] = b"schema_version";

/// A migration step from version `n` to `n + 1`.
pub(crate) type Migration = fn(&sled::Db) -> Result<(), StoreError>;

/// `MIGRATIONS[i]` upgrades version `i + 1` to `i + 2`. Add steps here,
/// never edit shipped ones.
pub(crate) const MIGRATIONS: &[Migration] = &[
    events_as_groups,
    fewer_keys,
    held_index,
    due_batches,
    clocks_in_counter_records,
];

/// Records rewritten per sled batch while migrating.
const MIGRATION_CHUNK: usize = 10_000;

/// 1 → 2: every single-event record becomes a group of one (a JSON array
/// holding the event), under the same key. A record that already is an
/// array is left alone, so a migration interrupted by a crash just runs
/// again; each chunk is written atomically.
fn events_as_groups(db: &sled::Db) -> Result<(), StoreError> {
    let events = db.open_tree(TreeId::Events.name())?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for item in events.iter() {
        let (key, value) = item?;
        if value.first() == Some(&b'[') {
            continue;
        }
        let mut group = Vec::with_capacity(value.len() + 2);
        group.push(b'[');
        group.extend_from_slice(&value);
        group.push(b']');
        batch.insert(key, group);
        in_batch += 1;
        if in_batch == MIGRATION_CHUNK {
            events.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    events.apply_batch(batch)?;
    Ok(())
}

/// 2 → 3: the three steps below.
fn fewer_keys(db: &sled::Db) -> Result<(), StoreError> {
    earliest_timer_per_clock(db)?;
    case_counters_in_one_record(db)?;
    mail_bytes_in_outbox_records(db)
}

/// 3 → 4: every held outbox entry gets its key in `outbox_held`. Writing a
/// key that is there already changes nothing, so an interrupted step just
/// runs again.
fn held_index(db: &sled::Db) -> Result<(), StoreError> {
    let outbox = db.open_tree(TreeId::Outbox.name())?;
    let held = db.open_tree(TreeId::OutboxHeld.name())?;
    let mut batch = sled::Batch::default();
    for item in outbox.iter() {
        let (key, value) = item?;
        let (entry, _) = super::outbox::split_record(&key, &value)?;
        if matches!(entry.state, super::outbox::OutboxState::Held { .. }) {
            batch.insert(key, Vec::new());
        }
    }
    held.apply_batch(batch)?;
    Ok(())
}

/// 4 → 5: nothing to convert (see [`SCHEMA_VERSION`]).
fn due_batches(_db: &sled::Db) -> Result<(), StoreError> {
    Ok(())
}

/// Name of the tree that held the mails' bytes up to schema 2.
const OUTBOX_BODIES_TREE: &str = "outbox_bodies";

/// 2 → 3: every outbox entry gets its mail's bytes appended (see
/// `outbox::encode_record`), in atomic chunks; then the `outbox_bodies`
/// tree is dropped. An entry already converted holds a zero byte and is
/// skipped, so an interrupted run just runs again.
fn mail_bytes_in_outbox_records(db: &sled::Db) -> Result<(), StoreError> {
    let outbox = db.open_tree(TreeId::Outbox.name())?;
    let bodies = db.open_tree(OUTBOX_BODIES_TREE)?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for item in outbox.iter() {
        let (key, value) = item?;
        if value.contains(&0) {
            continue;
        }
        let bytes = bodies.get(&key)?.ok_or_else(|| {
            StoreError::corrupt(OUTBOX_BODIES_TREE, &key, "an outbox entry without its mail")
        })?;
        let mut record = Vec::with_capacity(value.len() + 1 + bytes.len());
        record.extend_from_slice(&value);
        record.push(0);
        record.extend_from_slice(&bytes);
        batch.insert(key, record);
        in_batch += 1;
        if in_batch == MIGRATION_CHUNK {
            outbox.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    outbox.apply_batch(batch)?;
    db.flush()?;
    db.drop_tree(OUTBOX_BODIES_TREE)?;
    Ok(())
}

/// 2 → 3: a case's event counter (`e ++ str(case)`, 8 bytes) and its mail
/// counters (`m ++ str(case) ++ str(purpose)`) become one [`CaseCounters`]
/// record under the event counter's key, in one atomic batch. A record
/// already converted is read as such and no mail counter is left for it,
/// so an interrupted run just runs again.
fn case_counters_in_one_record(db: &sled::Db) -> Result<(), StoreError> {
    let counters = db.open_tree(TreeId::Counters.name())?;
    let bad = |key: &[u8], why: &str| StoreError::corrupt(TreeId::Counters.name(), key, why);
    let mut records: BTreeMap<String, CaseCounters> = BTreeMap::new();
    for item in counters.scan_prefix(b"e") {
        let (key, value) = item?;
        let case = keys::KeyReader::new(&key[1..])
            .str()
            .ok_or_else(|| bad(&key, "bad event counter key"))?
            .to_owned();
        let record = match <[u8; 8]>::try_from(value.as_ref()) {
            Ok(raw) => CaseCounters {
                next_event: u64::from_be_bytes(raw),
                ..CaseCounters::default()
            },
            Err(_) => {
                CaseCounters::decode(&value).ok_or_else(|| bad(&key, "not an event counter"))?
            }
        };
        records.insert(case, record);
    }
    let mut batch = sled::Batch::default();
    for item in counters.scan_prefix(b"m") {
        let (key, value) = item?;
        let mut reader = keys::KeyReader::new(&key[1..]);
        let (Some(case), Some(purpose)) = (reader.str(), reader.str()) else {
            return Err(bad(&key, "bad mail counter key"));
        };
        let sequence = <[u8; 8]>::try_from(value.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| bad(&key, "mail counter is not 8 bytes"))?;
        records
            .entry(case.to_owned())
            .or_default()
            .mails
            .insert(purpose.to_owned(), sequence);
        batch.remove(key);
    }
    for (case, record) in &records {
        batch.insert(
            keys::event_sequence_key(&crate::case::CaseId(case.clone())),
            record.encode(),
        );
    }
    counters.apply_batch(batch)?;
    Ok(())
}

/// 2 → 3: the `timers` index keeps each clock's earliest slot and drops the
/// keys of its later slots (they stay in the clock's list). Removing a key
/// that is already gone is harmless, so an interrupted run just runs again.
fn earliest_timer_per_clock(db: &sled::Db) -> Result<(), StoreError> {
    let clocks = db.open_tree(TIMER_CLOCKS_TREE)?;
    let timers = db.open_tree(TreeId::Timers.name())?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for item in clocks.iter() {
        let (key, value) = item?;
        let (case, deadline, mut slots) = stored_clock(&key, &value)?;
        slots.sort_by_key(|s| (s.due, s.step));
        for later in slots.iter().skip(1) {
            batch.remove(keys::timer_key(
                later.due,
                &case,
                &deadline,
                later.step as u64,
            ));
            in_batch += 1;
        }
        if in_batch >= MIGRATION_CHUNK {
            timers.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    timers.apply_batch(batch)?;
    Ok(())
}

/// Name of the tree that held one record per clock up to schema 5.
const TIMER_CLOCKS_TREE: &str = "timer_clocks";

/// A record of the `timer_clocks` tree: its case, its deadline, its slots.
fn stored_clock(
    key: &[u8],
    value: &[u8],
) -> Result<(crate::case::CaseId, String, Vec<TimerSlot>), StoreError> {
    let bad = |reason: &str| StoreError::corrupt(TIMER_CLOCKS_TREE, key, reason);
    let mut reader = keys::KeyReader::new(key);
    let case = crate::case::CaseId(reader.str().ok_or_else(|| bad("bad clock key"))?.to_owned());
    let deadline = reader.str().ok_or_else(|| bad("bad clock key"))?.to_owned();
    let slots = serde_json::from_slice(value).map_err(|e| bad(&e.to_string()))?;
    Ok((case, deadline, slots))
}

/// 5 → 6: each clock's slots move from its `timer_clocks` record into its
/// case's counter record (`trees::CaseCounters`), one atomic batch per
/// 10,000 cases (a clock of a case without one is left behind); then the
/// `timer_clocks` tree is dropped. Putting a clock's slots into a record
/// that has them already changes nothing, so an interrupted run just runs
/// again.
fn clocks_in_counter_records(db: &sled::Db) -> Result<(), StoreError> {
    let clocks = db.open_tree(TIMER_CLOCKS_TREE)?;
    let counters = db.open_tree(TreeId::Counters.name())?;
    let mut by_case: BTreeMap<crate::case::CaseId, BTreeMap<String, Vec<TimerSlot>>> =
        BTreeMap::new();
    for item in clocks.iter() {
        let (key, value) = item?;
        let (case, deadline, slots) = stored_clock(&key, &value)?;
        if !slots.is_empty() {
            by_case.entry(case).or_default().insert(deadline, slots);
        }
    }
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for (case, case_clocks) in by_case {
        let key = keys::event_sequence_key(&case);
        // Every case has a counter record (its first event moved it); a
        // clock without one is left over from a case that is gone, and its
        // timers are dropped when they fall due.
        let Some(bytes) = counters.get(&key)? else {
            continue;
        };
        let mut record = CaseCounters::decode_stored(&case, &bytes)?;
        record.clocks.extend(case_clocks);
        batch.insert(key, record.encode());
        in_batch += 1;
        if in_batch == MIGRATION_CHUNK {
            counters.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    counters.apply_batch(batch)?;
    db.flush()?;
    db.drop_tree(TIMER_CLOCKS_TREE)?;
    Ok(())
}

/// Reads the stored version, initialises or migrates, and returns the
/// version the store now has.
pub(crate) fn prepare(db: &sled::Db, meta: &sled::Tree) -> Result<u32, StoreError> {
    prepare_with(db, meta, SCHEMA_VERSION, MIGRATIONS)
}

pub(crate) fn prepare_with(
    db: &sled::Db,
    meta: &sled::Tree,
    current: u32,
    migrations: &[Migration],
) -> Result<u32, StoreError> {
    let stored = match meta.get(VERSION_KEY)? {
        Some(raw) => {
            let bytes: [u8; 4] = raw.as_ref().try_into().map_err(|_| {
                StoreError::corrupt("meta", VERSION_KEY, "schema version is not 4 bytes")
            })?;
            u32::from_be_bytes(bytes)
        }
        None => {
            if !db.open_tree(TreeId::Cases.name())?.is_empty() {
                return Err(StoreError::corrupt(
                    "meta",
                    VERSION_KEY,
                    "the store holds cases but no schema version",
                ));
            }
            meta.insert(VERSION_KEY, &current.to_be_bytes())?;
            db.flush()?;
            return Ok(current);
        }
    };
    if stored > current {
        return Err(StoreError::SchemaTooNew {
            found: stored,
            supported: current,
        });
    }
    for from in stored..current {
        let step = usize::try_from(from)
            .ok()
            .and_then(|f| f.checked_sub(1))
            .and_then(|i| migrations.get(i))
            .ok_or(StoreError::MissingMigration { from, to: from + 1 })?;
        step(db)?;
        meta.insert(VERSION_KEY, &(from + 1).to_be_bytes())?;
        db.flush()?;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary() -> (sled::Db, sled::Tree) {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("temporary db");
        let meta = db.open_tree("meta").expect("meta tree");
        (db, meta)
    }

    fn version(meta: &sled::Tree) -> Option<Vec<u8>> {
        meta.get(VERSION_KEY).expect("read").map(|v| v.to_vec())
    }

    fn mark_v2(db: &sled::Db) -> Result<(), StoreError> {
        db.insert(b"migrated-to-2", b"yes")?;
        Ok(())
    }

    fn mark_v3(db: &sled::Db) -> Result<(), StoreError> {
        assert_eq!(
            db.get(b"migrated-to-2").expect("read").as_deref(),
            Some(&b"yes"[..]),
            "steps run in order"
        );
        db.insert(b"migrated-to-3", b"yes")?;
        Ok(())
    }

    #[test]
    fn a_fresh_store_gets_the_current_version() {
        let (db, meta) = temporary();
        assert_eq!(
            prepare_with(&db, &meta, 3, &[mark_v2, mark_v3]).ok(),
            Some(3)
        );
        assert_eq!(version(&meta), Some(3u32.to_be_bytes().to_vec()));
        assert!(db.get(b"migrated-to-2").expect("read").is_none());
    }

    #[test]
    fn an_old_store_runs_every_step_in_order() {
        let (db, meta) = temporary();
        meta.insert(VERSION_KEY, &1u32.to_be_bytes())
            .expect("write");
        assert_eq!(
            prepare_with(&db, &meta, 3, &[mark_v2, mark_v3]).ok(),
            Some(3)
        );
        assert!(db.get(b"migrated-to-3").expect("read").is_some());
        assert_eq!(version(&meta), Some(3u32.to_be_bytes().to_vec()));
    }

    #[test]
    fn a_missing_step_is_an_error_and_keeps_the_old_version() {
        let (db, meta) = temporary();
        meta.insert(VERSION_KEY, &1u32.to_be_bytes())
            .expect("write");
        let err = prepare_with(&db, &meta, 3, &[mark_v2]).expect_err("no step 2→3");
        assert!(
            matches!(err, StoreError::MissingMigration { from: 2, to: 3 }),
            "{err}"
        );
        assert_eq!(version(&meta), Some(2u32.to_be_bytes().to_vec()));
    }

    #[test]
    fn a_newer_store_is_refused_untouched() {
        let (db, meta) = temporary();
        meta.insert(VERSION_KEY, &9u32.to_be_bytes())
            .expect("write");
        let err = prepare_with(&db, &meta, 1, &[]).expect_err("too new");
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    found: 9,
                    supported: 1
                }
            ),
            "{err}"
        );
        assert_eq!(version(&meta), Some(9u32.to_be_bytes().to_vec()));
    }
}
