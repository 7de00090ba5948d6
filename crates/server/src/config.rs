//! Server configuration: one TOML file, `PORTCULLIS_*` environment overrides, a documented
//! default for every setting. The server holds no secrets in config and no target addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use portcullis_core::{ConnectionKind, ConnectionName, Environment, Permission, PolicyRule, Role};
use serde::{Deserialize, Serialize};

mod web;
pub use web::{HeaderSettings, WebSettings, cors_origin_problem};

/// A connection the server knows about: a name, a kind and an environment. How to reach it
/// and with which credential is known only to agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionDecl {
    pub name: ConnectionName,
    pub kind: ConnectionKind,
    pub environment: Environment,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// The longest lifetime an API token may be created with.
    pub max_ttl_days: u64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings { max_ttl_days: 90 }
    }
}

/// Sessions (AUTH-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    /// A session unused this long ends.
    pub idle_timeout_secs: u64,
    /// A session ends this long after login, however busy.
    pub absolute_lifetime_secs: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            idle_timeout_secs: 15 * 60,
            absolute_lifetime_secs: 12 * 3600,
        }
    }
}

/// Password logins (AUTH-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSettings {
    /// Failed logins in a row before the account locks.
    pub lockout_threshold: u32,
    /// The first lock's length; each further failure doubles it.
    pub lockout_base_secs: u64,
    /// The longest lock.
    pub lockout_max_secs: u64,
    /// Password hashes computed at once at most (each takes about 19 MiB and a core for
    /// tens of milliseconds); 0 means the number of cores.
    pub max_concurrent_hashes: usize,
}

impl Default for LoginSettings {
    fn default() -> Self {
        LoginSettings {
            lockout_threshold: 5,
            lockout_base_secs: 30,
            lockout_max_secs: 3600,
            max_concurrent_hashes: 0,
        }
    }
}

/// A user declared in the configuration file. The file is the source of truth for the role;
/// a suspension, whether from the file or from `portcullis user suspend`, survives restarts
/// (AUTH-7). Such users get their password and TOTP through `portcullis user invite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDecl {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub suspended: bool,
}

/// What happens when a change would exceed `people.max_admins` (AZ-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdminCapMode {
    /// The change is refused (the default).
    #[default]
    Refuse,
    /// The change goes ahead with an audited warning.
    Warn,
}

/// People: MFA, step-up, trusted devices, invitations, the admin cap (AUTH-2, AZ-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleSettings {
    /// Active admins allowed at most; 0 means no cap.
    pub max_admins: u32,
    pub admin_cap: AdminCapMode,
    /// Roles that must sign in with TOTP. Default: admin and every role that can approve or
    /// break glass.
    pub mfa_required_roles: Vec<Role>,
    /// Sensitive actions (approvals, break-glass, token and agent creation, user and vault
    /// changes) need a TOTP check this recent in the session.
    pub step_up_secs: u64,
    /// "Remember this device" lets a device token stand in for the TOTP code at login for
    /// this many days; 0 turns trusted devices off.
    pub trusted_device_days: u64,
    /// How long an invitation (enrolment token) stays valid.
    pub invite_ttl_hours: u64,
}

/// The roles that need MFA unless configured otherwise (AUTH-2).
pub fn default_mfa_roles() -> Vec<Role> {
    Role::ALL
        .iter()
        .copied()
        .filter(|r| {
            *r == Role::Admin
                || r.has(Permission::RequestsApprove)
                || r.has(Permission::RequestsBreakGlass)
        })
        .collect()
}

impl Default for PeopleSettings {
    fn default() -> Self {
        PeopleSettings {
            max_admins: 5,
            admin_cap: AdminCapMode::Refuse,
            mfa_required_roles: default_mfa_roles(),
            step_up_secs: 600,
            trusted_device_days: 7,
            invite_ttl_hours: 72,
        }
    }
}

impl PeopleSettings {
    pub fn mfa_required(&self, role: Role) -> bool {
        self.mfa_required_roles.contains(&role)
    }
}

/// Break-glass (AZ-4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakGlassSettings {
    /// The longest a grant lasts.
    pub max_secs: u64,
    /// A role that may break glass besides admin (never `ci`).
    pub role: Option<Role>,
}

impl Default for BreakGlassSettings {
    fn default() -> Self {
        BreakGlassSettings {
            max_secs: 3600,
            role: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionSettings {
    /// Rows returned at most; the agent applies the value signed into the token.
    pub row_cap: u64,
    /// Statement timeout the agent applies, in milliseconds.
    pub timeout_ms: u64,
    /// Execution-token lifetime in seconds (1–300).
    pub token_ttl_secs: u64,
    /// How long an agent holds a job without a heartbeat before it is considered lost.
    pub lease_secs: u64,
    /// How long an approved request may wait for an agent before it expires.
    pub dispatch_timeout_secs: u64,
    /// How long a pending request waits for approval before it expires.
    pub approval_timeout_secs: u64,
    /// The longest a client may wait on one HTTP call for a result.
    pub max_wait_secs: u64,
    /// How long a finished result stays available to its requester (stream-only otherwise).
    pub result_retention_secs: u64,
    /// How long an agent's streamed result waits for its requester to start reading before
    /// the read is abandoned (`result_not_delivered`).
    pub stream_reader_wait_secs: u64,
    /// How long a stopping server waits, at most, for the jobs its agents are running to
    /// report before it ends the waits for them (EX-3); 0 stops without waiting (0–600).
    pub drain_secs: u64,
}

impl Default for ExecutionSettings {
    fn default() -> Self {
        ExecutionSettings {
            row_cap: 10_000,
            timeout_ms: 30_000,
            token_ttl_secs: 60,
            lease_secs: 30,
            dispatch_timeout_secs: 300,
            approval_timeout_secs: 3_600,
            max_wait_secs: 120,
            result_retention_secs: 60,
            stream_reader_wait_secs: 30,
            drain_secs: crate::SHUTDOWN_DRAIN.as_secs(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// `full` (default): every commit fsynced; `normal`: crash-safe, not power-loss-safe.
    pub synchronous: crate::store::Durability,
}

/// Which store keeps the rate-limit windows (WEB-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    /// This process's memory (one replica).
    #[default]
    Memory,
    /// Redis, shared by every replica (an atomic script per check).
    Redis,
}

/// Rate limits (WEB-4): sliding windows keyed by principal, or by client address when
/// unauthenticated, and stricter hourly buckets for sign-in and token creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Off only for benchmarks and tests that measure something else.
    pub enabled: bool,
    pub backend: RateLimitBackend,
    /// `redis://` or `rediss://` URL of the shared store (backend = "redis"); it may carry a
    /// password, so `config check` redacts it. `PORTCULLIS_RATE_LIMIT__REDIS_URL` sets it
    /// from the environment.
    pub redis_url: Option<String>,
    /// Every key this server writes in Redis starts with this prefix.
    pub redis_prefix: String,
    /// The sliding window of the general limits.
    pub window_secs: u64,
    /// Requests per window for a signed-in principal (user, token or agent).
    pub authenticated: u32,
    /// Requests per window for each agent. An agent's traffic follows the jobs users create
    /// (about two calls per job) and is not capped at the per-user figure, or dispatch would
    /// stall for everyone: the default is the throughput goal (3,000 jobs/s) times two.
    pub agent: u32,
    /// Requests per window for each client address without a credential.
    pub anonymous: u32,
    /// Sign-in attempts (login, bootstrap, enrolment, step-up) per hour per client address.
    pub login_per_hour: u32,
    /// API token creations per hour per principal.
    pub token_create_per_hour: u32,
    /// OAuth client registrations per hour per client address.
    pub oauth_register_per_hour: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            enabled: true,
            backend: RateLimitBackend::Memory,
            redis_url: None,
            redis_prefix: "portcullis:rl:".into(),
            window_secs: 60,
            authenticated: 6_000,
            agent: 360_000,
            anonymous: 120,
            login_per_hour: 30,
            token_create_per_hour: 5,
            oauth_register_per_hour: 5,
        }
    }
}

/// The live-events WebSocket (WEB-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// A connection that has not authenticated this long after the upgrade is closed.
    pub auth_timeout_secs: u64,
    /// The largest message a client may send.
    pub max_message_bytes: usize,
    /// Messages per second a client may send; beyond it the connection is closed.
    pub max_messages_per_sec: u32,
    /// Channels one connection may subscribe to at most.
    pub max_subscriptions: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            auth_timeout_secs: 10,
            max_message_bytes: 64 * 1024,
            max_messages_per_sec: 20,
            max_subscriptions: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Set when a TLS-terminating proxy is the only way to reach this server; without it the
    /// server refuses to serve plain HTTP on a non-loopback address (NET-1).
    pub behind_tls_proxy: bool,
    /// PEM certificate chain for native TLS (NET-1); reloaded on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for native TLS (0600); reloaded on SIGHUP.
    pub tls_key_file: Option<PathBuf>,
    /// An optional plain-HTTP listener that answers 301 to `https://` for every path but
    /// `/health` (NET-2).
    pub http_redirect_listen: Option<SocketAddr>,
    /// Proxies (CIDRs) whose `X-Forwarded-For`, `X-Real-IP` and `X-Request-Id` are believed
    /// (NET-3); nobody else's are.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub web: WebSettings,
    pub rate_limit: RateLimitSettings,
    pub events: EventSettings,
    /// `portcullis dev` only: where the first start writes an admin API token instead of the
    /// one-time setup token. Not settable from a file or the environment (SEC-2), and refused
    /// on a non-loopback address.
    #[serde(skip)]
    pub admin_token_file: Option<PathBuf>,
    /// A file holding the master key (0600); `PORTCULLIS_MASTER_KEY` wins when set (SEC-1).
    pub master_key_file: Option<PathBuf>,
    pub sessions: SessionSettings,
    pub login: LoginSettings,
    pub people: PeopleSettings,
    pub break_glass: BreakGlassSettings,
    /// The vault re-seals every stored secret under a new key version this often; 0 turns
    /// the scheduled rotation off (`portcullis vault rotate` still works) (SEC-3).
    pub vault_key_rotation_days: u64,
    pub users: Vec<UserDecl>,
    pub connections: Vec<ConnectionDecl>,
    pub policy: Vec<PolicyRule>,
    pub tokens: TokenSettings,
    pub execution: ExecutionSettings,
    pub state: StateSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./portcullis-data"),
            behind_tls_proxy: false,
            tls_cert_file: None,
            tls_key_file: None,
            http_redirect_listen: None,
            trusted_proxies: Vec::new(),
            web: WebSettings::default(),
            rate_limit: RateLimitSettings::default(),
            events: EventSettings::default(),
            admin_token_file: None,
            master_key_file: None,
            sessions: SessionSettings::default(),
            login: LoginSettings::default(),
            people: PeopleSettings::default(),
            break_glass: BreakGlassSettings::default(),
            vault_key_rotation_days: 90,
            users: Vec::new(),
            connections: Vec::new(),
            policy: Vec::new(),
            tokens: TokenSettings::default(),
            execution: ExecutionSettings::default(),
            state: StateSettings::default(),
        }
    }
}

/// Top-level keys the environment may override (`PORTCULLIS_LISTEN`,
/// `PORTCULLIS_EXECUTION__ROW_CAP`, …). Other `PORTCULLIS_*` variables belong to the CLI.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "behind_tls_proxy",
    "tls_cert_file",
    "tls_key_file",
    "http_redirect_listen",
    "trusted_proxies",
    "web",
    "rate_limit",
    "events",
    "master_key_file",
    "sessions",
    "login",
    "people",
    "break_glass",
    "vault_key_rotation_days",
    "tokens",
    "execution",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Loads `path` (if given) over the defaults, then the environment over both.
    pub fn load(path: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Missing {
                    path: path.to_owned(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Keys arrive in their original case (`EXECUTION.ROW_CAP`); match them without it.
        let env = Env::prefixed("PORTCULLIS_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            ENV_KEYS
                .iter()
                .any(|k| key == *k || key.starts_with(&format!("{k}.")))
        });
        let config: ServerConfig = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.execution;
        if e.token_ttl_secs == 0 || e.token_ttl_secs > 300 {
            return Err(ConfigError::Invalid(format!(
                "execution.token_ttl_secs must be between 1 and 300 (EX-1), got {}",
                e.token_ttl_secs
            )));
        }
        if e.row_cap == 0 || e.timeout_ms == 0 || e.lease_secs == 0 || e.max_wait_secs == 0 {
            return Err(ConfigError::Invalid(
                "execution.row_cap, timeout_ms, lease_secs and max_wait_secs must be positive"
                    .into(),
            ));
        }
        if e.drain_secs > 600 {
            return Err(ConfigError::Invalid(format!(
                "execution.drain_secs must be between 0 and 600, got {}",
                e.drain_secs
            )));
        }
        let s = &self.sessions;
        if s.idle_timeout_secs == 0 || s.absolute_lifetime_secs < s.idle_timeout_secs {
            return Err(ConfigError::Invalid(
                "sessions.idle_timeout_secs must be positive and at most sessions.absolute_lifetime_secs".into(),
            ));
        }
        if self.login.lockout_threshold == 0 || self.login.lockout_base_secs == 0 {
            return Err(ConfigError::Invalid(
                "login.lockout_threshold and login.lockout_base_secs must be positive".into(),
            ));
        }
        if self.tokens.max_ttl_days == 0 || self.tokens.max_ttl_days > 3_650 {
            return Err(ConfigError::Invalid(
                "tokens.max_ttl_days must be between 1 and 3650".into(),
            ));
        }
        portcullis_core::Policy::new(self.policy.clone()).map_err(ConfigError::Invalid)?;
        let p = &self.people;
        if p.step_up_secs == 0 || p.step_up_secs > 86_400 {
            return Err(ConfigError::Invalid(
                "people.step_up_secs must be between 1 and 86400".into(),
            ));
        }
        if p.trusted_device_days > 90 {
            return Err(ConfigError::Invalid(
                "people.trusted_device_days must be at most 90 (0 turns trusted devices off)"
                    .into(),
            ));
        }
        if p.invite_ttl_hours == 0 || p.invite_ttl_hours > 720 {
            return Err(ConfigError::Invalid(
                "people.invite_ttl_hours must be between 1 and 720".into(),
            ));
        }
        if !p.mfa_required(Role::Admin) {
            return Err(ConfigError::Invalid(
                "people.mfa_required_roles must include admin (AUTH-2)".into(),
            ));
        }
        if self.break_glass.max_secs == 0 || self.break_glass.max_secs > 86_400 {
            return Err(ConfigError::Invalid(
                "break_glass.max_secs must be between 1 and 86400".into(),
            ));
        }
        if self.break_glass.role == Some(Role::Ci) {
            return Err(ConfigError::Invalid(
                "break_glass.role cannot be ci: pipelines never break glass (AZ-4)".into(),
            ));
        }
        if self.vault_key_rotation_days > 3_650 {
            return Err(ConfigError::Invalid(
                "vault_key_rotation_days must be at most 3650 (0 turns the schedule off)".into(),
            ));
        }
        let h = &self.web.headers;
        for (name, v) in [
            ("content_security_policy", &h.content_security_policy),
            ("strict_transport_security", &h.strict_transport_security),
            ("x_content_type_options", &h.x_content_type_options),
            ("x_frame_options", &h.x_frame_options),
            ("referrer_policy", &h.referrer_policy),
            ("permissions_policy", &h.permissions_policy),
            ("cross_origin_opener_policy", &h.cross_origin_opener_policy),
            ("cache_control", &h.cache_control),
        ] {
            if axum::http::HeaderValue::from_str(&v.replace("{nonce}", "n")).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "web.headers.{name} is not a valid header value (WEB-1)"
                )));
            }
        }
        let r = &self.rate_limit;
        if r.enabled {
            if r.backend == RateLimitBackend::Redis && r.redis_url.is_none() {
                return Err(ConfigError::Invalid(
                    "rate_limit.backend = \"redis\" needs rate_limit.redis_url (WEB-4)".into(),
                ));
            }
            if r.window_secs == 0 || r.window_secs > 86_400 {
                return Err(ConfigError::Invalid(
                    "rate_limit.window_secs must be between 1 and 86400 (WEB-4)".into(),
                ));
            }
            // The bound keeps the Redis script's arithmetic exact in Lua's doubles.
            for (name, v) in [
                ("authenticated", r.authenticated),
                ("agent", r.agent),
                ("anonymous", r.anonymous),
                ("login_per_hour", r.login_per_hour),
                ("token_create_per_hour", r.token_create_per_hour),
                ("oauth_register_per_hour", r.oauth_register_per_hour),
            ] {
                if v == 0 || v > 1_000_000 {
                    return Err(ConfigError::Invalid(format!(
                        "rate_limit.{name} must be between 1 and 1000000 (WEB-4)"
                    )));
                }
            }
        }
        if self.web.body_limit_bytes == 0 {
            return Err(ConfigError::Invalid(
                "web.body_limit_bytes must be positive (WEB-3)".into(),
            ));
        }
        self.web.check_connection_limits()?;
        for origin in &self.web.cors_origins {
            if let Some(problem) = cors_origin_problem(origin) {
                return Err(ConfigError::Invalid(format!(
                    "web.cors_origins entry {origin:?}: {problem} (WEB-2)"
                )));
            }
        }
        // NET-1: a certificate without its key (or the reverse) is a half-done TLS setup.
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert_file and tls_key_file go together: set both for native TLS, or neither (NET-1)".into(),
            ));
        }
        let mut users: Vec<&str> = Vec::new();
        for u in &self.users {
            if !crate::principals::valid_name(&u.name) {
                return Err(ConfigError::Invalid(format!(
                    "[[users]] name {:?} must be 1-64 characters of letters, digits, '-', '_', '.', '@'",
                    u.name
                )));
            }
            if users.contains(&u.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "user {} is declared twice in [[users]]",
                    u.name
                )));
            }
            users.push(&u.name);
        }
        let mut names: Vec<&ConnectionName> = self.connections.iter().map(|c| &c.name).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(format!(
                "connection {} is declared twice",
                w[0]
            )));
        }
        Ok(())
    }

    /// Where the one-time setup token is written on a first start without users (SEC-2).
    pub fn setup_token_file(&self) -> PathBuf {
        self.data_dir.join("setup.token")
    }

    /// Whether session cookies must carry `Secure`: everywhere but plain HTTP on loopback.
    pub fn secure_cookies(&self) -> bool {
        self.behind_tls_proxy || !self.listen.ip().is_loopback()
    }

    pub fn connection(&self, name: &ConnectionName) -> Option<&ConnectionDecl> {
        self.connections.iter().find(|c| &c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server.toml");
        let config = ServerConfig::load(Some(&path)).expect("examples/server.toml");
        assert_eq!(config.users.len(), 1);
        assert!(config.people.mfa_required(Role::Ops));
        assert_eq!(config.vault_key_rotation_days, 90);
        assert_eq!(
            config.execution.drain_secs,
            crate::SHUTDOWN_DRAIN.as_secs(),
            "the example shows the default drain"
        );
        let policy = portcullis_core::Policy::new(config.policy.clone()).expect("policy");
        assert_eq!(policy.rules()[1].steps.len(), 2);
        assert_eq!(policy.rules()[1].steps[1].approvals, 2);
    }

    #[test]
    fn the_drain_is_at_most_ten_minutes_and_may_be_off() {
        let mut config = ServerConfig::default();
        assert_eq!(config.execution.drain_secs, 4);
        for ok in [0, 600] {
            config.execution.drain_secs = ok;
            assert!(config.validate().is_ok(), "{ok}");
        }
        config.execution.drain_secs = 601;
        let err = config.validate().expect_err("601 s").to_string();
        assert!(err.contains("execution.drain_secs"), "{err}");
    }

    #[test]
    fn the_connection_limits_are_within_reason() {
        assert!(ServerConfig::default().validate().is_ok());
        type Breaks = fn(&mut WebSettings);
        let cases: [(&str, Breaks); 8] = [
            ("header_read_timeout_secs", |w| {
                w.header_read_timeout_secs = 0
            }),
            ("header_read_timeout_secs", |w| {
                w.header_read_timeout_secs = 3601
            }),
            ("body_read_timeout_secs", |w| w.body_read_timeout_secs = 0),
            ("send_timeout_secs", |w| w.send_timeout_secs = 0),
            ("send_timeout_secs", |w| w.send_timeout_secs = 3601),
            ("max_connections", |w| w.max_connections = 0),
            ("max_connections_per_address", |w| {
                w.max_connections_per_address = 0
            }),
            ("max_connections_per_address", |w| {
                w.max_connections_per_address = w.max_connections + 1;
            }),
        ];
        for (key, break_it) in cases {
            let mut config = ServerConfig::default();
            break_it(&mut config.web);
            let err = config.validate().expect_err(key).to_string();
            assert!(err.contains(&format!("web.{key} must be")), "{err}");
        }
    }

    #[test]
    fn mfa_defaults_cover_every_role_that_can_approve_and_admin_is_mandatory() {
        let roles = default_mfa_roles();
        assert!(roles.contains(&Role::Admin) && roles.contains(&Role::Ops));
        assert!(!roles.contains(&Role::Developer));
        let mut config = ServerConfig::default();
        config.people.mfa_required_roles = vec![Role::Ops];
        assert!(config.validate().is_err(), "admin must require MFA");
        config.people.mfa_required_roles = vec![Role::Admin];
        config.users = vec![
            UserDecl {
                name: "a".into(),
                role: Role::Viewer,
                suspended: false,
            };
            2
        ];
        assert!(config.validate().is_err(), "a user declared twice");
    }
}
