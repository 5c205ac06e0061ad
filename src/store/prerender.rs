//! Rendering a batch's mails ahead of its transaction, on rayon's pool.
//!
//! A mail's bytes depend on its identity (case number, sequence), which the
//! commit allocates. Commits are serialised and the store is their only
//! writer, so the identities a batch will get can be foreseen from the
//! stored counters: each mail is rendered for its foreseen identity ahead of
//! the transaction, in parallel. Inside the transaction a mail whose
//! allocated identity is the foreseen one takes the prepared bytes; any
//! other (a counter moved meanwhile) is rendered there as before. The
//! outcome is the same either way, because renderers are pure; what the
//! commit stores and notes (bytes, subject, Message-ID, a template failure)
//! always comes from the rendering for the identity the mail actually gets.
//!
//! The ingest hands each change set to a [`RenderAhead`] as it pushes it, so
//! the pool renders a fetch's mails while the serial pass is still working
//! on the fetch's later messages. The pool also encodes there what the
//! transaction would otherwise encode on the serial chain, for the same
//! foreseen identities: the change set's events, its new cases' JSON and
//! its mails' outbox records.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::Datelike;

use super::batch::{CaseRef, ChangeSet, CommitReport, IngestBatch, NewCaseKey};
use super::error::StoreError;
use super::keys;
use super::outbox::{
    encode_record, mail_identity, queued_entry, MailDraft, MailIdentity, RenderedMail,
};
use super::records::normalize_message_id;
use super::trees::TreeId;
use super::Store;
use crate::case::{Case, CaseId, Event};
use crate::pool::{self, PoolJob};

/// A mail rendered ahead of the transaction, for the identity it was foreseen to get.
#[derive(Debug, Clone)]
pub(crate) struct Prerendered {
    pub identity: MailIdentity,
    /// The renderer's answer (an error aborts the commit only if the
    /// identity turns out to be the foreseen one).
    pub result: Result<PreparedMail, String>,
}

/// A rendered mail whose bytes can be written more than once cheaply (the
/// transaction may run again).
#[derive(Debug, Clone)]
pub(crate) struct PreparedMail {
    pub message_id: String,
    pub subject: String,
    pub bytes: sled::IVec,
    /// The renderer's note that the template failed, if it did.
    pub template_failure: Option<String>,
    /// The outbox record of the mail queued for the identity it was rendered
    /// for, when it was encoded ahead ([`encode_record`] of [`queued_entry`]).
    pub record: Option<sled::IVec>,
}

impl From<RenderedMail> for PreparedMail {
    fn from(mail: RenderedMail) -> Self {
        PreparedMail {
            message_id: mail.message_id,
            subject: mail.subject,
            bytes: sled::IVec::from(mail.bytes),
            template_failure: mail.template_failure,
            record: None,
        }
    }
}

/// Per change set: what was prepared for it ahead of the transaction.
pub(crate) type PrerenderedMails = Vec<SetAhead>;

/// A change set's events as JSON, in order; `None` if one failed to encode.
type EncodedEvents = Option<Vec<Arc<str>>>;

/// A change set's new cases as JSON, in order, each with the number it was
/// foreseen to get and encoded with; `None` if one failed to encode.
type EncodedCases = Option<Vec<(CaseId, sled::IVec)>>;

/// What was prepared for one change set ahead of its transaction: its
/// mails rendered for their foreseen identities (with their outbox
/// records), its events and its new cases encoded, each `None` where it was
/// not done. One job on the pool does a change set's work, so a set costs
/// the serial pass one hand-over.
pub(crate) struct Prepared {
    mails: Vec<Option<Prerendered>>,
    events: EncodedEvents,
    cases: EncodedCases,
}

/// A change set's [`Prepared`] work, done or under way.
pub(crate) struct SetAhead {
    /// How many mails the change set queues (what the work was given).
    mail_count: usize,
    work: AheadSlot<Prepared>,
}

impl SetAhead {
    /// Nothing prepared for a change set of `mails` mails.
    fn empty(mails: usize) -> SetAhead {
        SetAhead {
            mail_count: mails,
            work: AheadSlot::new(None),
        }
    }

    /// The mail at `index` rendered ahead, waiting for it if under way.
    pub(crate) fn mail(&self, index: usize) -> Option<&Prerendered> {
        self.work.get()?.mails.get(index)?.as_ref()
    }

    /// The events' JSON, when it was encoded ahead for all `count` of them.
    pub(crate) fn encoded_events(&self, count: usize) -> Option<&[Arc<str>]> {
        self.work
            .get()?
            .events
            .as_deref()
            .filter(|encoded| encoded.len() == count)
    }

    /// The new cases' JSON with the numbers they were encoded for.
    pub(crate) fn encoded_cases(&self) -> Option<&[(CaseId, sled::IVec)]> {
        self.work.get()?.cases.as_deref()
    }
}

/// Work prepared ahead (a change set's), done or under way on the pool: the
/// commit waits for it only when it gets to it, so the pool goes on with the
/// batch's later change sets while the transaction applies the earlier ones.
pub(crate) struct AheadSlot<T> {
    work: Mutex<Option<Ahead<T>>>,
    finished: OnceLock<Option<T>>,
}

impl<T> AheadSlot<T> {
    fn new(work: Option<Ahead<T>>) -> AheadSlot<T> {
        AheadSlot {
            work: Mutex::new(work),
            finished: OnceLock::new(),
        }
    }

    /// The result, waiting for it if it is under way. Work that panicked
    /// panics here, on the committing thread, as it would have in the commit.
    pub(crate) fn get(&self) -> Option<&T> {
        self.finished
            .get_or_init(|| {
                let work = self.work.lock().ok().and_then(|mut w| w.take());
                match work? {
                    Ahead::Done(result) => Some(result),
                    Ahead::OnPool(job) => match job.outcome() {
                        Some(Ok(result)) => Some(result),
                        Some(Err(panic)) => std::panic::resume_unwind(panic),
                        // The pool dropped the job: the commit does the work.
                        None => None,
                    },
                }
            })
            .as_ref()
    }
}

/// Fewer mails than this are rendered on the committing thread alone.
const PARALLEL_FROM: usize = 8;

impl Store {
    /// Renders the mails of `changes` for the identities they are foreseen
    /// to get. A read that fails only means nothing is prepared.
    pub(crate) fn prerender(&self, changes: &[&ChangeSet]) -> PrerenderedMails {
        let mails: usize = changes.iter().map(|c| c.mails.len()).sum();
        let mut ahead = RenderAhead {
            foresight: Some(Foresight::default()),
            sets: Vec::with_capacity(changes.len()),
            on_pool: mails >= PARALLEL_FROM,
        };
        for change_set in changes {
            ahead.add(self, change_set);
        }
        ahead.finish()
    }

    /// Starts rendering a batch's mails while the batch is being built: give
    /// each change set to [`RenderAhead::add`] as it is pushed, in order,
    /// and the result to [`Store::commit_rendered_ahead`].
    pub fn render_ahead(&self) -> RenderAhead {
        RenderAhead {
            foresight: Some(Foresight::default()),
            sets: Vec::new(),
            on_pool: true,
        }
    }

    /// Commits `batch`, whose change sets were given to `ahead` in order as
    /// they were pushed; the mails are those rendered ahead where the
    /// identity they get is the foreseen one.
    pub fn commit_rendered_ahead(
        &self,
        batch: &IngestBatch,
        ahead: RenderAhead,
    ) -> Result<CommitReport, StoreError> {
        let changes: Vec<&ChangeSet> = batch.changes.iter().collect();
        for change_set in &changes {
            change_set.check()?;
        }
        let shape: Vec<usize> = changes.iter().map(|c| c.mails.len()).collect();
        let mut prerendered = ahead.finish();
        let aligned = prerendered.len() == shape.len()
            && prerendered
                .iter()
                .zip(&shape)
                .all(|(set, mails)| set.mail_count == *mails);
        if !aligned {
            // A renderer's output belongs to its own draft: anything not
            // given in the batch's order is rendered again in the commit.
            tracing::warn!("mails rendered ahead do not match the batch; rendering in the commit");
            prerendered = shape.iter().map(|mails| SetAhead::empty(*mails)).collect();
        }
        let checkpoint = batch.checkpoint.as_ref().map(|(m, c)| (m.as_str(), *c));
        self.commit_prerendered(checkpoint, &changes, &prerendered)
    }
}

/// A batch's mails being rendered on rayon's pool, each for the identity it
/// is foreseen to get, while the serial pass goes on building the batch.
pub struct RenderAhead {
    /// `None` once a read failed: later mails are rendered in the commit.
    foresight: Option<Foresight>,
    /// Per change set added, in order.
    sets: Vec<SetAhead>,
    on_pool: bool,
}

/// Work done ahead, or under way on the pool.
enum Ahead<T> {
    Done(T),
    OnPool(PoolJob<T>),
}

impl RenderAhead {
    /// Foresees the identities of `change_set`'s mails (after those of the
    /// change sets added before it) and starts rendering them.
    pub fn add(&mut self, store: &Store, change_set: &ChangeSet) {
        let mails = change_set.mails.len();
        let identities = match self
            .foresight
            .as_mut()
            .map(|f| f.identities(store, change_set))
        {
            Some(Ok(identities)) => identities,
            Some(Err(error)) => {
                tracing::debug!(%error, "mail identities not foreseen; rendering in the commit");
                self.foresight = None;
                vec![None; mails]
            }
            None => vec![None; mails],
        };
        // On a pool thread, waiting for a job queued behind this one could
        // wait forever: such a caller does the work here.
        let on_pool = self.on_pool && rayon::current_thread_index().is_none();
        let drafts: Vec<(MailDraft, Option<MailIdentity>)> = change_set
            .mails
            .iter()
            .zip(identities)
            .map(|((_, draft), identity)| (draft.clone(), identity))
            .collect();
        if !on_pool {
            let prepared = Prepared {
                mails: drafts
                    .iter()
                    .map(|(draft, identity)| Some(render_for(draft, identity.clone()?, false)))
                    .collect(),
                events: None,
                cases: None,
            };
            self.sets.push(SetAhead {
                mail_count: mails,
                work: AheadSlot::new(Some(Ahead::Done(prepared))),
            });
            return;
        }
        // The transaction would encode each event and new case as JSON on
        // the serial chain; the pool does it now, for the same bytes.
        let events: Vec<Event> = change_set.events.iter().map(|(_, e)| e.clone()).collect();
        let cases = self.foresight.as_ref().and_then(|foresight| {
            change_set
                .new_cases
                .iter()
                .map(|(key, draft)| {
                    let mut case = draft.clone();
                    case.id = foresight.new_ids.get(key)?.clone();
                    Some(case)
                })
                .collect::<Option<Vec<Case>>>()
        });
        let work = pool::spawn(move || Prepared {
            mails: drafts
                .into_iter()
                .map(|(draft, identity)| Some(render_for(&draft, identity?, true)))
                .collect(),
            events: encode_events(&events),
            cases: cases.and_then(encode_cases),
        });
        self.sets.push(SetAhead {
            mail_count: mails,
            work: AheadSlot::new(Some(Ahead::OnPool(work))),
        });
    }

    /// The work, each change set's waited for when the commit gets to it.
    fn finish(self) -> PrerenderedMails {
        self.sets
    }
}

/// Each event's JSON as the store writes it (`None` if one fails).
fn encode_events(events: &[Event]) -> EncodedEvents {
    // One buffer for all of them: an event is copied into its `Arc` anyway,
    // and a fresh buffer per event would grow from nothing each time.
    let mut buffer = Vec::with_capacity(1024);
    events
        .iter()
        .map(|event| {
            buffer.clear();
            serde_json::to_writer(&mut buffer, event).ok()?;
            std::str::from_utf8(&buffer).ok().map(Arc::from)
        })
        .collect()
}

/// Each case's JSON as the store writes it, with its number (`None` if one fails).
fn encode_cases(cases: Vec<Case>) -> EncodedCases {
    cases
        .into_iter()
        .map(|case| {
            let mut json = Vec::with_capacity(2048);
            serde_json::to_writer(&mut json, &case).ok()?;
            Some((case.id, sled::IVec::from(json)))
        })
        .collect()
}

/// Renders `draft` for `identity`; with `with_record`, also encodes the
/// outbox record the mail gets when it is queued for that identity.
fn render_for(draft: &MailDraft, identity: MailIdentity, with_record: bool) -> Prerendered {
    let result = (draft.render)(&identity).map(|mail| {
        let mut prepared = PreparedMail::from(mail);
        if with_record {
            let entry = queued_entry(
                &identity,
                draft,
                prepared_message_id(&prepared),
                prepared.subject.clone(),
            );
            prepared.record = encode_record(&entry, &prepared.bytes)
                .ok()
                .map(sled::IVec::from);
        }
        prepared
    });
    Prerendered { identity, result }
}

/// The identities a batch's mails will get if its change sets are committed
/// in the order they are given, from the stored counters.
#[derive(Default)]
struct Foresight {
    seen_messages: HashSet<String>,
    case_counters: HashMap<Vec<u8>, u64>,
    mail_counters: HashMap<Vec<u8>, u64>,
    new_ids: HashMap<NewCaseKey, CaseId>,
}

impl Foresight {
    /// Per mail of `change_set`, its identity (`None` for a change set that
    /// will be skipped as a duplicate, or a mail of a case the batch cannot
    /// resolve).
    fn identities(
        &mut self,
        store: &Store,
        change_set: &ChangeSet,
    ) -> Result<Vec<Option<MailIdentity>>, StoreError> {
        let settings = store.settings();
        if let Some(message_id) = change_set.message_id() {
            let duplicate = self.seen_messages.contains(message_id)
                || store
                    .tree(TreeId::MessageIds)
                    .contains_key(message_id.as_bytes())?
                || store.outgoing_message(message_id)?.is_some();
            if duplicate {
                return Ok(vec![None; change_set.mails.len()]);
            }
            self.seen_messages.insert(message_id.to_owned());
        }
        for (key, draft) in &change_set.new_cases {
            let year = draft
                .created_at
                .with_timezone(&settings.case_number_tz)
                .year();
            let counter_key = keys::case_sequence_key(&settings.case_prefix, year);
            let number = match self.case_counters.get(&counter_key) {
                Some(n) => *n,
                None => store.stored_counter(&counter_key)?,
            } + 1;
            self.case_counters.insert(counter_key, number);
            self.new_ids.insert(
                *key,
                CaseId(format!(
                    "{}-{}-{:0width$}",
                    settings.case_prefix,
                    year,
                    number,
                    width = settings.case_number_width
                )),
            );
        }
        let mut identities = Vec::with_capacity(change_set.mails.len());
        for (case, draft) in &change_set.mails {
            let (id, new_case) = match case {
                None => (None, false),
                Some(CaseRef::Existing(id)) => (Some(id.clone()), false),
                Some(CaseRef::New(key)) => match self.new_ids.get(key) {
                    Some(id) => (Some(id.clone()), true),
                    None => {
                        identities.push(None);
                        continue;
                    }
                },
            };
            let counter_key = keys::mail_sequence_key(id.as_ref(), &draft.purpose);
            let sequence = match self.mail_counters.get(&counter_key) {
                Some(n) => *n,
                // A case the batch opens has sent nothing yet; if its number
                // was foreseen wrongly, the commit renders the mail again.
                None if new_case => 0,
                None => store.stored_mail_sequence(id.as_ref(), &draft.purpose)?,
            } + 1;
            self.mail_counters.insert(counter_key, sequence);
            identities.push(
                u32::try_from(sequence)
                    .ok()
                    .map(|sequence| mail_identity(id.as_ref(), &draft.purpose, sequence)),
            );
        }
        Ok(identities)
    }
}

impl Store {
    /// The last sequence of a purpose's mail: in the case's counter record,
    /// or under its own key for mail of no case.
    fn stored_mail_sequence(
        &self,
        case: Option<&CaseId>,
        purpose: &str,
    ) -> Result<u64, StoreError> {
        let Some(case) = case else {
            return self.stored_counter(&keys::mail_sequence_key(None, purpose));
        };
        Ok(self
            .case_counters(case)?
            .mails
            .get(purpose)
            .copied()
            .unwrap_or(0))
    }

    fn stored_counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.tree(TreeId::Counters).get(key)? {
            None => Ok(0),
            Some(raw) => <[u8; 8]>::try_from(raw.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::corrupt(TreeId::Counters.name(), key, "not 8 bytes")),
        }
    }
}

/// Whether a prepared mail may stand in for rendering `identity` now.
pub(crate) fn prepared_for<'p>(
    prerendered: Option<&'p Prerendered>,
    identity: &MailIdentity,
) -> Option<&'p Result<PreparedMail, String>> {
    prerendered
        .filter(|p| p.identity == *identity)
        .map(|p| &p.result)
}

/// The normalised Message-ID a prepared mail will be recorded under.
pub(crate) fn prepared_message_id(mail: &PreparedMail) -> String {
    normalize_message_id(&mail.message_id)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use chrono::{DateTime, TimeZone, Utc};

    use super::*;
    use crate::case::{Address, Case, EventKind};
    use crate::store::{ChangeOutcome, Checkpoint, IngestBatch, MailDraft};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .expect("valid")
    }

    /// A renderer that records every identity it renders for.
    fn recording(calls: &Arc<Mutex<Vec<String>>>) -> MailDraft {
        let calls = calls.clone();
        observed(move |identity| calls.lock().expect("lock").push(identity.outbox_id.clone()))
    }

    /// A renderer that tells `observe` of every rendering; the mail's bytes
    /// are `mail OUTBOX_ID`.
    fn observed(observe: impl Fn(&MailIdentity) + Send + Sync + 'static) -> MailDraft {
        acknowledgement(move |identity| {
            observe(identity);
            None
        })
    }

    /// An acknowledgement draft whose bytes are `mail OUTBOX_ID` and whose
    /// renderer reports `note(identity)` as a template failure.
    fn acknowledgement(
        note: impl Fn(&MailIdentity) -> Option<String> + Send + Sync + 'static,
    ) -> MailDraft {
        MailDraft::new(
            "ack",
            "acknowledgement",
            "complaints@corp.example",
            vec!["c@x.example".into()],
            t0(),
            move |identity: &MailIdentity| {
                Ok(RenderedMail {
                    message_id: format!("<{}@corp.example>", identity.outbox_id),
                    subject: format!("[{}]", identity.outbox_id),
                    bytes: format!("mail {}", identity.outbox_id).into_bytes(),
                    template_failure: note(identity),
                })
            },
        )
    }

    /// A new complaint whose two mails record each rendering in `calls`.
    fn complaint(n: usize, calls: &Arc<Mutex<Vec<String>>>) -> ChangeSet {
        complaint_with(n, vec![recording(calls), recording(calls)])
    }

    fn temporary() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("open");
        (dir, store)
    }

    #[test]
    fn a_batch_renders_each_mail_once_ahead_of_the_transaction() {
        let (_dir, store) = temporary();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut batch = IngestBatch::new();
        for n in 0..20 {
            batch.push(complaint(n, &calls));
        }
        // A duplicate of the first message in the same batch queues nothing.
        batch.push(complaint(0, &calls));
        batch.advance_checkpoint(
            "INBOX",
            Checkpoint {
                uid_validity: 1,
                last_uid: 21,
            },
        );
        let report = store.commit(&batch).expect("commit");
        let queued = queued_ids(&report);
        assert_eq!(queued.len(), 40);
        let mut rendered = calls.lock().expect("lock").clone();
        rendered.sort();
        let mut expected = queued.clone();
        expected.sort();
        assert_eq!(rendered, expected, "every mail rendered once, none again");
        assert_recorded_bytes(&store, &queued);
    }

    /// Commits `sets` with a render-ahead given `added` of them (in order)
    /// and returns the queued outbox ids and the renderings made.
    fn commit_ahead(
        sets: usize,
        added: usize,
    ) -> (tempfile::TempDir, Store, Vec<String>, Vec<String>) {
        let (dir, store) = temporary();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut batch = IngestBatch::new();
        let mut ahead = store.render_ahead();
        for n in 0..sets {
            let changes = complaint(n, &calls);
            if n < added {
                ahead.add(&store, &changes);
            }
            batch.push(changes);
        }
        // Every rendering ahead is done (or done here) before the commit,
        // which may not use them: the count of renderings is then exact.
        for set in &ahead.sets {
            assert_eq!(set.mail_count, 2);
            assert!(set.mail(1).is_some(), "rendered ahead");
        }
        let report = store.commit_rendered_ahead(&batch, ahead).expect("commit");
        let queued = queued_ids(&report);
        let mut rendered = calls.lock().expect("lock").clone();
        rendered.sort();
        (dir, store, queued, rendered)
    }

    /// The outbox ids a commit queued, in order.
    fn queued_ids(report: &CommitReport) -> Vec<String> {
        report
            .outcomes
            .iter()
            .filter_map(|o| o.applied())
            .flat_map(|a| a.mails.iter().map(|m| m.outbox_id.clone()))
            .collect()
    }

    /// Each queued mail holds the bytes `recording` renders for its identity.
    fn assert_recorded_bytes(store: &Store, queued: &[String]) {
        for outbox_id in queued {
            assert_eq!(
                store.outbox_message(outbox_id).expect("read"),
                Some(format!("mail {outbox_id}").into_bytes())
            );
        }
    }

    #[test]
    fn mails_rendered_ahead_while_the_batch_grows_are_each_rendered_once() {
        let (_dir, store, queued, rendered) = commit_ahead(30, 30);
        assert_eq!(queued.len(), 60);
        let mut expected = queued.clone();
        expected.sort();
        assert_eq!(rendered, expected, "every mail rendered once, none again");
        assert_recorded_bytes(&store, &queued);
    }

    #[test]
    fn what_is_encoded_ahead_is_stored_as_the_transaction_would_encode_it() {
        let with_events = |n: usize| {
            let calls = Arc::new(Mutex::new(Vec::new()));
            let mut changes = complaint(n, &calls);
            let case = CaseRef::New(changes.new_cases().next().expect("a new case").0);
            for text in [
                "停气三天了",
                "a \"quoted\" line\nand a tab\t",
                "<b>&amp;</b>",
            ] {
                changes.append_event(
                    &case,
                    crate::case::Event {
                        at: t0(),
                        kind: EventKind::Note {
                            text: format!("{text} {n}"),
                        },
                    },
                );
            }
            changes
        };
        let stored = |ahead_given: bool| {
            let (dir, store) = temporary();
            let mut batch = IngestBatch::new();
            let mut ahead = store.render_ahead();
            for n in 0..12 {
                let changes = with_events(n);
                if ahead_given {
                    ahead.add(&store, &changes);
                }
                batch.push(changes);
            }
            store.commit_rendered_ahead(&batch, ahead).expect("commit");
            let records: Vec<(Vec<u8>, Vec<u8>)> = [TreeId::Events, TreeId::Cases, TreeId::Outbox]
                .into_iter()
                .flat_map(|tree| store.tree(tree).iter())
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("read"))
                .collect();
            drop(store);
            drop(dir);
            records
        };
        let encoded_ahead = stored(true);
        assert_eq!(encoded_ahead.len(), 12 + 12 + 24);
        assert_eq!(encoded_ahead, stored(false));
    }

    #[test]
    fn cases_and_outbox_records_are_encoded_ahead_for_the_foreseen_identities() {
        let (_dir, store) = temporary();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let changes: Vec<ChangeSet> = (0..10).map(|n| complaint(n, &calls)).collect();
        let refs: Vec<&ChangeSet> = changes.iter().collect();
        let prepared = store.prerender(&refs);
        for (n, set) in prepared.iter().enumerate() {
            let cases = set.encoded_cases().expect("encoded");
            let number = CaseId(format!("TS-2026-{:06}", n + 1));
            assert_eq!(cases.len(), 1);
            assert_eq!(cases[0].0, number);
            let json: Case = serde_json::from_slice(&cases[0].1).expect("a case");
            assert_eq!(json.id, number);
            for index in 0..set.mail_count {
                let mail = set.mail(index).expect("rendered");
                let prepared = mail.result.as_ref().expect("rendered");
                let record = prepared.record.as_ref().expect("a record");
                let (entry, bytes) =
                    super::super::outbox::split_record(b"", record).expect("a record");
                assert_eq!(entry.id, mail.identity.outbox_id);
                assert_eq!(entry.case.as_ref(), Some(&number));
                assert_eq!(bytes, prepared.bytes.as_ref());
            }
        }
    }

    #[test]
    fn a_caller_on_a_pool_thread_renders_itself() {
        // Waiting on a pool thread for jobs queued behind it could hang a
        // one-thread pool, so such a caller renders on its own thread.
        let (_dir, store) = temporary();
        let threads = Arc::new(Mutex::new(Vec::new()));
        let draft = |threads: &Arc<Mutex<Vec<std::thread::ThreadId>>>| {
            let threads = threads.clone();
            observed(move |_| {
                threads
                    .lock()
                    .expect("lock")
                    .push(std::thread::current().id())
            })
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let changes: Vec<ChangeSet> = (0..10)
            .map(|n| complaint_with(n, vec![draft(&threads)]))
            .collect();
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        let store = Arc::new(store);
        let on_pool = Arc::clone(&store);
        pool.spawn(move || {
            let refs: Vec<&ChangeSet> = changes.iter().collect();
            let rendered = on_pool.prerender(&refs);
            let all = rendered
                .iter()
                .all(|set| (0..set.mail_count).all(|index| set.mail(index).is_some()));
            let _ = done.send((all, std::thread::current().id()));
        });
        // Without the guard this job waits for renderings queued behind it
        // on its own one-thread pool and never finishes.
        let (all, caller) = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the rendering on a pool thread finished");
        assert!(all, "every mail rendered");
        let threads = threads.lock().expect("lock").clone();
        assert_eq!(threads.len(), 10);
        assert!(
            threads.iter().all(|id| *id == caller),
            "{threads:?} vs {caller:?}"
        );
    }

    #[test]
    fn a_render_ahead_not_given_every_change_set_is_not_used() {
        // Given the first 29 of 30 change sets, the renderings could not be
        // matched to their drafts: all are rendered again in the commit.
        let (_dir, store, queued, rendered) = commit_ahead(30, 29);
        assert_eq!(queued.len(), 60);
        assert_eq!(rendered.len(), 58 + 60);
        assert_recorded_bytes(&store, &queued);
    }

    #[test]
    fn a_mail_foreseen_wrongly_is_rendered_again_for_its_real_identity() {
        let (_dir, store) = temporary();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let first = complaint(1, &calls);
        // Rendered, and its case and outbox records encoded, on the pool.
        let mut ahead = store.render_ahead();
        ahead.add(&store, &first);
        let prerendered = ahead.finish();
        for set in &prerendered {
            assert!(set.mail(0).is_some(), "rendered ahead");
        }
        // Another commit takes the number the first change set was foreseen to get.
        store.apply(&complaint(2, &calls)).expect("commit");
        calls.lock().expect("lock").clear();
        let report = store
            .commit_prerendered(None, &[&first], &prerendered)
            .expect("commit");
        let mails: Vec<String> = report.outcomes[0]
            .applied()
            .expect("applied")
            .mails
            .iter()
            .map(|m| m.outbox_id.clone())
            .collect();
        assert_eq!(mails, ["TS-2026-000002.ack.1", "TS-2026-000002.ack.2"]);
        assert_eq!(
            *calls.lock().expect("lock"),
            mails,
            "rendered in the commit"
        );
        assert_eq!(
            store.outbox_message("TS-2026-000002.ack.1").expect("read"),
            Some(b"mail TS-2026-000002.ack.1".to_vec())
        );
        assert_eq!(
            store.outbox_message("TS-2026-000001.ack.1").expect("read"),
            Some(b"mail TS-2026-000001.ack.1".to_vec())
        );
        // Neither the case nor the outbox entries keep the foreseen number.
        let number = CaseId("TS-2026-000002".into());
        assert_eq!(store.case(&number).expect("read").expect("case").id, number);
        let entry = store
            .outbox_entry("TS-2026-000002.ack.1")
            .expect("read")
            .expect("entry");
        assert_eq!(
            (entry.id.as_str(), entry.case),
            ("TS-2026-000002.ack.1", Some(number))
        );
    }

    /// A renderer whose template "fails" for the mails of case `failing`:
    /// it then reports the failure with its (fallback) bytes.
    fn failing_for(failing: &'static str) -> MailDraft {
        acknowledgement(move |identity| {
            let fails = identity.case.as_ref().is_some_and(|c| c.0 == failing);
            fails.then(|| format!("{}: the template failed", identity.outbox_id))
        })
    }

    /// A new complaint that queues `drafts` on its case.
    fn complaint_with(n: usize, drafts: Vec<MailDraft>) -> ChangeSet {
        let mut changes =
            ChangeSet::for_message(&format!("<m{n}@x.example>"), t0()).expect("message id");
        let case = changes
            .new_case(Case::new(
                CaseId(String::new()),
                t0(),
                "email",
                Address::new("c@x.example", None),
                "停气",
                "zh",
            ))
            .expect("case");
        changes.link_message(&case).expect("link");
        for draft in drafts {
            changes.queue_mail(&case, draft).expect("mail");
        }
        changes
    }

    fn notes(store: &Store, case: &str) -> Vec<crate::case::Event> {
        store
            .events(&CaseId(case.into()))
            .expect("events")
            .into_iter()
            .filter(|e| matches!(e.kind, EventKind::Note { .. }))
            .collect()
    }

    #[test]
    fn a_template_failure_is_noted_from_the_rendering_of_the_identity_the_mail_gets() {
        for failing in ["TS-2026-000001", "TS-2026-000002"] {
            let (_dir, store) = temporary();
            // Rendered ahead for TS-2026-000001, which another commit then takes.
            let first = complaint_with(1, vec![failing_for(failing)]);
            let prerendered = store.prerender(&[&first]);
            let second = store
                .apply(&complaint_with(2, vec![failing_for(failing)]))
                .expect("commit");
            let report = store
                .commit_prerendered(None, &[&first], &prerendered)
                .expect("commit");
            let queued =
                |outcome: &ChangeOutcome| outcome.applied().expect("applied").mails[0].clone();
            let (taken, moved) = (queued(&second), queued(&report.outcomes[0]));
            assert_eq!(
                (taken.outbox_id.as_str(), moved.outbox_id.as_str()),
                ("TS-2026-000001.ack.1", "TS-2026-000002.ack.1")
            );
            let expected = format!("{failing}.ack.1: the template failed");
            for (mail, case) in [(&taken, "TS-2026-000001"), (&moved, "TS-2026-000002")] {
                let notes = notes(&store, case);
                if case == failing {
                    assert_eq!(mail.template_failure.as_deref(), Some(expected.as_str()));
                    assert_eq!(notes.len(), 1, "{notes:?}");
                    assert_eq!(notes[0].at, t0());
                    assert_eq!(
                        notes[0].kind,
                        EventKind::Note {
                            text: expected.clone()
                        }
                    );
                    // It comes just before the mail's own event.
                    let events = store.events(&CaseId(case.into())).expect("events");
                    let position = events.iter().position(|e| *e == notes[0]).expect("note");
                    assert!(matches!(&events[position + 1].kind,
                        EventKind::MailQueued { outbox_id, .. } if *outbox_id == mail.outbox_id));
                } else {
                    assert_eq!(mail.template_failure, None);
                    assert!(notes.is_empty(), "{case}: {notes:?}");
                }
            }
        }
    }

    #[test]
    fn a_template_failure_of_mail_of_no_case_is_reported_with_the_queued_mail() {
        let (_dir, store) = temporary();
        let mut changes = ChangeSet::new();
        let draft = MailDraft::new(
            "digest",
            "weekly-digest",
            "complaints@corp.example",
            vec!["office@corp.example".into()],
            t0(),
            |identity: &MailIdentity| {
                Ok(RenderedMail {
                    message_id: format!("<{}@corp.example>", identity.outbox_id),
                    subject: "digest".into(),
                    bytes: b"plain digest".to_vec(),
                    template_failure: Some("the digest: the template failed".into()),
                })
            },
        );
        changes.queue_mail_without_case(draft).expect("queue");
        let outcome = store.apply(&changes).expect("commit");
        let mail = &outcome.applied().expect("applied").mails[0];
        assert_eq!(mail.outbox_id, "complaintd.digest.1");
        assert_eq!(
            mail.template_failure.as_deref(),
            Some("the digest: the template failed")
        );
        assert_eq!(
            store.outbox_message("complaintd.digest.1").expect("read"),
            Some(b"plain digest".to_vec())
        );
    }
}
