//! The daemon's Prometheus metrics and the loopback HTTP endpoint serving `/health`, `/metrics`
//! and the daemon's read-only case queries and outbox administration ([`Api`]).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The longest a `GET /metrics?after=G` request waits for a change before answering anyway.
const LONG_POLL_LIMIT: Duration = Duration::from_secs(30);

/// The response header of `/metrics` naming the change generation (see [`Metrics::changes`])
/// the text is at least as new as; `GET /metrics?after=G` answers once it differs from `G`.
pub const GENERATION_HEADER: &str = "x-complaintd-generation";

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most HTTP connections served at once; the endpoint is for one scraper and an operator.
const MAX_CONNECTIONS: usize = 32;

/// Most `/metrics?after=G` long polls waiting at once: each holds a connection for up to
/// [`LONG_POLL_LIMIT`], and half the connections stay free for health checks, scrapes and
/// the API however many followers there are.
const MAX_LONG_POLLS: usize = MAX_CONNECTIONS / 2;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The header a mutating API request (POST) must carry. A web page cannot send it to another
/// origin without a CORS preflight, which this endpoint never grants.
pub const ADMIN_HEADER: &str = "x-complaintd-admin";

/// A request to a route of the [`Api`] (anything but `/health` and `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: Method,
    /// The path, percent-encoded as it came.
    pub path: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
}

/// An answer of the [`Api`]: a status and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub json: String,
}

/// A boxed future, so that [`Api`] can be used as a trait object.
pub type ApiFuture<'a> = Pin<Box<dyn Future<Output = Option<ApiResponse>> + Send + 'a>>;

/// More routes on the endpoint, answered with JSON (the daemon's case queries). `None`: not
/// a route of this API (404).
pub trait Api: Send + Sync + 'static {
    fn handle(&self, request: ApiRequest) -> ApiFuture<'_>;
}

/// Whether a failed delivery will be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Temporary,
    Permanent,
}

impl EncodeLabelValue for FailureKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        let name = match self {
            FailureKind::Temporary => "temporary",
            FailureKind::Permanent => "permanent",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReloadOutcome {
    Success,
    Failure,
}

impl EncodeLabelValue for ReloadOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        let name = match self {
            ReloadOutcome::Success => "success",
            ReloadOutcome::Failure => "failure",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MailboxLabels {
    mailbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    kind: FailureKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    outcome: ReloadOutcome,
}

struct Inner {
    registry: Registry,
    cases_ingested: Counter,
    messages_fetched: Family<MailboxLabels, Counter>,
    mail_sent: Counter,
    mail_failed: Family<FailureLabels, Counter>,
    outbox_depth: Gauge,
    /// Held while reading the store's queue depth and setting the gauge, so
    /// that the last update made is made with the latest count.
    outbox_depth_updates: std::sync::Mutex<()>,
    imap_reconnects: Family<MailboxLabels, Counter>,
    imap_connected: Family<MailboxLabels, Gauge>,
    imap_idling: Family<MailboxLabels, Gauge>,
    rule_reloads: Family<ReloadLabels, Counter>,
    last_reload: Gauge,
    outbox_held: Gauge,
    mail_in_doubt: Counter,
    /// Told of every change of the IMAP metrics, so a waiter need not poll.
    imap_changes: tokio::sync::watch::Sender<()>,
    /// The change generation: bumped after every metric change (an outbox result or a
    /// scheduler run is reported through [`Metrics::refresh_outbox_depth`]); a watch keeps
    /// only the latest value.
    changes: tokio::sync::watch::Sender<u64>,
}

/// A cheap, cloneable handle on every metric of the daemon.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("complaintd");
        let cases_ingested = Counter::default();
        registry.register(
            "cases_ingested",
            "New cases created from incoming mail",
            cases_ingested.clone(),
        );
        let messages_fetched = Family::<MailboxLabels, Counter>::default();
        registry.register(
            "messages_fetched",
            "Messages fetched from IMAP and committed, by mailbox",
            messages_fetched.clone(),
        );
        let mail_sent = Counter::default();
        registry.register("mail_sent", "Messages accepted by SMTP", mail_sent.clone());
        let mail_failed = Family::<FailureLabels, Counter>::default();
        registry.register(
            "mail_failed",
            "SMTP delivery attempts that failed, by whether they will be retried",
            mail_failed.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Messages waiting in the outbox",
            outbox_depth.clone(),
        );
        let imap_reconnects = Family::<MailboxLabels, Counter>::default();
        registry.register(
            "imap_reconnects",
            "IMAP connections lost or refused, by mailbox",
            imap_reconnects.clone(),
        );
        let imap_connected = Family::<MailboxLabels, Gauge>::default();
        registry.register(
            "imap_connected",
            "1 while the mailbox has a logged-in connection with its folder selected",
            imap_connected.clone(),
        );
        let imap_idling = Family::<MailboxLabels, Gauge>::default();
        registry.register(
            "imap_idling",
            "1 while the mailbox waits in IMAP IDLE",
            imap_idling.clone(),
        );
        let rule_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "rule_reloads",
            "Rule reloads, by outcome",
            rule_reloads.clone(),
        );
        let last_reload = Gauge::default();
        registry.register(
            "rules_last_reload_timestamp_seconds",
            "Unix time of the last successful rule reload",
            last_reload.clone(),
        );
        let outbox_held = Gauge::default();
        registry.register(
            "outbox_held",
            "Mails held for an operator: in doubt after a crash (smtp.in_doubt = \"hold\")",
            outbox_held.clone(),
        );
        let mail_in_doubt = Counter::default();
        registry.register(
            "mail_in_doubt",
            "Mails found in doubt at start: handed to SMTP before a crash, outcome unknown",
            mail_in_doubt.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                imap_changes: tokio::sync::watch::Sender::new(()),
                changes: tokio::sync::watch::Sender::new(0),
                outbox_held,
                mail_in_doubt,
                registry,
                cases_ingested,
                messages_fetched,
                mail_sent,
                mail_failed,
                outbox_depth,
                outbox_depth_updates: std::sync::Mutex::new(()),
                imap_reconnects,
                imap_connected,
                imap_idling,
                rule_reloads,
                last_reload,
            }),
        }
    }

    pub fn cases_ingested(&self, count: u64) {
        self.inner.cases_ingested.inc_by(count);
        self.bump();
    }

    pub fn messages_fetched(&self, mailbox: &str, count: u64) {
        self.inner
            .messages_fetched
            .get_or_create(&MailboxLabels {
                mailbox: mailbox.to_owned(),
            })
            .inc_by(count);
        self.bump();
    }

    pub fn mail_sent(&self) {
        self.inner.mail_sent.inc();
        self.bump();
    }

    pub fn mail_failed(&self, kind: FailureKind) {
        self.inner
            .mail_failed
            .get_or_create(&FailureLabels { kind })
            .inc();
        self.bump();
    }

    /// Sets the outbox-depth gauge to what `count` reads (the store's count
    /// of pending mail, which costs nothing to read): call it after every
    /// commit that queued mail or ended some. Reading and setting happen
    /// under one lock, so two updates racing cannot leave the older count
    /// behind: whoever sets last also read last.
    pub fn refresh_outbox_depth(&self, count: impl FnOnce() -> usize) {
        {
            let _update = self
                .inner
                .outbox_depth_updates
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let depth = count();
            self.inner
                .outbox_depth
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        self.bump();
    }

    pub fn set_outbox_held(&self, held: u64) {
        self.inner
            .outbox_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        self.bump();
    }

    pub fn outbox_held(&self) -> u64 {
        u64::try_from(self.inner.outbox_held.get()).unwrap_or(0)
    }

    pub fn mail_in_doubt(&self, count: u64) {
        self.inner.mail_in_doubt.inc_by(count);
        self.bump();
    }

    pub fn imap_reconnect(&self, mailbox: &str) {
        self.inner
            .imap_reconnects
            .get_or_create(&MailboxLabels {
                mailbox: mailbox.to_owned(),
            })
            .inc();
        self.inner.imap_changes.send_replace(());
        self.bump();
    }

    /// A receiver that sees every change of the IMAP reconnect, connected and
    /// idling metrics: status output and tests wait on it instead of polling.
    pub fn watch_imap(&self) -> tokio::sync::watch::Receiver<()> {
        self.inner.imap_changes.subscribe()
    }

    pub fn set_imap_connected(&self, mailbox: &str, connected: bool) {
        self.inner
            .imap_connected
            .get_or_create(&MailboxLabels {
                mailbox: mailbox.to_owned(),
            })
            .set(i64::from(connected));
        self.inner.imap_changes.send_replace(());
        self.bump();
    }

    pub fn set_imap_idling(&self, mailbox: &str, idling: bool) {
        self.inner
            .imap_idling
            .get_or_create(&MailboxLabels {
                mailbox: mailbox.to_owned(),
            })
            .set(i64::from(idling));
        self.inner.imap_changes.send_replace(());
        self.bump();
    }

    /// Whether the mailbox waits in IDLE right now.
    pub fn imap_idling(&self, mailbox: &str) -> bool {
        self.inner
            .imap_idling
            .get_or_create(&MailboxLabels {
                mailbox: mailbox.to_owned(),
            })
            .get()
            == 1
    }

    /// Counts a rule reload; a successful one also sets the last-reload time.
    pub fn rules_reloaded(&self, success: bool, at: DateTime<Utc>) {
        let outcome = if success {
            ReloadOutcome::Success
        } else {
            ReloadOutcome::Failure
        };
        self.inner
            .rule_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
        if success {
            self.inner.last_reload.set(at.timestamp());
        }
        self.bump();
    }

    /// A receiver woken after every change of a metric (every refresh of the outbox depth
    /// included, changed or not: the daemon refreshes it after each outbox result and each
    /// scheduler run that fired something), holding the change generation: tests (and
    /// anything following the daemon) wait on it instead of polling.
    /// Changes coalesce (only the latest generation is kept), so a waiter looks again at what
    /// it waits for on every wake.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The change generation now (see [`Metrics::changes`]).
    pub fn generation(&self) -> u64 {
        *self.inner.changes.borrow()
    }

    /// Called after each change is made, so a waiter woken by it sees the change.
    fn bump(&self) {
        self.inner
            .changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Reads one IMAP reconnect counter (for tests and status output).
    pub fn imap_reconnects(&self, mailbox: &str) -> u64 {
        self.inner
            .imap_reconnects
            .get_or_create(&MailboxLabels {
                mailbox: mailbox.to_owned(),
            })
            .get()
    }

    /// Reads one fetched-messages counter.
    pub fn messages_fetched_count(&self, mailbox: &str) -> u64 {
        self.inner
            .messages_fetched
            .get_or_create(&MailboxLabels {
                mailbox: mailbox.to_owned(),
            })
            .get()
    }

    pub fn mail_sent_count(&self) -> u64 {
        self.inner.mail_sent.get()
    }

    pub fn mail_failed_count(&self, kind: FailureKind) -> u64 {
        self.inner
            .mail_failed
            .get_or_create(&FailureLabels { kind })
            .get()
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an error here would be a bug in the encoder.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        text
    }
}

/// The `/health` and `/metrics` endpoint, bound but not yet serving.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds the listening socket; port 0 picks a free port (see [`Self::local_addr`]).
    pub async fn bind(address: SocketAddr) -> std::io::Result<MetricsServer> {
        Ok(MetricsServer {
            listener: TcpListener::bind(address).await?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/health` and `/metrics` until `shutdown` is cancelled, then finishes the
    /// requests in flight and returns. `/metrics?after=G` answers once the change generation
    /// (the [`GENERATION_HEADER`] of an earlier answer) is no longer `G`, or after 30 s: a
    /// client follows the daemon without polling.
    pub async fn serve(self, metrics: Metrics, shutdown: CancellationToken) {
        self.serve_with(metrics, None, shutdown).await;
    }

    /// Like [`Self::serve`], with the routes of `api` besides.
    pub async fn serve_with(
        self,
        metrics: Metrics,
        api: Option<Arc<dyn Api>>,
        shutdown: CancellationToken,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let long_polls = Arc::new(Semaphore::new(MAX_LONG_POLLS));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Accept errors (e.g. too many open files) pass; keep serving.
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        continue;
                    }
                },
            };
            // Reap finished connections so the set stays small.
            while connections.try_join_next().is_some() {}
            let metrics = metrics.clone();
            let api = api.clone();
            let shutdown = shutdown.clone();
            let long_polls = Arc::clone(&long_polls);
            connections.spawn(async move {
                let _permit = permit;
                let stopping = shutdown.clone();
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    let api = api.clone();
                    let stopping = stopping.clone();
                    let long_polls = Arc::clone(&long_polls);
                    async move {
                        let response = respond(&request, &metrics, api, &stopping, &long_polls);
                        Ok::<_, Infallible>(response.await)
                    }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    _ = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "metrics endpoint: connection ended with an error");
                }
            });
        }
        while connections.join_next().await.is_some() {}
    }
}

async fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    api: Option<Arc<dyn Api>>,
    shutdown: &CancellationToken,
    long_polls: &Semaphore,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if let (Some(api), false) = (api, matches!(path, "/health" | "/metrics")) {
        return respond_api(request, api.as_ref()).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/health" => plain(StatusCode::OK, "ok\n"),
        "/metrics" => {
            match after_parameter(request.uri().query()) {
                Ok(None) => {}
                Ok(Some(after)) => {
                    if wait_for_change(metrics, after, shutdown, long_polls)
                        .await
                        .is_err()
                    {
                        let mut response = plain(
                            StatusCode::TOO_MANY_REQUESTS,
                            "too many clients are waiting for a change; try again\n",
                        );
                        response
                            .headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                        return response;
                    }
                }
                Err(message) => return plain(StatusCode::BAD_REQUEST, message),
            }
            // Read before the text, so the text is at least as new as the generation named.
            let generation = metrics.generation();
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            headers.insert(GENERATION_HEADER, HeaderValue::from(generation));
            response
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /health or /metrics\n",
        ),
    }
}

/// The `after` parameter of a `/metrics` request: the change generation its client has seen.
fn after_parameter(query: Option<&str>) -> Result<Option<u64>, &'static str> {
    let Some(query) = query else {
        return Ok(None);
    };
    match form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "after") {
        None => Ok(None),
        Some((_, value)) => value
            .parse()
            .map(Some)
            .map_err(|_| "after must be a change generation (a whole number)\n"),
    }
}

/// All [`MAX_LONG_POLLS`] long polls are waiting already.
#[derive(Debug, PartialEq)]
struct TooManyLongPolls;

/// Returns once the change generation differs from `after` (a client's generation from an
/// earlier run may be ahead: it answers at once), after [`LONG_POLL_LIMIT`], or on shutdown;
/// at once with an error when every permit of `long_polls` is taken.
async fn wait_for_change(
    metrics: &Metrics,
    after: u64,
    shutdown: &CancellationToken,
    long_polls: &Semaphore,
) -> Result<(), TooManyLongPolls> {
    let _waiting = long_polls.try_acquire().map_err(|_| TooManyLongPolls)?;
    let mut changes = metrics.changes();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::timeout(LONG_POLL_LIMIT, changes.wait_for(|now| *now != after)) => {}
    }
    Ok(())
}

/// Answers a request of the API, after the checks that keep it for local operators.
async fn respond_api(request: &Request<Incoming>, api: &dyn Api) -> Response<Full<Bytes>> {
    // A Host that is not a loopback address means a browser was led here by a rebound DNS
    // name: case data must not be read that way.
    if !request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(is_loopback_host)
    {
        return json(
            StatusCode::FORBIDDEN,
            error_json("the Host header must name a loopback address"),
        );
    }
    let method = request.method().clone();
    if method == Method::POST && !request.headers().contains_key(ADMIN_HEADER) {
        return json(
            StatusCode::FORBIDDEN,
            error_json(&format!("a POST needs the {ADMIN_HEADER} header")),
        );
    }
    if method != Method::GET && method != Method::POST {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            error_json("only GET and POST"),
        );
    }
    let query = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let api_request = ApiRequest {
        method,
        path: request.uri().path().to_owned(),
        query,
    };
    match api.handle(api_request).await {
        Some(answer) => json(answer.status, answer.json),
        None => json(
            StatusCode::NOT_FOUND,
            error_json("not found: try /health, /metrics, /cases, /cases/ID or /outbox"),
        ),
    }
}

/// `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `{"error": message}` with a newline, as every API error is answered.
pub fn error_json(message: &str) -> String {
    format!("{}\n", serde_json::json!({ "error": message }))
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_watcher_of_the_imap_metrics_sees_each_change() {
        let metrics = Metrics::new();
        let mut changes = metrics.watch_imap();
        assert!(!changes.has_changed().unwrap());
        metrics.set_imap_idling("complaints", true);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        metrics.imap_reconnect("complaints");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        metrics.set_imap_connected("complaints", false);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        metrics.cases_ingested(1);
        assert!(!changes.has_changed().unwrap(), "not an IMAP metric");
    }

    #[test]
    fn the_change_feed_sees_every_metric_change_and_each_reported_commit() {
        let metrics = Metrics::new();
        let mut changes = metrics.changes();
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        type Change<'a> = (&'a str, &'a dyn Fn(&Metrics));
        let changers: [Change; 11] = [
            ("cases_ingested", &|m| m.cases_ingested(1)),
            ("messages_fetched", &|m| m.messages_fetched("complaints", 1)),
            ("mail_sent", &|m| m.mail_sent()),
            ("mail_failed", &|m| m.mail_failed(FailureKind::Temporary)),
            ("refresh_outbox_depth", &|m| m.refresh_outbox_depth(|| 3)),
            ("set_outbox_held", &|m| m.set_outbox_held(1)),
            ("mail_in_doubt", &|m| m.mail_in_doubt(1)),
            ("imap_reconnect", &|m| m.imap_reconnect("complaints")),
            ("set_imap_connected", &|m| {
                m.set_imap_connected("complaints", true)
            }),
            ("set_imap_idling", &|m| {
                m.set_imap_idling("complaints", true)
            }),
            ("rules_reloaded", &|m| m.rules_reloaded(false, at)),
        ];
        for (generation, (name, change)) in (1..).zip(changers) {
            assert!(!changes.has_changed().unwrap(), "before {name}");
            change(&metrics);
            assert!(changes.has_changed().unwrap(), "{name} is not reported");
            assert_eq!(*changes.borrow_and_update(), generation, "{name}");
            assert_eq!(metrics.generation(), generation, "{name}");
        }
        // Reading changes nothing.
        metrics.encode();
        metrics.mail_sent_count();
        assert!(!changes.has_changed().unwrap());
    }

    #[tokio::test]
    async fn a_change_between_subscribing_and_waiting_is_not_lost() {
        let metrics = Metrics::new();
        let mut changes = metrics.changes();
        // The change lands after the subscription and before anyone waits.
        metrics.mail_sent();
        let woken = futures::FutureExt::now_or_never(changes.changed());
        assert!(
            matches!(woken, Some(Ok(()))),
            "the waiter is woken at once by a change it has not seen"
        );
        assert!(
            futures::FutureExt::now_or_never(changes.changed()).is_none(),
            "and only once"
        );
        // Many changes before the waiter looks again wake it once, at the latest generation.
        metrics.mail_sent();
        metrics.mail_sent();
        assert!(futures::FutureExt::now_or_never(changes.changed()).is_some());
        assert_eq!(*changes.borrow(), 3);
    }

    #[tokio::test]
    async fn a_long_poll_waits_for_the_next_change_or_shutdown() {
        let metrics = Metrics::new();
        let running = CancellationToken::new();
        let long_polls = Semaphore::new(MAX_LONG_POLLS);
        let current = metrics.generation();
        let waiting = wait_for_change(&metrics, current, &running, &long_polls);
        tokio::pin!(waiting);
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "nothing changed yet"
        );
        metrics.refresh_outbox_depth(|| 0);
        assert_eq!(
            futures::poll!(waiting.as_mut()),
            std::task::Poll::Ready(Ok(())),
            "woken by the change"
        );

        // A generation the daemon is already past (seen before a restart, say) answers at once.
        let stale = wait_for_change(&metrics, current, &running, &long_polls);
        assert_eq!(futures::FutureExt::now_or_never(stale), Some(Ok(())));

        let stopping = CancellationToken::new();
        let waiting = wait_for_change(&metrics, metrics.generation(), &stopping, &long_polls);
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        stopping.cancel();
        assert_eq!(
            futures::poll!(waiting.as_mut()),
            std::task::Poll::Ready(Ok(())),
            "shutdown ends it"
        );
    }

    #[tokio::test]
    async fn long_polls_beyond_their_share_of_the_connections_are_turned_away_at_once() {
        let metrics = Metrics::new();
        let running = CancellationToken::new();
        let long_polls = Semaphore::new(2);
        let now = metrics.generation();
        let first = wait_for_change(&metrics, now, &running, &long_polls);
        let second = wait_for_change(&metrics, now, &running, &long_polls);
        tokio::pin!(first, second);
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert!(futures::poll!(second.as_mut()).is_pending());
        let third = wait_for_change(&metrics, now, &running, &long_polls);
        assert_eq!(
            futures::FutureExt::now_or_never(third),
            Some(Err(TooManyLongPolls)),
            "no permit left: answered at once"
        );
        metrics.refresh_outbox_depth(|| 0);
        assert!(futures::poll!(first.as_mut()).is_ready());
        assert!(futures::poll!(second.as_mut()).is_ready());
        // The permits came back with the answers.
        let fourth = wait_for_change(&metrics, metrics.generation(), &running, &long_polls);
        tokio::pin!(fourth);
        assert!(futures::poll!(fourth.as_mut()).is_pending());
    }

    #[test]
    fn the_after_parameter_is_a_generation_or_absent() {
        assert_eq!(after_parameter(None), Ok(None));
        assert_eq!(after_parameter(Some("x=1")), Ok(None));
        assert_eq!(after_parameter(Some("x=1&after=42")), Ok(Some(42)));
        assert!(after_parameter(Some("after=soon")).is_err());
        assert!(after_parameter(Some("after=-1")).is_err());
    }

    #[test]
    fn counters_appear_in_the_text_format() {
        let metrics = Metrics::new();
        metrics.cases_ingested(3);
        metrics.messages_fetched("complaints", 5);
        metrics.mail_sent();
        metrics.mail_failed(FailureKind::Permanent);
        metrics.mail_failed(FailureKind::Temporary);
        metrics.mail_failed(FailureKind::Temporary);
        metrics.refresh_outbox_depth(|| 7);
        metrics.imap_reconnect("complaints");
        metrics.set_imap_connected("complaints", true);
        metrics.set_imap_idling("complaints", true);
        metrics.set_imap_idling("complaints", false);
        metrics.rules_reloaded(false, Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        metrics.rules_reloaded(true, Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap());
        metrics.set_outbox_held(2);
        metrics.mail_in_doubt(3);
        let text = metrics.encode();
        for line in [
            "complaintd_cases_ingested_total 3",
            "complaintd_messages_fetched_total{mailbox=\"complaints\"} 5",
            "complaintd_mail_sent_total 1",
            "complaintd_mail_failed_total{kind=\"permanent\"} 1",
            "complaintd_mail_failed_total{kind=\"temporary\"} 2",
            "complaintd_outbox_depth 7",
            "complaintd_imap_reconnects_total{mailbox=\"complaints\"} 1",
            "complaintd_imap_connected{mailbox=\"complaints\"} 1",
            "complaintd_imap_idling{mailbox=\"complaints\"} 0",
            "complaintd_rule_reloads_total{outcome=\"success\"} 1",
            "complaintd_rule_reloads_total{outcome=\"failure\"} 1",
            "complaintd_rules_last_reload_timestamp_seconds 1772352000",
            "complaintd_outbox_held 2",
            "complaintd_mail_in_doubt_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(metrics.imap_reconnects("complaints"), 1);
        assert_eq!(metrics.mail_failed_count(FailureKind::Temporary), 2);
    }

    #[test]
    fn clones_share_the_same_counters() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        clone.mail_sent();
        assert_eq!(metrics.mail_sent_count(), 1);
    }

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_health_and_metrics_and_stops_on_shutdown() {
        let metrics = Metrics::new();
        metrics.mail_sent();
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let address = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(metrics.clone(), shutdown.clone()));

        let health = get(address, "/health").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");

        let scrape = get(address, "/metrics").await;
        assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
        assert!(
            scrape.contains("\ncomplaintd_mail_sent_total 1\n"),
            "{scrape}"
        );
        assert!(scrape.contains("application/openmetrics-text"), "{scrape}");
        assert!(
            scrape.contains(&format!("\r\n{GENERATION_HEADER}: 1\r\n")),
            "one change so far: {scrape}"
        );

        // A client behind the daemon's generation is answered at once, with what changed.
        metrics.mail_sent();
        let caught_up = get(address, "/metrics?after=1").await;
        assert!(
            caught_up.contains("\ncomplaintd_mail_sent_total 2\n")
                && caught_up.contains(&format!("\r\n{GENERATION_HEADER}: 2\r\n")),
            "{caught_up}"
        );
        let bad = get(address, "/metrics?after=soon").await;
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");

        let missing = get(address, "/nothing").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops after shutdown")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }

    /// Answers every route with what it was asked, to show what reaches an [`Api`].
    struct Echo;

    impl Api for Echo {
        fn handle(&self, request: ApiRequest) -> ApiFuture<'_> {
            Box::pin(async move {
                if request.path == "/missing" {
                    return None;
                }
                let query: Vec<String> = request
                    .query
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                Some(ApiResponse {
                    status: StatusCode::OK,
                    json: format!(
                        "{}\n",
                        serde_json::json!({
                            "method": request.method.as_str(),
                            "path": request.path,
                            "query": query,
                        })
                    ),
                })
            })
        }
    }

    async fn raw(address: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn api_routes_are_for_loopback_hosts_and_posts_need_the_admin_header() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let address = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(server.serve_with(Metrics::new(), Some(Arc::new(Echo)), shutdown.clone()));

        let asked = raw(
            address,
            "GET /cases?state=in_progress&search=%E7%87%83%E6%B0%94+x HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(asked.starts_with("HTTP/1.1 200 OK\r\n"), "{asked}");
        assert!(asked.contains("application/json"), "{asked}");
        assert!(
            asked.contains(r#""query":["state=in_progress","search=燃气 x"]"#),
            "query parameters arrive decoded: {asked}"
        );

        let rebound = raw(
            address,
            "GET /cases HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            rebound.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{rebound}"
        );

        let bare_post = raw(
            address,
            "POST /outbox/release-all HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            bare_post.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{bare_post}"
        );
        assert!(bare_post.contains(ADMIN_HEADER), "{bare_post}");

        let post = raw(
            address,
            "POST /outbox/release-all HTTP/1.1\r\nHost: [::1]:9\r\nX-Complaintd-Admin: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 200 OK\r\n"), "{post}");
        assert!(post.contains(r#""method":"POST""#), "{post}");

        let missing = get(address, "/missing").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        assert!(missing.contains(r#"{"error":"not found"#), "{missing}");

        // The metrics stay where they were.
        let scrape = get(address, "/metrics").await;
        assert!(scrape.contains("complaintd_outbox_held 0"), "{scrape}");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops after shutdown")
            .unwrap();
    }

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_ports() {
        for host in [
            "localhost",
            "LOCALHOST:10080",
            "127.0.0.1",
            "127.0.0.1:10080",
            "[::1]",
            "[::1]:10080",
            "127.1.2.3:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.test",
            "10.0.0.1:10080",
            "localhost.example.test",
            "[2001:db8::1]:80",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
