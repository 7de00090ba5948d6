//! Transport security: native TLS (NET-1) and the plain-HTTP redirect listener (NET-2).
//!
//! [`transport`] is the one rule for what a listen address may serve; `Server::start`,
//! `portcullis server` and `portcullis config check` all ask it. The certificate chain and the
//! private key come from PEM files: the key file must be private to its owner (like the signing
//! key, NET-5) and must match the certificate. [`LiveTls::reload`] swaps the whole rustls
//! configuration for connections accepted afterwards; a connection already open keeps the
//! configuration it was accepted with, and a reload that fails keeps the old certificate.
//!
//! The redirect listener carries no API at all: `GET /health` answers like the main one, and
//! everything else is a `301` to the same path on `https://`, built from a strictly parsed
//! `Host` so that a malformed one gets a `400`, never a redirect to a string it chose.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::ServerConfig;

/// The largest PEM file read: a chain of a few certificates is a few KiB, so more means the
/// wrong file.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// How a listener may serve, when it may (NET-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// rustls terminates TLS in this process.
    Tls,
    /// Plain HTTP, and a TLS-terminating proxy is declared the only way in.
    BehindTlsProxy,
    /// Plain HTTP on a loopback address: reachable from this host only.
    PlainLoopback,
}

/// NET-1's refusal: plain HTTP on an address other hosts can reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to serve plain HTTP on {0} (NET-1): set tls_cert_file and tls_key_file, bind a loopback address, or set behind_tls_proxy = true when a TLS-terminating proxy is the only way in"
)]
pub struct PlainHttpRefused(pub SocketAddr);

/// The NET-1 rule: native TLS anywhere; plain HTTP only on loopback or behind a declared TLS
/// proxy.
pub fn transport(
    listen: SocketAddr,
    tls: bool,
    behind_tls_proxy: bool,
) -> Result<Transport, PlainHttpRefused> {
    if tls {
        Ok(Transport::Tls)
    } else if behind_tls_proxy {
        Ok(Transport::BehindTlsProxy)
    } else if listen.ip().to_canonical().is_loopback() {
        Ok(Transport::PlainLoopback)
    } else {
        Err(PlainHttpRefused(listen))
    }
}

/// [`transport`] for a configuration's own listen address.
pub fn transport_for(config: &ServerConfig) -> Result<Transport, PlainHttpRefused> {
    transport(
        config.listen,
        files(config).is_some(),
        config.behind_tls_proxy,
    )
}

/// The certificate chain and private key files of native TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS files when both are configured (`ServerConfig::validate` refuses one alone).
pub fn files(config: &ServerConfig) -> Option<TlsFiles> {
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    }
}

/// Why the TLS files cannot be used. Every message names the file; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS is not configured (tls_cert_file and tls_key_file)")]
    NotConfigured,
    #[error("the TLS file {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read the TLS file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("the TLS file {} is larger than {MAX_PEM_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error(
        "the TLS private key {} has mode {mode:04o}; it must not be accessible to group or others (chmod 600 {})",
        path.display(),
        path.display()
    )]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error(
        "the TLS private key {} does not match the certificate {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "the certificate {} and key {} cannot be used for TLS: {reason}",
        cert.display(),
        key.display()
    )]
    Invalid {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Reads the PEM files and builds the rustls configuration: TLS 1.2 and 1.3, ALPN `h2` and
/// `http/1.1`, no client certificates.
pub fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain_pem = read_pem(&files.cert, false)?;
    let key_pem = read_pem(&files.key, true)?;
    let no_certificate = || TlsError::NoCertificate {
        path: files.cert.clone(),
    };
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| no_certificate())?;
    if chain.is_empty() {
        return Err(no_certificate());
    }
    // The PEM parser's own messages may quote the offending line; a key file's lines stay out
    // of errors and logs.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoPrivateKey {
        path: files.key.clone(),
    })?;
    let invalid = |e: rustls::Error| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        other => TlsError::Invalid {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: other.to_string(),
        },
    };
    // The provider is named rather than taken from the process default, so that no other
    // crate's choice can change what the server negotiates.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(invalid)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a whole PEM file, bounded. A private key file is refused when group or others may
/// access it; the mode is checked on the opened handle, so the file checked is the file read.
fn read_pem(path: &Path, private: bool) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let unreadable = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TlsError::Missing {
                path: path.to_owned(),
            }
        } else {
            TlsError::Unreadable {
                path: path.to_owned(),
                source,
            }
        }
    };
    let file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(TlsError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if private && mode & 0o077 != 0 {
        return Err(TlsError::KeyTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The TLS configuration a running server accepts with, and the files it came from.
#[derive(Clone)]
pub struct LiveTls {
    files: TlsFiles,
    rustls: RustlsConfig,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl LiveTls {
    pub fn load(files: TlsFiles) -> Result<LiveTls, TlsError> {
        let config = load(&files)?;
        Ok(LiveTls {
            files,
            rustls: RustlsConfig::from_config(config),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// What the acceptor reads for each new handshake.
    pub(crate) fn rustls_config(&self) -> RustlsConfig {
        self.rustls.clone()
    }

    /// Reads the files again and, when they are good, serves every later handshake with them.
    /// Connections already open are untouched; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load(&self.files) {
            Ok(config) => {
                self.rustls.reload_from_config(config);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded; new connections use it"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the current certificate");
                Err(e)
            }
        }
    }
}

/// The redirect listener's whole surface (NET-2): `/health`, and a `301` to `https://` on
/// `tls_port` for every other path and method.
pub(crate) fn redirect_router(tls_port: u16) -> Router {
    Router::new()
        .route("/health", get(health).fallback(redirect))
        .fallback(redirect)
        .with_state(tls_port)
}

/// Answers like the main `/health` (WEB-9): load balancers probe the plain port too.
async fn health() -> &'static str {
    "ok"
}

async fn redirect(State(tls_port): State<u16>, req: Request) -> Response {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().ok().map(str::to_owned),
        // No Host header: an HTTP/2 request carries the authority in its URI instead.
        (None, _) => req.uri().authority().map(|a| a.as_str().to_owned()),
        (Some(_), Some(_)) => None,
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = host
        .and_then(|h| redirect_location(&h, tls_port, path))
        .and_then(|l| HeaderValue::from_str(&l).ok());
    match location {
        Some(l) => (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, l)]).into_response(),
        None => (StatusCode::BAD_REQUEST, "a valid Host header is required\n").into_response(),
    }
}

/// `https://<host>[:tls_port]<path>` for a request that named `host` (its port replaced), or
/// `None` when `host` is not a plain host name, IPv4 or bracketed IPv6 address with an optional
/// port.
pub fn redirect_location(host: &str, tls_port: u16, path_and_query: &str) -> Option<String> {
    let name = host_name(host)?;
    if !path_and_query.starts_with('/') {
        return None;
    }
    Some(if tls_port == 443 {
        format!("https://{name}{path_and_query}")
    } else {
        format!("https://{name}:{tls_port}{path_and_query}")
    })
}

/// The host part of a `Host` value, lowercased, port dropped; `None` unless it is strictly a
/// DNS name, an IPv4 address or a bracketed IPv6 address.
fn host_name(host: &str) -> Option<String> {
    if host.len() > 255 {
        return None;
    }
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port))
            .then(|| format!("[{ip}]"));
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if port.is_some_and(|p| !valid_port(p)) {
        return None;
    }
    let valid_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.split('.')
        .all(valid_label)
        .then(|| name.to_ascii_lowercase())
}

fn valid_port(p: &str) -> bool {
    (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn plain_http_is_refused_on_every_address_others_can_reach_unless_tls_or_a_tls_proxy() {
        let refused = |a: &str| Err(PlainHttpRefused(a.parse().expect("addr")));
        for (listen, tls, proxy, expect) in [
            ("127.0.0.1:7070", false, false, Ok(Transport::PlainLoopback)),
            ("[::1]:7070", false, false, Ok(Transport::PlainLoopback)),
            (
                "[::ffff:127.0.0.1]:7070",
                false,
                false,
                Ok(Transport::PlainLoopback),
            ),
            ("0.0.0.0:7070", false, false, refused("0.0.0.0:7070")),
            ("[::]:7070", false, false, refused("[::]:7070")),
            ("192.0.2.1:7070", false, false, refused("192.0.2.1:7070")),
            ("0.0.0.0:7070", true, false, Ok(Transport::Tls)),
            ("192.0.2.1:443", true, true, Ok(Transport::Tls)),
            ("127.0.0.1:7070", true, false, Ok(Transport::Tls)),
            ("0.0.0.0:7070", false, true, Ok(Transport::BehindTlsProxy)),
        ] {
            let addr: SocketAddr = listen.parse().expect("addr");
            assert_eq!(
                transport(addr, tls, proxy),
                expect,
                "{listen} tls={tls} proxy={proxy}"
            );
        }
    }

    #[test]
    fn the_redirect_keeps_host_path_and_query_and_swaps_in_the_tls_port() {
        for (host, port, path, expect) in [
            ("example.com", 8443, "/", "https://example.com:8443/"),
            ("Example.COM:80", 443, "/a?b=c", "https://example.com/a?b=c"),
            (
                "127.0.0.1:8080",
                8443,
                "/api/v1/requests?state=pending&x=%20",
                "https://127.0.0.1:8443/api/v1/requests?state=pending&x=%20",
            ),
            ("[::1]:80", 8443, "/", "https://[::1]:8443/"),
            ("[0:0::1]", 443, "/ui", "https://[::1]/ui"),
            (
                "gate.internal",
                7443,
                "//evil.example/",
                "https://gate.internal:7443//evil.example/",
            ),
        ] {
            assert_eq!(
                redirect_location(host, port, path).as_deref(),
                Some(expect),
                "{host}"
            );
        }
    }

    #[test]
    fn a_malformed_host_gets_no_redirect_at_all() {
        for host in [
            "",
            "evil.example\r\nSet-Cookie: a=b",
            "evil.example\n",
            "a b",
            "user@evil.example",
            "evil.example/path",
            "evil.example?x",
            "evil.example#x",
            "host:",
            "host:99999",
            "host:80:80",
            "host:8o",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[not-v6]:80",
            "-bad.example",
            "bad-.example",
            "a..b",
            "trailing.dot.",
            "under_score.example",
            "%65vil.example",
            "ex\u{e4}mple.com",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert_eq!(redirect_location(host, 8443, "/"), None, "{host:?}");
        }
        assert_eq!(redirect_location("ok.example", 8443, "*"), None);
    }

    struct Pair {
        cert: String,
        key: String,
    }

    fn pair() -> Pair {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        Pair {
            cert: c.cert.pem(),
            key: c.signing_key.serialize_pem(),
        }
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn check(files: &TlsFiles, expect: &str) {
        match (load(files), expect) {
            (Ok(config), "ok") => {
                assert_eq!(
                    config.alpn_protocols,
                    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
                );
            }
            (Ok(_), _) => panic!("{files:?} loaded; expected {expect}"),
            (Err(e), _) => {
                let msg = e.to_string();
                assert!(msg.contains(expect), "{files:?}: {msg} should say {expect}");
            }
        }
    }

    #[test]
    fn tls_files_are_refused_with_an_error_naming_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("temp");
        let d = dir.path();
        let a = pair();
        let b = pair();
        let cert = write(d, "cert.pem", &a.cert, 0o644);
        let key = write(d, "key.pem", &a.key, 0o600);
        let other_key = write(d, "other.key", &b.key, 0o600);
        let open_key = write(d, "open.key", &a.key, 0o640);
        let junk = write(d, "junk.pem", "not pem at all\n", 0o600);
        let bad_der = write(
            d,
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            0o644,
        );
        let files = |cert: &Path, key: &Path| TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        check(&files(&cert, &key), "ok");
        check(
            &files(&d.join("absent.pem"), &key),
            &format!("{} does not exist", d.join("absent.pem").display()),
        );
        check(
            &files(&cert, &d.join("absent.key")),
            &format!("{} does not exist", d.join("absent.key").display()),
        );
        check(&files(d, &key), "is not a regular file");
        check(
            &files(&junk, &key),
            &format!("{} holds no PEM certificate", junk.display()),
        );
        check(
            &files(&cert, &junk),
            &format!("{} holds no PEM private key", junk.display()),
        );
        // A key in the certificate file is not a certificate, and the reverse.
        check(&files(&key, &key), "holds no PEM certificate");
        check(
            &files(&cert, &other_key),
            &format!("{} does not match the certificate", other_key.display()),
        );
        check(
            &files(&cert, &open_key),
            &format!("{} has mode 0640", open_key.display()),
        );
        check(&files(&bad_der, &key), "cannot be used for TLS");
        // The certificate is public: its mode is not the key's business.
        let open_cert = write(d, "open-cert.pem", &a.cert, 0o644);
        check(&files(&open_cert, &key), "ok");
    }

    #[test]
    fn a_failed_reload_keeps_the_current_configuration_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().expect("temp");
        let d = dir.path();
        let a = pair();
        let files = TlsFiles {
            cert: write(d, "cert.pem", &a.cert, 0o644),
            key: write(d, "key.pem", &a.key, 0o600),
        };
        let live = LiveTls::load(files.clone()).expect("load");
        let before = live.rustls_config().get_inner();
        // A new certificate with the old key: the pair no longer matches.
        let b = pair();
        write(d, "cert.pem", &b.cert, 0o644);
        assert!(matches!(live.reload(), Err(TlsError::KeyMismatch { .. })));
        assert!(Arc::ptr_eq(&before, &live.rustls_config().get_inner()));
        write(d, "key.pem", &b.key, 0o600);
        live.reload().expect("reload");
        assert!(!Arc::ptr_eq(&before, &live.rustls_config().get_inner()));
    }
}
