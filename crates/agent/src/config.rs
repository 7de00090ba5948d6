//! Agent configuration: who the agent is, which server it connects out to, which signing keys
//! it trusts (pinned here, never fetched), and the connections it serves with the operation
//! classes it allows on each (its capability list, AZ-5) and one credential per class (least
//! privilege: a read-only user for reads, another for writes, another for DDL).
//!
//! ```toml
//! [[connections]]
//! name = "pg"
//! kind = "postgres"
//! environment = "production"
//! allow = ["read", "write"]
//! max_result_bytes = 16777216   # optional, default 16 MiB
//! pool_size = 4                 # optional, connections per credential
//! [connections.credentials.read]
//! url_env = "PG_READ_URL"       # wins when set
//! url = "postgres://reader@db:5432/app?sslmode=verify-full"
//! [connections.credentials.write]
//! url_env = "PG_WRITE_URL"
//! ```
//!
//! An agent on the data store's own host can reach PostgreSQL through its Unix socket, with
//! no TCP and no TLS to pay for on each message (measured in `docs/benchmarks.md`):
//! `url = "postgres://reader@localhost/app?host=/var/run/postgresql"`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use portcullis_core::{ConnectionKind, ConnectionName, Environment, OperationClass};
use portcullis_proto::token::{KeyId, TrustedKeys};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::exec::url::{ConnectionUrl, MASK};

/// The byte cap on one result (approximate JSON size of its rows) unless configured.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 16 * 1024 * 1024;
/// Connections per credential unless configured.
pub const DEFAULT_POOL_SIZE: u32 = 4;

/// A signing key the agent trusts: its id and its raw public key (standard base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedKey {
    pub key_id: String,
    pub public_key: String,
}

/// A data store the agent serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: ConnectionName,
    pub kind: ConnectionKind,
    pub environment: Environment,
    /// The operation classes this agent will execute here, whatever a token says.
    pub allow: Vec<OperationClass>,
    /// SQLite: the database file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PostgreSQL, MySQL and Redis: one credential per allowed class.
    #[serde(default)]
    pub credentials: BTreeMap<OperationClass, Credential>,
    /// Results stop (and say `truncated`) once their rows reach this many bytes as JSON.
    #[serde(default = "default_max_result_bytes")]
    pub max_result_bytes: u64,
    /// Connections pooled per credential (PostgreSQL, MySQL); Redis multiplexes one
    /// connection per credential and ignores it. Above 1, a MySQL write, DDL or admin
    /// credential keeps one of them open ahead, from its first job on, for the next job.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

fn default_max_result_bytes() -> u64 {
    DEFAULT_MAX_RESULT_BYTES
}

fn default_pool_size() -> u32 {
    DEFAULT_POOL_SIZE
}

impl TargetConfig {
    /// A connection with no path or credentials yet and default limits; fill in the rest with
    /// struct update syntax.
    pub fn new(
        name: ConnectionName,
        kind: ConnectionKind,
        environment: Environment,
        allow: Vec<OperationClass>,
    ) -> TargetConfig {
        TargetConfig {
            name,
            kind,
            environment,
            allow,
            path: None,
            credentials: BTreeMap::new(),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }

    /// The URL for `class`, resolved from its credential (environment first).
    pub fn url(&self, class: OperationClass) -> Result<ConnectionUrl, ConfigError> {
        let credential = self.credentials.get(&class).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "connection {}: no credential for {class} operations ([connections.credentials.{class}])",
                self.name
            ))
        })?;
        credential.resolve(self, class)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        let name = &self.name;
        if self.allow.is_empty() {
            return invalid(format!(
                "connection {name}: allow must list at least one operation class"
            ));
        }
        if self.max_result_bytes == 0 {
            return invalid(format!(
                "connection {name}: max_result_bytes must be positive"
            ));
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            return invalid(format!(
                "connection {name}: pool_size must be between 1 and 64"
            ));
        }
        match self.kind {
            ConnectionKind::Sqlite => {
                if self.path.is_none() {
                    return invalid(format!("connection {name}: sqlite needs path"));
                }
                if !self.credentials.is_empty() {
                    return invalid(format!(
                        "connection {name}: sqlite takes a path, not credentials"
                    ));
                }
            }
            ConnectionKind::Postgres | ConnectionKind::Mysql | ConnectionKind::Redis => {
                if self.path.is_some() {
                    return invalid(format!(
                        "connection {name}: path is for sqlite; {} takes credentials",
                        self.kind
                    ));
                }
                for class in &self.allow {
                    if !self.credentials.contains_key(class) {
                        return invalid(format!(
                            "connection {name}: {class} is allowed but has no credential: add [connections.credentials.{class}] with url or url_env"
                        ));
                    }
                }
                for class in self.credentials.keys() {
                    if !self.allow.contains(class) {
                        return invalid(format!(
                            "connection {name}: a credential for {class} is configured but allow does not list {class}; remove it (least privilege)"
                        ));
                    }
                    self.url(*class)?;
                }
            }
            other => {
                return invalid(format!(
                    "connection {name}: kind {other} is not supported by this agent yet"
                ));
            }
        }
        Ok(())
    }
}

/// Where the agent finds the URL (with its password) for one class on one connection.
/// `url_env` names an environment variable whose value, when set, wins over `url`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    #[serde(default)]
    pub url: Option<SecretUrl>,
    #[serde(default)]
    pub url_env: Option<String>,
}

impl Credential {
    fn resolve(
        &self,
        target: &TargetConfig,
        class: OperationClass,
    ) -> Result<ConnectionUrl, ConfigError> {
        let name = &target.name;
        let from_env = self.url_env.as_deref().and_then(|var| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (Zeroizing::new(v), var))
        });
        let (text, origin) = match (&from_env, &self.url) {
            (Some((value, var)), _) => (value.as_str(), format!("environment variable {var}")),
            (None, Some(url)) => (url.expose(), "url".to_owned()),
            (None, None) => {
                return Err(ConfigError::Invalid(match &self.url_env {
                    Some(var) => format!(
                        "connection {name}: the {class} credential's environment variable {var} is not set and no url is given"
                    ),
                    None => {
                        format!("connection {name}: the {class} credential needs url or url_env")
                    }
                }));
            }
        };
        ConnectionUrl::parse(target.kind, text).map_err(|e| {
            ConfigError::Invalid(format!(
                "connection {name}: the {class} credential ({origin}): {e}"
            ))
        })
    }
}

/// A URL from the config file that may hold a password: zeroized on drop, and shown (by
/// `Debug` and when serialized) with the password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Zeroizing<String>);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(Zeroizing::new(url.into()))
    }

    /// The URL, password included: only for parsing into a [`ConnectionUrl`].
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn masked(&self) -> String {
        match reqwest::Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => match url.set_password(Some(MASK)) {
                Ok(()) => url.as_str().replace("%2A%2A%2A", MASK),
                Err(()) => MASK.to_owned(),
            },
            Ok(url) => url.as_str().to_owned(),
            Err(_) => MASK.to_owned(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

/// Serializes masked, so a printed or re-serialized config never carries the password.
impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl::new)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The agent's name, as registered on the server; tokens must name it as their audience.
    pub name: String,
    pub server_url: String,
    /// File holding the agent token; `PORTCULLIS_AGENT_TOKEN` takes precedence.
    pub token_file: Option<PathBuf>,
    /// Permit plain HTTP to a non-loopback server (NET-4). Off by default.
    pub allow_insecure: bool,
    /// Workers, each claiming and running one job at a time: at most this many statements
    /// run on the targets at once. A worker is busy from the moment its job is handed over
    /// until its executor has finished; the wait for the server to record the result then
    /// runs beside it (at most this many such waits at once), and the worker claims its
    /// next job. Size this to the requests expected in flight at once: while every worker
    /// is busy, new jobs wait in the queue, and taking a job from the queue costs a
    /// transaction of its own that a direct hand-off to a waiting worker does not.
    pub max_concurrent_jobs: usize,
    /// Touched while the agent is connected to the server (liveness probe).
    pub liveness_file: Option<PathBuf>,
    /// Written once the agent has reached the server (readiness probe), removed on stop.
    pub ready_file: Option<PathBuf>,
    pub trusted_keys: Vec<PinnedKey>,
    pub connections: Vec<TargetConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: String::new(),
            server_url: String::new(),
            token_file: None,
            allow_insecure: false,
            max_concurrent_jobs: 8,
            liveness_file: None,
            ready_file: None,
            trusted_keys: Vec::new(),
            connections: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid agent configuration: {0}")]
    Invalid(String),
    #[error(
        "server_url {0} is plain HTTP to a non-loopback address: use https://, or set allow_insecure = true if a trusted network protects it (NET-4)"
    )]
    InsecureServerUrl(String),
}

impl AgentConfig {
    /// Loads `path` with `PORTCULLIS_AGENT_*` environment overrides (for example
    /// `PORTCULLIS_AGENT_SERVER_URL`), then validates.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        let env = Env::prefixed("PORTCULLIS_AGENT_").ignore(&["token"]);
        let config: AgentConfig = Figment::from(Serialized::defaults(AgentConfig::default()))
            .merge(Toml::file_exact(path))
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if self.name.is_empty() {
            return invalid("name is required".into());
        }
        check_server_url(&self.server_url, self.allow_insecure)?;
        if self.trusted_keys.is_empty() {
            return invalid(
                "trusted_keys must pin at least one signing key (see `portcullis key show`)".into(),
            );
        }
        self.trusted_keys()?;
        if self.connections.is_empty() {
            return invalid("at least one [[connections]] entry is required".into());
        }
        if self.max_concurrent_jobs == 0 || self.max_concurrent_jobs > 256 {
            return invalid("max_concurrent_jobs must be between 1 and 256".into());
        }
        let mut names: Vec<&ConnectionName> = self.connections.iter().map(|c| &c.name).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return invalid(format!("connection {} is declared twice", w[0]));
        }
        for c in &self.connections {
            c.validate()?;
        }
        Ok(())
    }

    /// The pinned keys, parsed. A pin whose id does not match its key is refused.
    pub fn trusted_keys(&self) -> Result<TrustedKeys, ConfigError> {
        let mut keys = TrustedKeys::new();
        for pin in &self.trusted_keys {
            let expected = KeyId::from_hex(&pin.key_id).map_err(|e| {
                ConfigError::Invalid(format!("trusted key id {:?}: {e}", pin.key_id))
            })?;
            let id = keys
                .pin_base64(&pin.public_key)
                .map_err(|e| ConfigError::Invalid(format!("trusted key {}: {e}", pin.key_id)))?;
            if id != expected {
                return Err(ConfigError::Invalid(format!(
                    "trusted key {}: the public key's id is {id}",
                    pin.key_id
                )));
            }
        }
        Ok(keys)
    }

    pub fn target(&self, name: &ConnectionName) -> Option<&TargetConfig> {
        self.connections.iter().find(|c| &c.name == name)
    }
}

/// NET-4: the agent only connects out, and never in plain HTTP beyond loopback unless told.
pub fn check_server_url(url: &str, allow_insecure: bool) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ConfigError::Invalid(format!("server_url {url:?}: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ConfigError::Invalid(
            "server_url must not carry credentials".into(),
        ));
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = parsed.host_str().unwrap_or("");
            let ip = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok();
            let loopback =
                host.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.is_loopback());
            if loopback || allow_insecure {
                Ok(())
            } else {
                Err(ConfigError::InsecureServerUrl(url.to_owned()))
            }
        }
        other => Err(ConfigError::Invalid(format!(
            "server_url scheme {other:?} is not http or https"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::token::public_key_base64;

    const SECRET: &str = "hunter2hunter2";

    fn load(connections: &str) -> Result<AgentConfig, ConfigError> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let text = format!(
            "name = \"edge\"\nserver_url = \"http://127.0.0.1:7070\"\n\
             [[trusted_keys]]\nkey_id = \"{}\"\npublic_key = \"{}\"\n{connections}",
            KeyId::of(&public).to_hex(),
            public_key_base64(&public),
        );
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write");
        AgentConfig::load(&path)
    }

    fn check(connections: &str, expect: Result<(), &str>) {
        let got = load(connections).map(|_| ()).map_err(|e| e.to_string());
        match (&got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(fragment)) => {
                assert!(e.contains(fragment), "{connections}\n→ {e}");
                assert!(!e.contains(SECRET), "{e}");
            }
            _ => panic!("{connections}\n→ {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn stores_take_one_credential_per_allowed_class() {
        let unset = "PORTCULLIS_TEST_SURELY_UNSET_VARIABLE";
        for (connections, expect) in [
            // Today's SQLite form still loads.
            (
                "[[connections]]\nname = \"demo\"\nkind = \"sqlite\"\nenvironment = \"development\"\n\
                 allow = [\"read\"]\npath = \"/tmp/demo.db\"\n",
                Ok(()),
            ),
            (
                "[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nenvironment = \"production\"\n\
                 allow = [\"read\", \"write\"]\nmax_result_bytes = 1024\npool_size = 2\n\
                 [connections.credentials.read]\nurl = \"postgres://reader:hunter2hunter2@db/app?sslmode=verify-full\"\n\
                 [connections.credentials.write]\nurl_env = \"PORTCULLIS_TEST_SURELY_UNSET_VARIABLE\"\n\
                 url = \"postgresql://writer@db/app\"\n",
                Ok(()),
            ),
            (
                "[[connections]]\nname = \"my\"\nkind = \"mysql\"\nenvironment = \"staging\"\n\
                 allow = [\"read\"]\n[connections.credentials.read]\nurl = \"mariadb://r:hunter2hunter2@db/app?ssl-mode=REQUIRED\"\n",
                Ok(()),
            ),
            (
                "[[connections]]\nname = \"cache\"\nkind = \"redis\"\nenvironment = \"production\"\n\
                 allow = [\"read\"]\n[connections.credentials.read]\nurl = \"rediss://reader:hunter2hunter2@cache:6380/0\"\n",
                Ok(()),
            ),
            (
                "[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nenvironment = \"production\"\n\
                 allow = [\"read\", \"write\"]\n[connections.credentials.read]\nurl = \"postgres://r@db/app\"\n",
                Err("connection pg: write is allowed but has no credential"),
            ),
            (
                "[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nenvironment = \"production\"\n\
                 allow = [\"read\"]\n[connections.credentials.read]\nurl = \"postgres://r@db/app\"\n\
                 [connections.credentials.admin]\nurl = \"postgres://a@db/app\"\n",
                Err(
                    "connection pg: a credential for admin is configured but allow does not list admin",
                ),
            ),
            (
                "[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nenvironment = \"production\"\n\
                 allow = [\"read\"]\n[connections.credentials.read]\nurl_env = \"PORTCULLIS_TEST_SURELY_UNSET_VARIABLE\"\n",
                Err(
                    "connection pg: the read credential's environment variable PORTCULLIS_TEST_SURELY_UNSET_VARIABLE is not set",
                ),
            ),
            (
                "[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nenvironment = \"production\"\n\
                 allow = [\"read\"]\n[connections.credentials.read]\n",
                Err("connection pg: the read credential needs url or url_env"),
            ),
            // A set variable wins over `url`: PATH is set, and is no URL.
            (
                "[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nenvironment = \"production\"\n\
                 allow = [\"read\"]\n[connections.credentials.read]\nurl_env = \"PATH\"\nurl = \"postgres://r@db/app\"\n",
                Err("connection pg: the read credential (environment variable PATH)"),
            ),
            (
                "[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nenvironment = \"production\"\n\
                 allow = [\"read\"]\n[connections.credentials.read]\nurl = \"mysql://r:hunter2hunter2@db/app\"\n",
                Err("a postgres connection URL must start with postgres:// or postgresql://"),
            ),
            (
                "[[connections]]\nname = \"cache\"\nkind = \"redis\"\nenvironment = \"production\"\n\
                 allow = [\"read\"]\npath = \"/tmp/x\"\n[connections.credentials.read]\nurl = \"redis://h\"\n",
                Err("connection cache: path is for sqlite; redis takes credentials"),
            ),
            (
                "[[connections]]\nname = \"demo\"\nkind = \"sqlite\"\nenvironment = \"development\"\n\
                 allow = [\"read\"]\npath = \"/tmp/demo.db\"\npool_size = 0\n",
                Err("connection demo: pool_size must be between 1 and 64"),
            ),
        ] {
            check(connections, expect);
        }
        assert!(std::env::var(unset).is_err());
    }

    #[test]
    fn a_loaded_config_never_shows_a_password() {
        let config = load(
            "[[connections]]\nname = \"pg\"\nkind = \"postgres\"\nenvironment = \"production\"\n\
             allow = [\"read\"]\n[connections.credentials.read]\nurl = \"postgres://reader:hunter2hunter2@db:5432/app\"\n",
        )
        .expect("config");
        let target = &config.connections[0];
        assert_eq!(target.max_result_bytes, DEFAULT_MAX_RESULT_BYTES);
        assert_eq!(target.pool_size, DEFAULT_POOL_SIZE);
        let url = target.url(OperationClass::Read).expect("url");
        assert_eq!(url.to_string(), "postgres://reader:***@db:5432/app");
        assert!(url.expose().contains(SECRET));
        for shown in [
            format!("{config:?}"),
            format!("{url:?}"),
            serde_json::to_string(&config).expect("json"),
        ] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(shown.contains("reader:***@db"), "{shown}");
        }
    }
}
