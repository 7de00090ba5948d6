//! Group commit: one SQLite transaction, and one fsync, shared by the [`AuditTx`]s that
//! arrive while it is open. A member is acknowledged only after the group's COMMIT
//! (AUD-2); a member that fails rolls back alone inside its savepoint.
//!
//! [`AuditTx`]: super::AuditTx

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection};
use tokio::sync::{OwnedMutexGuard, watch};

use super::{Audit, AuditError, Head, PendingRow, SavepointName, head_of, head_query};
use crate::events::LiveEvent;
use crate::store::Store;

/// The longest a commit group stays open while other transactions keep joining it; past
/// this, the member that releases it commits it even when more are waiting.
const GROUP_MAX_AGE: Duration = Duration::from_millis(2);
/// The most transactions in one commit group.
const GROUP_MAX_MEMBERS: usize = 128;
/// How long a released member waits for its group's commit before committing it itself.
/// Only reached when the transaction expected to continue the group was cancelled while it
/// waited for the writer (a client that went away); it keeps every group live.
pub(super) const GROUP_BACKSTOP: Duration = Duration::from_millis(5);

/// What a commit group's members learn when it ends: `None` while open.
pub(super) type GroupOutcome = Option<Result<(), Arc<str>>>;

/// One SQLite transaction shared by several `AuditTx`s. Each member after the first runs
/// inside its own savepoint, so a member that fails rolls back alone; the group commits
/// once, with one fsync, and only then is any member acknowledged.
pub(super) struct Group {
    pub(super) conn: GroupConn,
    pub(super) opened: Instant,
    /// Members released into this group and waiting for its commit.
    pub(super) members: usize,
    pub(super) done: watch::Sender<GroupOutcome>,
    /// The members' events and alerts, in chain order, published after the commit.
    pub(super) live: Vec<Arc<LiveEvent>>,
    pub(super) alerts: Vec<crate::alerts::Alert>,
    /// The members' audit rows, in chain order, inserted just before the COMMIT.
    pub(super) rows: Vec<PendingRow>,
}

impl Group {
    pub(super) fn open(conn: GroupConn) -> Group {
        Group {
            conn,
            opened: Instant::now(),
            members: 0,
            done: watch::channel(None).0,
            live: Vec::new(),
            alerts: Vec::new(),
            rows: Vec::new(),
        }
    }
}

/// The writer connection inside a commit group's transaction, which this module begins and
/// ends with its own statements rather than through sqlx's transaction: `BEGIN IMMEDIATE`
/// goes with the read of the chain head and `COMMIT` with the group's audit rows, one trip to
/// the connection's thread each instead of two. Dropped before its `COMMIT` succeeded (a
/// failed commit, a group rolled back, a first member dropped), the transaction is rolled
/// back before the connection goes back to the pool, so the next writer waits for the
/// rollback; a connection that cannot roll back is closed instead, which rolls back too
/// (AUD-2).
pub(super) struct GroupConn {
    /// Always present until dropped.
    conn: Option<PoolConnection<Sqlite>>,
    committed: bool,
}

impl GroupConn {
    /// Takes the writer connection, begins the group's transaction and reads the chain head
    /// in it.
    pub(super) async fn begin(store: &Store) -> sqlx::Result<(GroupConn, Head)> {
        // Not committed from here on: a failed or cancelled trip rolls back, so a `BEGIN`
        // that ran is never left open on a pooled connection.
        let mut group = GroupConn {
            conn: Some(store.writer_connection().await?),
            committed: false,
        };
        let rows = sqlx::query(concat!("BEGIN IMMEDIATE;", head_query!()))
            .fetch_all(&mut *group)
            .await?;
        let head = head_of(rows.first())?;
        Ok((group, head))
    }

    /// Inserts the group's audit rows and commits: the last statement of rows and the
    /// `COMMIT` in one batch. An error means nothing was committed: the transaction is
    /// rolled back.
    async fn commit(mut self, rows: &[PendingRow]) -> sqlx::Result<()> {
        let mut chunks = rows.chunks(ROWS_PER_STATEMENT).peekable();
        if chunks.peek().is_none() {
            sqlx::query("COMMIT").execute(&mut *self).await?;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            insert_rows(&mut self, chunk, last).await?;
        }
        self.committed = true;
        Ok(())
    }
}

impl std::ops::Deref for GroupConn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn
            .as_ref()
            .expect("a group connection is present until dropped")
    }
}

impl std::ops::DerefMut for GroupConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_mut()
            .expect("a group connection is present until dropped")
    }
}

impl Drop for GroupConn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take().filter(|_| !self.committed) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            conn.close_on_drop();
            return;
        };
        // The task owns the connection until the rollback is done: the pool, and so the
        // next writer, gets it back only then.
        runtime.spawn(async move {
            match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                Ok(_) => {}
                // The failed statement already ended the transaction.
                Err(e) if no_transaction(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "rolling back an audit group failed; closing its connection");
                    conn.close_on_drop();
                }
            }
        });
    }
}

/// The error of a `ROLLBACK` with no transaction open.
fn no_transaction(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.message().contains("no transaction is active"))
}

/// The writer side of the chain, behind one lock: at most one `AuditTx` runs at a time.
#[derive(Default)]
pub(super) struct Writer {
    pub(super) group: Option<Group>,
    /// The head including released but not yet committed members.
    pub(super) head: Head,
    /// A member was dropped inside this savepoint; the next holder undoes it first.
    pub(super) undo_savepoint: Option<SavepointName>,
    /// The savepoint of the last member that finished, still open: the next member's first
    /// batch releases it (the group's `COMMIT` commits it otherwise).
    pub(super) release_pending: Option<SavepointName>,
    /// The finished member's savepoint the current member's first batch was sent to release:
    /// if that member is dropped, whether the release ran is unknown, and the undo releases
    /// it again, tolerating its absence.
    pub(super) releasing: Option<SavepointName>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field(
                "open_group_members",
                &self.group.as_ref().map(|g| g.members),
            )
            .field("head", &self.head.seq)
            .finish()
    }
}

impl Audit {
    /// Takes the writer, counted as waiting meanwhile (a cancelled wait uncounts itself).
    pub(super) async fn lock_writer(&self) -> OwnedMutexGuard<Writer> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        Arc::clone(&self.writer).lock_owned().await
    }

    /// [`Audit::hand_over_here`] in a task of its own, so that a caller dropped mid-way
    /// (a client that went away) cannot cut a commit short.
    pub(super) async fn hand_over(self: &Arc<Self>, w: OwnedMutexGuard<Writer>) {
        if !self.due(&w) {
            return;
        }
        let audit = Arc::clone(self);
        let _ = tokio::spawn(async move { audit.hand_over_here(w).await }).await;
    }

    fn due(&self, w: &Writer) -> bool {
        w.group.as_ref().is_some_and(|g| {
            g.members > 0
                && (self.waiting.load(Ordering::SeqCst) == 0
                    || g.opened.elapsed() >= GROUP_MAX_AGE
                    || g.members >= GROUP_MAX_MEMBERS)
        })
    }

    /// Lets go of the writer. Commits the open group first when it has members and nobody
    /// is waiting to join it, or when it reached its age or size limit. Only for callers
    /// that cannot be dropped mid-way (a spawned task).
    pub(super) async fn hand_over_here(&self, mut w: OwnedMutexGuard<Writer>) {
        let alerts = if self.due(&w) {
            self.commit_group(&mut w).await
        } else {
            Vec::new()
        };
        drop(w);
        self.deliver(&alerts);
    }

    /// Commits the open group, if it has members, whoever was meant to. The liveness
    /// backstop of a member whose group was left open.
    pub(super) async fn flush(&self) {
        let mut w = Arc::clone(&self.writer).lock_owned().await;
        let alerts = if w.group.as_ref().is_some_and(|g| g.members > 0) {
            self.commit_group(&mut w).await
        } else {
            Vec::new()
        };
        drop(w);
        self.deliver(&alerts);
    }

    /// COMMIT, then (and only then) the in-memory head, the live events in chain order and
    /// the members' acknowledgement. A failed commit fails every member (AUD-2) and puts
    /// the pending head back to the committed one. Returns the alerts to deliver.
    async fn commit_group(&self, w: &mut Writer) -> Vec<crate::alerts::Alert> {
        // A dropped member's savepoint is undone first, or COMMIT would keep its writes.
        if settle(w, self).await.is_err() {
            return Vec::new();
        }
        let Some(group) = w.group.take() else {
            return Vec::new();
        };
        // The COMMIT ends every savepoint still open with the transaction.
        w.release_pending = None;
        w.releasing = None;
        let Group {
            conn,
            done,
            live,
            alerts,
            rows,
            ..
        } = group;
        // The rows and the COMMIT succeed together or the whole group rolls back (dropping
        // an uncommitted `GroupConn` rolls it back): no member is acknowledged without its
        // audit rows.
        let written = conn.commit(&rows).await;
        match written {
            Ok(()) => {
                let head = w.head;
                self.publish_commit(w, head, live);
                done.send_replace(Some(Ok(())));
                alerts
            }
            Err(e) => {
                tracing::error!(error = %e, "committing an audit group failed; its actions fail");
                w.head = self.head();
                done.send_replace(Some(Err(Arc::from(e.to_string()))));
                Vec::new()
            }
        }
    }

    /// After a group's COMMIT, and only then, with the writer held: the group's head
    /// becomes the in-memory head, and its events go to live subscribers, under the writer
    /// lock and so in chain order (WEB-8). Both writers end their groups with it.
    pub(super) fn publish_commit(&self, w: &mut Writer, head: Head, live: Vec<Arc<LiveEvent>>) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        *self.head.lock().unwrap_or_else(|e| e.into_inner()) = head;
        w.head = head;
        self.committed.send_replace(head);
        for event in live {
            let _ = self.live.send(event);
        }
    }

    /// Fails the open group without committing: its transaction rolls back.
    pub(super) fn abandon_group(&self, w: &mut Writer, why: &str) {
        if let Some(group) = w.group.take() {
            tracing::error!(reason = why, "audit group rolled back; its actions fail");
            group.done.send_replace(Some(Err(Arc::from(why))));
        }
        w.head = self.head();
        w.undo_savepoint = None;
        w.release_pending = None;
        w.releasing = None;
    }

    pub(super) fn deliver(&self, alerts: &[crate::alerts::Alert]) {
        for alert in alerts {
            for sink in &self.sinks {
                sink.deliver(alert);
            }
        }
    }
}

/// The most rows in one INSERT statement (11 parameters each; SQLite allows 32,766).
const ROWS_PER_STATEMENT: usize = 256;
/// Statements for up to this many rows stay prepared on the writer connection (the sizes
/// a group usually has); larger ones are prepared for their one use.
const CACHED_ROWS: usize = 16;

/// Inserts one statement's worth of a group's audit rows (at most [`ROWS_PER_STATEMENT`]),
/// and commits after them when `commit`: one round trip to the writer connection for a whole
/// group instead of one per event, and none more for the `COMMIT`.
async fn insert_rows(
    conn: &mut SqliteConnection,
    chunk: &[PendingRow],
    commit: bool,
) -> sqlx::Result<()> {
    let mut sql = insert_rows_sql(chunk.len());
    if commit {
        sql.push_str(";COMMIT");
    }
    // Built from the row count only: every value is a bound parameter.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(chunk.len() <= CACHED_ROWS);
    for row in chunk {
        query = query
            .bind(row.seq)
            .bind(row.at.as_str())
            .bind(row.actor.as_str())
            .bind(row.action)
            .bind(row.target.as_str())
            .bind(row.outcome)
            .bind(row.correlation_id.as_str())
            .bind(row.client_addr.as_str())
            .bind(row.details.as_str())
            .bind(&row.prev_hash[..])
            .bind(&row.hash[..]);
    }
    query.execute(conn).await?;
    Ok(())
}

/// The INSERT of `rows` audit rows (11 parameters each, in [`PendingRow`]'s order), for
/// both writers.
pub(super) fn insert_rows_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO audit_events (seq, at, actor, action, target, outcome, correlation_id, client_addr, details, prev_hash, hash) VALUES {values}"
    )
}

/// Undoes the savepoint a dropped member left open, and releases its predecessor's if the
/// dropped member's first batch was to do it and may not have. When that fails the group is
/// broken and is rolled back whole.
pub(super) async fn settle(w: &mut Writer, audit: &Audit) -> Result<(), AuditError> {
    let Some(name) = w.undo_savepoint else {
        return Ok(());
    };
    let Some(group) = w.group.as_mut() else {
        w.undo_savepoint = None;
        w.releasing = None;
        return Ok(());
    };
    // Cleared only once the undo is done: a holder dropped in between leaves it for the next
    // one, and each step finds nothing to do the second time.
    let steps = [Some(name.undo()), w.releasing.map(SavepointName::release)];
    for step in steps.into_iter().flatten() {
        match sqlx::raw_sql(step).execute(&mut *group.conn).await {
            Ok(_) => {}
            // The member was dropped before its first batch (which opens its savepoint, after
            // releasing its predecessor's) ran that far: nothing of it to undo, or nothing
            // left to release. The two savepoints' names differ, so neither step can reach
            // the other's.
            Err(e) if never_opened(&e) => {}
            Err(e) => {
                audit.abandon_group(w, "undoing a failed transaction's savepoint failed");
                return Err(e.into());
            }
        }
    }
    w.undo_savepoint = None;
    w.releasing = None;
    Ok(())
}

/// The error of `ROLLBACK TO` a savepoint that does not exist.
fn never_opened(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.message().starts_with("no such savepoint"))
}
