//! TLS to the data stores follows the URL (`sslmode` for PostgreSQL, `ssl-mode` for MySQL and
//! MariaDB), and a required mode fails closed: no silent fall-back to plaintext, and no
//! credential in the error. The PostgreSQL on 127.0.0.1 serves TLS with a self-signed
//! certificate; the MariaDB does not serve TLS at all.

use crate::common::*;
use portcullis_agent::exec::{MySqlTarget, PgTarget};
use portcullis_core::{ConnectionKind, OperationClass};
use serde_json::json;

const SESSION_TLS: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

async fn pg_session_tls(url: &str) -> Result<serde_json::Value, portcullis_proto::api::ExecError> {
    let t = PgTarget::open(&target(
        "tls",
        ConnectionKind::Postgres,
        &[(OperationClass::Read, url)],
    ))
    .expect("target");
    let result = t
        .run_unchecked(
            OperationClass::Read,
            SESSION_TLS,
            limits(10, 1 << 20, 5_000),
        )
        .await;
    t.close().await;
    result.map(|r| json!(r.rows))
}

#[tokio::test]
pub(crate) async fn pg_sslmode_require_runs_over_tls_and_disable_does_not() {
    let base = format!("postgres://postgres:{SECRET}@127.0.0.1:5432/test");
    assert_eq!(
        pg_session_tls(&format!("{base}?sslmode=require"))
            .await
            .expect("tls"),
        json!([[true]]),
        "sslmode=require: the session is encrypted"
    );
    assert_eq!(
        pg_session_tls(&format!("{base}?sslmode=disable"))
            .await
            .expect("plain"),
        json!([[false]])
    );
}

#[tokio::test]
pub(crate) async fn pg_sslmode_verify_full_refuses_an_untrusted_certificate() {
    let url = format!("postgres://postgres:{SECRET}@127.0.0.1:5432/test?sslmode=verify-full");
    let e = pg_session_tls(&url)
        .await
        .expect_err("untrusted certificate");
    assert_eq!(e.code, "store_unavailable", "{e:?}");
    assert!(!e.message.contains(SECRET), "{e:?}");
    assert!(
        !e.message.contains("127.0.0.1"),
        "no address in errors: {e:?}"
    );
}

#[tokio::test]
pub(crate) async fn mysql_ssl_mode_required_fails_closed_without_tls() {
    let url = format!("mysql://root:{SECRET}@127.0.0.1:3306/test?ssl-mode=required");
    let t = MySqlTarget::open(&target(
        "tls",
        ConnectionKind::Mysql,
        &[(OperationClass::Read, &url)],
    ))
    .expect("target");
    let e = failed(
        t.run_unchecked(OperationClass::Read, "SELECT 1", limits(10, 1 << 20, 5_000))
            .await,
    );
    t.close().await;
    assert_eq!(e.code, "store_unavailable", "{e:?}");
    assert!(!e.message.contains(SECRET), "{e:?}");
}
