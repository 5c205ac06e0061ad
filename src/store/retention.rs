//! The retention purge: closed cases whose last event is older than the
//! retention go with everything that points at them, and so do old
//! quarantined mail and acknowledgement counters of past hours.
//!
//! Candidates are found by a scan that holds no lock. Each chunk of them is
//! then planned and removed while holding the store's writer lock (which
//! every transaction takes), so nothing can commit between reading what a
//! case owns and removing it; the transaction itself re-checks that each
//! case and its counter record are still exactly what the plan read.
//! Which attachment contents other cases still need is known from one walk
//! before the chunks and a watch on the references added since
//! ([`RefWatch`]), so no chunk walks all references under the lock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

use super::batch::index_entries;
use super::error::StoreError;
use super::keys::{self, KeyBuf, KeyReader};
use super::outbox::{
    forget_case_in_due_batch, read_record, split_record, OutboxEntry, OutboxState, NO_CASE_SCOPE,
};
use super::records::{normalize_message_id, MessageRecord, QuarantineRecord};
use super::trees::{abort, decode, CaseCounters, TreeId};
use super::Store;
use crate::case::{Case, CaseId, Event, EventKind};

/// Cases removed per transaction by default: small enough that a purge
/// holds up an ingest for milliseconds, not seconds.
pub const PURGE_CHUNK_CASES: usize = 200;

/// How long acknowledgement counters are kept after their hour ended: the
/// rate limit only ever reads the current hour.
const ACK_COUNTER_GRACE_HOURS: i64 = 24;

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Cases removed with their events, timers, indexes and counters.
    pub cases: usize,
    /// Message-ID records of incoming mail of those cases.
    pub incoming_mails: usize,
    /// Outbox entries (the sent mail's bytes) of those cases, and old mail of
    /// no case (digests).
    pub outgoing_mails: usize,
    /// Attachment contents no remaining case refers to.
    pub attachments: usize,
    /// Quarantined mails (record and raw bytes).
    pub quarantined: usize,
    /// Message-ID records of discarded mail (auto-replies, loops).
    pub discarded: usize,
    /// Acknowledgement counters of hours long past.
    pub ack_counters: usize,
}

impl PurgeReport {
    /// Whether the purge removed nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == PurgeReport::default()
    }

    fn add(&mut self, other: PurgeReport) {
        self.cases += other.cases;
        self.incoming_mails += other.incoming_mails;
        self.outgoing_mails += other.outgoing_mails;
        self.attachments += other.attachments;
        self.quarantined += other.quarantined;
        self.discarded += other.discarded;
        self.ack_counters += other.ack_counters;
    }
}

/// Key in `counters` of the time the last purge finished.
fn last_purge_key() -> Vec<u8> {
    KeyBuf::new().tail(b"p").build()
}

/// What the walk over `message_ids` found: per candidate case the
/// Message-IDs pointing at it, and the discarded mail older than the cutoff.
#[derive(Debug, Default)]
struct MessageScan {
    linked: HashMap<CaseId, Vec<String>>,
    discarded: Vec<String>,
}

/// Attachment contents given a new reference while a purge runs. A purge
/// walks the references once, without the lock, before its chunks; a
/// content referred to since (or by a commit sled failed, which may have
/// written) is kept. Transactions report here while any purge watches.
#[derive(Debug, Default)]
pub(crate) struct RefWatch {
    watchers: usize,
    referenced: HashSet<String>,
}

impl RefWatch {
    /// Notes the contents a transaction referred cases to.
    pub(crate) fn saw(&mut self, referenced: Vec<String>) {
        if self.watchers > 0 {
            self.referenced.extend(referenced);
        }
    }
}

/// Watches new attachment references while it lives.
struct Watching<'s> {
    watch: &'s Mutex<RefWatch>,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        watch.watchers -= 1;
        if watch.watchers == 0 {
            watch.referenced.clear();
        }
    }
}

/// Who refers to each attachment content a candidate case refers to, as
/// the walk before the chunks found it.
#[derive(Debug, Default)]
struct AttachmentUsers {
    by_content: HashMap<String, ContentUsers>,
    /// Candidates removed by the chunks so far.
    purged: HashSet<CaseId>,
}

#[derive(Debug, Default)]
struct ContentUsers {
    /// A case that is no candidate refers to it.
    kept_case: bool,
    candidates: HashSet<CaseId>,
}

/// Everything one case owns, read under the writer lock.
struct CasePurge {
    id: CaseId,
    /// The case record as read: the transaction removes it only unchanged.
    case_bytes: sled::IVec,
    /// The counter record as read: any event or mail added since moved it.
    counter_bytes: Option<sled::IVec>,
    /// Every key to remove, attachment contents aside.
    keys: Vec<(TreeId, Vec<u8>)>,
    /// The due batch keys that may list its mails (`forget_case_in_due_batch`).
    due_batches: BTreeSet<Vec<u8>>,
    incoming_mails: usize,
    outgoing_mails: usize,
    /// SHA-256 of each attachment the case refers to.
    attachments: Vec<String>,
}

impl Store {
    /// Removes what the retention no longer allows: every case that is not
    /// open, whose last event (or opening, without events) is older than
    /// `now - retention` and none of whose outgoing mails is still to be sent
    /// or undecided (only sent and permanently failed mail lets a case go);
    /// quarantined mail, records of discarded mail and sent mail of no case
    /// (digests) older than that;
    /// acknowledgement counters of hours
    /// that ended a day or more before `now`. Cases go at most `max_cases`
    /// per transaction. A `retention` of zero or less purges nothing (zero
    /// days is "keep for ever" in the configuration). On success the time is
    /// recorded ([`Store::last_purge`]).
    pub fn purge_expired(
        &self,
        now: DateTime<Utc>,
        retention: Duration,
        max_cases: usize,
    ) -> Result<PurgeReport, StoreError> {
        self.purge_expired_guarded(now, retention, max_cases, || ())
    }

    /// [`Store::purge_expired`], holding what `hold` returns while each chunk
    /// is planned and removed (the engine passes its writer lock, so no
    /// ingest decides on a case between its chunk's read and removal).
    pub fn purge_expired_guarded<G>(
        &self,
        now: DateTime<Utc>,
        retention: Duration,
        max_cases: usize,
        mut hold: impl FnMut() -> G,
    ) -> Result<PurgeReport, StoreError> {
        let mut report = PurgeReport::default();
        if retention <= Duration::zero() {
            return Ok(report);
        }
        // A retention reaching before the representable past keeps everything.
        let Some(cutoff) = now.checked_sub_signed(retention) else {
            return Ok(report);
        };
        let max_cases = max_cases.max(1);
        // Watching starts before the walk over the references, so a
        // reference is seen by the walk, by the watch, or by both.
        let _watching = self.watch_attachment_refs();
        let candidates = self.expired_case_candidates(cutoff)?;
        let MessageScan {
            mut linked,
            discarded,
        } = self.scan_message_ids(&candidates, cutoff)?;
        let mut users = self.attachment_users(&candidates)?;
        for chunk in candidates.chunks(max_cases) {
            let _held = hold();
            report.add(self.purge_cases(chunk, &mut linked, &mut users, cutoff)?);
        }
        {
            let _held = hold();
            report.quarantined = self.purge_quarantine(cutoff, max_cases)?;
            report.discarded = self.purge_discarded(&discarded, cutoff, max_cases)?;
            report.outgoing_mails += self.purge_caseless_mail(cutoff, max_cases)?;
        }
        report.ack_counters =
            self.prune_ack_counters(now - Duration::hours(ACK_COUNTER_GRACE_HOURS))?;
        self.transact(|tx| {
            tx.put(
                TreeId::Counters,
                last_purge_key(),
                keys::time_key(now).to_vec(),
            )
        })?;
        Ok(report)
    }

    /// When the last purge finished, if one ever did.
    pub fn last_purge(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let key = last_purge_key();
        match self.tree(TreeId::Counters).get(&key)? {
            None => Ok(None),
            Some(raw) => keys::decode_time(&raw)
                .map(Some)
                .ok_or_else(|| StoreError::corrupt(TreeId::Counters.name(), &key, "not a time")),
        }
    }

    /// Cases that look expired at `cutoff`, in number order; each is checked
    /// again under the lock before it goes.
    fn expired_case_candidates(&self, cutoff: DateTime<Utc>) -> Result<Vec<CaseId>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(TreeId::Cases).iter() {
            let (key, value) = item?;
            let case: Case = decode(TreeId::Cases, &key, &value)?;
            // No event predates the opening, so a case opened since is kept.
            if case.state.is_open() || case.created_at >= cutoff {
                continue;
            }
            if last_activity(&case, &self.events(&case.id)?) < cutoff {
                out.push(case.id);
            }
        }
        Ok(out)
    }

    /// One walk over `message_ids`: the Message-IDs that point at each
    /// candidate (whatever its events say), and the records of discarded
    /// mail older than `cutoff`.
    fn scan_message_ids(
        &self,
        candidates: &[CaseId],
        cutoff: DateTime<Utc>,
    ) -> Result<MessageScan, StoreError> {
        let candidates: HashSet<&CaseId> = candidates.iter().collect();
        let mut found = MessageScan::default();
        for item in self.tree(TreeId::MessageIds).iter() {
            let (key, value) = item?;
            let record: MessageRecord = decode(TreeId::MessageIds, &key, &value)?;
            let message_id = || String::from_utf8_lossy(&key).into_owned();
            match &record {
                MessageRecord::Discarded { at, .. } if *at < cutoff => {
                    found.discarded.push(message_id())
                }
                _ => {
                    if let Some(case) = record.case().filter(|case| candidates.contains(case)) {
                        found
                            .linked
                            .entry(case.clone())
                            .or_default()
                            .push(message_id());
                    }
                }
            }
        }
        Ok(found)
    }

    /// Removes the cases of `chunk` that are still expired, in one transaction.
    fn purge_cases(
        &self,
        chunk: &[CaseId],
        linked: &mut HashMap<CaseId, Vec<String>>,
        users: &mut AttachmentUsers,
        cutoff: DateTime<Utc>,
    ) -> Result<PurgeReport, StoreError> {
        let writer = self.history.lock_writer();
        let mut plans = Vec::new();
        for id in chunk {
            let linked = linked.remove(id).unwrap_or_default();
            if let Some(plan) = self.plan_case_purge(id, &linked, cutoff)? {
                plans.push(plan);
            }
        }
        if plans.is_empty() {
            return Ok(PurgeReport::default());
        }
        let unused = self.attachments_unused_after(&plans, users);
        self.transact_holding(&writer, |tx| {
            for plan in &plans {
                let case_key = keys::case_key(&plan.id);
                let counter_key = keys::event_sequence_key(&plan.id);
                if tx.get(TreeId::Cases, &case_key)?.as_ref() != Some(&plan.case_bytes)
                    || tx.get(TreeId::Counters, &counter_key)? != plan.counter_bytes
                {
                    return abort(StoreError::Conflict(plan.id.clone()));
                }
                for (tree, key) in &plan.keys {
                    tx.remove(*tree, key.clone())?;
                }
                for key in &plan.due_batches {
                    forget_case_in_due_batch(tx, key, &plan.id)?;
                }
            }
            for sha256 in &unused {
                tx.remove(TreeId::Attachments, sha256.as_bytes().to_vec())?;
            }
            Ok(())
        })?;
        self.forget_gone_due_batches(plans.iter().flat_map(|plan| &plan.due_batches))?;
        users
            .purged
            .extend(plans.iter().map(|plan| plan.id.clone()));
        let mut report = PurgeReport {
            cases: plans.len(),
            attachments: unused.len(),
            ..PurgeReport::default()
        };
        for plan in &plans {
            report.incoming_mails += plan.incoming_mails;
            report.outgoing_mails += plan.outgoing_mails;
        }
        Ok(report)
    }

    /// Reads everything a case owns, or `None` when it must stay (it is
    /// gone, open again, active since `cutoff`, or has mail not yet final).
    fn plan_case_purge(
        &self,
        id: &CaseId,
        linked: &[String],
        cutoff: DateTime<Utc>,
    ) -> Result<Option<CasePurge>, StoreError> {
        let case_key = keys::case_key(id);
        let Some(case_bytes) = self.tree(TreeId::Cases).get(&case_key)? else {
            return Ok(None);
        };
        let case: Case = decode(TreeId::Cases, &case_key, &case_bytes)?;
        let events = self.events(id)?;
        if case.state.is_open() || last_activity(&case, &events) >= cutoff {
            return Ok(None);
        }
        let mut outbox = Vec::new();
        for item in self
            .tree(TreeId::Outbox)
            .scan_prefix(format!("{}.", id.0).as_bytes())
        {
            let (key, value) = item?;
            let (entry, _) = split_record(&key, &value)?;
            if entry.case.as_ref() != Some(id) {
                continue;
            }
            if !is_settled(&entry.state) {
                return Ok(None);
            }
            outbox.push(entry);
        }

        let counter_key = keys::event_sequence_key(id);
        let counter_bytes = self.tree(TreeId::Counters).get(&counter_key)?;
        let mut remove = vec![(TreeId::Cases, case_key), (TreeId::Counters, counter_key)];
        for item in self
            .tree(TreeId::Events)
            .scan_prefix(keys::event_prefix(id))
            .keys()
        {
            remove.push((TreeId::Events, item?.to_vec()));
        }
        remove.extend(index_entries(&case));
        self.plan_timers(id, counter_bytes.as_ref(), &mut remove)?;

        // Incoming mail: the Message-IDs its events name and those the scan
        // found pointing at it, where the record still says they do.
        let received: BTreeSet<String> = events
            .iter()
            .filter_map(|event| match &event.kind {
                EventKind::Created { message_id, .. }
                | EventKind::MailReceived { message_id, .. } => {
                    Some(normalize_message_id(message_id))
                }
                _ => None,
            })
            .chain(linked.iter().cloned())
            .collect();
        let mut incoming_mails = 0;
        for message_id in received {
            let record: Option<MessageRecord> =
                self.get_json(TreeId::MessageIds, message_id.as_bytes())?;
            match record {
                Some(MessageRecord::Incoming { case, .. }) if case == *id => incoming_mails += 1,
                Some(MessageRecord::Outgoing {
                    case: Some(case), ..
                }) if case == *id => {}
                _ => continue,
            }
            remove.push((TreeId::MessageIds, message_id.into_bytes()));
        }

        let outgoing_mails = outbox.len();
        let mut due_batches = BTreeSet::new();
        for entry in outbox {
            // A batch is due when its mails were queued.
            let batch_prefix = [&keys::time_key(entry.queued_at)[..], &[0]].concat();
            for key in self
                .tree(TreeId::OutboxDue)
                .scan_prefix(batch_prefix)
                .keys()
            {
                due_batches.insert(key?.to_vec());
            }
            if let Some(due) = entry.state.next_attempt() {
                remove.push((TreeId::OutboxDue, keys::outbox_due_key(due, &entry.id)));
            }
            let record: Option<MessageRecord> =
                self.get_json(TreeId::MessageIds, entry.message_id.as_bytes())?;
            if matches!(&record, Some(MessageRecord::Outgoing { outbox_id, .. }) if *outbox_id == entry.id)
            {
                remove.push((TreeId::MessageIds, entry.message_id.into_bytes()));
            }
            remove.push((TreeId::Outbox, entry.id.into_bytes()));
        }

        let attachments = self.attachment_refs_of(id)?;
        for sha256 in &attachments {
            remove.push((TreeId::AttachmentRefs, keys::attachment_ref_key(id, sha256)));
        }

        Ok(Some(CasePurge {
            id: id.clone(),
            case_bytes,
            counter_bytes,
            keys: remove,
            due_batches,
            incoming_mails,
            outgoing_mails,
            attachments,
        }))
    }

    /// Adds the timer lists of a case's clocks and the index keys of all
    /// their slots (only the earliest is indexed; removing the others'
    /// absent keys is harmless).
    fn plan_timers(
        &self,
        id: &CaseId,
        counter_bytes: Option<&sled::IVec>,
        remove: &mut Vec<(TreeId, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let Some(bytes) = counter_bytes else {
            return Ok(());
        };
        let counters = CaseCounters::decode_stored(id, bytes)?;
        for (deadline, slots) in &counters.clocks {
            for slot in slots {
                remove.push((
                    TreeId::Timers,
                    keys::timer_key(slot.due, id, deadline, slot.step as u64),
                ));
            }
        }
        Ok(())
    }

    /// Starts watching new attachment references until the guard drops.
    fn watch_attachment_refs(&self) -> Watching<'_> {
        self.ref_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watchers += 1;
        Watching {
            watch: &self.ref_watch,
        }
    }

    /// One walk over the reference keys, holding no lock, for the contents
    /// the candidates refer to; none when they refer to nothing.
    fn attachment_users(&self, candidates: &[CaseId]) -> Result<AttachmentUsers, StoreError> {
        let mut users = AttachmentUsers::default();
        for id in candidates {
            for sha256 in self.attachment_refs_of(id)? {
                users
                    .by_content
                    .entry(sha256)
                    .or_default()
                    .candidates
                    .insert(id.clone());
            }
        }
        if users.by_content.is_empty() {
            return Ok(users);
        }
        for item in self.tree(TreeId::AttachmentRefs).iter().keys() {
            let key = item?;
            let mut reader = KeyReader::new(&key);
            let bad = || StoreError::corrupt(TreeId::AttachmentRefs.name(), &key, "bad key");
            let case = reader.str().ok_or_else(bad)?;
            let sha256 = std::str::from_utf8(&key[4 + case.len()..]).map_err(|_| bad())?;
            if let Some(content) = users.by_content.get_mut(sha256) {
                if !content.candidates.contains(&CaseId(case.to_owned())) {
                    content.kept_case = true;
                }
            }
        }
        Ok(users)
    }

    /// The contents a case refers to.
    fn attachment_refs_of(&self, id: &CaseId) -> Result<Vec<String>, StoreError> {
        let prefix = keys::attachment_ref_prefix(id);
        let mut out = Vec::new();
        for item in self
            .tree(TreeId::AttachmentRefs)
            .scan_prefix(&prefix)
            .keys()
        {
            let key = item?;
            let sha256 = std::str::from_utf8(&key[prefix.len()..]).map_err(|_| {
                StoreError::corrupt(TreeId::AttachmentRefs.name(), &key, "bad hash")
            })?;
            out.push(sha256.to_owned());
        }
        Ok(out)
    }

    /// The attachments of the planned cases that no case will refer to once
    /// they are gone: every case the walk found referring to one is planned
    /// now or purged before, and nothing referred to it since the walk.
    /// Reads no tree; called under the writer lock.
    fn attachments_unused_after(
        &self,
        plans: &[CasePurge],
        users: &AttachmentUsers,
    ) -> Vec<String> {
        let planned: HashSet<&CaseId> = plans.iter().map(|plan| &plan.id).collect();
        let watch = self
            .ref_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let contents: BTreeSet<&String> = plans.iter().flat_map(|plan| &plan.attachments).collect();
        contents
            .into_iter()
            .filter(|sha256| !watch.referenced.contains(sha256.as_str()))
            .filter(|sha256| {
                // A reference the walk did not see came after it: the watch has it.
                users
                    .by_content
                    .get(sha256.as_str())
                    .is_some_and(|content| {
                        !content.kept_case
                            && content
                                .candidates
                                .iter()
                                .all(|case| planned.contains(case) || users.purged.contains(case))
                    })
            })
            .cloned()
            .collect()
    }

    /// Removes quarantined mail (record, raw bytes, Message-ID record) put
    /// aside before `cutoff`, at most `max_records` per transaction.
    fn purge_quarantine(
        &self,
        cutoff: DateTime<Utc>,
        max_records: usize,
    ) -> Result<usize, StoreError> {
        let mut old: Vec<(u64, QuarantineRecord)> = Vec::new();
        for item in self.tree(TreeId::Quarantine).iter() {
            let (key, value) = item?;
            let id = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::corrupt(TreeId::Quarantine.name(), &key, "bad id"))?;
            let record: QuarantineRecord = decode(TreeId::Quarantine, &key, &value)?;
            if record.at < cutoff {
                old.push((id, record));
            }
        }
        let mut removed = 0;
        for chunk in old.chunks(max_records) {
            removed += self.transact(|tx| {
                let mut removed = 0;
                for (id, record) in chunk {
                    let key = id.to_be_bytes().to_vec();
                    if !tx.contains(TreeId::Quarantine, &key)? {
                        continue;
                    }
                    tx.remove(TreeId::Quarantine, key.clone())?;
                    tx.remove(TreeId::QuarantineRaw, key)?;
                    if let Some(message_id) = &record.message_id {
                        let message_key = normalize_message_id(message_id).into_bytes();
                        let stored: Option<MessageRecord> =
                            tx.get_json(TreeId::MessageIds, &message_key)?;
                        if matches!(stored, Some(MessageRecord::Quarantined { quarantine_id, .. }) if quarantine_id == *id)
                        {
                            tx.remove(TreeId::MessageIds, message_key)?;
                        }
                    }
                    removed += 1;
                }
                Ok(removed)
            })?;
        }
        Ok(removed)
    }
}

impl Store {
    /// Removes mail of no case (digests, which list cases) queued before
    /// `cutoff` and sent or failed for good, with its Message-ID record when
    /// it has one; re-checked in the transaction.
    fn purge_caseless_mail(
        &self,
        cutoff: DateTime<Utc>,
        max_records: usize,
    ) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        let prefix = format!("{NO_CASE_SCOPE}.");
        for item in self.tree(TreeId::Outbox).scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            let (entry, _) = split_record(&key, &value)?;
            if expired_caseless(&entry, cutoff) {
                old.push(entry.id);
            }
        }
        let mut removed = 0;
        for chunk in old.chunks(max_records) {
            removed += self.transact(|tx| {
                let mut removed = 0;
                for id in chunk {
                    let Some((entry, _)) = read_record(tx, id)? else {
                        continue;
                    };
                    if !expired_caseless(&entry, cutoff) {
                        continue;
                    }
                    let message_key = entry.message_id.as_bytes();
                    let record: Option<MessageRecord> =
                        tx.get_json(TreeId::MessageIds, message_key)?;
                    if matches!(&record, Some(MessageRecord::Outgoing { outbox_id, .. }) if *outbox_id == entry.id)
                    {
                        tx.remove(TreeId::MessageIds, message_key.to_vec())?;
                    }
                    tx.remove(TreeId::Outbox, entry.id.into_bytes())?;
                    removed += 1;
                }
                Ok(removed)
            })?;
        }
        Ok(removed)
    }

    /// Removes the records of discarded mail (auto-replies, loops, reports
    /// about nothing) that the scan found older than `cutoff`, re-checked in
    /// the transaction, at most `max_records` per transaction.
    fn purge_discarded(
        &self,
        message_ids: &[String],
        cutoff: DateTime<Utc>,
        max_records: usize,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for chunk in message_ids.chunks(max_records) {
            removed += self.transact(|tx| {
                let mut removed = 0;
                for message_id in chunk {
                    let key = message_id.as_bytes();
                    let record: Option<MessageRecord> = tx.get_json(TreeId::MessageIds, key)?;
                    if matches!(record, Some(MessageRecord::Discarded { at, .. }) if at < cutoff) {
                        tx.remove(TreeId::MessageIds, key.to_vec())?;
                        removed += 1;
                    }
                }
                Ok(removed)
            })?;
        }
        Ok(removed)
    }
}

/// Whether a mail of no case was queued before `cutoff` and is settled.
fn expired_caseless(entry: &OutboxEntry, cutoff: DateTime<Utc>) -> bool {
    entry.case.is_none() && entry.queued_at < cutoff && is_settled(&entry.state)
}

/// Whether nothing more will be done with a mail: sent, or failed for good.
fn is_settled(state: &OutboxState) -> bool {
    matches!(
        state,
        OutboxState::Sent { .. } | OutboxState::PermanentFailure { .. }
    )
}

/// When a case last changed: its latest event, or its opening.
fn last_activity(case: &Case, events: &[Event]) -> DateTime<Utc> {
    events
        .iter()
        .map(|event| event.at)
        .fold(case.created_at, DateTime::max)
}
