//! Change-set operations the engine needs besides cases: a bounce failing the
//! outbox entry it reports on, and the record of how far each schedule has run.
//!
//! They ride in a [`ChangeSet`] like everything else, so a bounce and the
//! failure it causes, or a digest and its schedule's progress, commit together.

use chrono::{DateTime, Utc};

use super::batch::{append_event, ChangeSet};
use super::error::StoreError;
use super::keys::{self, KeyBuf};
use super::outbox::{put_entry, read_record, OutboxState};
use super::trees::{TreeId, Tx, TxResult};
use super::Store;
use crate::case::{Event, EventKind};

#[derive(Debug, Clone)]
pub(super) enum ExtraOp {
    FailOutbox {
        outbox_id: String,
        error: String,
        at: DateTime<Utc>,
    },
    ScheduleRun {
        schedule: String,
        until: DateTime<Utc>,
    },
}

/// Key of a schedule's progress in the `counters` tree.
fn schedule_key(schedule: &str) -> Vec<u8> {
    KeyBuf::new().tail(b"s").str(schedule).build()
}

impl ChangeSet {
    /// Marks an outbox entry permanently failed (a bounce reported it), with
    /// its case's `MailFailed` event. An entry already failed permanently, or
    /// one the store does not have, is left as it is.
    pub fn fail_outbox(&mut self, outbox_id: &str, error: &str, at: DateTime<Utc>) {
        self.extra.push(ExtraOp::FailOutbox {
            outbox_id: outbox_id.to_owned(),
            error: error.to_owned(),
            at,
        });
    }

    /// Records that every tick of `schedule` up to and including `until`
    /// has been handled.
    pub fn record_schedule_run(&mut self, schedule: &str, until: DateTime<Utc>) {
        self.extra.push(ExtraOp::ScheduleRun {
            schedule: schedule.to_owned(),
            until,
        });
    }
}

impl Store {
    /// Up to when the ticks of `schedule` have been handled, if ever recorded.
    pub fn schedule_handled_until(
        &self,
        schedule: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let key = schedule_key(schedule);
        match self.tree(TreeId::Counters).get(&key)? {
            None => Ok(None),
            Some(raw) => keys::decode_time(&raw)
                .map(Some)
                .ok_or_else(|| StoreError::corrupt(TreeId::Counters.name(), &key, "not a time")),
        }
    }
}

pub(super) fn apply(tx: &Tx<'_>, op: &ExtraOp) -> TxResult<()> {
    match op {
        ExtraOp::FailOutbox {
            outbox_id,
            error,
            at,
        } => {
            let Some((entry, bytes)) = read_record(tx, outbox_id)? else {
                return Ok(());
            };
            if matches!(entry.state, OutboxState::PermanentFailure { .. }) {
                return Ok(());
            }
            let mut next = entry.clone();
            next.state = OutboxState::PermanentFailure {
                at: *at,
                error: error.clone(),
            };
            put_entry(tx, Some(&entry), &next, &bytes)?;
            if let Some(case) = &entry.case {
                append_event(
                    tx,
                    case,
                    &Event {
                        at: *at,
                        kind: EventKind::MailFailed {
                            outbox_id: entry.id.clone(),
                            permanent: true,
                            reason: error.clone(),
                        },
                    },
                )?;
            }
            Ok(())
        }
        ExtraOp::ScheduleRun { schedule, until } => tx.put(
            TreeId::Counters,
            schedule_key(schedule),
            keys::time_key(*until).to_vec(),
        ),
    }
}
