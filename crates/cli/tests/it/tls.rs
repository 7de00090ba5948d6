//! NET-1 and NET-2 over real sockets: native TLS with a certificate made at test time by a
//! test CA, reloads (in process and by SIGHUP to a real `portcullis server`) that reach new
//! connections only, the plain-HTTP redirect listener, and the refusal of plain HTTP on an
//! address other hosts can reach.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portcullis_client::Client;
use portcullis_core::Role;
use portcullis_proto::api::CreateToken;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::harness::{TestApp, bin};
use crate::two_process::{Running, free_port};

/// A CA made for one test; the client side trusts it and nothing else.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pem: String,
}

/// A server certificate for `localhost` and `127.0.0.1`, with its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(
            params,
            rcgen::KeyPair::generate().expect("CA key"),
        )
        .expect("CA");
        let pem = issuer.pem();
        Ca { issuer, pem }
    }

    fn leaf(&self) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params");
        let issuer: &rcgen::Issuer<'_, rcgen::KeyPair> = &self.issuer;
        let cert = params.signed_by(&key, issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Writes `leaf` where the server reads it: the key owner-only, as the server demands.
fn install(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
    std::fs::write(&key, &leaf.key_pem).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (cert, key)
}

async fn spawn_tls(
    dir: &Path,
    leaf: &Leaf,
    configure: impl FnOnce(&mut portcullis::devstack::DevOptions),
) -> TestApp {
    let (cert, key) = install(dir, leaf);
    TestApp::spawn_with(|o| {
        o.server.tls_cert_file = Some(cert);
        o.server.tls_key_file = Some(key);
        // The in-process agent does not know the test CA, and nothing here executes.
        o.start_agent = false;
        configure(o);
    })
    .await
}

/// A real rustls client trusting only `ca`, speaking HTTP/1.1.
fn tls_config(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One TLS connection, kept open across reloads.
struct Conn(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Conn {
    fn open(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Conn {
        Conn::handshake(addr, config).expect("TLS handshake")
    }

    /// A connection whose TLS handshake completed, or the error that ended it.
    fn handshake(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let name = ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(config.clone(), name).expect("client");
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Conn(stream))
    }

    /// The certificate the server presented on this connection.
    fn peer(&self) -> Vec<u8> {
        self.0.conn.peer_certificates().expect("certificates")[0].to_vec()
    }

    /// `GET /health` on this same connection: the status line and the body.
    fn health(&mut self) -> (String, String) {
        self.0
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let header_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.0.read(&mut chunk).expect("read");
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("content-length");
        while buf.len() < header_end + length {
            let n = self.0.read(&mut chunk).expect("read");
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
        }
        let status = head.lines().next().unwrap_or_default().to_owned();
        let body = String::from_utf8_lossy(&buf[header_end..header_end + length]).into_owned();
        (status, body)
    }
}

fn http_client(ca: &Ca) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("CA")])
        .tls_info(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// NET-1: with both files set the API is served over TLS only. A client that trusts the CA gets
/// `/health` and an authenticated call; one that does not, and one speaking plain HTTP to the
/// same port, get nothing.
#[tokio::test(flavor = "multi_thread")]
async fn net1_native_tls_serves_the_api_to_a_client_that_trusts_the_certificate() {
    let dir = tempfile::tempdir().expect("temp");
    let ca = Ca::new();
    let leaf = ca.leaf();
    let app = spawn_tls(dir.path(), &leaf, |_| {}).await;
    let addr = app.stack.server.addr;
    assert_eq!(app.url(), format!("https://{addr}"));

    let http = http_client(&ca);
    let res = http
        .get(format!("{}/health", app.url()))
        .send()
        .await
        .expect("health over TLS");
    assert_eq!(res.status(), 200);
    let info = res
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    assert_eq!(info.peer_certificate(), Some(leaf.der.as_slice()));
    assert_eq!(res.text().await.expect("body"), "ok");

    let admin = Client::with_ca(app.url(), Some(&app.stack.admin_token), ca.pem.as_bytes())
        .expect("client");
    let me = admin
        .whoami()
        .await
        .expect("an authenticated call over TLS");
    assert_eq!(me.role, Role::Admin);
    let created = admin
        .create_token(&CreateToken {
            name: "over-tls".into(),
            role: Role::Viewer,
            ttl_seconds: 600,
            environments: None,
        })
        .await
        .expect("token created over TLS");
    let viewer =
        Client::with_ca(app.url(), Some(&created.token), ca.pem.as_bytes()).expect("client");
    assert_eq!(viewer.whoami().await.expect("whoami").role, Role::Viewer);
    // Without the token the API still refuses: TLS is transport, not authentication.
    let anonymous = http
        .get(format!("{}/api/v1/me", app.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(anonymous.status(), 401);

    // The system's roots do not include the test CA: verification is really in play.
    let untrusting = Client::new(app.url(), Some(&app.stack.admin_token)).expect("client");
    assert!(untrusting.whoami().await.is_err());
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{addr}/health"))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP to the TLS port gets no answer: {plain:?}"
    );
    app.stop().await;
}

/// NET-1: a reload reaches connections opened after it; a connection opened before it keeps
/// working with the certificate it was opened with; a reload that fails keeps the current one.
#[tokio::test(flavor = "multi_thread")]
async fn net1_a_reload_reaches_new_connections_only_and_a_bad_one_keeps_the_certificate() {
    let dir = tempfile::tempdir().expect("temp");
    let ca = Ca::new();
    let first = ca.leaf();
    let app = spawn_tls(dir.path(), &first, |_| {}).await;
    let addr = app.stack.server.addr;
    let client = tls_config(&ca);

    let mut before = Conn::open(addr, &client);
    assert_eq!(before.peer(), first.der);
    assert_eq!(before.health(), ("HTTP/1.1 200 OK".into(), "ok".into()));

    let second = ca.leaf();
    install(dir.path(), &second);
    app.stack.server.reload_tls().expect("reload");
    let mut after = Conn::open(addr, &client);
    assert_eq!(
        after.peer(),
        second.der,
        "a new connection sees the new one"
    );
    assert_eq!(after.health().0, "HTTP/1.1 200 OK");
    assert_eq!(
        before.health(),
        ("HTTP/1.1 200 OK".into(), "ok".into()),
        "the connection opened before the reload still works"
    );
    assert_eq!(before.peer(), first.der);

    // A key that does not belong to the certificate: refused, and nothing changes.
    let third = ca.leaf();
    install(
        dir.path(),
        &Leaf {
            cert_pem: third.cert_pem.clone(),
            key_pem: second.key_pem.clone(),
            der: third.der.clone(),
        },
    );
    let err = app
        .stack
        .server
        .reload_tls()
        .expect_err("a mismatched pair is refused");
    assert!(err.to_string().contains("does not match"), "{err}");
    assert_eq!(Conn::open(addr, &client).peer(), second.der);
    assert_eq!(after.health().0, "HTTP/1.1 200 OK");
    app.stop().await;
}

/// Lines of a child's stderr, read on a thread so that the pipe never fills.
/// The connection cap holds on the HTTPS listener too, and before the TLS handshake: a
/// connection past it is closed with no server hello, so it costs the server no handshake
/// (`server/src/listener.rs`).
#[tokio::test]
async fn a_connection_past_the_cap_is_closed_before_its_tls_handshake() {
    let dir = tempfile::tempdir().expect("temp");
    let ca = Ca::new();
    let app = spawn_tls(dir.path(), &ca.leaf(), |o| {
        o.server.web.max_connections = 4;
        o.server.web.max_connections_per_address = 4;
    })
    .await;
    let addr = app.stack.server.addr;
    let config = tls_config(&ca);
    let (held, refused) = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..5 {
            match Conn::handshake(addr, &config) {
                Ok(mut conn) => {
                    assert_eq!(conn.health().0, "HTTP/1.1 200 OK");
                    held.push(conn);
                }
                Err(e) => return (held, Some(e)),
            }
        }
        (held, None)
    })
    .await
    .expect("connections");
    let refused = refused.expect("a fifth TLS connection was served under a cap of 4");
    assert!(held.len() <= 4, "{} served", held.len());
    // Closed before a byte of the handshake came back: rustls reads end of stream.
    assert!(
        matches!(
            refused.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{refused:?}"
    );
    app.stop().await;
}

fn lines(stderr: std::process::ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the server to log a line containing `needle`.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("the server never logged {needle:?}: {e}"),
        }
    }
}

fn hangup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// NET-1 with the real binary: SIGHUP makes `portcullis server` read its certificate again
/// without a restart; an open connection survives, and a bad file on a later SIGHUP leaves
/// the running certificate in place and the server up.
#[test]
fn net1_sighup_reloads_the_certificate_of_a_running_portcullis_server() {
    let dir = tempfile::tempdir().expect("temp");
    let ca = Ca::new();
    let first = ca.leaf();
    let (cert, key) = install(dir.path(), &first);
    let port = free_port();
    let toml = dir.path().join("server.toml");
    std::fs::write(
        &toml,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            dir.path().join("data").display(),
            cert.display(),
            key.display()
        ),
    )
    .expect("config");
    let mut child = bin()
        .args(["server", "--config"])
        .arg(&toml)
        .env(
            "PORTCULLIS_MASTER_KEY",
            portcullis_identity::MasterKey::generate(),
        )
        .env("PORTCULLIS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let log = lines(child.stderr.take().expect("stderr"));
    let server = Running(child);
    let pid = server.0.id();
    wait_line(&log, "portcullis server listening");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let client = tls_config(&ca);
    let mut before = Conn::open(addr, &client);
    assert_eq!(before.peer(), first.der);
    assert_eq!(before.health().1, "ok");

    let second = ca.leaf();
    install(dir.path(), &second);
    hangup(pid);
    wait_line(&log, "TLS certificate reloaded");
    assert_eq!(Conn::open(addr, &client).peer(), second.der);
    assert_eq!(before.health().1, "ok", "the open connection survives");

    // A key file others may read is refused on reload just as at start.
    {
        use std::os::unix::fs::PermissionsExt;
        let third = ca.leaf();
        install(dir.path(), &third);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    hangup(pid);
    let failed = wait_line(&log, "TLS reload failed");
    assert!(failed.contains("0644"), "{failed}");
    assert_eq!(Conn::open(addr, &client).peer(), second.der);
    let mut server = server;
    assert!(
        server.0.try_wait().expect("status").is_none(),
        "the server is still running"
    );
}

/// Sends `request` as is over plain TCP and returns the status code, the `Location` header
/// and the body.
fn raw(addr: SocketAddr, request: &str) -> (u16, Option<String>, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_owned())
    });
    (status, location, body.to_owned())
}

/// NET-2: the plain-HTTP listener answers `/health` itself and `301`s everything else to the
/// same path and query on the TLS port, carries no API, and refuses a malformed `Host` with a
/// `400` rather than redirecting to it.
#[tokio::test(flavor = "multi_thread")]
async fn net2_the_redirect_listener_answers_health_and_sends_everything_else_to_https() {
    let dir = tempfile::tempdir().expect("temp");
    let ca = Ca::new();
    let leaf = ca.leaf();
    let app = spawn_tls(dir.path(), &leaf, |o| {
        o.server.http_redirect_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let tls_port = app.stack.server.addr.port();
    let plain = app.stack.server.redirect_addr.expect("redirect listener");
    assert_ne!(plain.port(), tls_port);

    let get = |path: &str, host: &str| {
        raw(
            plain,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    let (status, location, body) = get("/health", "gate.example:8080");
    assert_eq!((status, location, body.as_str()), (200, None, "ok"));
    for (path, host, expect) in [
        (
            "/",
            "gate.example:8080",
            format!("https://gate.example:{tls_port}/"),
        ),
        (
            "/api/v1/requests?state=pending&limit=5",
            "Gate.Example",
            format!("https://gate.example:{tls_port}/api/v1/requests?state=pending&limit=5"),
        ),
        (
            "/ui/requests/42?tab=audit",
            "127.0.0.1:80",
            format!("https://127.0.0.1:{tls_port}/ui/requests/42?tab=audit"),
        ),
        (
            "/health/../api/v1/me",
            "[::1]:8080",
            format!("https://[::1]:{tls_port}/health/../api/v1/me"),
        ),
    ] {
        assert_eq!(
            get(path, host),
            (301, Some(expect), String::new()),
            "{path}"
        );
    }
    // No API on the plain port, whatever the method or credential.
    for request in [
        "POST /api/v1/requests HTTP/1.1\r\nHost: gate.example\r\nAuthorization: Bearer pct_x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        "POST /health HTTP/1.1\r\nHost: gate.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "DELETE /api/v1/tokens/x HTTP/1.1\r\nHost: gate.example\r\nConnection: close\r\n\r\n",
    ] {
        let (status, location, _) = raw(plain, request);
        assert_eq!(status, 301, "{request}");
        assert!(
            location.is_some_and(|l| l.starts_with("https://gate.example:")),
            "{request}"
        );
    }
    // A Host that is not a host is never echoed into a redirect.
    for request in [
        "GET / HTTP/1.1\r\nHost: evil.example/phish\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@evil.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: evil.example:99999\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let (status, location, _) = raw(plain, request);
        assert_eq!((status, location), (400, None), "{request:?}");
    }
    // Following a redirect lands on the TLS listener.
    let (_, location, _) = get("/ready", &format!("localhost:{}", plain.port()));
    let location = location.expect("location");
    assert_eq!(location, format!("https://localhost:{tls_port}/ready"));
    let res = http_client(&ca)
        .get(&location)
        .send()
        .await
        .expect("follow");
    assert_eq!(res.status(), 200);
    app.stop().await;
}

/// NET-2: a redirect listener needs native TLS to redirect to; a server without it refuses
/// to start rather than redirect to a port that does not speak HTTPS.
#[tokio::test(flavor = "multi_thread")]
async fn net2_a_redirect_listener_without_native_tls_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp");
    let mut opts = portcullis::devstack::DevOptions::new(
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().join("data"),
    );
    opts.server.http_redirect_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let err = match portcullis::devstack::DevStack::start(opts).await {
        Ok(stack) => {
            stack.stop().await;
            panic!("started with a redirect listener and no TLS");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("NET-2") && err.contains("native TLS"), "{err}");
}

/// NET-1 at the library boundary: `Server::start` checks the address it was actually given,
/// so a caller that skipped the CLI's check still cannot serve plain HTTP to the network. It
/// refuses before touching any state.
#[tokio::test(flavor = "multi_thread")]
async fn net1_server_start_refuses_a_plain_listener_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().expect("temp");
    let data = dir.path().join("data");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let config = portcullis_server::ServerConfig {
        listen: listener.local_addr().expect("addr"),
        data_dir: data.clone(),
        ..Default::default()
    };
    let secrets = portcullis_server::ServerSecrets {
        master_key: portcullis_identity::MasterKey::parse(
            &portcullis_identity::MasterKey::generate(),
        )
        .expect("key"),
    };
    let policy = portcullis_core::Policy::new(Vec::new()).expect("policy");
    let err = match portcullis_server::Server::start(config, policy, secrets, listener).await {
        Ok(server) => {
            server.stop().await;
            panic!("served plain HTTP on 0.0.0.0");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("refusing to serve plain HTTP") && err.contains("NET-1"),
        "{err}"
    );
    assert!(!data.exists(), "nothing was created");
}

/// NET-1 through the binary: `portcullis server` on a non-loopback address without TLS or
/// `behind_tls_proxy` exits 2 naming the control, before writing anything; each of the two
/// remedies is named.
#[test]
fn net1_portcullis_server_refuses_plain_http_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().expect("temp");
    let data = dir.path().join("data");
    let listen = format!("0.0.0.0:{}", free_port());
    let child = bin()
        .args(["server", "--listen", &listen, "--data"])
        .arg(&data)
        .env(
            "PORTCULLIS_MASTER_KEY",
            portcullis_identity::MasterKey::generate(),
        )
        .env_remove("PORTCULLIS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Waited for on a thread so that a server which wrongly starts fails the test instead of
    // hanging it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            panic!("portcullis server kept running on {listen}");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("refusing to serve plain HTTP on {listen} (NET-1)")),
        "{stderr}"
    );
    assert!(
        stderr.contains("tls_cert_file") && stderr.contains("behind_tls_proxy"),
        "{stderr}"
    );
    assert!(!data.exists(), "nothing was written");
}
