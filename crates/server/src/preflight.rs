//! Pre-flight checks of a server configuration: what `portcullis config check` reports and
//! what `portcullis server` checks before it binds anything (it logs the warnings and refuses
//! to start on an error).
//!
//! The checks look at deployment as a whole rather than at one setting: the transport (NET-1,
//! NET-2), the TLS files, the master key (SEC-1), the admin cap against `[[users]]` (AZ-1),
//! CORS (WEB-2), who may speak for clients (NET-3), rate limiting (WEB-4) and the state
//! directory (NET-5). [`redacted`] is the configuration as it may be printed: no secret in it.

use std::os::unix::fs::PermissionsExt;

use portcullis_core::Role;
use portcullis_identity::MasterKey;
use serde::Serialize;

use crate::ServerConfig;
use crate::config::{AdminCapMode, RateLimitBackend, cors_origin_problem};
use crate::tls;

/// What stands in for a secret in printed configuration.
pub const REDACTED: &str = "<redacted>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Worth fixing; the server starts anyway.
    Warning,
    /// The server refuses to start.
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// What a finding is about; stable, for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The file or the environment does not load: a syntax error, an unknown or invalid
    /// setting (`ServerConfig::load`).
    ConfigInvalid,
    /// NET-1: plain HTTP on an address other hosts can reach.
    PlainHttpPublic,
    /// NET-2: a redirect listener without native TLS to redirect to.
    RedirectWithoutTls,
    /// NET-1: the certificate or key file cannot be used.
    TlsFiles,
    /// SEC-1: the master key is missing, unreadable or weak.
    MasterKey,
    /// AZ-1: `[[users]]` declares more active admins than `people.max_admins`.
    AdminCap,
    /// WEB-2: a CORS origin that is a wildcard or not an origin.
    CorsOrigin,
    /// NET-3: a trusted proxy range that covers every address.
    ProxyTrustsEveryone,
    /// WEB-4: rate limiting is off.
    RateLimitOff,
    /// WEB-4: the Redis backend without a usable URL.
    RedisUrl,
    /// NET-5: the state directory is open to group or others, or is not a directory.
    DataDir,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ConfigInvalid => "config_invalid",
            Code::PlainHttpPublic => "plain_http_public",
            Code::RedirectWithoutTls => "redirect_without_tls",
            Code::TlsFiles => "tls_files",
            Code::MasterKey => "master_key",
            Code::AdminCap => "admin_cap",
            Code::CorsOrigin => "cors_origin",
            Code::ProxyTrustsEveryone => "proxy_trusts_everyone",
            Code::RateLimitOff => "rate_limit_off",
            Code::RedisUrl => "redis_url",
            Code::DataDir => "data_dir",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub code: Code,
    /// Never carries a secret.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.level.as_str(),
            self.code.as_str(),
            self.message
        )
    }
}

/// Where the master key comes from; the key itself is never reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MasterKeySource {
    /// `PORTCULLIS_MASTER_KEY` (it wins over the file).
    Environment,
    /// `master_key_file`.
    File,
    /// Neither.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MasterKeyStatus {
    pub source: MasterKeySource,
    pub valid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub master_key: MasterKeyStatus,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn count(&self, level: Level) -> usize {
        self.findings.iter().filter(|f| f.level == level).count()
    }

    pub fn has_errors(&self) -> bool {
        self.count(Level::Error) > 0
    }
}

/// Every check against `config`, with `master_key_env` the value of `PORTCULLIS_MASTER_KEY`
/// when set. Reads the TLS files, the master key file and the state directory's mode; writes
/// nothing.
pub fn check(config: &ServerConfig, master_key_env: Option<&str>) -> Report {
    let mut findings = Vec::new();
    let mut add = |level, code, message: String| {
        findings.push(Finding {
            level,
            code,
            message,
        })
    };

    if let Err(refused) = tls::transport_for(config) {
        add(Level::Error, Code::PlainHttpPublic, refused.to_string());
    }
    if config.tls_cert_file.is_some() != config.tls_key_file.is_some() {
        add(
            Level::Error,
            Code::TlsFiles,
            "tls_cert_file and tls_key_file go together: set both for native TLS, or neither (NET-1)".into(),
        );
    }
    let tls_files = tls::files(config);
    if let Some(files) = &tls_files
        && let Err(e) = tls::load(files)
    {
        add(Level::Error, Code::TlsFiles, format!("{e} (NET-1)"));
    }
    // The redirect names this server's HTTPS port; behind a proxy that port is the proxy's,
    // which redirects on its own, and without TLS there is nothing to redirect to.
    if let Some(at) = config.http_redirect_listen
        && tls_files.is_none()
    {
        add(
            Level::Error,
            Code::RedirectWithoutTls,
            format!(
                "http_redirect_listen = {at} redirects to this server's HTTPS port and needs native TLS (tls_cert_file and tls_key_file) (NET-2)"
            ),
        );
    }

    let master_key = master_key_status(config, master_key_env, &mut add);

    let p = &config.people;
    let admins = config
        .users
        .iter()
        .filter(|u| u.role == Role::Admin && !u.suspended)
        .count();
    if p.max_admins > 0 && admins > p.max_admins as usize {
        let (level, outcome) = match p.admin_cap {
            AdminCapMode::Refuse => (Level::Error, "the server refuses to apply [[users]]"),
            AdminCapMode::Warn => (Level::Warning, "each one over the cap is an audited alert"),
        };
        add(
            level,
            Code::AdminCap,
            format!(
                "[[users]] declares {admins} active admins, over people.max_admins = {}: {outcome} (AZ-1)",
                p.max_admins
            ),
        );
    }

    for origin in &config.web.cors_origins {
        if let Some(problem) = cors_origin_problem(origin) {
            add(
                Level::Error,
                Code::CorsOrigin,
                format!("web.cors_origins entry {origin:?}: {problem} (WEB-2)"),
            );
        }
    }

    for net in &config.trusted_proxies {
        if net.prefix_len() == 0 {
            add(
                Level::Warning,
                Code::ProxyTrustsEveryone,
                format!(
                    "trusted_proxies contains {net}: every client can choose the address and request id it is logged, audited and rate-limited under (X-Forwarded-For, X-Real-IP, X-Request-Id) (NET-3)"
                ),
            );
        }
    }

    let r = &config.rate_limit;
    if !r.enabled {
        add(
            Level::Warning,
            Code::RateLimitOff,
            "rate_limit.enabled = false: nothing slows down password guessing, token creation or request floods (WEB-4)".into(),
        );
    } else if r.backend == RateLimitBackend::Redis {
        match r.redis_url.as_deref() {
            None => add(
                Level::Error,
                Code::RedisUrl,
                "rate_limit.backend = \"redis\" needs rate_limit.redis_url (WEB-4)".into(),
            ),
            Some(url) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => add(
                Level::Error,
                Code::RedisUrl,
                format!(
                    "rate_limit.redis_url {} is not a redis:// or rediss:// URL (WEB-4)",
                    redact_url(url)
                ),
            ),
            Some(_) => {}
        }
    }

    match std::fs::metadata(&config.data_dir) {
        Ok(meta) if !meta.is_dir() => add(
            Level::Error,
            Code::DataDir,
            format!("data_dir {} is not a directory", config.data_dir.display()),
        ),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => add(
            Level::Warning,
            Code::DataDir,
            format!(
                "data_dir {} has mode {:04o}, wider than 0700: the state database and keys should be the server user's alone (chmod 700 {}) (NET-5)",
                config.data_dir.display(),
                meta.permissions().mode() & 0o777,
                config.data_dir.display()
            ),
        ),
        // Missing: the first start creates it owner-only.
        _ => {}
    }

    Report {
        master_key,
        findings,
    }
}

/// SEC-1 through the same loader `portcullis server` uses; its errors never print the key.
fn master_key_status(
    config: &ServerConfig,
    env: Option<&str>,
    add: &mut impl FnMut(Level, Code, String),
) -> MasterKeyStatus {
    let source = match (env, &config.master_key_file) {
        (Some(_), _) => MasterKeySource::Environment,
        (None, Some(_)) => MasterKeySource::File,
        (None, None) => MasterKeySource::None,
    };
    let valid = match MasterKey::load(env.map(str::to_owned), config.master_key_file.as_deref()) {
        Ok(_) => true,
        Err(e) => {
            add(Level::Error, Code::MasterKey, format!("{e} (SEC-1)"));
            false
        }
    };
    MasterKeyStatus { source, valid }
}

/// The configuration as it may be printed: every secret it can hold replaced.
pub fn redacted(config: &ServerConfig) -> ServerConfig {
    let mut c = config.clone();
    c.rate_limit.redis_url = c.rate_limit.redis_url.as_deref().map(redact_url);
    c
}

/// A URL with its password (or its whole user part when there is no `user:` before the
/// secret) and secret-looking query values replaced; something that is not a URL at all is
/// replaced whole, since it may be nothing but a secret.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{REDACTED}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if secret_name(k) => format!("{k}={REDACTED}"),
                    _ => pair.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            match fragment {
                Some(f) => format!("{path}?{query}#{f}"),
                None => format!("{path}?{query}"),
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "auth"]
        .iter()
        .any(|s| k.contains(s))
}

/// Free text (a configuration error, which may quote a value) with the user part of every
/// `scheme://user:password@host` in it replaced.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | '`'))
            .unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::config::UserDecl;

    /// A configuration that passes every check: loopback, a valid master key from the
    /// environment, a 0700 data directory.
    fn clean(dir: &Path) -> ServerConfig {
        let data = dir.join("data");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        ServerConfig {
            data_dir: data,
            ..ServerConfig::default()
        }
    }

    fn check_config(
        configure: impl FnOnce(&mut ServerConfig, &Path),
        env_key: Option<&str>,
        expect: &[(Level, Code)],
    ) {
        let dir = tempfile::tempdir().expect("temp");
        let mut config = clean(dir.path());
        configure(&mut config, dir.path());
        let report = check(&config, env_key);
        let got: Vec<(Level, Code)> = report.findings.iter().map(|f| (f.level, f.code)).collect();
        assert_eq!(got, expect, "{:#?}", report.findings);
    }

    fn tls_pair(dir: &Path, key_mode: u32) -> (std::path::PathBuf, std::path::PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, c.cert.pem()).expect("write");
        std::fs::write(&key, c.signing_key.serialize_pem()).expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode)).expect("chmod");
        (cert, key)
    }

    fn admins(n: usize) -> Vec<UserDecl> {
        (0..n)
            .map(|i| UserDecl {
                name: format!("admin{i}"),
                role: Role::Admin,
                suspended: false,
            })
            .collect()
    }

    #[test]
    fn each_check_reports_its_own_finding_at_its_own_level() {
        let key = portcullis_identity::MasterKey::generate();
        let k = Some(key.as_str());
        use Code::*;
        use Level::{Error as E, Warning as W};
        check_config(|_, _| {}, k, &[]);
        check_config(
            |c, _| c.listen = "0.0.0.0:7070".parse().expect("addr"),
            k,
            &[(E, PlainHttpPublic)],
        );
        check_config(
            |c, _| {
                c.listen = "0.0.0.0:7070".parse().expect("addr");
                c.behind_tls_proxy = true;
            },
            k,
            &[],
        );
        check_config(
            |c, d| {
                let (cert, key) = tls_pair(d, 0o600);
                c.listen = "0.0.0.0:443".parse().expect("addr");
                c.tls_cert_file = Some(cert);
                c.tls_key_file = Some(key);
                c.http_redirect_listen = Some("0.0.0.0:80".parse().expect("addr"));
            },
            k,
            &[],
        );
        check_config(
            |c, d| {
                let (cert, key) = tls_pair(d, 0o644);
                c.tls_cert_file = Some(cert);
                c.tls_key_file = Some(key);
            },
            k,
            &[(E, TlsFiles)],
        );
        check_config(
            |c, d| {
                c.tls_cert_file = Some(d.join("absent.pem"));
                c.tls_key_file = Some(d.join("absent.key"));
            },
            k,
            &[(E, TlsFiles)],
        );
        check_config(
            |c, d| c.tls_cert_file = Some(d.join("cert.pem")),
            k,
            &[(E, TlsFiles)],
        );
        check_config(
            |c, _| c.http_redirect_listen = Some("127.0.0.1:8080".parse().expect("addr")),
            k,
            &[(E, RedirectWithoutTls)],
        );
        check_config(|_, _| {}, None, &[(E, MasterKey)]);
        check_config(|_, _| {}, Some("short"), &[(E, MasterKey)]);
        check_config(|_, _| {}, Some(&"ab".repeat(32)), &[(E, MasterKey)]);
        check_config(
            |c, d| {
                let file = d.join("master.key");
                std::fs::write(&file, portcullis_identity::MasterKey::generate()).expect("write");
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
                c.master_key_file = Some(file);
            },
            None,
            &[(E, MasterKey)],
        );
        check_config(|c, _| c.users = admins(6), k, &[(E, AdminCap)]);
        check_config(
            |c, _| {
                c.users = admins(6);
                c.people.admin_cap = AdminCapMode::Warn;
            },
            k,
            &[(W, AdminCap)],
        );
        check_config(|c, _| c.users = admins(5), k, &[]);
        check_config(
            |c, _| {
                c.users = admins(6);
                c.users[0].suspended = true;
            },
            k,
            &[],
        );
        check_config(
            |c, _| {
                c.users = admins(9);
                c.people.max_admins = 0;
            },
            k,
            &[],
        );
        check_config(
            |c, _| c.web.cors_origins = vec!["https://ok.example".into(), "*".into()],
            k,
            &[(E, CorsOrigin)],
        );
        check_config(
            |c, _| {
                c.trusted_proxies = vec![
                    "10.0.0.0/8".parse().expect("net"),
                    "::/0".parse().expect("net"),
                ]
            },
            k,
            &[(W, ProxyTrustsEveryone)],
        );
        check_config(
            |c, _| c.trusted_proxies = vec!["0.0.0.0/0".parse().expect("net")],
            k,
            &[(W, ProxyTrustsEveryone)],
        );
        check_config(|c, _| c.rate_limit.enabled = false, k, &[(W, RateLimitOff)]);
        check_config(
            |c, _| c.rate_limit.backend = RateLimitBackend::Redis,
            k,
            &[(E, RedisUrl)],
        );
        check_config(
            |c, _| {
                c.rate_limit.backend = RateLimitBackend::Redis;
                c.rate_limit.redis_url = Some("http://cache:6379".into());
            },
            k,
            &[(E, RedisUrl)],
        );
        check_config(
            |c, _| {
                c.rate_limit.backend = RateLimitBackend::Redis;
                c.rate_limit.redis_url = Some("rediss://:pw@cache:6380/0".into());
            },
            k,
            &[],
        );
        check_config(
            |c, _| {
                std::fs::set_permissions(&c.data_dir, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            },
            k,
            &[(W, DataDir)],
        );
        check_config(|c, d| c.data_dir = d.join("not-yet"), k, &[]);
        check_config(
            |c, d| {
                let file = d.join("a-file");
                std::fs::write(&file, "x").expect("write");
                c.data_dir = file;
            },
            k,
            &[(E, DataDir)],
        );
    }

    #[test]
    fn loading_refuses_wildcard_and_malformed_cors_origins_and_half_a_tls_setup() {
        for (origin, ok) in [
            ("https://console.example", true),
            ("https://console.example:8443", true),
            ("http://localhost:3000", true),
            ("https://10.0.0.7", true),
            ("https://[::1]:8443", true),
            ("*", false),
            ("https://*.example", false),
            ("null", false),
            ("console.example", false),
            ("ftp://console.example", false),
            ("https://console.example/", false),
            ("https://console.example/app", false),
            ("https://Console.example", false),
            ("https://user@console.example", false),
            ("https://console.example:0", false),
            ("https://console.example:99999", false),
            ("https://console.example?x", false),
            ("https://", false),
            ("https://[::1", false),
            ("https://console.example\r\nX-Evil: 1", false),
        ] {
            let mut config = ServerConfig::default();
            config.web.cors_origins = vec![origin.to_owned()];
            assert_eq!(config.validate().is_ok(), ok, "{origin:?}");
            assert_eq!(cors_origin_problem(origin).is_none(), ok, "{origin:?}");
        }
        let mut config = ServerConfig {
            tls_cert_file: Some("/etc/portcullis/cert.pem".into()),
            ..ServerConfig::default()
        };
        assert!(config.validate().is_err(), "a certificate without its key");
        config.tls_key_file = Some("/etc/portcullis/key.pem".into());
        assert!(config.validate().is_ok());
        config.tls_cert_file = None;
        assert!(config.validate().is_err(), "a key without its certificate");
    }

    #[test]
    fn the_master_key_is_reported_by_source_and_validity_never_by_value() {
        let dir = tempfile::tempdir().expect("temp");
        let config = clean(dir.path());
        let key = MasterKey::generate();
        let report = check(&config, Some(&key));
        assert_eq!(
            report.master_key,
            MasterKeyStatus {
                source: MasterKeySource::Environment,
                valid: true
            }
        );
        let weak = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let report = check(&config, Some(weak));
        assert!(!report.master_key.valid);
        let printed = serde_json::to_string(&report).expect("json");
        assert!(!printed.contains(weak), "{printed}");
        let report = check(&config, None);
        assert_eq!(report.master_key.source, MasterKeySource::None);
        assert!(report.has_errors());
    }

    #[test]
    fn urls_keep_their_shape_but_lose_every_secret() {
        for (url, expect) in [
            ("redis://cache:6379/0", "redis://cache:6379/0"),
            (
                "redis://default:hunter2@cache:6379/0",
                "redis://default:<redacted>@cache:6379/0",
            ),
            ("rediss://:hunter2@cache", "rediss://:<redacted>@cache"),
            ("redis://hunter2@cache", "redis://<redacted>@cache"),
            (
                "redis://u:p@ss:w@rd@cache/1",
                "redis://u:<redacted>@cache/1",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=hunter2",
                "redis+unix:///run/redis.sock?db=1&pass=<redacted>",
            ),
            ("hunter2", "<redacted>"),
        ] {
            assert_eq!(redact_url(url), expect, "{url}");
            assert!(!redact_url(url).contains("hunter2"));
        }
        let mut config = ServerConfig::default();
        config.rate_limit.redis_url = Some("redis://default:hunter2@cache:6379".into());
        let printed = serde_json::to_string(&redacted(&config)).expect("json");
        assert!(
            !printed.contains("hunter2") && printed.contains("cache:6379"),
            "{printed}"
        );
    }

    #[test]
    fn free_text_loses_the_credentials_of_every_url_it_quotes() {
        for (text, expect) in [
            (
                "invalid value \"redis://u:hunter2@h:1\" for key",
                "invalid value \"redis://<redacted>@h:1\" for key",
            ),
            (
                "a http://x:hunter2@a/b and rediss://hunter2@c",
                "a http://<redacted>@a/b and rediss://<redacted>@c",
            ),
            ("no url here", "no url here"),
        ] {
            assert_eq!(redact_text(text), expect);
        }
    }
}
