//! SEC-4: credentials never leak.

use crate::common::*;
use OperationClass::Read;
use portcullis_core::{ConnectionKind, OperationClass};
use portcullis_proto::agent::JobReport;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Every log line of this test binary, from every thread. A process-wide subscriber, not a
/// scoped one: a scoped subscriber misses events whose call site another thread registered
/// first, so it would make the log check below flaky. Other tests' lines land here too,
/// which only widens the check.
fn captured_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
    .clone()
}

/// SEC-4: a credential's password appears in no execution error, no `Debug` or serialized
/// form of the configuration, and no log line, whether the store is down (closed port) or
/// refuses the credential.
#[tokio::test]
pub(crate) async fn sec4_passwords_never_appear_in_errors_debug_output_or_logs() {
    let logs = captured_logs();

    let cases = [
        (
            ConnectionKind::Postgres,
            format!("postgres://postgres:{SECRET}@127.0.0.1:1/test"),
            "SELECT 1",
            "Connection refused",
        ),
        (
            ConnectionKind::Mysql,
            format!("mysql://root:{SECRET}@127.0.0.1:1/test"),
            "SELECT 1",
            "Connection refused",
        ),
        (
            ConnectionKind::Mysql,
            format!("mariadb://root:{SECRET}@127.0.0.1:3306/test"),
            "SELECT 1",
            "Access denied",
        ),
        (
            ConnectionKind::Redis,
            format!("redis://:{SECRET}@127.0.0.1:1/0"),
            "GET k",
            "refused",
        ),
        (
            ConnectionKind::Redis,
            format!("redis://nobody:{SECRET}@127.0.0.1:6379/0"),
            "GET k",
            "",
        ),
    ];
    for (kind, url, statement, reason) in cases {
        let config = target("store", kind, &[(Read, url.as_str())]);
        let debug = format!("{config:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("***"), "{debug}");
        let serialized = serde_json::to_string(&config).expect("serialize");
        assert!(!serialized.contains(SECRET), "{serialized}");
        let mut rig = Rig::new(config).await;
        // A store that refuses connections is retried until the signed timeout.
        rig.timeout_ms = 1_000;
        assert!(!format!("{:?}", rig.agent).contains(SECRET));
        let job = rig.job(statement, Read, 10);
        let report = tokio::time::timeout(Duration::from_secs(30), rig.agent.process(&job))
            .await
            .expect("a down store fails within the timeout");
        let error = match report {
            JobReport::Failed { error } => error,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(error.code, "store_unavailable", "{error:?}");
        assert!(error.message.contains(reason), "{error:?}");
        assert!(!error.message.contains(SECRET), "{error:?}");
        assert!(
            !error.message.contains("127.0.0.1:"),
            "no address: {error:?}"
        );
    }
    let logs = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8");
    assert!(logs.contains("data store unavailable"), "{logs}");
    assert!(
        logs.contains("postgres://postgres:***@127.0.0.1:1/test"),
        "{logs}"
    );
    assert!(!logs.contains(SECRET), "{logs}");
}
