//! SMTP delivery: a sender task that takes due mail from the outbox and hands it to the
//! configured server over one kept-open connection, classifying every result.
//!
//! The outbox (the store) owns the queue; this module only moves bytes and reports
//! back through [`OutboxSource`]: sent, failed for now (with the time of the next
//! attempt), or failed for good. The message bytes are built elsewhere and carry a
//! stable Message-ID, so a mail resent after an ambiguous failure is recognisably the
//! same mail.

mod store_outbox;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::Address;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffPolicy};
use crate::clock::Clock;
use crate::config::{SmtpConfig, TlsMode};
use crate::metrics::{FailureKind, Metrics};
use crate::tls::{self, TlsError};
pub use store_outbox::StoreOutbox;

/// A message waiting in the outbox, ready to be sent as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// The outbox's identifier of this message.
    pub id: String,
    /// The envelope sender (`MAIL FROM`); empty for the null sender `<>`.
    pub envelope_from: String,
    /// The envelope recipients (`RCPT TO`); every one must be accepted.
    pub recipients: Vec<String>,
    /// The complete message, headers and body, with CRLF line ends.
    pub bytes: Vec<u8>,
    /// Failed attempts so far; sets how long the next retry waits.
    pub attempts: u32,
}

/// The outbox could not answer or record a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox: {message}")]
pub struct OutboxError {
    pub message: String,
}

impl OutboxError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        OutboxError {
            message: message.to_string(),
        }
    }
}

/// Where the sender takes its work from and reports to: implemented by the store.
///
/// Each `mark_*` call must be durable when it returns. A mail whose `mark_sent` fails
/// stays due and is sent again later, with the same bytes and so the same Message-ID.
pub trait OutboxSource: Send + Sync + 'static {
    /// The message is about to be handed over: called after every recipient was accepted
    /// and before DATA. A source that records it durably can tell after a crash which mail
    /// was in doubt (the server may have taken it). The message is not sent when this
    /// fails. The default records nothing.
    fn mark_attempt(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send {
        let _ = (id, at);
        async { Ok(()) }
    }

    /// Up to `limit` messages whose next attempt is at or before `now`, oldest first.
    fn next_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutgoingMail>, OutboxError>> + Send;

    /// The server accepted the message; `reply` is its final answer (usually a queue id).
    fn mark_sent(
        &self,
        id: &str,
        at: DateTime<Utc>,
        reply: &str,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// The attempt at `at` failed for now; try again at `next_attempt`.
    fn mark_temporary_failure(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &str,
        next_attempt: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// The message was sent and the connection failed before the server answered: it may
    /// have been accepted. The default treats this as a temporary failure (the mail is sent
    /// again, same Message-ID); a source may hold it instead (`smtp.in_doubt = "hold"`).
    fn mark_in_doubt(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &str,
        next_attempt: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send {
        self.mark_temporary_failure(id, at, error, next_attempt)
    }

    /// The attempt at `at` showed the message can never be delivered as it is.
    fn mark_permanent_failure(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &str,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// The earliest next attempt among messages not yet due, so the sender can sleep until then.
    fn next_attempt_at(
        &self,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, OutboxError>> + Send;

    /// Notified (with `notify_one`) whenever a message is queued.
    fn wakeup(&self) -> &Notify;
}

/// Tuning of the sender that the configuration file does not carry.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// Messages taken from the outbox per round.
    pub batch_limit: usize,
    /// Delay before retrying one message, by its number of failed attempts.
    pub retry: BackoffPolicy,
    /// After this many failed attempts a temporary failure becomes permanent.
    pub max_attempts: u32,
    /// Delay between attempts to reach an unreachable server.
    pub reconnect: BackoffPolicy,
    /// Longest sleep without a wake-up, in case a notification was missed.
    pub idle_poll: Duration,
    /// An unused connection is closed after this long (servers drop idle clients).
    pub max_idle_connection: Duration,
    /// A connection is closed and a new one opened after this many messages: servers
    /// limit messages per session (OpenSMTPD refuses the 101st with `452 4.5.3`).
    pub max_messages_per_connection: u32,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            batch_limit: 50,
            retry: BackoffPolicy::new(Duration::from_secs(60), Duration::from_secs(3600)),
            max_attempts: 100,
            reconnect: BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(300)),
            idle_poll: Duration::from_secs(60),
            max_idle_connection: Duration::from_secs(30),
            max_messages_per_connection: 100,
        }
    }
}

/// Why the sender could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("smtp: {0}")]
    Tls(#[from] TlsError),
}

/// What went wrong with one SMTP exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpFailure {
    /// The server answered with a negative reply.
    Reply { code: u16, message: String },
    /// The connection could not be made or broke (including TLS).
    Connection(String),
    /// The server did not answer in time.
    Timeout(String),
    /// The server's answer made no sense.
    Protocol(String),
    /// We refused to send: an invalid address, or a message the server cannot carry.
    Refused(String),
    /// Not sent: the outbox could not record the attempt before DATA.
    NotRecorded(String),
    /// The message was sent but no answer came (the connection broke or timed out): the
    /// server may have accepted it.
    AfterData(String),
}

impl std::fmt::Display for SmtpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmtpFailure::Reply { code, message } => write!(f, "server replied {code}: {message}"),
            SmtpFailure::Connection(m) => write!(f, "connection failed: {m}"),
            SmtpFailure::Timeout(m) => write!(f, "timed out: {m}"),
            SmtpFailure::Protocol(m) => write!(f, "protocol error: {m}"),
            SmtpFailure::Refused(m) => write!(f, "not sent: {m}"),
            SmtpFailure::NotRecorded(m) => {
                write!(f, "not sent: the attempt could not be recorded: {m}")
            }
            SmtpFailure::AfterData(m) => write!(
                f,
                "no answer after the message was sent, it may have been accepted: {m}"
            ),
        }
    }
}

/// Whether a failure may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Temporary,
    Permanent,
}

impl SmtpFailure {
    /// 4xx replies and network trouble pass; 5xx replies and refusals do not.
    pub fn class(&self) -> FailureClass {
        match self {
            SmtpFailure::Reply { code, .. } if (500..600).contains(code) => FailureClass::Permanent,
            SmtpFailure::Refused(_) => FailureClass::Permanent,
            SmtpFailure::Reply { .. }
            | SmtpFailure::Connection(_)
            | SmtpFailure::Timeout(_)
            | SmtpFailure::Protocol(_)
            | SmtpFailure::NotRecorded(_)
            | SmtpFailure::AfterData(_) => FailureClass::Temporary,
        }
    }

    /// Whether the connection can still carry the next message (after an RSET).
    fn keeps_connection(&self) -> bool {
        // A permanent refusal concerns this message only. A temporary one may concern the
        // session (a per-connection limit, 421 closing the channel): a session that refuses
        // one message for now may refuse every following one, so a new connection is used.
        // A failure to record the attempt is ours, not the session's.
        matches!(self, SmtpFailure::Reply { code, .. } if (500..600).contains(code))
            || matches!(self, SmtpFailure::Refused(_) | SmtpFailure::NotRecorded(_))
    }

    fn from_lettre(error: &lettre::transport::smtp::Error) -> SmtpFailure {
        if let Some(code) = error.status() {
            let code = code.to_string().parse().unwrap_or(0);
            let message = std::error::Error::source(error)
                .map(|s| s.to_string())
                .unwrap_or_else(|| error.to_string());
            return SmtpFailure::Reply { code, message };
        }
        if error.is_timeout() {
            SmtpFailure::Timeout(error.to_string())
        } else if error.is_client() {
            SmtpFailure::Refused(error.to_string())
        } else if error.is_response() {
            SmtpFailure::Protocol(error.to_string())
        } else {
            SmtpFailure::Connection(error.to_string())
        }
    }
}

/// What the sender does with a message after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Sent {
        reply: String,
    },
    RetryAt {
        error: String,
        at: DateTime<Utc>,
    },
    /// Perhaps delivered (no answer after the message was sent); retried at `at` unless the
    /// outbox holds it.
    InDoubt {
        error: String,
        at: DateTime<Utc>,
    },
    GiveUp {
        error: String,
    },
}

/// Decides the fate of a message that failed its attempt number `mail_attempts + 1`.
pub fn disposition_after_failure(
    failure: &SmtpFailure,
    mail_attempts: u32,
    options: &SenderOptions,
    now: DateTime<Utc>,
    rng: &mut impl rand::Rng,
) -> Disposition {
    let attempts = mail_attempts.saturating_add(1);
    match failure.class() {
        FailureClass::Permanent => Disposition::GiveUp {
            error: failure.to_string(),
        },
        FailureClass::Temporary if attempts >= options.max_attempts => Disposition::GiveUp {
            error: format!("gave up after {attempts} attempts; last: {failure}"),
        },
        FailureClass::Temporary => {
            let delay = options.retry.delay(attempts, rng);
            let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            Disposition::RetryAt {
                error: failure.to_string(),
                at: now
                    .checked_add_signed(delay)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            }
        }
    }
}

/// A token bucket on the injected clock: at most `per_minute` sends a minute on average,
/// with bursts of up to a minute's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: DateTime<Utc>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn per_minute(per_minute: u32, now: DateTime<Utc>) -> Self {
        let capacity = f64::from(per_minute.max(1));
        TokenBucket {
            capacity,
            per_second: capacity / 60.0,
            tokens: capacity,
            updated: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_take(&mut self, now: DateTime<Utc>) -> Result<(), Duration> {
        // A clock that steps back adds nothing rather than removing tokens.
        let elapsed = (now - self.updated).to_std().unwrap_or(Duration::ZERO);
        if now > self.updated {
            self.updated = now;
        }
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing / self.per_second))
        }
    }
}

/// The byte stream under lettre: plain TCP or TLS from the first byte.
#[derive(Debug)]
enum SmtpStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for SmtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncTokioStream for SmtpStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            SmtpStream::Plain(s) => s.peer_addr(),
            SmtpStream::Tls(s) => s.get_ref().0.peer_addr(),
        }
    }
}

/// How connections are secured, prepared once from the configuration.
enum Security {
    None,
    Starttls(TlsParameters),
    Tls(TlsConnector),
}

/// One open, greeted (and, if configured, authenticated) SMTP connection.
struct Connection {
    smtp: AsyncSmtpConnection,
    last_used: Instant,
    /// Messages attempted over this connection.
    messages: u32,
}

/// Everything needed to open connections and send over them.
struct Sender {
    config: SmtpConfig,
    security: Security,
    hello: ClientId,
    metrics: Metrics,
}

/// Runs the sender until `shutdown` is cancelled.
///
/// Returns an error only when the TLS settings cannot be built; every other problem
/// is logged, counted and retried. A message being sent when shutdown comes is
/// finished first (each step is bounded by the configured timeout).
pub async fn run_sender<S: OutboxSource>(
    config: SmtpConfig,
    options: SenderOptions,
    source: Arc<S>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), SenderError> {
    let security = match config.tls {
        TlsMode::None => Security::None,
        TlsMode::Starttls => Security::Starttls(tls::smtp_tls_parameters(
            &config.host,
            config.ca_file.as_deref(),
        )?),
        TlsMode::Tls => {
            tls::server_name(&config.host)?;
            Security::Tls(tls::connector(config.ca_file.as_deref())?)
        }
    };
    let hello = hello_name(&config.from);
    let sender = Sender {
        config,
        security,
        hello,
        metrics,
    };
    let mut bucket = TokenBucket::per_minute(sender.config.per_minute_cap, clock.now());
    let mut reconnect = Backoff::new(options.reconnect);
    let mut rng = StdRng::from_entropy();
    let mut connection: Option<Connection> = None;

    'rounds: while !shutdown.is_cancelled() {
        // Registering for the wake-up before looking at the queue means a message
        // queued in between still wakes us.
        let wakeup = source.wakeup().notified();
        tokio::pin!(wakeup);
        wakeup.as_mut().enable();

        let now = clock.now();
        let due = match source.next_due(now, options.batch_limit.max(1)).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "smtp sender: cannot read the outbox");
                let delay = reconnect.next_delay(&mut rng);
                cancellable_sleep(delay, &shutdown).await;
                continue;
            }
        };

        if due.is_empty() {
            let mut sleep = options.idle_poll;
            match source.next_attempt_at().await {
                Ok(Some(at)) => {
                    sleep = sleep.min((at - now).to_std().unwrap_or(Duration::ZERO));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "smtp sender: cannot read the next attempt time")
                }
            }
            if let Some(open) = &connection {
                let idle_left = options
                    .max_idle_connection
                    .saturating_sub(open.last_used.elapsed());
                sleep = sleep.min(idle_left);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break 'rounds,
                _ = &mut wakeup => {}
                _ = tokio::time::sleep(sleep) => {}
            }
            if connection
                .as_ref()
                .is_some_and(|open| open.last_used.elapsed() >= options.max_idle_connection)
            {
                if let Some(open) = connection.take() {
                    sender.close(open).await;
                }
            }
            continue;
        }

        let mut remaining = due.into_iter();
        while let Some(mail) = remaining.next() {
            if shutdown.is_cancelled() {
                break 'rounds;
            }
            while let Err(wait) = bucket.try_take(clock.now()) {
                if !cancellable_sleep(wait, &shutdown).await {
                    break 'rounds;
                }
            }
            if connection.is_none() {
                match sender.connect().await {
                    Ok(open) => {
                        reconnect.reset();
                        connection = Some(open);
                    }
                    Err(failure) => {
                        // Every message of this round would meet the same closed door.
                        tracing::warn!(
                            host = %sender.config.host,
                            port = sender.config.port,
                            error = %failure,
                            "smtp sender: cannot connect"
                        );
                        let now = clock.now();
                        for mail in std::iter::once(mail).chain(remaining) {
                            let disposition = disposition_after_failure(
                                &failure,
                                mail.attempts,
                                &options,
                                now,
                                &mut rng,
                            );
                            sender.record(&*source, &mail, disposition, now).await;
                        }
                        let delay = reconnect.next_delay(&mut rng);
                        cancellable_sleep(delay, &shutdown).await;
                        continue 'rounds;
                    }
                }
            }
            let Some(open) = connection.as_mut() else {
                continue 'rounds;
            };
            let (result, usable) = sender
                .deliver(&mut open.smtp, &mail, &*source, &*clock)
                .await;
            open.last_used = Instant::now();
            open.messages += 1;
            if !usable || open.messages >= options.max_messages_per_connection.max(1) {
                if let Some(broken) = connection.take() {
                    sender.close(broken).await;
                }
            }
            let now = clock.now();
            let disposition = match result {
                Ok(reply) => Disposition::Sent { reply },
                Err(failure) => {
                    tracing::warn!(id = %mail.id, error = %failure, "smtp sender: delivery failed");
                    match (
                        &failure,
                        disposition_after_failure(&failure, mail.attempts, &options, now, &mut rng),
                    ) {
                        (SmtpFailure::AfterData(_), Disposition::RetryAt { error, at }) => {
                            Disposition::InDoubt { error, at }
                        }
                        (_, disposition) => disposition,
                    }
                }
            };
            if !sender.record(&*source, &mail, disposition, now).await {
                let delay = reconnect.next_delay(&mut rng);
                cancellable_sleep(delay, &shutdown).await;
                continue 'rounds;
            }
        }
    }
    if let Some(open) = connection.take() {
        sender.close(open).await;
    }
    Ok(())
}

impl Sender {
    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Runs one SMTP step under the configured timeout.
    async fn step<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, SmtpFailure> {
        match tokio::time::timeout(self.timeout(), future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(SmtpFailure::from_lettre(&e)),
            Err(_) => Err(SmtpFailure::Timeout(format!(
                "{what} after {:?}",
                self.timeout()
            ))),
        }
    }

    async fn connect(&self) -> Result<Connection, SmtpFailure> {
        let address = (self.config.host.as_str(), self.config.port);
        let tcp = match tokio::time::timeout(self.timeout(), TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(SmtpFailure::Connection(e.to_string())),
            Err(_) => return Err(SmtpFailure::Timeout("connect".into())),
        };
        // lettre writes the final "." on its own; without this each message waits on a delayed ACK.
        tcp.set_nodelay(true)
            .map_err(|e| SmtpFailure::Connection(format!("TCP_NODELAY: {e}")))?;
        let stream = match &self.security {
            Security::None | Security::Starttls(_) => SmtpStream::Plain(tcp),
            Security::Tls(connector) => {
                let name = tls::server_name(&self.config.host)
                    .map_err(|e| SmtpFailure::Connection(e.to_string()))?;
                match tokio::time::timeout(self.timeout(), connector.connect(name, tcp)).await {
                    Ok(Ok(tls)) => SmtpStream::Tls(Box::new(tls)),
                    Ok(Err(e)) => return Err(SmtpFailure::Connection(format!("TLS: {e}"))),
                    Err(_) => return Err(SmtpFailure::Timeout("TLS handshake".into())),
                }
            }
        };
        let mut smtp = self
            .step(
                "greeting",
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello),
            )
            .await?;
        if let Security::Starttls(parameters) = &self.security {
            if !smtp.can_starttls() {
                // Never fall back to plain text when encryption was asked for.
                return Err(SmtpFailure::Connection(
                    "the server does not offer STARTTLS".into(),
                ));
            }
            self.step("STARTTLS", smtp.starttls(parameters.clone(), &self.hello))
                .await?;
        }
        if let Some(user) = &self.config.user {
            if matches!(self.security, Security::None) && !tls::is_loopback(&self.config.host) {
                return Err(SmtpFailure::Connection(format!(
                    "refusing to send the SMTP password unencrypted to {}",
                    self.config.host
                )));
            }
            let password = self.config.secret().read().map_err(|e| {
                SmtpFailure::Connection(format!("cannot read the SMTP password: {e}"))
            })?;
            let credentials = Credentials::new(user.clone(), password);
            self.step(
                "AUTH",
                smtp.auth(&[Mechanism::Plain, Mechanism::Login], &credentials),
            )
            .await?;
        }
        Ok(Connection {
            smtp,
            last_used: Instant::now(),
            messages: 0,
        })
    }

    /// Sends one message: MAIL, RCPT for every recipient, DATA. A refused step is
    /// followed by RSET, so the connection can carry the next message. Returns the
    /// outcome, and whether the connection can still be used.
    async fn deliver<S: OutboxSource>(
        &self,
        smtp: &mut AsyncSmtpConnection,
        mail: &OutgoingMail,
        source: &S,
        clock: &dyn Clock,
    ) -> (Result<String, SmtpFailure>, bool) {
        match self.transaction(smtp, mail, source, clock).await {
            Ok(reply) => (Ok(reply), true),
            Err(failure) if !failure.keeps_connection() => (Err(failure), false),
            Err(failure) => {
                let usable = match self.step("RSET", smtp.command(Rset)).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!(error = %e, "smtp sender: RSET after a refusal failed");
                        false
                    }
                };
                (Err(failure), usable)
            }
        }
    }

    async fn transaction<S: OutboxSource>(
        &self,
        smtp: &mut AsyncSmtpConnection,
        mail: &OutgoingMail,
        source: &S,
        clock: &dyn Clock,
    ) -> Result<String, SmtpFailure> {
        let (from, recipients) = parse_envelope(mail)?;
        let mut parameters = Vec::new();
        let non_ascii_addresses =
            !mail.envelope_from.is_ascii() || mail.recipients.iter().any(|r| !r.is_ascii());
        if non_ascii_addresses {
            if !smtp.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(SmtpFailure::Refused(
                    "non-ASCII addresses, but the server has no SMTPUTF8".into(),
                ));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !mail.bytes.is_ascii() {
            if !smtp.server_info().supports_feature(Extension::EightBitMime) {
                return Err(SmtpFailure::Refused(
                    "8-bit message, but the server has no 8BITMIME".into(),
                ));
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }

        self.step("MAIL FROM", smtp.command(Mail::new(from, parameters)))
            .await?;
        for recipient in recipients {
            let shown = recipient.to_string();
            self.step("RCPT TO", smtp.command(Rcpt::new(recipient, Vec::new())))
                .await
                .map_err(|failure| match failure {
                    SmtpFailure::Reply { code, message } => SmtpFailure::Reply {
                        code,
                        message: format!("recipient <{shown}>: {message}"),
                    },
                    other => other,
                })?;
        }
        // Recorded as late as possible, so that after a crash only a mail the server may
        // really have taken is in doubt.
        source
            .mark_attempt(&mail.id, clock.now())
            .await
            .map_err(|e| SmtpFailure::NotRecorded(e.to_string()))?;
        self.step("DATA", smtp.command(Data)).await?;
        // From here on a broken connection leaves it open whether the server took the
        // message: it is in doubt (retried with the same Message-ID, or held by the outbox).
        let reply = self
            .step("end of data", smtp.message(&mail.bytes))
            .await
            .map_err(|failure| match failure {
                SmtpFailure::Reply { .. } => failure,
                other => SmtpFailure::AfterData(other.to_string()),
            })?;
        Ok(reply.message().collect::<Vec<_>>().join(" "))
    }

    async fn close(&self, mut open: Connection) {
        // A polite QUIT; the connection is dropped whatever the answer.
        let _ = tokio::time::timeout(self.timeout(), open.smtp.command(Quit)).await;
    }

    /// Reports an attempt's outcome to the outbox; false if the outbox failed.
    async fn record<S: OutboxSource>(
        &self,
        source: &S,
        mail: &OutgoingMail,
        disposition: Disposition,
        now: DateTime<Utc>,
    ) -> bool {
        let result = match &disposition {
            Disposition::Sent { reply } => {
                self.metrics.mail_sent();
                tracing::info!(id = %mail.id, %reply, "smtp sender: sent");
                source.mark_sent(&mail.id, now, reply).await
            }
            Disposition::RetryAt { error, at } => {
                self.metrics.mail_failed(FailureKind::Temporary);
                tracing::info!(id = %mail.id, %error, next_attempt = %at, "smtp sender: will retry");
                source
                    .mark_temporary_failure(&mail.id, now, error, *at)
                    .await
            }
            Disposition::InDoubt { error, at } => {
                self.metrics.mail_failed(FailureKind::Temporary);
                tracing::warn!(id = %mail.id, %error, next_attempt = %at, "smtp sender: in doubt");
                source.mark_in_doubt(&mail.id, now, error, *at).await
            }
            Disposition::GiveUp { error } => {
                self.metrics.mail_failed(FailureKind::Permanent);
                tracing::warn!(id = %mail.id, %error, "smtp sender: failed permanently");
                source.mark_permanent_failure(&mail.id, now, error).await
            }
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(id = %mail.id, error = %e, ?disposition, "smtp sender: cannot record the outcome");
                false
            }
        }
    }
}

fn parse_envelope(mail: &OutgoingMail) -> Result<(Option<Address>, Vec<Address>), SmtpFailure> {
    let from = if mail.envelope_from.is_empty() {
        None
    } else {
        Some(Address::from_str(&mail.envelope_from).map_err(|e| {
            SmtpFailure::Refused(format!("invalid sender <{}>: {e}", mail.envelope_from))
        })?)
    };
    if mail.recipients.is_empty() {
        return Err(SmtpFailure::Refused("no recipients".into()));
    }
    let recipients = mail
        .recipients
        .iter()
        .map(|r| {
            Address::from_str(r)
                .map_err(|e| SmtpFailure::Refused(format!("invalid recipient <{r}>: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((from, recipients))
}

/// The EHLO name: the domain of our sender address, which is ours to speak for.
fn hello_name(from: &str) -> ClientId {
    match from.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => ClientId::Domain(domain.to_owned()),
        _ => ClientId::Domain("localhost".into()),
    }
}

/// Sleeps unless shutdown comes first; returns false on shutdown.
async fn cancellable_sleep(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::TimeZone;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_interval() {
        let clock = ManualClock::new(start());
        let mut bucket = TokenBucket::per_minute(6, clock.now());
        for _ in 0..6 {
            assert_eq!(bucket.try_take(clock.now()), Ok(()));
        }
        // Six a minute: the next token comes ten seconds later.
        assert_eq!(bucket.try_take(clock.now()), Err(Duration::from_secs(10)));
        clock.advance(chrono::Duration::seconds(4));
        assert_eq!(bucket.try_take(clock.now()), Err(Duration::from_secs(6)));
        clock.advance(chrono::Duration::seconds(6));
        assert_eq!(bucket.try_take(clock.now()), Ok(()));
        assert!(bucket.try_take(clock.now()).is_err());
    }

    #[test]
    fn the_bucket_never_holds_more_than_a_minute() {
        let clock = ManualClock::new(start());
        let mut bucket = TokenBucket::per_minute(3, clock.now());
        clock.advance(chrono::Duration::hours(5));
        let granted = (0..10)
            .filter(|_| bucket.try_take(clock.now()).is_ok())
            .count();
        assert_eq!(granted, 3);
    }

    #[test]
    fn a_clock_stepping_back_gives_no_tokens_and_takes_none() {
        let clock = ManualClock::new(start());
        let mut bucket = TokenBucket::per_minute(60, clock.now());
        for _ in 0..60 {
            bucket.try_take(clock.now()).unwrap();
        }
        clock.advance(chrono::Duration::seconds(-30));
        assert_eq!(bucket.try_take(clock.now()), Err(Duration::from_secs(1)));
        clock.set(start() + chrono::Duration::seconds(1));
        assert_eq!(bucket.try_take(clock.now()), Ok(()));
    }

    fn reply(code: u16) -> SmtpFailure {
        SmtpFailure::Reply {
            code,
            message: "x".into(),
        }
    }

    #[test]
    fn replies_are_classified_by_their_first_digit() {
        assert_eq!(reply(421).class(), FailureClass::Temporary);
        assert_eq!(reply(450).class(), FailureClass::Temporary);
        assert_eq!(reply(452).class(), FailureClass::Temporary);
        assert_eq!(reply(524).class(), FailureClass::Permanent);
        assert_eq!(reply(550).class(), FailureClass::Permanent);
        assert_eq!(reply(554).class(), FailureClass::Permanent);
        assert_eq!(
            SmtpFailure::Connection("reset".into()).class(),
            FailureClass::Temporary
        );
        assert_eq!(
            SmtpFailure::Timeout("DATA".into()).class(),
            FailureClass::Temporary
        );
        assert_eq!(
            SmtpFailure::Protocol("garbage".into()).class(),
            FailureClass::Temporary
        );
        assert_eq!(
            SmtpFailure::Refused("bad address".into()).class(),
            FailureClass::Permanent
        );
        assert_eq!(
            SmtpFailure::NotRecorded("store full".into()).class(),
            FailureClass::Temporary
        );
        assert_eq!(
            SmtpFailure::AfterData("reset".into()).class(),
            FailureClass::Temporary
        );
    }

    #[test]
    fn only_orderly_refusals_keep_the_connection() {
        assert!(reply(550).keeps_connection());
        assert!(!reply(450).keeps_connection());
        assert!(!reply(452).keeps_connection());
        assert!(!reply(421).keeps_connection());
        assert!(!SmtpFailure::Connection("reset".into()).keeps_connection());
        assert!(!SmtpFailure::Timeout("DATA".into()).keeps_connection());
        assert!(SmtpFailure::NotRecorded("store full".into()).keeps_connection());
        assert!(!SmtpFailure::AfterData("reset".into()).keeps_connection());
    }

    #[test]
    fn a_temporary_failure_is_retried_within_the_backoff_ceiling() {
        let options = SenderOptions::default();
        let mut rng = StdRng::seed_from_u64(1);
        for attempts in 0..10u32 {
            let disposition =
                disposition_after_failure(&reply(451), attempts, &options, start(), &mut rng);
            let Disposition::RetryAt { at, error } = disposition else {
                panic!("expected a retry, got {disposition:?}");
            };
            assert!(error.contains("451"), "{error}");
            let ceiling = options.retry.ceiling(attempts + 1);
            assert!(at >= start(), "{at}");
            assert!(
                at <= start() + chrono::Duration::from_std(ceiling).unwrap(),
                "{attempts}: {at}"
            );
        }
    }

    #[test]
    fn a_permanent_failure_gives_up_at_once() {
        let options = SenderOptions::default();
        let mut rng = StdRng::seed_from_u64(1);
        let disposition = disposition_after_failure(&reply(550), 0, &options, start(), &mut rng);
        assert_eq!(
            disposition,
            Disposition::GiveUp {
                error: "server replied 550: x".into()
            }
        );
    }

    #[test]
    fn temporary_failures_become_permanent_after_the_last_attempt() {
        let options = SenderOptions {
            max_attempts: 3,
            ..SenderOptions::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let connection = SmtpFailure::Connection("refused".into());
        assert!(matches!(
            disposition_after_failure(&connection, 1, &options, start(), &mut rng),
            Disposition::RetryAt { .. }
        ));
        let Disposition::GiveUp { error } =
            disposition_after_failure(&connection, 2, &options, start(), &mut rng)
        else {
            panic!("the third failure must give up");
        };
        assert!(error.starts_with("gave up after 3 attempts"), "{error}");
    }

    #[test]
    fn envelopes_are_checked_before_sending() {
        let mail = |from: &str, to: &[&str]| OutgoingMail {
            id: "TS-2026-000001.ack.1".into(),
            envelope_from: from.into(),
            recipients: to.iter().map(|s| s.to_string()).collect(),
            bytes: b"Subject: x\r\n\r\nx\r\n".to_vec(),
            attempts: 0,
        };
        assert!(parse_envelope(&mail("", &["a@example.test"]))
            .unwrap()
            .0
            .is_none());
        assert!(matches!(
            parse_envelope(&mail("a@example.test", &[])),
            Err(SmtpFailure::Refused(_))
        ));
        let Err(SmtpFailure::Refused(message)) =
            parse_envelope(&mail("a@example.test", &["no-at-sign"]))
        else {
            panic!("an invalid recipient must be refused");
        };
        assert!(message.contains("<no-at-sign>"), "{message}");
        assert!(matches!(
            parse_envelope(&mail(
                "a@example.test\r\nRCPT TO:<x@y>",
                &["b@example.test"]
            )),
            Err(SmtpFailure::Refused(_))
        ));
    }

    #[test]
    fn the_hello_name_is_the_sender_domain() {
        assert_eq!(
            hello_name("complaints@corp.example"),
            ClientId::Domain("corp.example".into())
        );
        assert_eq!(hello_name("nobody"), ClientId::Domain("localhost".into()));
    }

    mod attempt_before_data {
        use super::super::*;
        use crate::clock::ManualClock;
        use chrono::TimeZone;
        use std::sync::Mutex;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        use tokio::net::TcpListener;

        /// One mail to send; records what the sender reports, in order, with what the server saw.
        struct OneMail {
            mail: Mutex<Option<OutgoingMail>>,
            log: Arc<Mutex<Vec<String>>>,
            refuse_attempt: bool,
            done: Notify,
            wakeup: Notify,
        }

        impl OneMail {
            fn note(&self, what: &str) {
                self.log.lock().unwrap().push(what.to_owned());
            }
        }

        impl OutboxSource for OneMail {
            async fn mark_attempt(&self, id: &str, _: DateTime<Utc>) -> Result<(), OutboxError> {
                self.note(&format!("outbox: attempt {id}"));
                if self.refuse_attempt {
                    Err(OutboxError::new("disk full"))
                } else {
                    Ok(())
                }
            }

            async fn next_due(
                &self,
                _: DateTime<Utc>,
                _: usize,
            ) -> Result<Vec<OutgoingMail>, OutboxError> {
                Ok(self.mail.lock().unwrap().take().into_iter().collect())
            }

            async fn mark_sent(
                &self,
                id: &str,
                _: DateTime<Utc>,
                _: &str,
            ) -> Result<(), OutboxError> {
                self.note(&format!("outbox: sent {id}"));
                self.done.notify_one();
                Ok(())
            }

            async fn mark_temporary_failure(
                &self,
                id: &str,
                _: DateTime<Utc>,
                error: &str,
                _: DateTime<Utc>,
            ) -> Result<(), OutboxError> {
                self.note(&format!("outbox: temporary {id}: {error}"));
                self.done.notify_one();
                Ok(())
            }

            async fn mark_in_doubt(
                &self,
                id: &str,
                _: DateTime<Utc>,
                error: &str,
                _: DateTime<Utc>,
            ) -> Result<(), OutboxError> {
                self.note(&format!("outbox: in doubt {id}: {error}"));
                self.done.notify_one();
                Ok(())
            }

            async fn mark_permanent_failure(
                &self,
                id: &str,
                _: DateTime<Utc>,
                error: &str,
            ) -> Result<(), OutboxError> {
                self.note(&format!("outbox: permanent {id}: {error}"));
                self.done.notify_one();
                Ok(())
            }

            async fn next_attempt_at(&self) -> Result<Option<DateTime<Utc>>, OutboxError> {
                Ok(None)
            }

            fn wakeup(&self) -> &Notify {
                &self.wakeup
            }
        }

        /// A scripted SMTP server for one connection: every command is accepted and logged.
        /// With `vanish_after_body`, the connection is closed after the message, unanswered.
        async fn serve_one(
            listener: TcpListener,
            log: Arc<Mutex<Vec<String>>>,
            vanish_after_body: bool,
        ) {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 test ESMTP\r\n").await.unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let verb = line
                    .split([' ', ':'])
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if verb != "EHLO" {
                    log.lock().unwrap().push(format!("server: {verb}"));
                }
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" => b"250-test\r\n250 8BITMIME\r\n",
                    "DATA" => {
                        write.write_all(b"354 go ahead\r\n").await.unwrap();
                        while let Ok(Some(body)) = lines.next_line().await {
                            if body == "." {
                                break;
                            }
                        }
                        if vanish_after_body {
                            return;
                        }
                        b"250 2.0.0 queued\r\n"
                    }
                    "QUIT" => {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    }
                    _ => b"250 ok\r\n",
                };
                if write.write_all(reply).await.is_err() {
                    return;
                }
            }
        }

        /// Sends one mail through a scripted server; returns the log of server and outbox.
        async fn send_one(refuse_attempt: bool, vanish_after_body: bool) -> Vec<String> {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let log = Arc::new(Mutex::new(Vec::new()));
            let server = tokio::spawn(serve_one(listener, Arc::clone(&log), vanish_after_body));
            let source = Arc::new(OneMail {
                mail: Mutex::new(Some(OutgoingMail {
                    id: "TS-2026-000001.ack.1".into(),
                    envelope_from: "complaints@example.test".into(),
                    recipients: vec!["customer@example.test".into()],
                    bytes: b"Message-ID: <a@example.test>\r\nSubject: x\r\n\r\nok\r\n".to_vec(),
                    attempts: 0,
                })),
                log: Arc::clone(&log),
                refuse_attempt,
                done: Notify::new(),
                wakeup: Notify::new(),
            });
            let config = SmtpConfig {
                host: "127.0.0.1".into(),
                port,
                tls: TlsMode::None,
                ca_file: None,
                user: None,
                password_file: None,
                password_env: None,
                from: "complaints@example.test".into(),
                per_minute_cap: 600,
                timeout: Duration::from_secs(10),
                in_doubt: Default::default(),
            };
            let shutdown = CancellationToken::new();
            let done = source.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let sender = tokio::spawn(run_sender(
                config,
                SenderOptions::default(),
                Arc::clone(&source),
                Arc::new(ManualClock::new(
                    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap(),
                )),
                Metrics::new(),
                shutdown.clone(),
            ));
            tokio::time::timeout(Duration::from_secs(30), done)
                .await
                .expect("the outcome is recorded");
            shutdown.cancel();
            sender.await.unwrap().unwrap();
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .expect("the server ends")
                .unwrap();
            let log = log.lock().unwrap().clone();
            log
        }

        #[tokio::test]
        async fn the_attempt_is_recorded_after_the_recipients_and_before_data() {
            assert_eq!(
                send_one(false, false).await,
                [
                    "server: MAIL",
                    "server: RCPT",
                    "outbox: attempt TS-2026-000001.ack.1",
                    "server: DATA",
                    "outbox: sent TS-2026-000001.ack.1",
                    "server: QUIT",
                ]
            );
        }

        #[tokio::test]
        async fn a_mail_whose_attempt_cannot_be_recorded_is_not_sent() {
            let log = send_one(true, false).await;
            assert_eq!(
                log[..4],
                [
                    "server: MAIL",
                    "server: RCPT",
                    "outbox: attempt TS-2026-000001.ack.1",
                    "server: RSET"
                ]
            );
            assert!(
                log[4].starts_with(
                    "outbox: temporary TS-2026-000001.ack.1: not sent: the attempt could not be recorded"
                ),
                "{log:?}"
            );
            assert!(!log.iter().any(|l| l == "server: DATA"), "{log:?}");
        }

        #[tokio::test]
        async fn no_answer_after_the_message_is_reported_as_in_doubt() {
            let log = send_one(false, true).await;
            assert_eq!(
                log[..4],
                [
                    "server: MAIL",
                    "server: RCPT",
                    "outbox: attempt TS-2026-000001.ack.1",
                    "server: DATA"
                ]
            );
            assert!(
                log[4].starts_with(
                    "outbox: in doubt TS-2026-000001.ack.1: no answer after the message was sent"
                ),
                "{log:?}"
            );
            assert_eq!(log.len(), 5, "{log:?}");
        }
    }
}
