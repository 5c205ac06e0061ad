//! A small HTTP client (hyper's) for the daemon's loopback endpoint: how `complaintd case` and
//! `complaintd outbox` reach the store while the running daemon holds it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::metrics::ADMIN_HEADER;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the daemon's endpoint at {address} does not answer: {reason}")]
    Unreachable { address: SocketAddr, reason: String },
    #[error("the daemon's endpoint at {address} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { address: SocketAddr },
    #[error("the daemon's endpoint at {address}: {reason}")]
    Http { address: SocketAddr, reason: String },
    #[error("cannot start the HTTP client: {0}")]
    Runtime(std::io::Error),
}

/// An answer of the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    /// The `error` of a JSON error answer, else the body as it is.
    pub fn error_message(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| self.body.trim().to_owned())
    }
}

/// The endpoint of a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonClient {
    address: SocketAddr,
}

impl DaemonClient {
    pub fn new(address: SocketAddr) -> Self {
        DaemonClient { address }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `GET path_and_query`.
    pub async fn get(&self, path_and_query: &str) -> Result<Answer, ClientError> {
        self.request(Method::GET, path_and_query).await
    }

    /// `POST path` (with the admin header; no body).
    pub async fn post(&self, path: &str) -> Result<Answer, ClientError> {
        self.request(Method::POST, path).await
    }

    /// Runs a request to completion from synchronous code (the command line) on a runtime of
    /// its own, in a thread of its own, so that it works whether or not the caller is inside
    /// a runtime.
    pub fn blocking(&self, method: Method, path_and_query: &str) -> Result<Answer, ClientError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(ClientError::Runtime)?;
                    runtime.block_on(self.request(method, path_and_query))
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(ClientError::Http {
                        address: self.address,
                        reason: "the client thread panicked".into(),
                    })
                })
        })
    }

    async fn request(&self, method: Method, path_and_query: &str) -> Result<Answer, ClientError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path_and_query)).await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Timeout {
                address: self.address,
            }),
        }
    }

    async fn exchange(&self, method: Method, path_and_query: &str) -> Result<Answer, ClientError> {
        let address = self.address;
        let http = |reason: String| ClientError::Http { address, reason };
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| ClientError::Unreachable {
                address,
                reason: e.to_string(),
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        // The connection is driven by its own task until the answer is read.
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "daemon client: connection ended with an error");
            }
        });
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .header(HOST, address.to_string())
            .header(
                USER_AGENT,
                concat!("complaintd/", env!("CARGO_PKG_VERSION")),
            );
        if method == Method::POST {
            builder = builder.header(ADMIN_HEADER, "1");
        }
        let request = builder
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        driver.abort();
        let body =
            String::from_utf8(body.to_vec()).map_err(|_| http("the answer is not UTF-8".into()))?;
        Ok(Answer { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Api, ApiFuture, ApiRequest, ApiResponse, Metrics, MetricsServer};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    /// Answers with the method and path it was asked.
    struct Echo;

    impl Api for Echo {
        fn handle(&self, request: ApiRequest) -> ApiFuture<'_> {
            Box::pin(async move {
                Some(ApiResponse {
                    status: StatusCode::OK,
                    json: format!("{} {}\n", request.method, request.path),
                })
            })
        }
    }

    // Two workers: the blocking call holds one while the server answers on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asks_the_endpoint_and_reads_its_answers() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let address = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(server.serve_with(Metrics::new(), Some(Arc::new(Echo)), shutdown.clone()));
        let client = DaemonClient::new(address);

        let got = client.get("/cases/TS-2026-000001").await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, "GET /cases/TS-2026-000001\n");
        // The admin header is sent with a POST, so the endpoint lets it through.
        let posted = client.post("/outbox/release-all").await.unwrap();
        assert_eq!(posted.status, StatusCode::OK, "{}", posted.body);
        assert_eq!(posted.body, "POST /outbox/release-all\n");
        // From synchronous code too, even inside a runtime.
        let blocking = client.blocking(Method::GET, "/health").unwrap();
        assert_eq!(blocking.body, "ok\n");

        shutdown.cancel();
        task.await.unwrap();
        let refused = client.get("/health").await.unwrap_err();
        assert!(
            matches!(refused, ClientError::Unreachable { .. }),
            "{refused}"
        );
    }

    #[test]
    fn error_answers_show_their_message() {
        let answer = Answer {
            status: StatusCode::NOT_FOUND,
            body: "{\"error\":\"no case X\"}\n".into(),
        };
        assert_eq!(answer.error_message(), "no case X");
        let plain = Answer {
            status: StatusCode::BAD_GATEWAY,
            body: "upstream down\n".into(),
        };
        assert_eq!(plain.error_message(), "upstream down");
    }
}
