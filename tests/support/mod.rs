//! End-to-end test harness: drives the local mail stack of `scripts/mailstack.sh` over real
//! SMTP (lettre) and IMAP (async-imap, plain, STARTTLS or TLS), independent of complaintd's own
//! mail code so that it can judge it.
//!
//! Typical use from a test file (`mod support;`):
//!
//! ```text
//! let alice = support::unique_address("alice", "example.test");
//! let stack = support::MailStack::up(&[&alice])?;
//! stack.send_raw("carol@example.test", &[&alice], raw).await?;
//! let mail = stack.wait_for(&alice, |raw| contains(raw, b"Subject"), Duration::from_secs(20)).await?;
//! ```
//!
//! Every test uses its own addresses (see [`unique_address`]), so tests share one stack and run
//! in parallel. Tests that stop a server use [`MailStack::isolated`], a private stack on free
//! ports that goes down when dropped.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::fmt;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_imap::{Client, Session};
use futures::TryStreamExt;
use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::Address;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Every user of the stack has this password.
pub const PASSWORD: &str = "secret";

/// Upper bound for one network operation, so a hung server fails a test instead of hanging it.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one IDLE round lasts at most before the mailbox is fetched again.
const IDLE_ROUND: Duration = Duration::from_secs(20);

/// Where `mailstack.sh` puts its stack unless `MAILSTACK_DIR` says otherwise.
const DEFAULT_DIR: &str = "/tmp/complaintd-mailstack";

/// A mail stack run by `scripts/mailstack.sh`: where it lives and where it listens.
#[derive(Debug, Clone)]
pub struct MailStack {
    dir: PathBuf,
    imap_port: u16,
    imaps_port: u16,
    smtp_port: u16,
}

/// How an IMAP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapSecurity {
    /// Plain text on the IMAP port.
    Plain,
    /// Plain connection on the IMAP port upgraded with STARTTLS.
    StartTls,
    /// TLS from the first byte on the IMAPS port.
    Tls,
}

/// A unique address `PREFIX-<pid>-<n>-<random>@DOMAIN`, so parallel tests and repeated runs
/// against one long-lived stack never see each other's mail.
pub fn unique_address(prefix: &str, domain: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u32 = rand::random();
    format!(
        "{}-{}-{}-{:08x}@{}",
        prefix.to_ascii_lowercase(),
        std::process::id(),
        sequence,
        random,
        domain.to_ascii_lowercase()
    )
}

/// True if `needle` occurs in `haystack`; handy in `wait_for` predicates on raw mail.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

fn env_port(name: &str, default: u16) -> Result<u16> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name} must be a port number, got {value:?}")),
        Err(_) => Ok(default),
    }
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mailstack.sh")
}

/// Where test servers listen: below the range Linux hands out as source ports of outgoing
/// connections (32768–60999), so that a port a test gives up for a moment (a daemon killed
/// and restarted, a server stopped and started) is not taken meanwhile by some connection.
const TEST_PORTS: std::ops::Range<u16> = 20000..32768;

/// `N` distinct TCP ports of [`TEST_PORTS`] that are free right now (all bound at once, so
/// none is handed out twice).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut listeners = Vec::with_capacity(N);
    for _ in 0..1000 {
        if listeners.len() == N {
            break;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", rng.gen_range(TEST_PORTS))) {
            listeners.push(listener);
        }
    }
    anyhow::ensure!(
        listeners.len() == N,
        "found no {N} free ports in {TEST_PORTS:?}"
    );
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

impl MailStack {
    /// The stack described by `MAILSTACK_DIR` and the `MAILSTACK_*_PORT` variables (the same
    /// defaults as `mailstack.sh`). It is not started: see [`MailStack::up`].
    pub fn from_env() -> Result<MailStack> {
        Ok(MailStack {
            dir: std::env::var_os("MAILSTACK_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
            imap_port: env_port("MAILSTACK_IMAP_PORT", 10143)?,
            imaps_port: env_port("MAILSTACK_IMAPS_PORT", 10993)?,
            smtp_port: env_port("MAILSTACK_SMTP_PORT", 10025)?,
        })
    }

    /// The shared stack of [`MailStack::from_env`], brought up if it is not running, with
    /// `users` added (idempotent; safe to call from parallel tests).
    pub fn up(users: &[&str]) -> Result<MailStack> {
        let stack = MailStack::from_env()?;
        stack.add_users(users)?;
        Ok(stack)
    }

    /// A private stack in a temporary directory on free ports, for tests that stop and start
    /// servers. It goes down and its directory is removed when the returned value is dropped.
    pub fn isolated(users: &[&str]) -> Result<IsolatedStack> {
        let dir = tempfile::Builder::new()
            .prefix("mailstack-")
            .tempdir()
            .context("creating a directory for an isolated mail stack")?;
        let [imap_port, imaps_port, smtp_port] = free_ports()?;
        let stack = MailStack {
            dir: dir.path().to_path_buf(),
            imap_port,
            imaps_port,
            smtp_port,
        };
        let isolated = IsolatedStack { stack, _dir: dir };
        isolated.stack.add_users(users)?;
        Ok(isolated)
    }

    /// Runs `mailstack.sh up` with `users` added to the stack's users.
    pub fn add_users(&self, users: &[&str]) -> Result<()> {
        self.run_script("up", &users.join(",")).map(drop)
    }

    /// Stops the IMAP server (Dovecot), for outage tests.
    pub fn stop_imap(&self) -> Result<()> {
        self.run_script("stop-imap", "").map(drop)
    }

    /// Starts the IMAP server again after [`MailStack::stop_imap`].
    pub fn start_imap(&self) -> Result<()> {
        self.run_script("start-imap", "").map(drop)
    }

    /// Stops the SMTP server (OpenSMTPD), for outage tests.
    pub fn stop_smtp(&self) -> Result<()> {
        self.run_script("stop-smtp", "").map(drop)
    }

    /// Starts the SMTP server again after [`MailStack::stop_smtp`].
    pub fn start_smtp(&self) -> Result<()> {
        self.run_script("start-smtp", "").map(drop)
    }

    /// Stops both servers.
    pub fn down(&self) -> Result<()> {
        self.run_script("down", "").map(drop)
    }

    /// Runs `mailstack.sh COMMAND` for this stack and returns its standard output.
    fn run_script(&self, command: &str, users: &str) -> Result<String> {
        let output = Command::new("bash")
            .arg(script_path())
            .arg(command)
            .env("MAILSTACK_DIR", &self.dir)
            .env("MAILSTACK_IMAP_PORT", self.imap_port.to_string())
            .env("MAILSTACK_IMAPS_PORT", self.imaps_port.to_string())
            .env("MAILSTACK_SMTP_PORT", self.smtp_port.to_string())
            .env("MAILSTACK_USERS", users)
            .output()
            .context("running scripts/mailstack.sh")?;
        if !output.status.success() {
            bail!(
                "`mailstack.sh {command}` failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The stack's root directory (configs, mail, logs under `log/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The IMAP port (plain and STARTTLS) on 127.0.0.1.
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// The IMAPS port (TLS from the first byte) on 127.0.0.1.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    /// The SMTP port on 127.0.0.1 (no TLS, no authentication).
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    /// The PEM file of the stack's private CA, the root that its server certificate chains to.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// A rustls client configuration that trusts exactly the stack's CA.
    pub fn tls_config(&self) -> Result<Arc<ClientConfig>> {
        let path = self.ca_cert_path();
        let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut roots = RootCertStore::empty();
        for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(certificate.with_context(|| format!("parsing {}", path.display()))?)
                .context("adding the stack's CA to the trust store")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// Sends `raw` (a complete RFC 5322 message) over SMTP with envelope sender `from` and
    /// recipients `to`. A refused recipient is an `Err` whose `status()` carries the SMTP code.
    pub async fn send_raw(
        &self,
        from: &str,
        to: &[&str],
        raw: &[u8],
    ) -> std::result::Result<Response, SmtpError> {
        let sender = parse_address(from)?;
        let recipients = to
            .iter()
            .map(|address| parse_address(address))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let envelope = Envelope::new(Some(sender), recipients)
            .map_err(|error| SmtpError::Setup(format!("invalid envelope: {error}")))?;
        self.send_envelope(&envelope, raw).await
    }

    /// Sends a message built with lettre's builder, to the recipients of its headers.
    pub async fn send_message(
        &self,
        message: &lettre::Message,
    ) -> std::result::Result<Response, SmtpError> {
        self.send_envelope(message.envelope(), &message.formatted())
            .await
    }

    async fn send_envelope(
        &self,
        envelope: &Envelope,
        raw: &[u8],
    ) -> std::result::Result<Response, SmtpError> {
        let work = async {
            let stream = TcpStream::connect(("127.0.0.1", self.smtp_port))
                .await
                .map_err(|error| SmtpError::Setup(format!("connecting to SMTP: {error}")))?;
            // lettre writes the final "." on its own; without NODELAY every message would wait
            // for a delayed ACK.
            stream
                .set_nodelay(true)
                .map_err(|error| SmtpError::Setup(format!("setting TCP_NODELAY: {error}")))?;
            let client_id = ClientId::Domain("harness.example.test".to_owned());
            let mut connection =
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &client_id).await?;
            // lettre always ends DATA with "\r\n.\r\n", so a message that already ends in
            // CRLF would gain an empty line; trimming one CRLF delivers it byte for byte.
            let data = raw.strip_suffix(b"\r\n").unwrap_or(raw);
            let response = connection.send(envelope, data).await;
            if response.is_ok() {
                connection.quit().await?;
            } else {
                connection.abort().await;
            }
            Ok(response?)
        };
        timeout(OPERATION_TIMEOUT, work)
            .await
            .map_err(|_| SmtpError::Setup(format!("SMTP send took over {OPERATION_TIMEOUT:?}")))?
    }

    /// Logs `user` in over IMAP with the given security.
    pub async fn connect(&self, user: &str, security: ImapSecurity) -> Result<Mailbox> {
        Mailbox::connect(self, user, security).await
    }

    /// Waits until a mail satisfying `predicate` is in `user`'s INBOX and returns its raw
    /// bytes (see [`Mailbox::wait_for`]).
    pub async fn wait_for(
        &self,
        user: &str,
        predicate: impl Fn(&[u8]) -> bool,
        within: Duration,
    ) -> Result<Vec<u8>> {
        let mut mailbox = self.connect(user, ImapSecurity::Plain).await?;
        let found = mailbox.wait_for("INBOX", predicate, within).await?;
        mailbox.logout().await?;
        Ok(found)
    }
}

fn parse_address(address: &str) -> std::result::Result<Address, SmtpError> {
    address
        .parse()
        .map_err(|error| SmtpError::Setup(format!("invalid address {address:?}: {error}")))
}

/// Why an SMTP send failed: the server refused (with a code), or it could not be attempted.
#[derive(Debug)]
pub enum SmtpError {
    /// The SMTP exchange failed; `status()` gives the server's reply code if it sent one.
    Smtp(lettre::transport::smtp::Error),
    /// Connecting or preparing the message failed.
    Setup(String),
}

impl SmtpError {
    /// The SMTP reply code (e.g. 524) if the server answered with an error.
    pub fn code(&self) -> Option<u16> {
        match self {
            SmtpError::Smtp(error) => error.status().map(u16::from),
            SmtpError::Setup(_) => None,
        }
    }

    /// True if the server refused permanently (a 5xx reply).
    pub fn is_permanent(&self) -> bool {
        matches!(self, SmtpError::Smtp(error) if error.is_permanent())
    }
}

impl fmt::Display for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmtpError::Smtp(error) => write!(f, "SMTP error: {error}"),
            SmtpError::Setup(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for SmtpError {}

impl From<lettre::transport::smtp::Error> for SmtpError {
    fn from(error: lettre::transport::smtp::Error) -> Self {
        SmtpError::Smtp(error)
    }
}

/// The byte stream under an IMAP session: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum ImapStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ImapStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ImapStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ImapStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ImapStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Runs `future` with [`OPERATION_TIMEOUT`], naming `what` in the error.
async fn bounded<T, E>(
    what: &str,
    future: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T>
where
    E: Into<anyhow::Error>,
{
    match timeout(OPERATION_TIMEOUT, future).await {
        Ok(result) => result.map_err(Into::into).with_context(|| what.to_owned()),
        Err(_) => Err(anyhow!("{what}: no answer within {OPERATION_TIMEOUT:?}")),
    }
}

/// One fetched message: its UID in the folder and its raw bytes.
#[derive(Debug, Clone)]
pub struct FetchedMail {
    pub uid: u32,
    pub raw: Vec<u8>,
}

/// A logged-in IMAP session of one user.
pub struct Mailbox {
    /// `None` only while an IDLE round owns the session.
    session: Option<Session<ImapStream>>,
    user: String,
    security: ImapSecurity,
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("user", &self.user)
            .field("security", &self.security)
            .finish()
    }
}

impl Mailbox {
    /// Connects to `stack` and logs in as `user` (password [`PASSWORD`]).
    pub async fn connect(stack: &MailStack, user: &str, security: ImapSecurity) -> Result<Mailbox> {
        let port = match security {
            ImapSecurity::Plain | ImapSecurity::StartTls => stack.imap_port,
            ImapSecurity::Tls => stack.imaps_port,
        };
        let tcp = bounded(
            "connecting to IMAP",
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await?;
        let stream = match security {
            ImapSecurity::Plain => ImapStream::Plain(tcp),
            ImapSecurity::Tls => ImapStream::Tls(Box::new(tls_handshake(stack, tcp).await?)),
            ImapSecurity::StartTls => {
                let mut client = Client::new(tcp);
                read_greeting(&mut client).await?;
                bounded(
                    "STARTTLS",
                    client.run_command_and_check_ok("STARTTLS", None),
                )
                .await?;
                let tcp = client.into_inner();
                ImapStream::Tls(Box::new(tls_handshake(stack, tcp).await?))
            }
        };
        let mut client = Client::new(stream);
        if security != ImapSecurity::StartTls {
            read_greeting(&mut client).await?;
        }
        let session = match timeout(OPERATION_TIMEOUT, client.login(user, PASSWORD)).await {
            Ok(Ok(session)) => session,
            Ok(Err((error, _client))) => {
                return Err(anyhow::Error::from(error).context(format!("IMAP login as {user}")))
            }
            Err(_) => bail!("IMAP login as {user}: no answer within {OPERATION_TIMEOUT:?}"),
        };
        Ok(Mailbox {
            session: Some(session),
            user: user.to_owned(),
            security,
        })
    }

    /// The user this session is logged in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The underlying async-imap session, for commands the harness does not wrap.
    pub fn session(&mut self) -> &mut Session<ImapStream> {
        self.session
            .as_mut()
            .expect("the session is only taken during an IDLE round")
    }

    /// Selects `folder` and returns its number of messages.
    pub async fn select(&mut self, folder: &str) -> Result<u32> {
        let mailbox = bounded(&format!("SELECT {folder}"), self.session().select(folder)).await?;
        Ok(mailbox.exists)
    }

    /// All messages in `folder`, raw, in UID order. Does not set `\Seen`.
    pub async fn fetch_all(&mut self, folder: &str) -> Result<Vec<Vec<u8>>> {
        self.select(folder).await?;
        let mails = self.fetch_from_uid(1).await?;
        Ok(mails.into_iter().map(|mail| mail.raw).collect())
    }

    /// Messages of the selected folder with UID `first_uid` or above, in UID order.
    pub async fn fetch_from_uid(&mut self, first_uid: u32) -> Result<Vec<FetchedMail>> {
        let session = self.session();
        let fetches = bounded("UID FETCH", async {
            let stream = session
                .uid_fetch(format!("{first_uid}:*"), "(UID BODY.PEEK[])")
                .await?;
            stream.try_collect::<Vec<_>>().await
        })
        .await?;
        let mut mails = Vec::with_capacity(fetches.len());
        for fetch in fetches {
            let uid = fetch
                .uid
                .ok_or_else(|| anyhow!("the server sent a FETCH without UID"))?;
            // "N:*" names the last message even when its UID is below N.
            if uid < first_uid {
                continue;
            }
            let raw = fetch
                .body()
                .ok_or_else(|| anyhow!("the server sent no body for UID {uid}"))?;
            mails.push(FetchedMail {
                uid,
                raw: raw.to_vec(),
            });
        }
        mails.sort_by_key(|mail| mail.uid);
        Ok(mails)
    }

    /// Appends `raw` to `folder` (e.g. to seed a mailbox without SMTP).
    pub async fn append(&mut self, folder: &str, raw: &[u8]) -> Result<()> {
        bounded(
            &format!("APPEND to {folder}"),
            self.session().append(folder, None, None, raw),
        )
        .await
    }

    /// Waits until `folder` holds a message for which `predicate` is true and returns it.
    /// Uses IMAP IDLE between fetches, so it wakes up when mail arrives; fails after `within`.
    pub async fn wait_for(
        &mut self,
        folder: &str,
        predicate: impl Fn(&[u8]) -> bool,
        within: Duration,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + within;
        self.select(folder).await?;
        let mut next_uid = 1;
        loop {
            for mail in self.fetch_from_uid(next_uid).await? {
                next_uid = mail.uid + 1;
                if predicate(&mail.raw) {
                    return Ok(mail.raw);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no matching mail in {}'s {folder} within {within:?}",
                    self.user
                );
            }
            // The server reports anything that arrived since the fetch as soon as IDLE
            // starts, so no mail slips between the fetch and the wait.
            self.idle_once((deadline - now).min(IDLE_ROUND)).await?;
        }
    }

    /// One IDLE round: returns when the server reports a change or `round` elapses.
    async fn idle_once(&mut self, round: Duration) -> Result<()> {
        let session = self
            .session
            .take()
            .expect("the session is only taken during an IDLE round");
        let mut idle = session.idle();
        bounded("IDLE", idle.init()).await?;
        let (wait, _interrupt) = idle.wait_with_timeout(round);
        // Only the wake-up matters (new data or the round's end); the next fetch reads what
        // changed.
        match timeout(round + OPERATION_TIMEOUT, wait).await {
            Ok(result) => drop(result.context("waiting in IDLE")?),
            Err(_) => bail!("IDLE did not end within {round:?}"),
        }
        let session = bounded("ending IDLE", idle.done()).await?;
        self.session = Some(session);
        Ok(())
    }

    /// Logs out and closes the connection.
    pub async fn logout(mut self) -> Result<()> {
        bounded("LOGOUT", self.session().logout()).await
    }
}

async fn read_greeting(
    client: &mut Client<impl AsyncRead + AsyncWrite + Unpin + fmt::Debug + Send>,
) -> Result<()> {
    match bounded("reading the IMAP greeting", client.read_response()).await? {
        Some(_) => Ok(()),
        None => bail!("the IMAP server closed the connection before greeting"),
    }
}

async fn tls_handshake(stack: &MailStack, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(stack.tls_config()?);
    let server_name = ServerName::try_from("localhost").expect("localhost is a valid DNS name");
    bounded("TLS handshake", connector.connect(server_name, tcp)).await
}

/// A private stack from [`MailStack::isolated`]; dereferences to [`MailStack`].
pub struct IsolatedStack {
    stack: MailStack,
    // Dropped after `drop` has brought the stack down.
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for IsolatedStack {
    type Target = MailStack;

    fn deref(&self) -> &MailStack {
        &self.stack
    }
}

impl Drop for IsolatedStack {
    fn drop(&mut self) {
        if let Err(error) = self.stack.down() {
            eprintln!("bringing down the isolated mail stack failed: {error:#}");
        }
    }
}
