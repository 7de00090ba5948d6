//! Helpers both bench binaries use (`core_path` and `soak` include this file as a module):
//! process memory from /proc, free loopback ports, TOML quoting, private files, and URLs
//! made safe for messages.

use std::path::Path;

use anyhow::Context as _;

/// Resident memory from /proc/PID/status (`VmRSS:` now, `VmHWM:` the peak), in MiB.
pub(crate) fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `s` as a quoted TOML string.
pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A path as a quoted TOML string (temporary paths are UTF-8).
pub(crate) fn toml_path(p: &Path) -> anyhow::Result<String> {
    Ok(toml_str(p.to_str().context("a UTF-8 temp path")?))
}

/// Writes a new file readable only by its owner (keys, passphrases, tokens).
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable URL)".into(),
    }
}

/// The PostgreSQL the benches run against, unless `PORTCULLIS_BENCH_PG_URL` says otherwise.
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Creates a schema named `{prefix}_{12 random hex digits}` on the bench's PostgreSQL and runs
/// `setup(schema)` in it; returns the URL and the schema's name. Each run has its own schema,
/// so runs never see each other's rows.
pub(crate) async fn create_pg_schema(
    prefix: &str,
    setup: impl FnOnce(&str) -> String,
) -> anyhow::Result<(String, String)> {
    use sqlx::Connection as _;
    let url = std::env::var("PORTCULLIS_BENCH_PG_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_owned());
    let schema = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut conn = sqlx::postgres::PgConnection::connect(&url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(&url)))?;
    let sql = format!("CREATE SCHEMA {schema};\n{}", setup(&schema));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating the schema {schema}"))?;
    conn.close().await?;
    Ok((url, schema))
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
