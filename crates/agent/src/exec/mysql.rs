//! MySQL and MariaDB targets. The server's flavour is read once per pool (`SELECT VERSION()`),
//! because the two spell the statement timeout differently: MariaDB's `max_statement_time`
//! (seconds, every statement) and MySQL's `max_execution_time` (milliseconds, `SELECT` only).
//! The timeout is set on the session before the statement, never by rewriting the statement.
//! Reads run with the session set to `TRANSACTION READ ONLY` and inside
//! `START TRANSACTION READ ONLY … ROLLBACK`, begun in the session's setup message and rolled
//! back as the connection goes back to its pool ([`session`]); writes and DDL inside
//! `START TRANSACTION … COMMIT` (DDL commits implicitly, as MySQL always does). Statements go
//! through the binary protocol as prepared statements, which hold exactly one statement, and
//! each connection keeps the ones it prepared, by exact text, never closing one while it
//! lives ([`STATEMENT_CACHE`]).
//! When the store does not answer in time, the agent kills the query from another connection
//! (`KILL QUERY`), which covers MySQL writes that have no server-side timeout. TLS follows the
//! URL's `ssl-mode`. Pooled connections are not pinged before each job (one round trip
//! less); one that died while idle fails in the session's setup and the job moves to another
//! connection, never once the statement was sent (EX-3). A connection that ran a write, DDL or
//! admin job is closed, not pooled again: nothing such a job did to its session reaches the
//! next job, and the driver has no session reset; the next such job takes a connection the
//! pool opened ahead for it, one no job has used (a pool of more than one). A read's
//! connection is pooled, once what a function the read called could leave on the session past
//! its `ROLLBACK` is set back, as the connection goes back to its pool, after the result has
//! left ([`session`]).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use portcullis_core::{ConnectionName, OperationClass};
use portcullis_proto::api::{Column, ExecError};
use serde_json::Value;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{
    AssertSqlSafe, Column as _, Connection, Executor, MySql, MySqlConnection, Row, SqlSafeStr,
    Statement as _, ValueRef,
};
use tokio::sync::OnceCell;

use super::limits::Rows;
use super::pool::StorePool;
use super::sink::{RowSink, Summary};
use super::values::mysql::{type_name, value};
use super::{FailureCode, Limits, failure, no_answer};
use crate::config::TargetConfig;
use crate::permit::Permit;
use session::{ReadSession, TIME_ZONE, set_back_on_release};

mod session;

/// How many prepared statements a connection keeps, by exact text; a connection whose cache
/// is full is closed after its job rather than closing one of them. Closing a prepared
/// statement (`COM_STMT_CLOSE`) is a message the server does not answer, so it is
/// acknowledged late (delayed ACK), and the driver's next message on the connection, too
/// small to be sent while one is unacknowledged (Nagle), waited for that acknowledgement:
/// with each statement prepared and closed, a read's connection went back to its pool, and a
/// write's `COMMIT` was sent, milliseconds late. Kept statements are never closed while the
/// connection lives, and a statement run again is executed without its prepare, one round
/// trip less. The server prepares a kept statement again itself when a table it reads
/// changed, and each result's columns come with its rows; a kept statement's result with no
/// rows is described by its prepare, so after such a change its column list can be the one
/// from before it. A connection holds at most this many statements on the server (its
/// `max_prepared_stmt_count` is global).
const STATEMENT_CACHE: usize = 32;

/// How much longer than the server-side timeout the agent waits before killing the query.
const GRACE: Duration = Duration::from_secs(2);

/// How long the agent tries to kill a query that outlived its timeout: to connect, and to
/// have its `KILL QUERY` answered.
const KILL_WITHIN: Duration = Duration::from_secs(2);

/// MariaDB `ER_STATEMENT_TIMEOUT`, MySQL `ER_QUERY_TIMEOUT`, and `ER_QUERY_INTERRUPTED`
/// (what `KILL QUERY` raises).
const TIMEOUT_ERRORS: [u16; 3] = [1969, 3024, 1317];
/// `ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION`, `ER_OPTION_PREVENTS_STATEMENT` (read_only
/// server), `ER_READ_ONLY_MODE`.
const READ_ONLY_ERRORS: [u16; 3] = [1792, 1290, 1836];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    MariaDb,
    MySql,
}

#[derive(Debug)]
struct Credential {
    pool: StorePool<MySql>,
    flavour: OnceCell<Flavour>,
    /// How a read's session is set back; read credentials only, found at their first read,
    /// and used by their pool as each connection comes back.
    read_session: Arc<OnceCell<ReadSession>>,
}

/// A MySQL/MariaDB connection with one pool per allowed class.
#[derive(Debug)]
pub struct MySqlTarget {
    name: ConnectionName,
    credentials: BTreeMap<OperationClass, Credential>,
    /// Takes the session as unable to list its user variables (tests only).
    #[cfg(feature = "test-hooks")]
    unlisted_user_variables: std::sync::atomic::AtomicBool,
    /// Leaves writes without a server-side timeout (tests only).
    #[cfg(feature = "test-hooks")]
    untimed_writes: std::sync::atomic::AtomicBool,
}

impl MySqlTarget {
    /// Builds the pools; nothing connects until the first job.
    pub fn open(target: &TargetConfig) -> anyhow::Result<MySqlTarget> {
        let mut credentials = BTreeMap::new();
        for class in &target.allow {
            // The session time zone is UTC (the driver's default), so TIMESTAMP values are
            // instants and are shown with `Z`.
            let read_session = Arc::new(OnceCell::new());
            let pool = StorePool::open_with(
                target,
                *class,
                |url| {
                    Ok(MySqlConnectOptions::from_str(url)?
                        .timezone(Some(TIME_ZONE.to_owned()))
                        .statement_cache_capacity(STATEMENT_CACHE))
                },
                |options| {
                    if *class == OperationClass::Read {
                        let session = Arc::clone(&read_session);
                        set_back_on_release(options, session, target.name.clone())
                    } else if target.pool_size > 1 {
                        // A write's connection is closed after its job, never pooled again
                        // (`run`), so each would open a new one. The pool keeps one opened
                        // ahead instead, by itself in the background, from the first job's
                        // close on: a connection no job has used, its session as new,
                        // which the next job takes without waiting for a connect. One that
                        // died while idle fails in the job's setup, before any of the
                        // statement was sent, and the job moves to another (EX-3). Not in a
                        // pool of one: while the store is down, the driver's attempts to
                        // open it (retried for minutes) would hold the pool's only place.
                        options.min_connections(1)
                    } else {
                        options
                    }
                },
            )?;
            credentials.insert(
                *class,
                Credential {
                    pool,
                    flavour: OnceCell::new(),
                    read_session,
                },
            );
        }
        Ok(MySqlTarget {
            name: target.name.clone(),
            credentials,
            #[cfg(feature = "test-hooks")]
            unlisted_user_variables: std::sync::atomic::AtomicBool::new(false),
            #[cfg(feature = "test-hooks")]
            untimed_writes: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Makes the next pool's probe take the session as unable to list its user variables,
    /// as on a MySQL server whose performance schema the credential may not read. Test-only:
    /// it lets a test prove the fallback (read connections closed after each read) on
    /// MariaDB, whose sessions can always list them. The agent never calls it.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn take_user_variables_as_unlisted(&self) {
        self.unlisted_user_variables
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes the session's setup leave writes without a server-side timeout, as on MySQL,
    /// whose `max_execution_time` bounds only `SELECT`. Test-only: it lets a test prove the
    /// agent's own stop (`KILL QUERY`) on MariaDB, whose `max_statement_time` stops every
    /// statement itself. The agent never calls it.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn take_writes_as_untimed(&self) {
        self.untimed_writes
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn untimed(&self, class: OperationClass) -> bool {
        #[cfg(feature = "test-hooks")]
        return class != OperationClass::Read
            && self
                .untimed_writes
                .load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(feature = "test-hooks"))]
        {
            let _ = class;
            false
        }
    }

    fn unlisted_user_variables(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self
            .unlisted_user_variables
            .load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(feature = "test-hooks"))]
        false
    }

    pub async fn execute(
        &self,
        permit: &Permit<'_>,
        sink: &mut RowSink,
    ) -> Result<Summary, ExecError> {
        self.run(permit.class(), permit.statement(), Limits::of(permit), sink)
            .await
    }

    /// How many connections of the `class` credential sit idle in their pool. Test-only: it
    /// lets a test wait until a connection is back in its pool. The agent never calls it.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn idle_connections(&self, class: OperationClass) -> usize {
        self.credentials.get(&class).map_or(0, |c| c.pool.idle())
    }

    /// How many connections of the `class` credential are out of their pool: serving a job,
    /// or on their way back or to being closed. Test-only, like [`Self::idle_connections`].
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn busy_connections(&self, class: OperationClass) -> usize {
        self.credentials.get(&class).map_or(0, |c| c.pool.busy())
    }

    /// Runs `statement` as `class` without a permit. Test-only: it exists so tests can prove
    /// the store-side guards (read-only transaction, timeout, caps) hold on their own, for
    /// statements the gate would refuse. The agent never calls it.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn run_unchecked(
        &self,
        class: OperationClass,
        statement: &str,
        limits: Limits,
    ) -> Result<portcullis_proto::api::ExecResult, ExecError> {
        let mut sink = RowSink::collect();
        let summary = self.run(class, statement, limits, &mut sink).await?;
        Ok(sink.into_result(summary))
    }

    async fn run(
        &self,
        class: OperationClass,
        statement: &str,
        limits: Limits,
        sink: &mut RowSink,
    ) -> Result<Summary, ExecError> {
        let credential = self.credentials.get(&class).ok_or_else(|| {
            failure(
                FailureCode::StoreUnavailable,
                format!("connection {} has no {class} credential", self.name),
            )
        })?;
        let pool = &credential.pool;
        // Pooled connections are not tested before use (`pool.rs`): one that died
        // while idle (the server restarted, an administrator killed its session) fails in the
        // session's setup, before any of the statement was sent, and the job moves to another
        // connection, at most once per connection the pool can hold. A connection that fails
        // after the setup is never retried (EX-3).
        let mut conn = pool.acquire(&limits).await?;
        let mut spares = pool.spares();
        let unlisted = self.unlisted_user_variables();
        let untimed = self.untimed(class);
        let id = loop {
            match setup(
                credential, &mut conn, class, statement, limits, unlisted, untimed,
            )
            .await
            {
                Ok(id) => break id,
                Err(Setup::Refused(refused)) => return Err(refused),
                Err(Setup::Failed(e)) => {
                    if let Some(fresh) = pool.replace(conn, &mut spares, &e, &limits).await? {
                        conn = fresh;
                        continue;
                    }
                    // Nothing of the job ran: a lost connection is `store_unavailable`
                    // here, whatever the class.
                    return Err(pool.error(&e, OperationClass::Read, database_error));
                }
                Err(Setup::TimedOut) => {
                    conn.close_on_drop();
                    return Err(pool.unavailable("the session could not be prepared in time"));
                }
            }
        };
        let outcome = tokio::time::timeout(
            limits.timeout + GRACE,
            run_on(&mut conn, class, statement, limits, sink),
        )
        .await;
        if class != OperationClass::Read {
            // A write, DDL or admin job commits whatever it did to its session too: session
            // variables (`SET SESSION foreign_key_checks = 0`, `sql_log_bin`, `sql_mode`),
            // user variables a function set, temporary tables, `LOCK TABLES`. The next job on
            // the connection would inherit them, so the connection is closed rather than
            // pooled (EX-3); the driver offers no session reset (`COM_RESET_CONNECTION`). A
            // read's session is set back as its connection goes back to its pool, or the
            // connection is closed there when it cannot be ([`session`]).
            conn.close_on_drop();
        }
        // A full statement cache would close its least recently used statement for the next
        // new one, whatever this job's outcome: the connection goes instead
        // ([`STATEMENT_CACHE`]).
        if conn.cached_statements_size() >= STATEMENT_CACHE {
            conn.close_on_drop();
        }
        match outcome {
            Ok(Ok((result, drop_connection))) => {
                if drop_connection {
                    conn.close_on_drop();
                }
                Ok(result)
            }
            Ok(Err(e)) => Err(pool.error(&e, class, database_error)),
            Err(_) => {
                conn.close_on_drop();
                self.kill(pool, id).await;
                Err(no_answer(class, limits))
            }
        }
    }

    /// Stops a query that outlived its timeout, from a connection of its own, outside the
    /// pool: the timed-out connection still holds its place there, so a pool of one, or a
    /// pool whose every connection is serving a job, would have none to give, and the query
    /// would run on (EX-3). Bounded by [`KILL_WITHIN`].
    async fn kill(&self, pool: &StorePool<MySql>, id: u64) {
        let kill = async {
            let mut other = pool.connect().await?;
            let killed = sqlx::raw_sql(AssertSqlSafe(format!("KILL QUERY {id}")))
                .execute(&mut other)
                .await;
            // Closed in a task of its own: the job's answer waits for the kill, not for the
            // close of the connection that sent it.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(KILL_WITHIN, other.close()).await;
            });
            killed.map(|_| ())
        };
        let error = match tokio::time::timeout(KILL_WITHIN, kill).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => pool.url().redact(&e.to_string()),
            Err(_) => format!("no answer within {} ms", KILL_WITHIN.as_millis()),
        };
        tracing::warn!(connection = %self.name, %error, "could not kill a query that outlived its timeout");
    }

    pub async fn close(&self) {
        for credential in self.credentials.values() {
            credential.pool.close().await;
        }
    }
}

/// Why a job's session could not be set up; nothing of the job's statement was sent.
enum Setup {
    /// The job is refused (a preview of a table a rollback does not undo).
    Refused(ExecError),
    Failed(sqlx::Error),
    TimedOut,
}

/// Sets up the session for one job: a preview's check that its tables are transactional,
/// the server's flavour (once per pool), for a read how its pool sets a read's session back
/// (once per pool, [`session`]), then in one message the statement timeout, for a read the
/// read-only session and the read's transaction, and the connection id (to kill the query
/// if it outlives its timeout), which it returns.
async fn setup(
    credential: &Credential,
    conn: &mut MySqlConnection,
    class: OperationClass,
    statement: &str,
    limits: Limits,
    unlisted: bool,
    untimed: bool,
) -> Result<u64, Setup> {
    if limits.dry_run {
        match transactional(&mut *conn, statement).await {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => return Err(Setup::Refused(refused)),
            Err(e) => return Err(Setup::Failed(e)),
        }
    }
    let prepared = async {
        let flavour = *credential
            .flavour
            .get_or_try_init(|| flavour(&mut *conn))
            .await?;
        // One message, one round trip: the settings, then a row with the connection's id.
        let mut session = match flavour {
            Flavour::MariaDb if untimed => "SET SESSION max_statement_time = 0".to_owned(),
            Flavour::MariaDb => format!(
                "SET SESSION max_statement_time = {}.{:03}",
                limits.timeout_ms() / 1_000,
                limits.timeout_ms() % 1_000
            ),
            Flavour::MySql => {
                format!("SET SESSION max_execution_time = {}", limits.timeout_ms())
            }
        };
        if class == OperationClass::Read {
            // How the pool sets a read's session back as its connection comes back
            // (`session`): found once per pool, on a connection of its own, before the
            // pool's first read.
            credential
                .read_session
                .get_or_try_init(|| async {
                    let probe = credential.pool.connect().await?;
                    let found = ReadSession::probe(probe, flavour, unlisted).await?;
                    if found.close_after_each_read() {
                        tracing::warn!(
                            connection = %credential.pool.connection(),
                            "this MariaDB/MySQL session cannot list its own user variables (on MySQL: grant SELECT on performance_schema.user_variables_by_thread and keep the performance schema on); read connections are closed after each read so that none a function left reaches the next read"
                        );
                    }
                    Ok::<ReadSession, sqlx::Error>(found)
                })
                .await?;
            // `START TRANSACTION READ ONLY` alone does not stop DDL: DDL commits the
            // transaction implicitly and then runs outside it. The session characteristic
            // covers that implicit transaction too. Set on every read, so nothing a
            // previous statement did to the session can carry over. The read's transaction
            // begins in the same message (`run_on`).
            session.push_str("; SET SESSION TRANSACTION READ ONLY; START TRANSACTION READ ONLY");
        }
        session.push_str("; SELECT CONNECTION_ID()");
        let rows = sqlx::raw_sql(AssertSqlSafe(session))
            .fetch_all(&mut *conn)
            .await?;
        let id: u64 = rows
            .last()
            .ok_or_else(|| {
                sqlx::Error::Protocol("the session's setup returned no connection id".into())
            })?
            .try_get(0)?;
        Ok::<u64, sqlx::Error>(id)
    };
    match tokio::time::timeout(limits.timeout, prepared).await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e)) => Err(Setup::Failed(e)),
        Err(_) => Err(Setup::TimedOut),
    }
}

/// A preview rolls back only what InnoDB rolls back: every table the statement touches must be
/// transactional, or the preview is refused before anything runs.
async fn transactional(
    conn: &mut MySqlConnection,
    statement: &str,
) -> Result<Result<(), ExecError>, sqlx::Error> {
    let tables = match portcullis_core::analyse(portcullis_core::ConnectionKind::Mysql, statement) {
        Ok(op) => op.tables,
        Err(e) => return Ok(Err(failure(FailureCode::StatementDenied, e.to_string()))),
    };
    for table in tables {
        let (schema, name) = match table.split_once('.') {
            Some((s, n)) => (Some(s.to_owned()), n.to_owned()),
            None => (None, table.clone()),
        };
        let engine: Option<Option<String>> = sqlx::query_scalar(
            "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND LOWER(TABLE_NAME) = ?",
        )
        .bind(schema)
        .bind(&name)
        .fetch_optional(&mut *conn)
        .await?;
        let engine = engine.flatten().unwrap_or_default();
        if !engine.eq_ignore_ascii_case("InnoDB") {
            return Ok(Err(failure(
                FailureCode::PreviewRefused,
                format!(
                    "table {table} uses the {} engine, which a rollback does not undo; no preview",
                    if engine.is_empty() {
                        "unknown"
                    } else {
                        engine.as_str()
                    }
                ),
            )));
        }
    }
    Ok(Ok(()))
}

async fn flavour(conn: &mut MySqlConnection) -> Result<Flavour, sqlx::Error> {
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut *conn)
        .await?;
    Ok(if version.to_ascii_lowercase().contains("mariadb") {
        Flavour::MariaDb
    } else {
        Flavour::MySql
    })
}

fn database_error(db: &dyn sqlx::error::DatabaseError) -> FailureCode {
    let number = db
        .try_downcast_ref::<MySqlDatabaseError>()
        .map(MySqlDatabaseError::number);
    match number {
        Some(n) if TIMEOUT_ERRORS.contains(&n) => FailureCode::StatementTimeout,
        Some(n) if READ_ONLY_ERRORS.contains(&n) => FailureCode::ReadOnlyViolation,
        _ => FailureCode::StoreError,
    }
}

/// Runs the statement in its transaction; the flag asks to drop the connection because a cap
/// left rows unread.
async fn run_on(
    conn: &mut PoolConnection<MySql>,
    class: OperationClass,
    statement: &str,
    limits: Limits,
    sink: &mut RowSink,
) -> Result<(Summary, bool), sqlx::Error> {
    let conn: &mut MySqlConnection = conn;
    let mut rows = Rows::new(limits, sink);
    if class == OperationClass::Read {
        // The read's `START TRANSACTION READ ONLY` travelled with its setup, and its
        // `ROLLBACK` travels with the message that sets its session back as the connection
        // goes back to its pool ([`session`]), or the connection is closed, which ends it
        // too: the result does not wait for it (EX-3).
        let (_, full) = run_statement(conn, statement, &mut rows, true).await?;
        return Ok((rows.finish(), full));
    }
    let mut tx = conn.begin_with("START TRANSACTION").await?;
    let (affected, _) = run_statement(&mut tx, statement, &mut rows, false).await?;
    if limits.dry_run {
        // A preview: nothing it did survives.
        tx.rollback().await?;
        rows.set_affected(affected);
    } else {
        tx.commit().await?;
        rows.set_affected(affected);
    }
    Ok((rows.finish(), false))
}

/// Runs the statement on `conn`, inside the job's transaction, into `rows`: its affected
/// count, and for a read whether a cap stopped it with rows left unread.
async fn run_statement(
    conn: &mut MySqlConnection,
    statement: &str,
    rows: &mut Rows<'_>,
    read: bool,
) -> Result<(u64, bool), sqlx::Error> {
    let mut affected = 0;
    {
        // One prepared statement, kept on the connection ([`STATEMENT_CACHE`]): a write's
        // RETURNING rows and its affected count both come back on this stream.
        let query = sqlx::query(AssertSqlSafe(statement.to_owned())).persistent(true);
        let mut stream = (&mut *conn).fetch_many(query);
        while let Some(item) = stream.try_next().await? {
            match item {
                sqlx::Either::Left(done) => affected += done.rows_affected(),
                sqlx::Either::Right(row) => {
                    if !rows.has_columns() {
                        rows.set_columns(columns(&row));
                    }
                    rows.offer(|| row_values(&row)).await;
                    if read && rows.is_full() {
                        return Ok((affected, true));
                    }
                }
            }
        }
    }
    if !rows.has_columns() {
        let prepared = (&mut *conn)
            .prepare(AssertSqlSafe(statement.to_owned()).into_sql_str())
            .await?;
        rows.set_columns(
            prepared
                .columns()
                .iter()
                .map(|c| Column {
                    name: c.name().to_owned(),
                    type_name: type_name(c.type_info()).to_owned(),
                })
                .collect(),
        );
    }
    Ok((affected, false))
}

fn columns(row: &MySqlRow) -> Vec<Column> {
    row.columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            type_name: type_name(c.type_info()).to_owned(),
        })
        .collect()
}

fn row_values(row: &MySqlRow) -> Vec<Value> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let type_name = type_name(column.type_info());
            match row.try_get_raw(i) {
                Ok(raw) if raw.is_null() => Value::Null,
                // The bytes as the binary protocol sent them; `value` reads them by type.
                Ok(_) => match row.try_get_unchecked::<&[u8], _>(i) {
                    Ok(bytes) => value(type_name, bytes),
                    Err(_) => super::values::unsupported(type_name),
                },
                Err(_) => super::values::unsupported(type_name),
            }
        })
        .collect()
}
