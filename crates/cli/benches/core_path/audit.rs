//! The audit log: durable appends through `AuditTx` with concurrent writers, and the real
//! `portcullis audit verify` over a state store of 1,000,000 chained events.

use std::process::Command;

use portcullis_server::audit::{
    Action, Audit, AuditTx, Checkpoint, CheckpointFile, Context as AuditContext, Event, Head,
    Outcome, RowFields, hash_row,
};
use portcullis_server::store::{Durability, Store};
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection as _};

use super::*;

pub(crate) struct Appends {
    pub(crate) writers: usize,
    /// Transactions committed inside the window (one event each).
    pub(crate) committed: u64,
    pub(crate) rate: f64,
    /// begin → append → commit, per transaction, inside the window.
    pub(crate) latency: Stats,
    pub(crate) errors: u64,
    pub(crate) error_samples: Vec<String>,
    /// Every transaction committed in the run (warm-up and tail included), and what a full
    /// check of the chain found afterwards: the number of events and the first bad sequence.
    pub(crate) total_committed: u64,
    pub(crate) chain_events: u64,
    pub(crate) chain_bad: Option<String>,
}

/// `writers` tasks, each looping `AuditTx::begin` → `append` one event → `commit` on a fresh
/// state store at the default durability, for `APPEND_WARMUP` + `APPEND_WINDOW`.
pub(crate) async fn appends(writers: usize) -> anyhow::Result<Appends> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let data = dir.path().join("data");
    portcullis_server::create_private_dir(&data)?;
    let store = Store::open_with(&data, Durability::default()).await?;
    let audit = Audit::open(&store, &CheckpointFile::in_dir(&data)).await?;
    let start = Instant::now();
    let window_start = start + APPEND_WARMUP;
    let window_end = window_start + APPEND_WINDOW;
    let errors = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let samples: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let (store, audit) = (store.clone(), audit.clone());
        let (errors, total, samples) = (errors.clone(), total.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let ctx = AuditContext {
                correlation_id: format!("bench-writer-{w}"),
                client_addr: "127.0.0.1".into(),
            };
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < window_end {
                let t = Instant::now();
                let result = append_one(&store, &audit, &ctx, w, n).await;
                let done = Instant::now();
                n += 1;
                match result {
                    Ok(()) => {
                        total.fetch_add(1, Ordering::Relaxed);
                        if done >= window_start && done <= window_end {
                            lat.push(done - t);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        push_sample(&samples, e.to_string());
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let committed = lat.len() as u64;
    // The whole chain, checked as `audit verify` checks it (no checkpoint is written here):
    // every committed event is present, dense, linked and unaltered.
    let report = portcullis_server::audit::verify(store.reader(), None).await?;
    store.close().await;
    let error_samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Appends {
        writers,
        committed,
        rate: committed as f64 / APPEND_WINDOW.as_secs_f64(),
        latency: Stats::of(lat),
        errors: errors.load(Ordering::Relaxed),
        error_samples,
        total_committed: total.load(Ordering::Relaxed),
        chain_events: report.events,
        chain_bad: report
            .first_bad_seq
            .map(|s| format!("seq {s}: {}", report.problem.unwrap_or_default())),
    })
}

async fn append_one(
    store: &Store,
    audit: &Arc<Audit>,
    ctx: &AuditContext,
    writer: usize,
    n: u64,
) -> anyhow::Result<()> {
    let mut tx = AuditTx::begin(store, audit).await?;
    tx.append(
        ctx,
        Event {
            actor: "token:bench".into(),
            action: Action::RequestCreated,
            target: format!("request:{writer:08x}-{n:012x}"),
            outcome: Outcome::Success,
            details: serde_json::json!({
                "connection": "pg",
                "environment": "development",
                "class": "read",
                "decision": "auto_approve",
                "tables": ["customers"],
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) struct VerifyRun {
    pub(crate) events: u64,
    pub(crate) build: Duration,
    pub(crate) state_bytes: u64,
    pub(crate) wall: Duration,
}

/// Builds a state store holding `AUDIT_VERIFY_EVENTS` valid chained events and a signed
/// checkpoint of its head, then times the release binary's `portcullis audit verify --data`
/// on it as a separate process.
pub(crate) async fn verify_million(bin: &Path) -> anyhow::Result<VerifyRun> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let data = dir.path().join("data");
    let t = Instant::now();
    let head = build_chain(&data, AUDIT_VERIFY_EVENTS).await?;
    let build = t.elapsed();
    let state_bytes = std::fs::metadata(Store::state_file(&data))?.len();

    let t = Instant::now();
    let out = Command::new(bin)
        .args(["audit", "verify", "--json", "--data"])
        .arg(&data)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .context("running portcullis audit verify")?;
    let wall = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "portcullis audit verify failed ({}): {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let view: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("audit verify printed {stdout:?}"))?;
    let events = view["events"].as_u64().unwrap_or(0);
    if view["ok"] != serde_json::Value::Bool(true)
        || events != AUDIT_VERIFY_EVENTS
        || view["head_seq"].as_i64() != Some(head.seq)
    {
        bail!("audit verify did not accept the chain: {stdout}");
    }
    Ok(VerifyRun {
        events,
        build,
        state_bytes,
        wall,
    })
}

/// A fresh data directory whose state store holds `events` chained audit events and whose
/// signed checkpoint names the head, exactly as a server leaves them. The rows are hashed
/// with the public `hash_row` and inserted many per statement on a connection without a
/// journal (a bulk load); the store is put back in WAL mode and opened through `Store` and
/// `Audit::open` (which checks the checkpoint) before it is handed over.
async fn build_chain(data: &Path, events: u64) -> anyhow::Result<Head> {
    portcullis_server::create_private_dir(data)?;
    let key = portcullis_server::keys::load_or_create(data)?;
    let store = Store::open_with(data, Durability::default()).await?;
    store.close().await;

    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(Store::state_file(data))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Off)
        .synchronous(SqliteSynchronous::Off);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let columns = "(seq, at, actor, action, target, outcome, correlation_id, client_addr, details, prev_hash, hash)";
    let one = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    let full_sql = format!(
        "INSERT INTO audit_events {columns} VALUES {}",
        vec![one; BULK_ROWS].join(", ")
    );

    // Four events per request, as the life of an auto-approved read records them.
    const ACTIONS: [&str; 4] = [
        "request.created",
        "request.dispatched",
        "request.running",
        "request.finished",
    ];
    let base_ms = portcullis_server::clock::now_ms() - events as i64;
    let mut head = Head {
        seq: 0,
        hash: [0; 32],
    };
    let mut tx = conn.begin().await?;
    let mut rows: Vec<BulkRow> = Vec::with_capacity(BULK_ROWS);
    let mut seq = 0i64;
    while (seq as u64) < events {
        rows.clear();
        while rows.len() < BULK_ROWS && (seq as u64) < events {
            seq += 1;
            let request = (seq - 1) / 4;
            let action = ACTIONS[((seq - 1) % 4) as usize];
            let mut row = BulkRow {
                seq,
                at: portcullis_server::clock::format_ms(base_ms + seq),
                actor: format!("token:bench-{}", request % 50),
                action,
                target: format!("request:00000000-0000-4000-8000-{request:012x}"),
                correlation_id: format!(
                    "{:032x}",
                    (request as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ),
                details: format!(
                    r#"{{"class":"read","connection":"pg","decision":"auto_approve","environment":"development","rule":null,"statement_sha256":"{:064x}","steps":[],"tables":["customers"]}}"#,
                    request
                ),
                prev_hash: head.hash,
                hash: [0; 32],
            };
            row.hash = hash_row(&RowFields {
                seq,
                prev_hash: &row.prev_hash,
                at: &row.at,
                actor: &row.actor,
                action: row.action,
                target: &row.target,
                outcome: "success",
                correlation_id: &row.correlation_id,
                client_addr: "127.0.0.1",
                details: &row.details,
            });
            head = Head {
                seq,
                hash: row.hash,
            };
            rows.push(row);
        }
        let sql = if rows.len() == BULK_ROWS {
            full_sql.clone()
        } else {
            format!(
                "INSERT INTO audit_events {columns} VALUES {}",
                vec![one; rows.len()].join(", ")
            )
        };
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for r in &rows {
            q = q
                .bind(r.seq)
                .bind(r.at.as_str())
                .bind(r.actor.as_str())
                .bind(r.action)
                .bind(r.target.as_str())
                .bind("success")
                .bind(r.correlation_id.as_str())
                .bind("127.0.0.1")
                .bind(r.details.as_str())
                .bind(&r.prev_hash[..])
                .bind(&r.hash[..]);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut conn)
        .await?;
    conn.close().await?;

    let checkpoint = CheckpointFile::in_dir(data);
    checkpoint.write(&Checkpoint::sign(head, &key))?;
    // As the server would: open the store and check the checkpoint against it.
    let store = Store::open_with(data, Durability::default()).await?;
    let audit = Audit::open(&store, &checkpoint).await?;
    if audit.head() != head {
        bail!(
            "the built chain's head is seq {}, expected {}",
            audit.head().seq,
            head.seq
        );
    }
    store.close().await;
    Ok(head)
}

const BULK_ROWS: usize = 500;

struct BulkRow {
    seq: i64,
    at: String,
    actor: String,
    action: &'static str,
    target: String,
    correlation_id: String,
    details: String,
    prev_hash: [u8; 32],
    hash: [u8; 32],
}
