//! The hash-chained audit log (AUD-1..3).
//!
//! Every security-relevant event is appended inside the same transaction as the state change
//! it records ([`AuditTx`]): if the append fails, the change is rolled back (AUD-2). Each row's
//! hash is SHA-256 over a length-prefixed, domain-separated encoding of its sequence number,
//! the previous row's hash and every column, so a modified, deleted or reordered row breaks
//! the chain. Truncation followed by new appends is caught by a signed checkpoint of the head,
//! written beside the state file after every commit and checked at start and by `verify`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{broadcast, watch};

use crate::clock;
use crate::events::LiveEvent;
use crate::store::{Store, Tx};

pub const CHECKPOINT_FILE: &str = "audit.checkpoint";
/// The shortest time between two checkpoint writes; the final one is written at shutdown.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
const HASH_DOMAIN: &[u8] = b"portcullis/audit-event/v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"portcullis/audit-checkpoint/v1\0";
/// Committed events kept for live subscribers that fall behind; beyond it they lag (WEB-8).
const LIVE_CAPACITY: usize = 1024;

macro_rules! actions {
    ($($variant:ident => $text:literal,)+) => {
        /// What happened. A closed set: audit consumers match on these strings.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Action { $($variant),+ }
        impl Action {
            pub fn as_str(self) -> &'static str { match self { $(Action::$variant => $text),+ } }
        }
    };
}

actions! {
    ServerStarted => "server.started",
    AuthFailed => "auth.failed",
    AccessDenied => "access.denied",
    RequestDenied => "request.denied",
    RequestCreated => "request.created",
    RequestApproved => "request.approved",
    RequestDispatched => "request.dispatched",
    ExplainDispatched => "request.explain_dispatched",
    RequestExplained => "request.explained",
    RequestRunning => "request.running",
    RequestFinished => "request.finished",
    RequestCancelled => "request.cancelled",
    RequestExpired => "request.expired",
    RequestLost => "request.lost",
    TokenCreated => "token.created",
    TokenRevoked => "token.revoked",
    AgentCreated => "agent.created",
    AgentRevoked => "agent.revoked",
    UserCreated => "user.created",
    BootstrapCompleted => "bootstrap.completed",
    BootstrapFailed => "bootstrap.failed",
    LoginSucceeded => "login.succeeded",
    LoginFailed => "login.failed",
    LoginLocked => "login.locked",
    Logout => "logout",
    OriginRefused => "origin.refused",
    UserInvited => "user.invited",
    UserEnrolled => "user.enrolled",
    EnrolFailed => "enrol.failed",
    UserUpdated => "user.updated",
    UserSuspended => "user.suspended",
    UserUnsuspended => "user.unsuspended",
    UserMfaReset => "user.mfa_reset",
    AdminCapExceeded => "admin_cap.exceeded",
    StepUpSucceeded => "step_up.succeeded",
    StepUpFailed => "step_up.failed",
    PasswordChanged => "password.changed",
    PasswordChangeFailed => "password.change_failed",
    VaultRotated => "vault.rotated",
    ApprovalRecorded => "request.approval_recorded",
    ApprovalRefused => "request.approval_refused",
    RequestRejected => "request.rejected",
    AuditVerifyFailed => "audit.verify_failed",
    Lockdown => "lockdown",
    LockdownLifted => "lockdown.lifted",
    BreakGlass => "break_glass",
    BreakGlassUsed => "break_glass.used",
    BreakGlassReviewed => "break_glass.reviewed",
    KeyRotated => "key.rotated",
    RequestPreviewed => "request.previewed",
    PreviewDispatched => "request.preview_dispatched",
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// Who asked and from where: the correlation id and client address of the HTTP request (or
/// of the background task) that caused the event.
#[derive(Debug, Clone)]
pub struct Context {
    pub correlation_id: String,
    pub client_addr: String,
}

impl Context {
    pub fn system(task: &str) -> Context {
        Context {
            correlation_id: format!("system:{task}"),
            client_addr: "-".to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub actor: String,
    pub action: Action,
    pub target: String,
    pub outcome: Outcome,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: [u8; 32],
}

impl Head {
    const GENESIS: Head = Head {
        seq: 0,
        hash: [0; 32],
    };
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "the audit chain head in the store (seq {found}) is not the last one this server committed (seq {expected}): the log was altered"
    )]
    HeadMismatch { expected: i64, found: i64 },
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// An event's columns in hashing order. The algorithm is public on purpose: anyone can
/// recompute the chain; what an attacker cannot produce is the server's signed checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct RowFields<'a> {
    pub seq: i64,
    pub prev_hash: &'a [u8],
    pub at: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub correlation_id: &'a str,
    pub client_addr: &'a str,
    pub details: &'a str,
}

/// SHA-256 over the domain prefix, the sequence number and every length-prefixed column.
pub fn hash_row(f: &RowFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(f.seq.to_be_bytes());
    for part in [
        f.prev_hash,
        f.at.as_bytes(),
        f.actor.as_bytes(),
        f.action.as_bytes(),
        f.target.as_bytes(),
        f.outcome.as_bytes(),
        f.correlation_id.as_bytes(),
        f.client_addr.as_bytes(),
        f.details.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

async fn read_head(conn: &mut SqliteConnection) -> sqlx::Result<Head> {
    let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        None => Head::GENESIS,
        Some(row) => Head {
            seq: row.try_get(0)?,
            hash: to_hash(row.try_get::<Vec<u8>, _>(1)?),
        },
    })
}

fn to_hash(bytes: Vec<u8>) -> [u8; 32] {
    <[u8; 32]>::try_from(bytes.as_slice()).unwrap_or([0xff; 32])
}

/// The in-memory view of the chain: the last head this process committed.
#[derive(Debug)]
pub struct Audit {
    head: Mutex<Head>,
    committed: watch::Sender<Head>,
    /// Held by an [`AuditTx`] from `begin` until the in-memory head is updated after its
    /// commit. The commit hands the writer connection back before `commit` returns; without
    /// the gate the next transaction could read the new head from the store while the
    /// in-memory head is still the old one, and fail closed for nothing.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Where alerts go after their transaction commits (AUD-5).
    sinks: Vec<Box<dyn crate::alerts::AlertSink>>,
    /// Committed events, in commit order, for live subscribers (WEB-8).
    live: broadcast::Sender<Arc<LiveEvent>>,
}

impl Audit {
    /// Loads the head from the store and checks it against the signed checkpoint, if any.
    pub async fn open(store: &Store, checkpoint: &CheckpointFile) -> anyhow::Result<Arc<Audit>> {
        let mut conn = store.reader().acquire().await?;
        let head = read_head(&mut conn).await?;
        if let Some(cp) = checkpoint.read()? {
            let at: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = ?")
                    .bind(cp.seq)
                    .fetch_optional(&mut *conn)
                    .await?;
            match at {
                Some(ref hash) if hash.as_slice() == cp.hash => {}
                _ => anyhow::bail!(
                    "the audit log does not contain the signed checkpoint at seq {} (head is seq {}): it was truncated or rewritten; run `portcullis audit verify` and restore from backup",
                    cp.seq,
                    head.seq
                ),
            }
        }
        let (committed, _) = watch::channel(head);
        Ok(Arc::new(Audit {
            head: Mutex::new(head),
            committed,
            gate: Arc::new(tokio::sync::Mutex::new(())),
            sinks: vec![Box::new(crate::alerts::LogSink)],
            live: broadcast::channel(LIVE_CAPACITY).0,
        }))
    }

    pub fn head(&self) -> Head {
        *self.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> watch::Receiver<Head> {
        self.committed.subscribe()
    }

    /// Events from the next commit on. A receiver that falls behind loses the oldest
    /// (`Lagged`) instead of slowing a commit down (WEB-8).
    pub fn live(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.live.subscribe()
    }
}

/// A write transaction that may append audit events. Commit it with [`AuditTx::commit`]; a
/// dropped `AuditTx` rolls back both the state change and its events.
pub struct AuditTx {
    tx: Tx,
    head: Head,
    audit: Arc<Audit>,
    _gate: tokio::sync::OwnedMutexGuard<()>,
    /// Alerts raised by this transaction's events, delivered once it commits.
    alerts: Vec<crate::alerts::Alert>,
    /// This transaction's events, published to live subscribers once it commits.
    live: Vec<Arc<LiveEvent>>,
}

impl AuditTx {
    pub async fn begin(store: &Store, audit: &Arc<Audit>) -> Result<AuditTx, AuditError> {
        let gate = Arc::clone(&audit.gate).lock_owned().await;
        let mut tx = store.begin().await?;
        let found = read_head(&mut tx).await?;
        let expected = audit.head();
        if found != expected {
            return Err(AuditError::HeadMismatch {
                expected: expected.seq,
                found: found.seq,
            });
        }
        Ok(AuditTx {
            tx,
            head: found,
            audit: audit.clone(),
            _gate: gate,
            alerts: Vec::new(),
            live: Vec::new(),
        })
    }

    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    pub async fn append(&mut self, ctx: &Context, event: Event) -> Result<i64, AuditError> {
        self.append_at(ctx, event, clock::now_ms()).await
    }

    pub async fn append_at(
        &mut self,
        ctx: &Context,
        event: Event,
        now_ms: i64,
    ) -> Result<i64, AuditError> {
        let seq = self.head.seq + 1;
        let at = clock::format_ms(now_ms);
        let details = event.details.to_string();
        let fields = RowFields {
            seq,
            prev_hash: &self.head.hash,
            at: &at,
            actor: &event.actor,
            action: event.action.as_str(),
            target: &event.target,
            outcome: event.outcome.as_str(),
            correlation_id: &ctx.correlation_id,
            client_addr: &ctx.client_addr,
            details: &details,
        };
        let hash = hash_row(&fields);
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor, action, target, outcome, correlation_id, client_addr, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(&at)
        .bind(&event.actor)
        .bind(event.action.as_str())
        .bind(&event.target)
        .bind(event.outcome.as_str())
        .bind(&ctx.correlation_id)
        .bind(&ctx.client_addr)
        .bind(&details)
        .bind(&self.head.hash[..])
        .bind(&hash[..])
        .execute(&mut *self.tx)
        .await?;
        self.live
            .push(Arc::new(LiveEvent::committed(&fields, &event.details)));
        self.head = Head { seq, hash };
        if let Some(severity) = crate::alerts::severity_of(&event) {
            sqlx::query(
                "INSERT INTO alerts (at_ms, severity, kind, actor, target, details) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(now_ms)
            .bind(severity.as_str())
            .bind(event.action.as_str())
            .bind(&event.actor)
            .bind(&event.target)
            .bind(&details)
            .execute(&mut *self.tx)
            .await?;
            self.alerts.push(crate::alerts::Alert {
                at,
                severity,
                kind: event.action.as_str().to_owned(),
                actor: event.actor,
                target: event.target,
                details: event.details,
            });
        }
        Ok(seq)
    }

    pub async fn commit(self) -> Result<(), AuditError> {
        let AuditTx {
            tx,
            head,
            audit,
            _gate,
            alerts,
            live,
        } = self;
        tx.commit().await?;
        *audit.head.lock().unwrap_or_else(|e| e.into_inner()) = head;
        audit.committed.send_replace(head);
        // After the commit, never before; under the gate, so in commit order (WEB-8).
        for event in live {
            let _ = audit.live.send(event);
        }
        // Only now may the next transaction look at the head.
        drop(_gate);
        for alert in &alerts {
            for sink in &audit.sinks {
                sink.deliver(alert);
            }
        }
        Ok(())
    }
}

/// A signed statement of the chain head: `seq` and its `hash`, by the server's signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u8,
    pub seq: i64,
    #[serde(with = "hex_hash")]
    pub hash: [u8; 32],
    pub key_id: String,
    pub signature: String,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        <[u8; 32]>::try_from(v.as_slice())
            .map_err(|_| serde::de::Error::custom("hash must be 32 bytes"))
    }
}

fn checkpoint_message(seq: i64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 40);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

impl Checkpoint {
    pub fn sign(head: Head, key: &SigningKey) -> Checkpoint {
        let key_id = portcullis_proto::token::KeyId::of(&key.verifying_key()).to_hex();
        let signature = key.sign(&checkpoint_message(head.seq, &head.hash));
        Checkpoint {
            version: 1,
            seq: head.seq,
            hash: head.hash,
            key_id,
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }

    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.version == 1
            && key
                .verify_strict(&checkpoint_message(self.seq, &self.hash), &sig)
                .is_ok()
    }
}

/// The checkpoint file beside the state file, replaced atomically.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    pub fn in_dir(data_dir: &Path) -> CheckpointFile {
        CheckpointFile {
            path: data_dir.join(CHECKPOINT_FILE),
        }
    }

    pub fn read(&self) -> anyhow::Result<Option<Checkpoint>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "audit checkpoint {} is unreadable: {e}",
                    self.path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn write(&self, cp: &Checkpoint) -> std::io::Result<()> {
        // A unique temporary name per write: two writers (the background checkpointer and
        // the final write at shutdown) never interleave inside one file, and each rename
        // installs a complete checkpoint.
        let tmp = self
            .path
            .with_extension(format!("tmp.{:016x}", rand::random::<u64>()));
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &serde_json::to_vec(cp)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Keeps the checkpoint file at the committed head. Writes as soon as the head moves;
/// changes that arrive during a write are coalesced into the next one.
pub async fn run_checkpointer(
    mut head: watch::Receiver<Head>,
    file: CheckpointFile,
    keys: Arc<crate::keys::SigningKeys>,
) {
    loop {
        let current = *head.borrow_and_update();
        if current.seq > 0 {
            let cp = Checkpoint::sign(current, &keys.current().key);
            let file = file.clone();
            match tokio::task::spawn_blocking(move || file.write(&cp)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "writing the audit checkpoint failed"),
                Err(e) => tracing::error!(error = %e, "audit checkpoint task failed"),
            }
        }
        if head.changed().await.is_err() {
            return;
        }
        // Coalesce: under load the head moves on every commit; one signed, fsynced
        // checkpoint per interval is enough and keeps the disk for the state store.
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
    }
}

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub head_seq: i64,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad_seq.is_none() && self.problem.is_none()
    }
}

/// Checks the whole chain in `pool` and, when given, the signed checkpoint: dense sequence
/// from 1, each `prev_hash` equal to the previous row's hash, each hash recomputed, and the
/// checkpoint's row present with the checkpoint's hash. Names the first bad sequence number.
pub async fn verify(
    pool: &SqlitePool,
    checkpoint: Option<(&Checkpoint, &VerifyingKey)>,
) -> anyhow::Result<VerifyReport> {
    let mut rows = sqlx::query(
        "SELECT seq, at, actor, action, target, outcome, correlation_id, client_addr, details, prev_hash, hash FROM audit_events ORDER BY seq",
    )
    .fetch(pool);
    let mut prev = Head::GENESIS;
    let mut events = 0u64;
    let mut checkpoint_hash: Option<[u8; 32]> = None;
    let bad = |seq: i64, events: u64, head: i64, problem: String| VerifyReport {
        events,
        head_seq: head,
        first_bad_seq: Some(seq),
        problem: Some(problem),
    };
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get(0)?;
        let expected = prev.seq + 1;
        if seq != expected {
            return Ok(bad(
                expected,
                events,
                prev.seq,
                format!("sequence {expected} is missing (next row is {seq})"),
            ));
        }
        let prev_hash: Vec<u8> = row.try_get(9)?;
        let stored: Vec<u8> = row.try_get(10)?;
        if prev_hash.as_slice() != prev.hash {
            return Ok(bad(
                seq,
                events,
                prev.seq,
                format!("sequence {seq} does not link to sequence {}", prev.seq),
            ));
        }
        let text = |i: usize| row.try_get::<String, _>(i);
        let (at, actor, action, target, outcome, correlation_id, client_addr, details) = (
            text(1)?,
            text(2)?,
            text(3)?,
            text(4)?,
            text(5)?,
            text(6)?,
            text(7)?,
            text(8)?,
        );
        let hash = hash_row(&RowFields {
            seq,
            prev_hash: &prev_hash,
            at: &at,
            actor: &actor,
            action: &action,
            target: &target,
            outcome: &outcome,
            correlation_id: &correlation_id,
            client_addr: &client_addr,
            details: &details,
        });
        if stored.as_slice() != hash {
            return Ok(bad(
                seq,
                events,
                prev.seq,
                format!("sequence {seq} was altered (hash mismatch)"),
            ));
        }
        if let Some((cp, _)) = checkpoint
            && cp.seq == seq
        {
            checkpoint_hash = Some(hash);
        }
        events += 1;
        prev = Head { seq, hash };
    }
    if let Some((cp, key)) = checkpoint {
        if !cp.verify(key) {
            return Ok(bad(
                cp.seq,
                events,
                prev.seq,
                "the audit checkpoint signature is invalid".to_owned(),
            ));
        }
        match checkpoint_hash {
            None => {
                return Ok(bad(
                    prev.seq + 1,
                    events,
                    prev.seq,
                    format!(
                        "the chain ends at sequence {} but the signed checkpoint covers sequence {}: events were truncated",
                        prev.seq, cp.seq
                    ),
                ));
            }
            Some(h) if h != cp.hash => {
                return Ok(bad(
                    cp.seq,
                    events,
                    prev.seq,
                    format!(
                        "sequence {} differs from the signed checkpoint: the chain was truncated and rewritten",
                        cp.seq
                    ),
                ));
            }
            Some(_) => {}
        }
    } else if events > 0 {
        return Ok(VerifyReport {
            events,
            head_seq: prev.seq,
            first_bad_seq: None,
            problem: Some("no signed audit checkpoint was found beside the state file".to_owned()),
        });
    }
    Ok(VerifyReport {
        events,
        head_seq: prev.seq,
        first_bad_seq: None,
        problem: None,
    })
}

/// Offline verification of a data directory (`portcullis audit verify --data DIR`): opens
/// the state file read-only, reads the checkpoint first (it never runs ahead of the store),
/// and checks it with the public half of the signing key in the same directory.
pub async fn verify_data_dir(data_dir: &Path) -> anyhow::Result<VerifyReport> {
    use sqlx::sqlite::SqliteConnectOptions;
    let state = Store::state_file(data_dir);
    if !state.exists() {
        anyhow::bail!("no state file at {}", state.display());
    }
    let checkpoint = CheckpointFile::in_dir(data_dir).read()?;
    let current = crate::keys::load_verifying_key(data_dir)?;
    let options = SqliteConnectOptions::new().filename(&state).read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    // A checkpoint may predate a key rotation: check it with the key it names.
    let key = match &checkpoint {
        Some(cp) => crate::key_rotation::historical_key(&pool, current, &cp.key_id)
            .await?
            .unwrap_or(current),
        None => current,
    };
    let report = verify(&pool, checkpoint.as_ref().map(|c| (c, &key))).await;
    pool.close().await;
    report
}

/// Streams every event in sequence order as JSON Lines.
pub async fn export<W: std::io::Write>(pool: &SqlitePool, mut out: W) -> anyhow::Result<u64> {
    let mut rows = sqlx::query(
        "SELECT seq, at, actor, action, target, outcome, correlation_id, client_addr, details, prev_hash, hash FROM audit_events ORDER BY seq",
    )
    .fetch(pool);
    let mut n = 0;
    while let Some(row) = rows.try_next().await? {
        let view = row_to_view(&row)?;
        serde_json::to_writer(&mut out, &view)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

pub fn row_to_view(
    row: &sqlx::sqlite::SqliteRow,
) -> anyhow::Result<portcullis_proto::api::AuditEventView> {
    let details: String = row.try_get(8)?;
    Ok(portcullis_proto::api::AuditEventView {
        seq: row.try_get(0)?,
        at: row.try_get(1)?,
        actor: row.try_get(2)?,
        action: row.try_get(3)?,
        target: row.try_get(4)?,
        outcome: row.try_get(5)?,
        correlation_id: row.try_get(6)?,
        client_addr: row.try_get(7)?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: hex::encode(row.try_get::<Vec<u8>, _>(9)?),
        hash: hex::encode(row.try_get::<Vec<u8>, _>(10)?),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// AUD-2 without false alarms: many concurrent transactions never take a head this
    /// process committed for a tampered one, and the chain stays dense. The race this guards
    /// against (the next transaction reading the store between a commit and the in-memory
    /// head update) showed under the benchmark's 32-client load; this test is its regression
    /// check, not a reliable reproducer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_transactions_never_see_a_stale_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), crate::store::Durability::Normal)
            .await
            .unwrap();
        let audit = Audit::open(&store, &CheckpointFile::in_dir(dir.path()))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let (store, audit) = (store.clone(), Arc::clone(&audit));
            tasks.push(tokio::spawn(async move {
                for i in 0..150 {
                    let mut tx = AuditTx::begin(&store, &audit).await?;
                    let event = Event {
                        actor: format!("task-{t}"),
                        action: Action::ServerStarted,
                        target: format!("{i}"),
                        outcome: Outcome::Success,
                        details: serde_json::json!({}),
                    };
                    tx.append(&Context::system("test"), event).await?;
                    tx.commit().await?;
                }
                Ok::<(), AuditError>(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let report = verify(store.reader(), None).await.unwrap();
        assert_eq!(report.events, 1_200);
        assert_eq!(report.first_bad_seq, None);
    }
}
