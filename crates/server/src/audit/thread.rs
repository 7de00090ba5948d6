//! The writer thread: audited transactions run whole, back to back, on one thread that owns a
//! writer connection of its own, and share commits (group commit) like [`AuditTx`]s do.
//!
//! An [`AuditTx`] pays a hand-off to its connection's thread and back for every statement
//! batch, and one more task wake-up for each member of a commit group to take the writer in
//! turn: those hand-offs, not SQLite, were most of the time the writer was held. Here a
//! transaction is a closure sent to the thread; the thread takes whatever is queued, begins a
//! group (`BEGIN IMMEDIATE` and the chain-head check), runs each closure inside a savepoint of
//! its own (one that fails rolls back alone), appends the members' audit rows, commits with
//! one fsync, and only then answers each member (AUD-2). The hot paths use it: a request's
//! creation, a claim's lease of a queued job and an agent's report; everything else still
//! uses an [`AuditTx`].
//!
//! The two writers share one chain and never write at the same time: the thread holds the
//! audit writer lock for each of its groups, and commits an [`AuditTx`] group left open first.
//!
//! [`AuditTx`]: super::AuditTx

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Appended, Audit, AuditError, Context, Event, Head, PendingRow, insert_alert};
use crate::error::ApiError;
use crate::store::Store;

/// The longest the thread keeps taking queued transactions into one group before it
/// commits: a steady stream still commits regularly.
const GROUP_MAX_AGE: Duration = Duration::from_millis(2);
/// The most transactions in one group.
const GROUP_MAX_MEMBERS: usize = 128;
/// The most rows in one INSERT of a group's audit rows (11 parameters each). Every size up
/// to it stays prepared on the connection; a larger group takes several.
const ROWS_PER_STATEMENT: usize = 16;

/// A transaction for the thread: run inside its savepoint, then told the group's outcome.
trait Job: Send {
    /// Runs the transaction's work; `false` when it failed and its savepoint is to be undone.
    fn run(&mut self, member: &mut Member<'_>) -> bool;
    /// Answers the caller: the work's result once its group committed, or why not.
    fn finish(self: Box<Self>, committed: Result<(), Arc<str>>);
}

struct Work<F, R> {
    work: Option<F>,
    result: Option<Result<R, ApiError>>,
    reply: oneshot::Sender<Result<R, ApiError>>,
    /// Counted in [`Audit::transactions_in_flight`] until dropped, answered or not.
    _counted: InFlight,
}

/// One transaction counted as given to the writer thread and not yet answered.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<F, R> Job for Work<F, R>
where
    F: FnOnce(&mut Member<'_>) -> Result<R, ApiError> + Send,
    R: Send,
{
    fn run(&mut self, member: &mut Member<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A panic in one transaction's work fails that transaction, not the thread.
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| work(member))).unwrap_or_else(|_| {
                Err(ApiError::Internal(anyhow::anyhow!(
                    "an audited transaction panicked; it was rolled back"
                )))
            });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), Arc<str>>) {
        let answer = match (self.result, committed) {
            // Its own failure, whatever the group did: nothing of it was kept.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(why)) => Err(AuditError::GroupFailed(why).into()),
            (None, Ok(())) => Err(ApiError::Internal(anyhow::anyhow!(
                "an audited transaction was committed without running"
            ))),
        };
        // A caller that went away is not told; its transaction committed or not all the same.
        let _ = self.reply.send(answer);
    }
}

/// What a transaction's work sees: the writer connection inside its savepoint, and the chain
/// to append its events to.
pub struct Member<'a> {
    conn: &'a rusqlite::Connection,
    group: &'a mut GroupState,
}

impl Member<'_> {
    /// The writer connection, inside this transaction's savepoint.
    pub fn conn(&self) -> &rusqlite::Connection {
        self.conn
    }

    /// Appends an event to the chain, in this transaction: committed with its change or not
    /// at all, and never acknowledged before the commit (AUD-2).
    pub fn append_at(&mut self, ctx: &Context, event: Event, now_ms: i64) -> Result<i64, ApiError> {
        let made = Appended::make(self.group.head, ctx, event, now_ms);
        if let Some(alert) = &made.alert {
            self.conn.prepare_cached(insert_alert!())?.execute((
                now_ms,
                alert.severity.as_str(),
                made.row.action,
                &made.row.actor,
                &made.row.target,
                &made.row.details,
            ))?;
        }
        let seq = made.row.seq;
        self.group.head = made.head();
        self.group.live.push(made.live);
        self.group.alerts.extend(made.alert);
        self.group.rows.push(made.row);
        Ok(seq)
    }
}

/// The open group's chain: its head with the members run so far, and what they appended.
#[derive(Default)]
struct GroupState {
    head: Head,
    rows: Vec<PendingRow>,
    live: Vec<Arc<crate::events::LiveEvent>>,
    alerts: Vec<crate::alerts::Alert>,
}

impl GroupState {
    fn mark(&self) -> (Head, usize, usize, usize) {
        (
            self.head,
            self.rows.len(),
            self.live.len(),
            self.alerts.len(),
        )
    }

    fn undo_to(&mut self, (head, rows, live, alerts): (Head, usize, usize, usize)) {
        self.head = head;
        self.rows.truncate(rows);
        self.live.truncate(live);
        self.alerts.truncate(alerts);
    }
}

/// The queue to the writer thread, started with the [`Audit`] that owns it; the thread ends
/// when the `Audit` is dropped.
pub(super) struct WriterThread {
    queue: Sender<Box<dyn Job>>,
    in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for WriterThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterThread")
    }
}

impl WriterThread {
    /// Starts the thread. Its connection is opened at its first transaction.
    pub(super) fn start(audit: Weak<Audit>, store: Store) -> std::io::Result<WriterThread> {
        let (queue, jobs) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("portcullis-audit-writer".into())
            .spawn(move || run(&jobs, &audit, &store, &runtime))?;
        Ok(WriterThread {
            queue,
            in_flight: Arc::default(),
        })
    }

    /// A queue nobody reads: every transaction sent to it fails.
    pub(super) fn stopped() -> WriterThread {
        WriterThread {
            queue: std::sync::mpsc::channel().0,
            in_flight: Arc::default(),
        }
    }
}

impl Audit {
    /// Runs `work` as one audited transaction on the writer thread and returns its result
    /// once the transaction is durably committed with its audit events (AUD-2). An error
    /// means nothing of it was committed. `work` runs to its end, and commits, even when the
    /// caller stops waiting.
    pub async fn transact<R, F>(&self, work: F) -> Result<R, ApiError>
    where
        F: FnOnce(&mut Member<'_>) -> Result<R, ApiError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Work {
            work: Some(work),
            result: None,
            reply,
            _counted: InFlight::new(&self.thread.in_flight),
        });
        if self.thread.queue.send(job).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// How many transactions the writer thread has been given and not yet answered: queued,
    /// running, or waiting for their group's commit.
    pub fn transactions_in_flight(&self) -> usize {
        self.thread.in_flight.load(Ordering::Acquire)
    }
}

fn stopped() -> ApiError {
    AuditError::GroupFailed(Arc::from("the audit writer thread stopped")).into()
}

/// The thread: one group per turn, from whatever is queued, until the `Audit` is gone.
fn run(
    jobs: &Receiver<Box<dyn Job>>,
    audit: &Weak<Audit>,
    store: &Store,
    runtime: &tokio::runtime::Handle,
) {
    let mut conn: Option<rusqlite::Connection> = None;
    while let Ok(first) = jobs.recv() {
        let Some(audit) = audit.upgrade() else {
            first.finish(Err(Arc::from("the server is shutting down")));
            continue;
        };
        let conn = match &conn {
            Some(conn) => conn,
            None => match store.open_thread_writer() {
                Ok(opened) => conn.insert(opened),
                Err(e) => {
                    tracing::error!(error = %e, "opening the audit writer thread's connection failed; its transactions fail");
                    first.finish(Err(Arc::from(format!(
                        "the state store could not be opened for writing: {e}"
                    ))));
                    continue;
                }
            },
        };
        commit_group(&audit, conn, jobs, first, runtime);
    }
}

/// Runs `first` and whatever else is queued as one group and commits it.
fn commit_group(
    audit: &Audit,
    conn: &rusqlite::Connection,
    jobs: &Receiver<Box<dyn Job>>,
    first: Box<dyn Job>,
    runtime: &tokio::runtime::Handle,
) {
    let mut writer = audit.writer.blocking_lock();
    // An `AuditTx` group left open for more members to join: commit it (its members wait for
    // that), then take the writer again.
    while let Some(members) = writer.group.as_ref().map(|g| g.members) {
        if members == 0 {
            // Nobody holds it and nobody was released into it: nothing to keep.
            audit.abandon_group(&mut writer, "an empty audit group was left open");
            break;
        }
        drop(writer);
        runtime.block_on(audit.flush());
        writer = audit.writer.blocking_lock();
    }
    let expected = audit.head();
    let begun = begin(conn).and_then(|found| {
        if found == expected {
            Ok(())
        } else {
            Err(AuditError::HeadMismatch {
                expected: expected.seq,
                found: found.seq,
            }
            .to_string())
        }
    });
    if let Err(why) = begun {
        tracing::error!(error = %why, "beginning an audit group failed; its actions fail");
        rollback(conn);
        drop(writer);
        fail(vec![first], jobs, &why);
        return;
    }

    let opened = Instant::now();
    let mut group = GroupState {
        head: expected,
        ..GroupState::default()
    };
    let mut members: Vec<Box<dyn Job>> = Vec::new();
    let mut next = Some(first);
    while let Some(mut job) = next.take() {
        let mark = group.mark();
        let ran = savepoint(conn, "SAVEPOINT member").and_then(|()| {
            let ok = job.run(&mut Member {
                conn,
                group: &mut group,
            });
            if ok {
                savepoint(conn, "RELEASE member").map(|()| true)
            } else {
                savepoint(conn, "ROLLBACK TO member")
                    .and_then(|()| savepoint(conn, "RELEASE member"))
                    .map(|()| false)
            }
        });
        match ran {
            Ok(true) => members.push(job),
            Ok(false) => {
                group.undo_to(mark);
                job.finish(Ok(()));
            }
            // The transaction itself is broken (SQLite rolls back on some I/O errors): the
            // whole group fails.
            Err(why) => {
                tracing::error!(error = %why, "an audit group broke; its actions fail");
                rollback(conn);
                members.push(job);
                drop(writer);
                fail(members, jobs, &why);
                return;
            }
        }
        if members.len() < GROUP_MAX_MEMBERS && opened.elapsed() < GROUP_MAX_AGE {
            // Empty or closed: the group is complete.
            next = jobs.try_recv().ok();
        }
    }

    if members.is_empty() {
        // Every member failed alone: nothing to commit.
        rollback(conn);
        return;
    }
    let GroupState {
        head,
        rows,
        live,
        alerts,
    } = group;
    match insert_rows_and_commit(conn, &rows) {
        Ok(()) => {
            audit.publish_commit(&mut writer, head, live);
            drop(writer);
            for member in members {
                member.finish(Ok(()));
            }
            audit.deliver(&alerts);
        }
        Err(why) => {
            tracing::error!(error = %why, "committing an audit group failed; its actions fail");
            rollback(conn);
            drop(writer);
            let why: Arc<str> = Arc::from(why);
            for member in members {
                member.finish(Err(Arc::clone(&why)));
            }
        }
    }
}

/// Fails `members` and every transaction still queued behind them: a group that cannot
/// begin or broke says so to all of them at once rather than one group at a time.
fn fail(members: Vec<Box<dyn Job>>, jobs: &Receiver<Box<dyn Job>>, why: &str) {
    let why: Arc<str> = Arc::from(why);
    for member in members {
        member.finish(Err(Arc::clone(&why)));
    }
    while let Ok(job) = jobs.try_recv() {
        job.finish(Err(Arc::clone(&why)));
    }
}

/// `BEGIN IMMEDIATE` and the chain head read in it.
fn begin(conn: &rusqlite::Connection) -> Result<Head, String> {
    conn.prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
        .map_err(|e| e.to_string())?;
    let mut statement = conn
        .prepare_cached(super::head_query!())
        .map_err(|e| e.to_string())?;
    let mut rows = statement.query([]).map_err(|e| e.to_string())?;
    match rows.next().map_err(|e| e.to_string())? {
        None => Ok(Head::GENESIS),
        Some(row) => {
            let seq: i64 = row.get(0).map_err(|e| e.to_string())?;
            let hash: Vec<u8> = row.get(1).map_err(|e| e.to_string())?;
            Ok(Head {
                seq,
                hash: super::to_hash(hash),
            })
        }
    }
}

fn savepoint(conn: &rusqlite::Connection, sql: &'static str) -> Result<(), String> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Ends whatever transaction is open; none open (a failed statement already ended it) is fine.
fn rollback(conn: &rusqlite::Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "rolling back an audit group failed");
    }
}

/// Inserts the group's audit rows, then commits: the group's changes and their records are
/// durable together or not at all (AUD-2).
fn insert_rows_and_commit(conn: &rusqlite::Connection, rows: &[PendingRow]) -> Result<(), String> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = super::group::insert_rows_sql(chunk.len());
        let mut statement = conn.prepare_cached(&sql).map_err(|e| e.to_string())?;
        let mut index = 1;
        for row in chunk {
            let values: [&dyn rusqlite::ToSql; 11] = [
                &row.seq,
                &row.at,
                &row.actor,
                &row.action,
                &row.target,
                &row.outcome,
                &row.correlation_id,
                &row.client_addr,
                &row.details,
                &&row.prev_hash[..],
                &&row.hash[..],
            ];
            for value in values {
                statement
                    .raw_bind_parameter(index, value)
                    .map_err(|e| e.to_string())?;
                index += 1;
            }
        }
        statement.raw_execute().map_err(|e| e.to_string())?;
    }
    conn.prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(|e| e.to_string())
}
