//! Agent configuration: who the agent is, which server it connects out to, which signing keys
//! it trusts (pinned here, never fetched), and the connections it serves with the operation
//! classes it allows on each (its capability list, AZ-5).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use portcullis_core::{ConnectionKind, ConnectionName, Environment, OperationClass};
use portcullis_proto::token::{KeyId, TrustedKeys};
use serde::{Deserialize, Serialize};

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
            if c.allow.is_empty() {
                return invalid(format!(
                    "connection {}: allow must list at least one operation class",
                    c.name
                ));
            }
            match c.kind {
                ConnectionKind::Sqlite if c.path.is_none() => {
                    return invalid(format!("connection {}: sqlite needs path", c.name));
                }
                ConnectionKind::Sqlite => {}
                other => {
                    return invalid(format!(
                        "connection {}: kind {other} is not supported by this agent yet",
                        c.name
                    ));
                }
            }
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
