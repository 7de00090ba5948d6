//! A typed HTTP client for the Portcullis API, used by the CLI, by agents (for the agent
//! protocol) and by every integration test. It keeps one keep-alive connection pool per
//! `Client`; errors from the server arrive as [`Problem`] documents with stable codes.

mod stream;

use std::time::Duration;

use portcullis_proto::agent::{ClaimRequest, JobAssignment, JobReport};
use portcullis_proto::api::{
    AgentCreated, AgentView, AuditVerifyView, ConnectionView, CreateAgent, CreateRequest,
    CreateToken, PublicKeyView, RequestOutcome, RequestView, TokenCreated, TokenView, WhoAmI,
};
use portcullis_proto::people;
use portcullis_proto::{ErrorCode, Problem};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub use stream::{MAX_LINE, ResultStream};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the server answered {status}: {}{}", .problem.detail.as_deref().unwrap_or(&.problem.title), .problem.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Api { status: u16, problem: Box<Problem> },
    #[error("the server answered {status} without a problem document")]
    Status { status: u16 },
    #[error("cannot reach the server: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("unexpected response body: {0}")]
    Decode(String),
}

impl ClientError {
    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { problem, .. } => Some(problem.code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Status { status } => Some(*status),
            _ => None,
        }
    }
}

/// A bearer credential that never prints.
#[derive(Clone)]
struct Bearer(String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<Bearer>,
}

impl Client {
    /// A client for `base` (for example `http://127.0.0.1:7070`) acting with `token`.
    pub fn new(base: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Client::build(base, token, None)
    }

    /// A client that trusts only the CA certificates in `ca_pem` for `https://` (a server
    /// whose certificate comes from a private CA), instead of the system's roots.
    pub fn with_ca(base: &str, token: Option<&str>, ca_pem: &[u8]) -> Result<Client, ClientError> {
        Client::build(base, token, Some(ca_pem))
    }

    fn build(
        base: &str,
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Client, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(base).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid(
                "credentials do not belong in the URL; pass a token",
            ));
        }
        let mut http = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            http = http.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        let http = http
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            // Under the server's 30 s `web.header_read_timeout_secs`: a kept connection is
            // given up here before the server closes it, never reused as it does.
            .pool_idle_timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base,
            token: token.map(|t| Bearer(t.trim().to_owned())),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base.join(path).map_err(|e| ClientError::InvalidUrl {
            url: path.to_owned(),
            reason: e.to_string(),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let mut rb = self.http.request(method, self.url(path)?).timeout(timeout);
        if let Some(Bearer(t)) = &self.token {
            rb = rb.bearer_auth(t);
        }
        Ok(rb)
    }

    async fn send(rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = rb.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await?;
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(problem) => Err(ClientError::Api {
                status: status.as_u16(),
                problem: Box::new(problem),
            }),
            Err(_) => Err(ClientError::Status {
                status: status.as_u16(),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(rb: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let bytes = Self::send(rb).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::json(self.request(Method::GET, path, Self::DEFAULT_TIMEOUT)?).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::json(
            self.request(Method::POST, path, Self::DEFAULT_TIMEOUT)?
                .json(body),
        )
        .await
    }

    /// `GET /health`: true on 200.
    pub async fn health(&self) -> Result<bool, ClientError> {
        let r = self
            .request(Method::GET, "/health", Duration::from_secs(5))?
            .send()
            .await?;
        Ok(r.status() == StatusCode::OK)
    }

    pub async fn ready(&self) -> Result<bool, ClientError> {
        let r = self
            .request(Method::GET, "/ready", Duration::from_secs(5))?
            .send()
            .await?;
        Ok(r.status() == StatusCode::OK)
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/api/v1/me").await
    }

    pub async fn public_key(&self) -> Result<PublicKeyView, ClientError> {
        self.get("/api/v1/public-key").await
    }

    pub async fn connections(&self) -> Result<Vec<ConnectionView>, ClientError> {
        self.get("/api/v1/connections").await
    }

    /// Creates a request and waits up to `wait` for it to finish (zero: do not wait).
    pub async fn create_request(
        &self,
        body: &CreateRequest,
        wait: Duration,
    ) -> Result<RequestOutcome, ClientError> {
        let path = format!("/api/v1/requests?wait={}", wait.as_secs());
        Self::json(
            self.request(Method::POST, &path, wait + Self::DEFAULT_TIMEOUT)?
                .json(body),
        )
        .await
    }

    pub async fn wait_request(
        &self,
        id: Uuid,
        wait: Duration,
    ) -> Result<RequestOutcome, ClientError> {
        let path = format!("/api/v1/requests/{id}/wait?wait={}", wait.as_secs());
        Self::json(self.request(Method::GET, &path, wait + Self::DEFAULT_TIMEOUT)?).await
    }

    /// Like [`Client::wait_request`], but answers early when an approval decision lands, for
    /// a live status line.
    pub async fn wait_request_progress(
        &self,
        id: Uuid,
        wait: Duration,
    ) -> Result<RequestOutcome, ClientError> {
        let path = format!(
            "/api/v1/requests/{id}/wait?wait={}&progress=true",
            wait.as_secs()
        );
        Self::json(self.request(Method::GET, &path, wait + Self::DEFAULT_TIMEOUT)?).await
    }

    /// Approves a pending request (a session with a fresh step-up).
    pub async fn approve_request(
        &self,
        id: Uuid,
        comment: Option<String>,
    ) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/api/v1/requests/{id}/approve"),
            &portcullis_proto::api::DecideRequest { comment },
        )
        .await
    }

    /// Rejects a pending request; `comment` says why.
    pub async fn reject_request(
        &self,
        id: Uuid,
        comment: String,
    ) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/api/v1/requests/{id}/reject"),
            &portcullis_proto::api::DecideRequest {
                comment: Some(comment),
            },
        )
        .await
    }

    /// Opens a time-boxed break-glass grant for this session (AZ-4).
    pub async fn break_glass(
        &self,
        reason: &str,
        duration_secs: Option<u64>,
    ) -> Result<serde_json::Value, ClientError> {
        self.post(
            "/api/v1/break-glass",
            &serde_json::json!({ "reason": reason, "duration_secs": duration_secs }),
        )
        .await
    }

    /// Reviews a request that ran under break-glass (another admin).
    pub async fn review_request(
        &self,
        id: Uuid,
        comment: String,
    ) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/api/v1/requests/{id}/review"),
            &portcullis_proto::api::DecideRequest {
                comment: Some(comment),
            },
        )
        .await
    }

    /// Everyone's requests that ran under break-glass and await review.
    pub async fn list_unreviewed(&self, limit: u32) -> Result<Vec<RequestView>, ClientError> {
        self.get(&format!(
            "/api/v1/requests?all=true&unreviewed=true&limit={limit}"
        ))
        .await
    }

    /// How policy would decide, and why, without running anything.
    pub async fn policy_check(
        &self,
        body: &portcullis_proto::api::PolicyCheck,
    ) -> Result<portcullis_proto::api::PolicyVerdict, ClientError> {
        self.post("/api/v1/policy/check", body).await
    }

    pub async fn alerts(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<portcullis_proto::api::AlertView>, ClientError> {
        self.get(&format!("/api/v1/alerts?after={after}&limit={limit}"))
            .await
    }

    pub async fn lockdown(&self) -> Result<people::LockdownOutcome, ClientError> {
        self.post("/api/v1/lockdown", &serde_json::json!({})).await
    }

    pub async fn lift_lockdown(&self) -> Result<people::LockdownLifted, ClientError> {
        self.post("/api/v1/lockdown/lift", &serde_json::json!({}))
            .await
    }

    pub async fn request_view(&self, id: Uuid) -> Result<RequestView, ClientError> {
        self.get(&format!("/api/v1/requests/{id}")).await
    }

    pub async fn list_requests(
        &self,
        all: bool,
        state: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RequestView>, ClientError> {
        let mut url = self.url("/api/v1/requests")?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &limit.to_string());
            if all {
                q.append_pair("all", "true");
            }
            if let Some(s) = state {
                q.append_pair("state", s);
            }
        }
        self.get(&format!("{}?{}", url.path(), url.query().unwrap_or("")))
            .await
    }

    pub async fn cancel_request(&self, id: Uuid) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/api/v1/requests/{id}/cancel"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn create_token(&self, body: &CreateToken) -> Result<TokenCreated, ClientError> {
        self.post("/api/v1/tokens", body).await
    }

    pub async fn list_tokens(&self, unused: bool) -> Result<Vec<TokenView>, ClientError> {
        self.get(if unused {
            "/api/v1/tokens?unused=true"
        } else {
            "/api/v1/tokens"
        })
        .await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/tokens/{}", encode_segment(id));
        Self::send(self.request(Method::DELETE, &path, Self::DEFAULT_TIMEOUT)?)
            .await
            .map(drop)
    }

    pub async fn create_agent(&self, name: &str) -> Result<AgentCreated, ClientError> {
        self.post(
            "/api/v1/agents",
            &CreateAgent {
                name: name.to_owned(),
            },
        )
        .await
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentView>, ClientError> {
        self.get("/api/v1/agents").await
    }

    pub async fn revoke_agent(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/agents/{}", encode_segment(name));
        Self::send(self.request(Method::DELETE, &path, Self::DEFAULT_TIMEOUT)?)
            .await
            .map(drop)
    }

    pub async fn audit_verify(&self) -> Result<AuditVerifyView, ClientError> {
        self.get("/api/v1/audit/verify").await
    }

    /// The whole audit log as JSON Lines.
    pub async fn audit_export(&self) -> Result<Vec<u8>, ClientError> {
        let r = Self::send(self.request(
            Method::GET,
            "/api/v1/audit/export",
            Duration::from_secs(300),
        )?)
        .await?;
        Ok(r.bytes().await?.to_vec())
    }

    /// Agent protocol: waits up to `claim.wait_ms` for a job. `None` when none arrived.
    pub async fn claim(&self, claim: &ClaimRequest) -> Result<Option<JobAssignment>, ClientError> {
        let timeout = Duration::from_millis(claim.wait_ms) + Self::DEFAULT_TIMEOUT;
        let r = Self::send(
            self.request(Method::POST, "/api/v1/agent/claim", timeout)?
                .json(claim),
        )
        .await?;
        if r.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = r.bytes().await?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The server's signing-key rotation chain (agents only).
    pub async fn key_chain(
        &self,
    ) -> Result<Vec<portcullis_proto::token::KeyAnnouncement>, ClientError> {
        self.get("/api/v1/agent/keys").await
    }

    /// Rotates the server's signing key (IR-4).
    pub async fn rotate_key(
        &self,
    ) -> Result<portcullis_proto::token::KeyAnnouncement, ClientError> {
        self.post("/api/v1/keys/rotate", &serde_json::json!({}))
            .await
    }

    pub async fn heartbeat(&self, job_id: Uuid) -> Result<(), ClientError> {
        let path = format!("/api/v1/agent/jobs/{job_id}/heartbeat");
        Self::send(self.request(Method::POST, &path, Self::DEFAULT_TIMEOUT)?)
            .await
            .map(drop)
    }

    pub async fn report(&self, job_id: Uuid, report: &JobReport) -> Result<(), ClientError> {
        let path = format!("/api/v1/agent/jobs/{job_id}/report");
        Self::send(
            self.request(Method::POST, &path, Duration::from_secs(120))?
                .json(report),
        )
        .await
        .map(drop)
    }

    /// A raw call, for tests that probe the API with arbitrary methods and bodies. Returns
    /// the status and the body bytes, whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut rb = self.request(method, path, Self::DEFAULT_TIMEOUT)?;
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.bytes().await?.to_vec()))
    }
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub use reqwest::Method as HttpMethod;

impl Client {
    /// `POST /api/v1/bootstrap`: the one-time setup token creates the first admin.
    pub async fn bootstrap(
        &self,
        body: &people::BootstrapRequest,
    ) -> Result<people::BootstrapResponse, ClientError> {
        self.post("/api/v1/bootstrap", body).await
    }

    /// `POST /api/v1/login`: a new session whose token acts like a short-lived API token.
    pub async fn login(
        &self,
        body: &people::LoginRequest,
    ) -> Result<people::LoginResponse, ClientError> {
        self.post("/api/v1/login", body).await
    }

    /// `POST /api/v1/logout`: ends the session this client acts with.
    pub async fn logout(&self) -> Result<(), ClientError> {
        Self::send(self.request(Method::POST, "/api/v1/logout", Self::DEFAULT_TIMEOUT)?)
            .await
            .map(drop)
    }

    /// `POST /api/v1/enrol`: an invitation's token sets the password and enrols TOTP.
    pub async fn enrol(
        &self,
        body: &people::EnrolRequest,
    ) -> Result<people::EnrolResponse, ClientError> {
        self.post("/api/v1/enrol", body).await
    }

    /// `POST /api/v1/step-up`: a fresh code for this session, before sensitive actions.
    pub async fn step_up(
        &self,
        body: &people::StepUpRequest,
    ) -> Result<people::StepUpResponse, ClientError> {
        self.post("/api/v1/step-up", body).await
    }

    /// `POST /api/v1/password`: ends every other session and every token of the user.
    pub async fn change_password(
        &self,
        body: &people::PasswordChange,
    ) -> Result<people::PasswordChanged, ClientError> {
        self.post("/api/v1/password", body).await
    }

    pub async fn list_users(&self) -> Result<Vec<people::UserView>, ClientError> {
        self.get("/api/v1/users").await
    }

    pub async fn add_user(
        &self,
        body: &people::CreateUser,
    ) -> Result<people::UserCreated, ClientError> {
        self.post("/api/v1/users", body).await
    }

    pub async fn invite_user(&self, name: &str) -> Result<people::Invite, ClientError> {
        let path = format!("/api/v1/users/{}/invite", encode_segment(name));
        self.post(&path, &serde_json::json!({})).await
    }

    pub async fn suspend_user(
        &self,
        name: &str,
        body: &people::SuspendUser,
    ) -> Result<people::Suspended, ClientError> {
        let path = format!("/api/v1/users/{}/suspend", encode_segment(name));
        self.post(&path, body).await
    }

    pub async fn unsuspend_user(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/users/{}/unsuspend", encode_segment(name));
        Self::send(self.request(Method::POST, &path, Self::DEFAULT_TIMEOUT)?)
            .await
            .map(drop)
    }

    pub async fn reset_mfa(&self, name: &str) -> Result<people::Invite, ClientError> {
        let path = format!("/api/v1/users/{}/reset-mfa", encode_segment(name));
        self.post(&path, &serde_json::json!({})).await
    }

    pub async fn rotate_vault(&self) -> Result<people::VaultRotated, ClientError> {
        self.post("/api/v1/vault/rotate", &serde_json::json!({}))
            .await
    }
}
