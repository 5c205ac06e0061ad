//! Opening an IMAP session: TCP, TLS (none, STARTTLS or implicit), the greeting, LOGIN.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::imap_proto::{Response, Status};
use async_imap::{Client, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::ImapError;
use crate::config::{MailboxConfig, TlsMode};
use crate::tls;

/// The byte stream under async-imap: plain TCP or TLS.
#[derive(Debug)]
pub enum ImapStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An authenticated session on either kind of stream.
pub type ImapSession = Session<ImapStream>;

/// Runs one network step under a timeout.
pub async fn timed<T, E>(
    what: &str,
    limit: Duration,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ImapError>
where
    ImapError: From<E>,
{
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(ImapError::from),
        Err(_) => Err(ImapError::Timeout(format!("{what} after {limit:?}"))),
    }
}

/// Connects, secures, reads the greeting and logs in.
pub async fn open_session(
    mailbox: &MailboxConfig,
    connector: Option<&TlsConnector>,
    limit: Duration,
) -> Result<ImapSession, ImapError> {
    let address = (mailbox.host.as_str(), mailbox.port);
    let tcp = timed("connect", limit, TcpStream::connect(address)).await?;
    tune_socket(&tcp);
    let client = match (mailbox.tls, connector) {
        (TlsMode::None, _) => {
            let mut client = Client::new(ImapStream::Plain(tcp));
            read_greeting(&mut client, limit).await?;
            client
        }
        (TlsMode::Tls, Some(connector)) => {
            let stream = handshake(connector, &mailbox.host, tcp, limit).await?;
            let mut client = Client::new(stream);
            read_greeting(&mut client, limit).await?;
            client
        }
        (TlsMode::Starttls, Some(connector)) => {
            let mut client = Client::new(ImapStream::Plain(tcp));
            read_greeting(&mut client, limit).await?;
            timed(
                "STARTTLS",
                limit,
                client.run_command_and_check_ok("STARTTLS", None),
            )
            .await?;
            // The server says nothing more until the handshake, so no buffered bytes are lost.
            let ImapStream::Plain(tcp) = client.into_inner() else {
                return Err(ImapError::Protocol("STARTTLS on a TLS stream".into()));
            };
            // No greeting follows STARTTLS.
            Client::new(handshake(connector, &mailbox.host, tcp, limit).await?)
        }
        (_, None) => {
            return Err(ImapError::Protocol(
                "TLS requested but no TLS connector prepared".into(),
            ))
        }
    };
    if mailbox.tls == TlsMode::None && !tls::is_loopback(&mailbox.host) {
        return Err(ImapError::Insecure(format!(
            "refusing to send the IMAP password unencrypted to {}",
            mailbox.host
        )));
    }
    let password = mailbox.secret().read().map_err(ImapError::Password)?;
    match tokio::time::timeout(limit, client.login(&mailbox.user, &password)).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err((error, _client))) => Err(ImapError::Login(error)),
        Err(_) => Err(ImapError::Timeout(format!("LOGIN after {limit:?}"))),
    }
}

async fn handshake(
    connector: &TlsConnector,
    host: &str,
    tcp: TcpStream,
    limit: Duration,
) -> Result<ImapStream, ImapError> {
    let name = tls::server_name(host)?;
    let stream = timed("TLS handshake", limit, connector.connect(name, tcp)).await?;
    Ok(ImapStream::Tls(Box::new(stream)))
}

/// The greeting is not read by async-imap: it must be `* OK` (or PREAUTH, which we do not
/// accept since we always log in), not `* BYE`.
async fn read_greeting(client: &mut Client<ImapStream>, limit: Duration) -> Result<(), ImapError> {
    let greeting = timed("greeting", limit, client.read_response()).await?;
    let Some(greeting) = greeting else {
        return Err(ImapError::Greeting(
            "the server closed the connection".into(),
        ));
    };
    match greeting.parsed() {
        Response::Data {
            status: Status::Ok, ..
        } => Ok(()),
        Response::Data {
            status, outcome, ..
        } => Err(ImapError::Greeting(format!(
            "{status:?} {}",
            outcome.information.as_deref().unwrap_or("")
        ))),
        other => Err(ImapError::Greeting(format!("unexpected {other:?}"))),
    }
}

/// Small commands should not wait on Nagle, and keepalive probes notice a peer that
/// vanished during a long IDLE sooner than the next NOOP would.
fn tune_socket(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "imap: cannot set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "imap: cannot enable TCP keepalive");
    }
}
