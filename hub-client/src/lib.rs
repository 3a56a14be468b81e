//! A typed client of the JupyterHub REST API for what berthd needs: posting server activity
//! (`POST {hub_api}/users/{name}/activity`) with a service token, classifying failures as
//! retryable or not, over HTTP or TLS, with a deadline on every call.
//!
//! [`HubApi`] is the narrow trait berthd's reporter uses; [`HubClient`] talks to a real hub and
//! [`fake::RecordingHub`] (feature `test-util`) records calls for tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Deadline of one call to the hub.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Activity of one user's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// The user's newest activity (the newest of its servers').
    pub last_activity: SystemTime,
    /// Per server name ("" = default server).
    pub servers: BTreeMap<String, SystemTime>,
}

/// Why a call to the hub failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The hub refused for good: unknown user or server (400/404), bad token (401/403).
    /// Sending the same again will fail again.
    #[error("hub refused ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The hub's message.
        message: String,
    },
    /// The hub is busy or failing (429, 5xx): try again later.
    #[error("hub unavailable ({status}): {message}")]
    Unavailable {
        /// HTTP status.
        status: u16,
        /// The hub's message.
        message: String,
    },
    /// The hub could not be reached, or did not answer in time: try again later.
    #[error("hub unreachable: {0}")]
    Transport(String),
}

impl HubError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, HubError::Rejected { .. })
    }

    /// Classifies an HTTP status that is not a success.
    pub fn from_status(status: u16, message: String) -> Self {
        match status {
            408 | 429 | 500..=599 => HubError::Unavailable { status, message },
            _ => HubError::Rejected { status, message },
        }
    }
}

/// The JupyterHub API as berthd uses it.
pub trait HubApi: Send + Sync + 'static {
    /// Posts `activity` for `user`.
    fn post_activity(
        &self,
        user: &str,
        activity: &Activity,
    ) -> impl Future<Output = Result<(), HubError>> + Send;
}

/// The request body JupyterHub's activity handler expects.
pub fn activity_body(a: &Activity) -> serde_json::Value {
    let ts = |t: SystemTime| humantime::format_rfc3339_micros(t).to_string();
    let servers: serde_json::Map<String, serde_json::Value> = a
        .servers
        .iter()
        .map(|(name, t)| (name.clone(), serde_json::json!({ "last_activity": ts(*t) })))
        .collect();
    serde_json::json!({ "last_activity": ts(a.last_activity), "servers": servers })
}

/// Percent-encodes a user name for a URL path segment.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token file cannot be read or is empty.
    #[error("hub token file {path}: {message}")]
    Token {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The CA file cannot be read or parsed.
    #[error("hub CA file {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(String),
}

/// A client of a real JupyterHub.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    api_url: String,
    authorization: String,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of Debug output.
        f.debug_struct("HubClient")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// A client of the hub API at `api_url` (e.g. `http://hub:8081/hub/api`), authenticating
    /// with the service token in `token_file`, trusting `ca_file` for https when given.
    pub fn new(
        api_url: &str,
        token_file: &Path,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let shown = token_file.display().to_string();
        let token = std::fs::read_to_string(token_file).map_err(|e| ClientError::Token {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(ClientError::Token {
                path: shown,
                message: "is empty".to_owned(),
            });
        }
        // One process-wide crypto provider; a second install attempt is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("berthd/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = ca_file {
            let path = ca.display().to_string();
            let pem = std::fs::read(ca).map_err(|e| ClientError::Ca {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ClientError::Ca {
                path,
                message: e.to_string(),
            })?;
            builder = builder.tls_certs_only([cert]);
        }
        let http = builder.build().map_err(|e| {
            // reqwest says "builder error"; the cause (e.g. no system CA certificates) is below.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            ClientError::Http(text)
        })?;
        Ok(Self {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            authorization: format!("token {token}"),
        })
    }
}

impl HubApi for HubClient {
    async fn post_activity(&self, user: &str, activity: &Activity) -> Result<(), HubError> {
        let url = format!("{}/users/{}/activity", self.api_url, path_segment(user));
        let body = activity_body(activity).to_string();
        let response = self
            .http
            .post(&url)
            .header("Authorization", &self.authorization)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| HubError::Transport(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let message: String = text.chars().take(300).collect();
        Err(HubError::from_status(status, message))
    }
}

/// A recording fake of the hub for tests.
#[cfg(any(test, feature = "test-util"))]
pub mod fake {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::{Activity, HubApi, HubError};

    /// Records every call; answers from a script, then with success.
    #[derive(Clone, Default)]
    pub struct RecordingHub {
        calls: Arc<Mutex<Vec<(String, Activity)>>>,
        script: Arc<Mutex<VecDeque<Result<(), HubError>>>>,
    }

    impl RecordingHub {
        /// The next answers, in order.
        pub fn script(&self, answers: impl IntoIterator<Item = Result<(), HubError>>) {
            self.script
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(answers);
        }

        /// Every call so far.
        pub fn calls(&self) -> Vec<(String, Activity)> {
            self.calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    }

    impl HubApi for RecordingHub {
        async fn post_activity(&self, user: &str, activity: &Activity) -> Result<(), HubError> {
            self.calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((user.to_owned(), activity.clone()));
            self.script
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front()
                .unwrap_or(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_body_is_what_jupyterhub_expects() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let a = Activity {
            last_activity: t,
            servers: BTreeMap::from([(String::new(), t), ("gpu".to_owned(), t)]),
        };
        let body = activity_body(&a);
        assert_eq!(body["last_activity"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(
            body["servers"][""]["last_activity"],
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            body["servers"]["gpu"]["last_activity"],
            "2023-11-14T22:13:20.123456Z"
        );
    }

    #[test]
    fn statuses_are_classified() {
        for s in [400, 401, 403, 404, 409] {
            assert!(
                !HubError::from_status(s, String::new()).is_retryable(),
                "{s}"
            );
        }
        for s in [408, 429, 500, 502, 503] {
            assert!(
                HubError::from_status(s, String::new()).is_retryable(),
                "{s}"
            );
        }
        assert!(HubError::Transport("x".into()).is_retryable());
        assert_eq!(path_segment("a b/ü"), "a%20b%2F%C3%BC");
    }

    /// A one-shot HTTP server answering `status`, returning what it received.
    async fn hub_answering(status: u16) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            loop {
                let n = c.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= i + 4 + len {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            c.write_all(reply.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&got).into_owned()
        });
        (format!("http://{addr}/hub/api"), task)
    }

    #[tokio::test]
    async fn posts_with_the_token_and_classifies_the_answer() {
        let dir = std::env::temp_dir().join(format!("berth-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "svc-token-123\n").expect("token");
        let a = Activity {
            last_activity: SystemTime::now(),
            servers: BTreeMap::from([(String::new(), SystemTime::now())]),
        };

        let (url, seen) = hub_answering(204).await;
        let client = HubClient::new(&url, &token, None, DEFAULT_TIMEOUT).expect("client");
        assert!(!format!("{client:?}").contains("svc-token-123"));
        client
            .post_activity("jörg", &a)
            .await
            .expect("204 is success");
        let request = seen.await.expect("server");
        assert!(
            request.starts_with("POST /hub/api/users/j%C3%B6rg/activity HTTP/1.1"),
            "{request}"
        );
        assert!(
            request.contains("authorization: token svc-token-123"),
            "{request}"
        );

        let (url, _) = hub_answering(404).await;
        let client = HubClient::new(&url, &token, None, DEFAULT_TIMEOUT).expect("client");
        let err = client.post_activity("gone", &a).await.expect_err("404");
        assert!(!err.is_retryable());

        let (url, _) = hub_answering(503).await;
        let client = HubClient::new(&url, &token, None, DEFAULT_TIMEOUT).expect("client");
        assert!(
            client
                .post_activity("u", &a)
                .await
                .expect_err("503")
                .is_retryable()
        );

        let client = HubClient::new(
            "http://127.0.0.1:9/hub/api",
            &token,
            None,
            Duration::from_secs(2),
        )
        .expect("client");
        assert!(
            client
                .post_activity("u", &a)
                .await
                .expect_err("refused")
                .is_retryable()
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
