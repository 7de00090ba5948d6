//! The hash-chained audit log (AUD-1..3).
//!
//! Every security-relevant event is appended inside the same transaction as the state change
//! it records ([`AuditTx`]): if the append fails, the change is rolled back (AUD-2). Each row's
//! hash is SHA-256 over a length-prefixed, domain-separated encoding of its sequence number,
//! the previous row's hash and every column, so a modified, deleted or reordered row breaks
//! the chain. Truncation followed by new appends is caught by a signed checkpoint of the head,
//! written beside the state file after every commit and checked at start and by `verify`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{OwnedMutexGuard, broadcast, watch};

use crate::clock;
use crate::events::LiveEvent;
use crate::store::Store;

mod checkpoint;
mod group;
mod thread;
mod verify;
pub use checkpoint::{CHECKPOINT_FILE, Checkpoint, CheckpointFile, run_checkpointer};
use group::{GROUP_BACKSTOP, Group, GroupConn, GroupOutcome, Writer, settle};
pub use thread::Member;
use thread::WriterThread;
pub use verify::{VerifyReport, verify, verify_data_dir};

const HASH_DOMAIN: &[u8] = b"portcullis/audit-event/v1\0";
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
    RequestRequeued => "request.requeued",
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
    #[error("the audit commit failed, so the action did not happen: {0}")]
    GroupFailed(Arc<str>),
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
    hash_columns(
        f.seq,
        [
            f.prev_hash,
            f.at.as_bytes(),
            f.actor.as_bytes(),
            f.action.as_bytes(),
            f.target.as_bytes(),
            f.outcome.as_bytes(),
            f.correlation_id.as_bytes(),
            f.client_addr.as_bytes(),
            f.details.as_bytes(),
        ],
    )
}

/// [`hash_row`] over the raw column bytes, in column order from `prev_hash` to `details`.
fn hash_columns(seq: i64, columns: [&[u8]; 9]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(seq.to_be_bytes());
    for part in columns {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The statement that reads the chain head: the last row, none on an empty log.
macro_rules! head_query {
    () => {
        "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
    };
}
use head_query;

async fn read_head(conn: &mut SqliteConnection) -> sqlx::Result<Head> {
    let row = sqlx::query(head_query!()).fetch_optional(conn).await?;
    head_of(row.as_ref())
}

/// The head as read by [`head_query!`].
fn head_of(row: Option<&sqlx::sqlite::SqliteRow>) -> sqlx::Result<Head> {
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
    /// The writer and its open commit group. Held by an [`AuditTx`] from `begin` until it is
    /// released into its group (or dropped), and by whoever commits a group until the
    /// in-memory head is updated, so the next group never reads a head from the store that
    /// this process has not recorded (which would fail closed for nothing).
    writer: Arc<tokio::sync::Mutex<Writer>>,
    /// Transactions waiting for the writer: while there are any, a released group stays
    /// open for them to join (up to its age and size limits).
    waiting: AtomicUsize,
    /// Durable commits made by this process for audited transactions.
    commits: AtomicU64,
    /// Where alerts go after their transaction commits (AUD-5).
    sinks: Vec<Box<dyn crate::alerts::AlertSink>>,
    /// Committed events, in commit order, for live subscribers (WEB-8).
    live: broadcast::Sender<Arc<LiveEvent>>,
    /// The writer thread's queue ([`Audit::transact`]).
    thread: WriterThread,
}

impl Default for Head {
    fn default() -> Head {
        Head::GENESIS
    }
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
        let mut started = Ok(());
        let audit = Arc::new_cyclic(|weak| {
            let thread = WriterThread::start(weak.clone(), store.clone());
            let thread = thread.unwrap_or_else(|e| {
                started = Err(e);
                WriterThread::stopped()
            });
            Audit {
                head: Mutex::new(head),
                committed,
                writer: Arc::new(tokio::sync::Mutex::new(Writer {
                    head,
                    ..Writer::default()
                })),
                waiting: AtomicUsize::new(0),
                commits: AtomicU64::new(0),
                sinks: vec![Box::new(crate::alerts::LogSink)],
                live: broadcast::channel(LIVE_CAPACITY).0,
                thread,
            }
        });
        started.map_err(|e| anyhow::anyhow!("starting the audit writer thread failed: {e}"))?;
        Ok(audit)
    }

    pub fn head(&self) -> Head {
        *self.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many durable commits this process made for its audited transactions; fewer than
    /// the transactions when they shared commits.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
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
///
/// Transactions are serialized on the one writer connection. Under concurrency they share
/// commits (group commit, `audit/group.rs`): [`AuditTx::commit`] releases this transaction
/// into the open group and returns once the group's COMMIT is durable, never before (AUD-2).
pub struct AuditTx {
    writer: Option<OwnedMutexGuard<Writer>>,
    audit: Arc<Audit>,
    head: Head,
    /// Whether it runs inside a savepoint of a group other transactions already joined.
    savepoint: Savepoint,
    /// Alerts raised by this transaction's events, delivered once it commits.
    alerts: Vec<crate::alerts::Alert>,
    /// This transaction's events, published to live subscribers once it commits.
    live: Vec<Arc<LiveEvent>>,
    /// This transaction's audit rows, inserted with its group's commit.
    rows: Vec<PendingRow>,
}

/// The savepoint of a transaction in a commit group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Savepoint {
    /// The first transaction of its group runs in the group's own transaction.
    FirstOfGroup,
    /// A later member that has not written yet: its savepoint opens with its first
    /// statement ([`AuditTx::conn`], [`AuditTx::first_batch`]), so a member that only
    /// appends events costs no trip to the writer connection.
    Pending,
    /// A later member whose savepoint was opened, or sent to be opened with its first
    /// batch; undone if the member is dropped (a savepoint that never opened is nothing to
    /// undo, `group::settle`).
    Opened(SavepointName),
}

/// The two names a member's savepoint takes in turn. A member that finishes leaves its
/// savepoint to be released by the next member's first batch (no trip of its own), so two
/// can be open at once: the finished one and the next member's. Their names always differ,
/// so undoing a dropped member can never reach its predecessor's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SavepointName {
    A,
    B,
}

impl SavepointName {
    fn other(self) -> SavepointName {
        match self {
            SavepointName::A => SavepointName::B,
            SavepointName::B => SavepointName::A,
        }
    }

    fn open(self) -> &'static str {
        match self {
            SavepointName::A => "SAVEPOINT member_a;",
            SavepointName::B => "SAVEPOINT member_b;",
        }
    }

    pub(super) fn release(self) -> &'static str {
        match self {
            SavepointName::A => "RELEASE member_a;",
            SavepointName::B => "RELEASE member_b;",
        }
    }

    pub(super) fn undo(self) -> &'static str {
        match self {
            SavepointName::A => "ROLLBACK TO member_a; RELEASE member_a",
            SavepointName::B => "ROLLBACK TO member_b; RELEASE member_b",
        }
    }
}

/// One audit row appended by a transaction, waiting for its group's commit to be written.
#[derive(Debug)]
pub(crate) struct PendingRow {
    pub(crate) seq: i64,
    pub(crate) at: String,
    pub(crate) actor: String,
    pub(crate) action: &'static str,
    pub(crate) target: String,
    pub(crate) outcome: &'static str,
    pub(crate) correlation_id: String,
    pub(crate) client_addr: String,
    pub(crate) details: String,
    pub(crate) prev_hash: [u8; 32],
    pub(crate) hash: [u8; 32],
}

/// The INSERT of an alert raised by an event (AUD-5): six parameters.
macro_rules! insert_alert {
    () => {
        "INSERT INTO alerts (at_ms, severity, kind, actor, target, details) VALUES (?, ?, ?, ?, ?, ?)"
    };
}
use insert_alert;

/// One event made into its audit row after `head`: the row with its hash, the event for live
/// subscribers and the alert it raises, if any. The same for both writers ([`AuditTx`] and
/// the writer thread), so both chain alike.
pub(crate) struct Appended {
    pub(crate) row: PendingRow,
    pub(crate) live: Arc<LiveEvent>,
    pub(crate) alert: Option<crate::alerts::Alert>,
}

impl Appended {
    pub(crate) fn make(head: Head, ctx: &Context, event: Event, now_ms: i64) -> Appended {
        let seq = head.seq + 1;
        let at = clock::format_ms(now_ms);
        let details = event.details.to_string();
        let prev = head.hash;
        let fields = RowFields {
            seq,
            prev_hash: &prev,
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
        let live = Arc::new(LiveEvent::committed(&fields, &event.details));
        let alert = crate::alerts::severity_of(&event).map(|severity| crate::alerts::Alert {
            at: at.clone(),
            severity,
            kind: event.action.as_str().to_owned(),
            actor: event.actor.clone(),
            target: event.target.clone(),
            details: event.details,
        });
        Appended {
            row: PendingRow {
                seq,
                at,
                actor: event.actor,
                action: event.action.as_str(),
                target: event.target,
                outcome: event.outcome.as_str(),
                correlation_id: ctx.correlation_id.clone(),
                client_addr: ctx.client_addr.clone(),
                details,
                prev_hash: prev,
                hash,
            },
            live,
            alert,
        }
    }

    /// The chain head once this row is appended.
    pub(crate) fn head(&self) -> Head {
        Head {
            seq: self.row.seq,
            hash: self.row.hash,
        }
    }
}

impl AuditTx {
    pub async fn begin(store: &Store, audit: &Arc<Audit>) -> Result<AuditTx, AuditError> {
        let mut w = audit.lock_writer().await;
        match Self::enter(store, audit, &mut w).await {
            Ok(savepoint) => Ok(AuditTx {
                head: w.head,
                writer: Some(w),
                audit: Arc::clone(audit),
                savepoint,
                alerts: Vec::new(),
                live: Vec::new(),
                rows: Vec::new(),
            }),
            Err(e) => {
                audit.hand_over(w).await;
                Err(e)
            }
        }
    }

    /// Joins the open group (inside a savepoint opened with its first statement), or opens a
    /// group: `BEGIN IMMEDIATE` with the read of the store's head (one trip), and the check
    /// that it is the head this process committed.
    async fn enter(store: &Store, audit: &Audit, w: &mut Writer) -> Result<Savepoint, AuditError> {
        settle(w, audit).await?;
        if w.group.is_some() {
            return Ok(Savepoint::Pending);
        }
        let (conn, found) = GroupConn::begin(store).await?;
        let expected = audit.head();
        if found != expected {
            return Err(AuditError::HeadMismatch {
                expected: expected.seq,
                found: found.seq,
            });
        }
        w.head = found;
        w.group = Some(Group::open(conn));
        w.release_pending = None;
        w.releasing = None;
        Ok(Savepoint::FirstOfGroup)
    }

    /// The writer connection, inside this transaction (its savepoint opened first if it
    /// joined a group and has not written yet).
    pub async fn conn(&mut self) -> sqlx::Result<&mut SqliteConnection> {
        if let Some(opening) = self.opening() {
            sqlx::query(sqlx::AssertSqlSafe(opening))
                .execute(self.group_conn())
                .await?;
        }
        Ok(self.group_conn())
    }

    /// The writer connection and the first statement batch to run on it: `plain`, preceded
    /// by the statements that open this transaction's savepoint (and release the one its
    /// predecessor in the group left open) when it joined a group and has not written yet.
    /// Saves those statements a trip of their own; the caller runs the batch, built only from
    /// static statements, before any other statement.
    pub fn first_batch(&mut self, plain: &'static str) -> (String, &mut SqliteConnection) {
        let sql = match self.opening() {
            Some(mut opening) => {
                opening.push_str(plain);
                opening
            }
            None => plain.to_owned(),
        };
        (sql, self.group_conn())
    }

    /// For a member whose savepoint is still to be opened: the statements that open it,
    /// after releasing the savepoint of the member that finished before it, if that one is
    /// still open. Marks the savepoint open before any trip: a caller dropped while the
    /// statements are under way leaves them to be undone (`group::settle`), whether or not
    /// they ran.
    fn opening(&mut self) -> Option<String> {
        if self.savepoint != Savepoint::Pending {
            return None;
        }
        let w = self
            .writer
            .as_mut()
            .expect("an AuditTx holds the writer until commit");
        let before = w.release_pending.take();
        let name = before.map_or(SavepointName::A, SavepointName::other);
        w.releasing = before;
        self.savepoint = Savepoint::Opened(name);
        let mut sql = String::with_capacity(48);
        if let Some(before) = before {
            sql.push_str(before.release());
        }
        sql.push_str(name.open());
        Some(sql)
    }

    fn group_conn(&mut self) -> &mut SqliteConnection {
        let group = self
            .writer
            .as_mut()
            .and_then(|w| w.group.as_mut())
            .expect("an AuditTx holds the writer and its open group until commit");
        &mut group.conn
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
        let made = Appended::make(self.head, ctx, event, now_ms);
        if let Some(alert) = &made.alert {
            sqlx::query(insert_alert!())
                .bind(now_ms)
                .bind(alert.severity.as_str())
                .bind(made.row.action)
                .bind(&made.row.actor)
                .bind(&made.row.target)
                .bind(&made.row.details)
                .execute(self.conn().await?)
                .await?;
        }
        let seq = made.row.seq;
        self.head = made.head();
        self.live.push(made.live);
        self.alerts.extend(made.alert);
        // Written with the rest of its commit group, in one statement just before the
        // group's COMMIT (`group::insert_rows`): never committed without the change it
        // records, and never acknowledged before that commit (AUD-2).
        self.rows.push(made.row);
        Ok(seq)
    }

    /// Releases this transaction into its commit group and waits until the group is
    /// durably committed. An error means nothing of this transaction was committed.
    ///
    /// The release lets go of the writer at once, in the caller, with no await in between:
    /// the next transaction waiting for it starts without waiting for a task to be
    /// scheduled. When the group is due to commit here, the commit runs in a task of its
    /// own, to its end even when the caller is dropped (a client that went away mid-request):
    /// a commit cut short between SQLite's COMMIT and the in-memory head would leave the
    /// server failing every later transaction closed. A caller dropped while it only waits
    /// for another member's commit cuts nothing short.
    pub async fn commit(mut self) -> Result<(), AuditError> {
        let audit = Arc::clone(&self.audit);
        let (w, done) = self.release()?;
        audit.hand_over(w).await;
        wait_for_group(&audit, done).await
    }

    /// Puts this transaction's rows, events and head into its group and returns the writer
    /// with the group's outcome to wait for. Synchronous: nothing can cut it short.
    fn release(
        &mut self,
    ) -> Result<(OwnedMutexGuard<Writer>, watch::Receiver<GroupOutcome>), AuditError> {
        let Some(mut w) = self.writer.take() else {
            return Err(AuditError::GroupFailed(Arc::from(
                "the transaction already ended",
            )));
        };
        if let Savepoint::Opened(name) = self.savepoint {
            // Released by the next member's first batch, or committed with the group: no
            // trip of its own. Its first batch ran, so its predecessor's is released.
            w.release_pending = Some(name);
            w.releasing = None;
        }
        let Some(group) = w.group.as_mut() else {
            // Dropping the writer lets go of it: with no group there is nothing to commit.
            return Err(AuditError::GroupFailed(Arc::from(
                "the transaction's commit group was rolled back",
            )));
        };
        group.members += 1;
        group.live.append(&mut self.live);
        group.rows.append(&mut self.rows);
        group.alerts.append(&mut self.alerts);
        let done = group.done.subscribe();
        w.head = self.head;
        Ok((w, done))
    }
}

/// Waits for the outcome of a commit group this caller was released into. A group nobody
/// committed within [`GROUP_BACKSTOP`] is committed from here, in a task of its own.
async fn wait_for_group(
    audit: &Arc<Audit>,
    mut done: watch::Receiver<GroupOutcome>,
) -> Result<(), AuditError> {
    loop {
        if let Some(outcome) = done.borrow_and_update().clone() {
            return outcome.map_err(AuditError::GroupFailed);
        }
        match tokio::time::timeout(GROUP_BACKSTOP, done.changed()).await {
            Ok(Ok(())) => {}
            // The group ended without an outcome: nothing was committed.
            Ok(Err(_)) => {
                return Err(AuditError::GroupFailed(Arc::from(
                    "the commit group ended without an outcome",
                )));
            }
            // Nobody committed the group yet: do it.
            Err(_) => {
                let audit = Arc::clone(audit);
                let _ = tokio::spawn(async move { audit.flush().await }).await;
            }
        }
    }
}

impl Drop for AuditTx {
    /// Rolls back: the savepoint is undone by the next holder of the writer, or the whole
    /// transaction is dropped when this was the first of its group. The group's other
    /// members still get their commit.
    fn drop(&mut self) {
        let Some(mut w) = self.writer.take() else {
            return;
        };
        match self.savepoint {
            Savepoint::Opened(name) => w.undo_savepoint = Some(name),
            // Nothing written, nothing to undo.
            Savepoint::Pending => {}
            Savepoint::FirstOfGroup => {
                // Members join only after the first lets go, so no one else is in it and
                // the whole transaction rolls back.
                w.group = None;
                w.head = self.audit.head();
            }
        }
        if w.group.as_ref().is_some_and(|g| g.members > 0) {
            let audit = Arc::clone(&self.audit);
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move { audit.hand_over_here(w).await });
                }
                // No runtime left: the members' backstop commits the group.
                Err(_) => drop(w),
            }
        }
    }
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
mod tests;
