//! What the daemon answers on its loopback endpoint besides `/health` and `/metrics` — the
//! read-only case queries of `complaintd case` and the outbox administration of
//! `complaintd outbox` — and what it does at start with mail left in doubt by a crash.
//!
//! Routes (JSON, the same text the CLI prints with `--json`):
//!
//! | request | answer |
//! |---|---|
//! | `GET /cases?open=&state=&severity=&department=&limit=` | the matching cases |
//! | `GET /cases?search=TEXT` | cases whose number, sender or subject contains TEXT |
//! | `GET /cases/ID` | the case in full (events, timers, mail, attachments); 404 if none |
//! | `GET /outbox` / `GET /outbox?held=true` | mail pending / mail held |
//! | `POST /outbox/ID/release` / `POST /outbox/release-all` | the released entries |

use std::sync::Arc;

use chrono::{DateTime, Utc};
use hyper::{Method, StatusCode};

use super::adapters::BlockingWork;
use crate::case::{CaseId, CaseState};
use crate::clock::Clock;
use crate::config::InDoubt;
use crate::engine::inspect::{self, CaseAnswer, CaseQuery};
use crate::metrics::{error_json, Api, ApiFuture, ApiRequest, ApiResponse, Metrics};
use crate::store::{CaseFilter, OutboxEntry, OutboxState, Store, StoreError};

/// The note on a case when an operator releases its held mail.
pub const RELEASE_NOTE: &str = "released by an operator; it is sent again with the same Message-ID";

/// The note on a case when its mail in doubt is sent again (`smtp.in_doubt = "resend"`).
pub const RESEND_NOTE: &str = "in doubt after a restart (the server may have accepted it before \
     the daemon stopped); sent again with the same Message-ID (smtp.in_doubt = resend)";

/// What start-up did with the mail in doubt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InDoubtReport {
    /// Entries queued to be sent again.
    pub resent: Vec<String>,
    /// Entries held now.
    pub held: Vec<String>,
    /// Entries held in all (also from earlier starts, not yet released).
    pub held_total: usize,
}

/// Settles every mail whose SMTP attempt began before the last stop and whose outcome was
/// never recorded. Run at start, before the sender: each one is queued again
/// (`resend`) or held (`hold`), with a note on its case. Flushes.
pub fn settle_in_doubt(
    store: &Store,
    policy: InDoubt,
    now: DateTime<Utc>,
) -> Result<InDoubtReport, StoreError> {
    let mut report = InDoubtReport::default();
    for entry in store.outbox_in_doubt()? {
        let started = match entry.state {
            OutboxState::Sending { started_at, .. } => started_at,
            _ => now,
        };
        match policy {
            InDoubt::Resend => {
                store.outbox_requeue(&entry.id, RESEND_NOTE, now)?;
                tracing::warn!(
                    id = %entry.id, message_id = %entry.message_id, %started,
                    "outbox: mail in doubt after a restart; sending it again with the same Message-ID"
                );
                report.resent.push(entry.id);
            }
            InDoubt::Hold => {
                let reason = format!(
                    "in doubt: handed to the SMTP server at {} and the daemon stopped before the \
                     outcome was recorded; the server may have accepted it (smtp.in_doubt = hold; \
                     `complaintd outbox release {}` sends it again)",
                    started.to_rfc3339(),
                    entry.id
                );
                store.outbox_hold(&entry.id, &reason, now)?;
                tracing::warn!(
                    id = %entry.id, message_id = %entry.message_id, %started,
                    "outbox: mail in doubt after a restart; held for an operator (complaintd outbox list --held)"
                );
                report.held.push(entry.id);
            }
        }
    }
    if !report.resent.is_empty() || !report.held.is_empty() {
        store.flush()?;
    }
    report.held_total = store.held_outbox()?.len();
    Ok(report)
}

/// Which held mail to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    One(String),
    All,
}

/// Why a release did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no outbox entry {0}")]
    Unknown(String),
    #[error("mail {id} is {state}, not held")]
    NotHeld { id: String, state: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Queues held mail to be sent again at `now` (same bytes, same Message-ID), with a note on
/// its case; flushes. Returns the released entries.
pub fn release(
    store: &Store,
    which: &Release,
    now: DateTime<Utc>,
) -> Result<Vec<OutboxEntry>, ReleaseError> {
    let ids: Vec<String> = match which {
        Release::All => store.held_outbox()?.into_iter().map(|e| e.id).collect(),
        Release::One(id) => match store.outbox_entry(id)? {
            None => return Err(ReleaseError::Unknown(id.clone())),
            Some(entry) if !matches!(entry.state, OutboxState::Held { .. }) => {
                return Err(ReleaseError::NotHeld {
                    id: id.clone(),
                    state: entry.state.name(),
                })
            }
            Some(entry) => vec![entry.id],
        },
    };
    let mut released = Vec::with_capacity(ids.len());
    for id in ids {
        released.push(store.outbox_requeue(&id, RELEASE_NOTE, now)?);
    }
    store.flush()?;
    Ok(released)
}

/// Mail held (`held`), or mail pending: scheduled, awaiting retry or being sent.
pub fn outbox_list(store: &Store, held: bool) -> Result<Vec<OutboxEntry>, StoreError> {
    if held {
        store.held_outbox()
    } else {
        store.due_outbox(DateTime::<Utc>::MAX_UTC, usize::MAX)
    }
}

/// An outbox listing as the `--json` output: the exact text, newline included.
pub fn outbox_json(entries: &[OutboxEntry]) -> Result<String, serde_json::Error> {
    Ok(format!("{}\n", serde_json::to_string_pretty(entries)?))
}

/// The daemon's routes on the endpoint.
pub struct AdminApi {
    store: Store,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    work: BlockingWork,
    /// Wakes the sender after a release.
    wake_sender: Box<dyn Fn() + Send + Sync>,
}

impl AdminApi {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        work: BlockingWork,
        wake_sender: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        AdminApi {
            store,
            clock,
            metrics,
            work,
            wake_sender: Box::new(wake_sender),
        }
    }

    async fn route(&self, request: ApiRequest) -> Option<ApiResponse> {
        let segments: Vec<String> = request
            .path
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let answer = match (&request.method, segments.as_slice()) {
            (&Method::GET, ["cases"]) => match case_query_of(&request.query) {
                Ok(query) => self.cases(query).await,
                Err(message) => bad_request(&message),
            },
            (&Method::GET, ["cases", id]) => {
                if let Some(message) = unexpected_parameters(&request.query, &[]) {
                    return Some(bad_request(&message));
                }
                self.cases(CaseQuery::show(id)).await
            }
            (&Method::GET, ["outbox"]) => match held_parameter(&request.query) {
                Ok(held) => self.outbox(held).await,
                Err(message) => bad_request(&message),
            },
            (&Method::POST, ["outbox", "release-all"]) => self.release(Release::All).await,
            (&Method::POST, ["outbox", id, "release"]) => {
                self.release(Release::One((*id).to_owned())).await
            }
            (_, ["cases"] | ["cases", _] | ["outbox"] | ["outbox", "release-all"])
            | (_, ["outbox", _, "release"]) => ApiResponse {
                status: StatusCode::METHOD_NOT_ALLOWED,
                json: error_json(&format!("{} is not allowed here", request.method)),
            },
            _ => return None,
        };
        Some(answer)
    }

    async fn cases(&self, query: CaseQuery) -> ApiResponse {
        let store = self.store.clone();
        let found = self.work.run(move || inspect::answer(&store, &query)).await;
        match found {
            Err(message) => server_error(&message),
            Ok(Err(error)) => server_error(&error.to_string()),
            Ok(Ok(answer)) => {
                let status = match answer {
                    CaseAnswer::NoSuchCase(_) => StatusCode::NOT_FOUND,
                    _ => StatusCode::OK,
                };
                match inspect::answer_json(&answer) {
                    Ok(json) => ApiResponse { status, json },
                    Err(error) => server_error(&error.to_string()),
                }
            }
        }
    }

    async fn outbox(&self, held: bool) -> ApiResponse {
        let store = self.store.clone();
        match self.work.run(move || outbox_list(&store, held)).await {
            Err(message) => server_error(&message),
            Ok(Err(error)) => server_error(&error.to_string()),
            Ok(Ok(entries)) => match outbox_json(&entries) {
                Ok(json) => ApiResponse {
                    status: StatusCode::OK,
                    json,
                },
                Err(error) => server_error(&error.to_string()),
            },
        }
    }

    async fn release(&self, which: Release) -> ApiResponse {
        let store = self.store.clone();
        let now = self.clock.now();
        let result = self
            .work
            .run(move || {
                let released = release(&store, &which, now)?;
                let held = store.held_outbox()?.len();
                Ok::<_, ReleaseError>((released, held))
            })
            .await;
        match result {
            Err(message) => server_error(&message),
            Ok(Err(error @ ReleaseError::Unknown(_))) => ApiResponse {
                status: StatusCode::NOT_FOUND,
                json: error_json(&error.to_string()),
            },
            Ok(Err(error @ ReleaseError::NotHeld { .. })) => ApiResponse {
                status: StatusCode::CONFLICT,
                json: error_json(&error.to_string()),
            },
            Ok(Err(error)) => server_error(&error.to_string()),
            Ok(Ok((released, held))) => {
                self.metrics.set_outbox_held(held as u64);
                self.metrics
                    .refresh_outbox_depth(|| self.store.queue_depth());
                for entry in &released {
                    tracing::info!(id = %entry.id, "outbox: held mail released by an operator");
                }
                (self.wake_sender)();
                match outbox_json(&released) {
                    Ok(json) => ApiResponse {
                        status: StatusCode::OK,
                        json,
                    },
                    Err(error) => server_error(&error.to_string()),
                }
            }
        }
    }
}

impl Api for AdminApi {
    fn handle(&self, request: ApiRequest) -> ApiFuture<'_> {
        Box::pin(self.route(request))
    }
}

fn bad_request(message: &str) -> ApiResponse {
    ApiResponse {
        status: StatusCode::BAD_REQUEST,
        json: error_json(message),
    }
}

fn server_error(message: &str) -> ApiResponse {
    tracing::error!(error = %message, "endpoint: a query failed");
    ApiResponse {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        json: error_json(message),
    }
}

fn percent_decode(segment: &str) -> String {
    // form_urlencoded also turns '+' into a space; a path keeps its '+'.
    let protected = segment.replace('+', "%2B");
    form_urlencoded::parse(format!("x={protected}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// A parameter that is not one of `allowed`, as an error message.
fn unexpected_parameters(query: &[(String, String)], allowed: &[&str]) -> Option<String> {
    query
        .iter()
        .find(|(name, _)| !allowed.contains(&name.as_str()))
        .map(|(name, _)| {
            if allowed.is_empty() {
                format!("unknown parameter `{name}`: this route takes none")
            } else {
                format!("unknown parameter `{name}` (known: {})", allowed.join(", "))
            }
        })
}

fn boolean(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(format!("{name} must be true or false, not `{other}`")),
    }
}

/// The case query of `GET /cases`'s parameters.
pub fn case_query_of(query: &[(String, String)]) -> Result<CaseQuery, String> {
    const KNOWN: [&str; 6] = ["open", "state", "severity", "department", "limit", "search"];
    if let Some(message) = unexpected_parameters(query, &KNOWN) {
        return Err(message);
    }
    let mut filter = CaseFilter::default();
    let mut search = None;
    for (name, value) in query {
        match name.as_str() {
            "open" => filter.open = Some(boolean(name, value)?),
            "state" => {
                filter.state = Some(CaseState::parse(value).ok_or_else(|| {
                    let known: Vec<&str> = CaseState::ALL.iter().map(|s| s.as_str()).collect();
                    format!("unknown state `{value}` (known: {})", known.join(", "))
                })?)
            }
            "severity" => filter.severity = Some(value.clone()),
            "department" => filter.department = Some(value.clone()),
            "limit" => {
                filter.limit = Some(
                    value
                        .parse()
                        .map_err(|_| format!("limit must be a whole number, not `{value}`"))?,
                )
            }
            _ => search = Some(value.clone()),
        }
    }
    match search {
        Some(_) if filter != CaseFilter::default() => {
            Err("search cannot be combined with other parameters".into())
        }
        Some(text) => Ok(CaseQuery::Search(text)),
        None => Ok(CaseQuery::List(filter)),
    }
}

/// The parameters of `GET /cases` that ask for `query` (the inverse of [`case_query_of`]).
pub fn case_query_parameters(query: &CaseQuery) -> Vec<(&'static str, String)> {
    match query {
        CaseQuery::Search(text) => vec![("search", text.clone())],
        CaseQuery::Show(_) => Vec::new(),
        CaseQuery::List(filter) => {
            let mut out = Vec::new();
            if let Some(open) = filter.open {
                out.push(("open", open.to_string()));
            }
            if let Some(state) = filter.state {
                out.push(("state", state.as_str().to_owned()));
            }
            if let Some(severity) = &filter.severity {
                out.push(("severity", severity.clone()));
            }
            if let Some(department) = &filter.department {
                out.push(("department", department.clone()));
            }
            if let Some(limit) = filter.limit {
                out.push(("limit", limit.to_string()));
            }
            out
        }
    }
}

fn held_parameter(query: &[(String, String)]) -> Result<bool, String> {
    if let Some(message) = unexpected_parameters(query, &["held"]) {
        return Err(message);
    }
    query
        .iter()
        .find(|(name, _)| name == "held")
        .map_or(Ok(false), |(name, value)| boolean(name, value))
}

/// The path of a case on the endpoint.
pub fn case_path(id: &CaseId) -> String {
    format!("/cases/{}", encode_segment(&id.0))
}

/// The release path of an outbox entry on the endpoint.
pub fn release_path(id: &str) -> String {
    format!("/outbox/{}/release", encode_segment(id))
}

/// A path segment with everything but unreserved characters percent-encoded.
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Address, Case};
    use crate::clock::ManualClock;
    use crate::store::{ChangeSet, MailDraft, MailIdentity, RenderedMail};
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
    }

    fn render(identity: &MailIdentity) -> Result<RenderedMail, String> {
        Ok(RenderedMail {
            message_id: format!("{}@example.test", identity.outbox_id),
            subject: "received".into(),
            bytes: b"Subject: received\r\n\r\nok\r\n".to_vec(),
            template_failure: None,
        })
    }

    /// A store with `count` cases, each with its acknowledgement queued; their outbox ids.
    fn store_with_cases(dir: &tempfile::TempDir, count: usize) -> (Store, Vec<String>) {
        let store = Store::open(dir.path().join("db")).unwrap();
        for i in 0..count {
            let mut changes =
                ChangeSet::for_message(&format!("<m{i}@example.test>"), t0()).unwrap();
            let case = changes
                .new_case(Case::new(
                    CaseId("unnumbered".into()),
                    t0(),
                    "email",
                    Address::new(&format!("customer{i}@example.test"), None),
                    &format!("complaint {i}"),
                    "en",
                ))
                .unwrap();
            changes.link_message(&case).unwrap();
            changes
                .queue_mail(
                    &case,
                    MailDraft::new(
                        "ack",
                        "acknowledgement",
                        "complaints@example.test",
                        vec![format!("customer{i}@example.test")],
                        t0(),
                        render,
                    ),
                )
                .unwrap();
            store.apply(&changes).unwrap();
        }
        let ids = store
            .due_outbox(t0(), 100)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        (store, ids)
    }

    fn api(store: &Store, wakes: Arc<AtomicUsize>, metrics: Metrics) -> AdminApi {
        AdminApi::new(
            store.clone(),
            Arc::new(ManualClock::new(t0() + chrono::Duration::hours(1))),
            metrics,
            BlockingWork::default(),
            move || {
                wakes.fetch_add(1, Ordering::SeqCst);
            },
        )
    }

    fn get(path: &str, query: &[(&str, &str)]) -> ApiRequest {
        ApiRequest {
            method: Method::GET,
            path: path.into(),
            query: query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn post(path: &str) -> ApiRequest {
        ApiRequest {
            method: Method::POST,
            path: path.into(),
            query: Vec::new(),
        }
    }

    #[test]
    fn settling_holds_or_resends_only_the_mail_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ids) = store_with_cases(&dir, 3);
        store.outbox_attempt(&ids[0], t0()).unwrap();
        store.outbox_sent(&ids[0], t0()).unwrap();
        store.outbox_attempt(&ids[1], t0()).unwrap();
        let now = t0() + chrono::Duration::minutes(1);

        let report = settle_in_doubt(&store, InDoubt::Hold, now).unwrap();
        assert_eq!(report.held, [ids[1].clone()]);
        assert!(report.resent.is_empty());
        assert_eq!(report.held_total, 1);
        assert!(matches!(
            store.outbox_entry(&ids[1]).unwrap().unwrap().state,
            OutboxState::Held { .. }
        ));
        // Nothing is in doubt any more: a second start holds nothing new.
        let again = settle_in_doubt(&store, InDoubt::Hold, now).unwrap();
        assert!(again.held.is_empty());
        assert_eq!(again.held_total, 1);

        store.outbox_attempt(&ids[2], now).unwrap();
        let resent = settle_in_doubt(&store, InDoubt::Resend, now).unwrap();
        assert_eq!(resent.resent, [ids[2].clone()]);
        assert_eq!(resent.held_total, 1);
        assert_eq!(
            store.outbox_entry(&ids[2]).unwrap().unwrap().state,
            OutboxState::Scheduled {
                next_attempt: now,
                batched: false,
            }
        );
    }

    #[tokio::test]
    async fn case_routes_answer_what_the_cli_prints() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_cases(&dir, 3);
        let api = api(&store, Arc::default(), Metrics::new());

        let listed = api.handle(get("/cases", &[])).await.unwrap();
        assert_eq!(listed.status, StatusCode::OK);
        let all = inspect::answer(&store, &CaseQuery::List(CaseFilter::default())).unwrap();
        assert_eq!(listed.json, inspect::answer_json(&all).unwrap());
        let cases: Vec<crate::case::Case> = serde_json::from_str(&listed.json).unwrap();
        assert_eq!(cases.len(), 3);

        let received = api
            .handle(get("/cases", &[("state", "received")]))
            .await
            .unwrap();
        let closed = api
            .handle(get("/cases", &[("state", "closed")]))
            .await
            .unwrap();
        let received: Vec<crate::case::Case> = serde_json::from_str(&received.json).unwrap();
        let closed: Vec<crate::case::Case> = serde_json::from_str(&closed.json).unwrap();
        assert_eq!(received.len() + closed.len(), 3);
        assert!(received.iter().all(|c| c.state == CaseState::Received));
        assert!(closed.iter().all(|c| c.state == CaseState::Closed));

        let id = &cases[1].id;
        let shown = api.handle(get(&case_path(id), &[])).await.unwrap();
        assert_eq!(shown.status, StatusCode::OK);
        let detail: inspect::CaseDetail = serde_json::from_str(&shown.json).unwrap();
        assert_eq!(&detail.case.id, id);
        assert_eq!(detail.mail.len(), 1);
        assert_eq!(
            detail.events,
            store.events(id).unwrap(),
            "the event log is served"
        );

        let lower = api
            .handle(get(&format!("/cases/{}", id.0.to_lowercase()), &[]))
            .await
            .unwrap();
        assert_eq!(lower.json, shown.json, "case numbers are case-insensitive");

        let found = api
            .handle(get("/cases", &[("search", "customer2@")]))
            .await
            .unwrap();
        let found: Vec<crate::case::Case> = serde_json::from_str(&found.json).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].sender.email, "customer2@example.test");

        let missing = api.handle(get("/cases/TS-2026-999999", &[])).await.unwrap();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(
            missing.json.contains("no case TS-2026-999999"),
            "{}",
            missing.json
        );

        for (name, value) in [("state", "sleeping"), ("limit", "many"), ("colour", "red")] {
            let bad = api.handle(get("/cases", &[(name, value)])).await.unwrap();
            assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{name}={value}");
            assert!(
                bad.json.contains(value) || bad.json.contains(name),
                "{}",
                bad.json
            );
        }
        assert!(api.handle(get("/nothing", &[])).await.is_none());
        let wrong_method = api.handle(post("/cases")).await.unwrap();
        assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn held_mail_is_listed_and_released_through_the_routes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ids) = store_with_cases(&dir, 3);
        for id in &ids[..2] {
            store.outbox_attempt(id, t0()).unwrap();
        }
        settle_in_doubt(&store, InDoubt::Hold, t0()).unwrap();
        let wakes = Arc::new(AtomicUsize::new(0));
        let metrics = Metrics::new();
        metrics.set_outbox_held(2);
        let api = api(&store, Arc::clone(&wakes), metrics.clone());

        let held = api
            .handle(get("/outbox", &[("held", "true")]))
            .await
            .unwrap();
        let held: Vec<OutboxEntry> = serde_json::from_str(&held.json).unwrap();
        let held_ids: Vec<&str> = held.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(held_ids, [ids[0].as_str(), ids[1].as_str()]);
        let pending = api.handle(get("/outbox", &[])).await.unwrap();
        let pending: Vec<OutboxEntry> = serde_json::from_str(&pending.json).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, ids[2]);

        let not_held = api.handle(post(&release_path(&ids[2]))).await.unwrap();
        assert_eq!(not_held.status, StatusCode::CONFLICT);
        assert!(
            not_held.json.contains("scheduled, not held"),
            "{}",
            not_held.json
        );
        let unknown = api
            .handle(post(&release_path("TS-2026-999999.ack.1")))
            .await
            .unwrap();
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(wakes.load(Ordering::SeqCst), 0);

        let one = api.handle(post(&release_path(&ids[0]))).await.unwrap();
        assert_eq!(one.status, StatusCode::OK, "{}", one.json);
        let released: Vec<OutboxEntry> = serde_json::from_str(&one.json).unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(
            released[0].state,
            OutboxState::Scheduled {
                next_attempt: t0() + chrono::Duration::hours(1),
                batched: false,
            }
        );
        assert_eq!(wakes.load(Ordering::SeqCst), 1, "the sender is woken");
        assert_eq!(metrics.outbox_held(), 1);

        let rest = api.handle(post("/outbox/release-all")).await.unwrap();
        let released: Vec<OutboxEntry> = serde_json::from_str(&rest.json).unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].id, ids[1]);
        assert_eq!(metrics.outbox_held(), 0);
        assert!(store.held_outbox().unwrap().is_empty());
        assert_eq!(store.queue_depth(), 3);
        let case = store.outbox_entry(&ids[1]).unwrap().unwrap().case.unwrap();
        assert!(store.events(&case).unwrap().iter().any(|e| matches!(
            &e.kind,
            crate::case::EventKind::Note { text } if text.ends_with(RELEASE_NOTE)
        )));
    }

    #[test]
    fn query_parameters_and_case_queries_round_trip() {
        let queries = [
            CaseQuery::List(CaseFilter::default()),
            CaseQuery::List(CaseFilter {
                open: Some(true),
                state: Some(CaseState::InProgress),
                severity: Some("高".into()),
                department: Some("billing".into()),
                limit: Some(5),
            }),
            CaseQuery::Search("燃气 表".into()),
        ];
        for query in queries {
            let parameters: Vec<(String, String)> = case_query_parameters(&query)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            assert_eq!(case_query_of(&parameters).unwrap(), query);
        }
        assert!(case_query_of(&[
            ("search".into(), "x".into()),
            ("open".into(), "true".into())
        ])
        .is_err());
        assert_eq!(
            percent_decode("TS-2026-000001.a%2Bb+c"),
            "TS-2026-000001.a+b+c"
        );
        assert_eq!(
            release_path("TS-2026-000001.=E7=9D=A3.1"),
            "/outbox/TS-2026-000001.%3DE7%3D9D%3DA3.1/release"
        );
        assert_eq!(
            percent_decode("TS-2026-000001.%3DE7%3D9D%3DA3.1"),
            "TS-2026-000001.=E7=9D=A3.1"
        );
    }
}
