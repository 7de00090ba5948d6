//! PostgreSQL targets. Reads run as `BEGIN READ ONLY`, then a statement timeout set locally in
//! the same transaction, then the statement, then `ROLLBACK` (sent as the connection goes back
//! to its pool, not waited for by the result); writes and DDL as `BEGIN`, the
//! timeout, the statement, `COMMIT`. The statement goes through the extended protocol as one
//! prepared statement, which PostgreSQL refuses to hold more than one command (a second layer
//! behind the gate's parser, EX-2). Each connection keeps the statements it prepared (sqlx's
//! bounded cache, keyed by exact text), so a statement it has run before is bound and executed
//! in one round trip, without its parse and describe; one whose cached form went stale (its
//! result's columns changed, a session deallocated it) is prepared again, before anything ran.
//! TLS follows the URL's `sslmode`. Pooled connections
//! are not pinged before each job (one round trip less); one that died while idle fails at its
//! `BEGIN` and the job moves to another connection, never after the `BEGIN` (EX-3). A
//! connection that ran a write, DDL or admin job has its session reset (`DISCARD ALL`) before
//! it goes back to its pool, after the job's answer: nothing such a job did to its session
//! reaches the next job ([`discard_session`]). A read's `BEGIN` carries a check of what a
//! function the previous read called could leave past its `ROLLBACK` — a session advisory
//! lock, released, and a statement prepared by SQL, which closes the connection
//! ([`READ_SESSION_CHECK`]).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use portcullis_core::{ConnectionName, OperationClass};
use portcullis_proto::api::{Column, ExecError};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgRow};
use sqlx::{
    AssertSqlSafe, Column as _, Connection, Executor, PgConnection, Postgres, Row, SqlSafeStr,
    Statement as _, TypeInfo, ValueRef,
};

use super::limits::Rows;
use super::pool::StorePool;
use super::sink::{RowSink, Summary};
use super::values::postgres::value;
use super::{FailureCode, Limits, failure, no_answer};
use crate::config::TargetConfig;
use crate::permit::Permit;

/// How much longer than the server-side timeout the agent waits before giving up itself.
const GRACE: Duration = Duration::from_secs(2);

/// SQLSTATE `query_canceled`: raised when `statement_timeout` fires.
const QUERY_CANCELED: &str = "57014";
/// SQLSTATE `invalid_sql_statement_name`: the named prepared statement does not exist.
const INVALID_STATEMENT_NAME: &str = "26000";
/// SQLSTATE `feature_not_supported`; with "cached plan must not change result type", a
/// prepared statement whose result's columns changed since it was prepared.
const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE `read_only_sql_transaction`: the read-only transaction blocked a change.
const READ_ONLY_TRANSACTION: &str = "25006";
/// SQLSTATE `invalid_text_representation`: a text cast to a type it does not spell.
const INVALID_TEXT_REPRESENTATION: &str = "22P02";

/// A PostgreSQL connection with one pool per allowed class.
#[derive(Debug)]
pub struct PgTarget {
    name: ConnectionName,
    pools: BTreeMap<OperationClass, StorePool<Postgres>>,
}

impl PgTarget {
    /// Builds the pools; nothing connects until the first job.
    pub fn open(target: &TargetConfig) -> anyhow::Result<PgTarget> {
        let mut pools = BTreeMap::new();
        for class in &target.allow {
            let pool = StorePool::open(target, *class, |url| {
                Ok(PgConnectOptions::from_str(url)?.application_name("portcullis-agent"))
            })?;
            pools.insert(*class, pool);
        }
        Ok(PgTarget {
            name: target.name.clone(),
            pools,
        })
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
        self.pools.get(&class).map_or(0, StorePool::idle)
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
        let pool = self.pools.get(&class).ok_or_else(|| {
            failure(
                FailureCode::StoreUnavailable,
                format!("connection {} has no {class} credential", self.name),
            )
        })?;
        let mut conn = pool.acquire(&limits).await?;
        // From the first connection on, as before any retry: a job that waited for a pooled
        // connection still has its whole timeout to run.
        let deadline = tokio::time::Instant::now() + limits.timeout + GRACE;
        // Pooled connections are not tested before use (`pool.rs`): one that
        // died while idle (the server restarted, an administrator ended its session) fails at
        // its BEGIN, before any of the statement was sent, and the job moves to another
        // connection, at most once per connection the pool can hold. A connection that fails
        // after its BEGIN is never retried (EX-3).
        let mut spares = pool.spares();
        loop {
            let mut begun = false;
            let attempt = async {
                match run_on(&mut conn, class, statement, limits, sink, &mut begun).await {
                    // The connection's prepared form of the statement no longer serves: the
                    // bind failed before anything executed, and the transaction rolled back.
                    // Prepared again from the text, once. Not a re-run: the first attempt
                    // never reached Execute.
                    Err(e) if stale_statement(&e) => {
                        (&mut *conn as &mut PgConnection)
                            .clear_cached_statements()
                            .await?;
                        run_on(&mut conn, class, statement, limits, sink, &mut begun).await
                    }
                    other => other,
                }
            };
            let outcome = tokio::time::timeout_at(deadline, attempt).await;
            let (answer, reusable) = match outcome {
                Ok(Ok(Run {
                    summary,
                    drop_connection,
                })) => (Ok(summary), !drop_connection),
                Ok(Err(e)) => {
                    if is_session_residue(&e) {
                        tracing::warn!(
                            connection = %self.name,
                            error = %e,
                            "a pooled read connection held a statement prepared by SQL, left by a function an earlier read called; the connection is closed and the job moved to another"
                        );
                    }
                    if !begun {
                        // Failed at its `BEGIN` message: dead, or holding what a function left
                        // on its session. Never pooled again.
                        match pool.replace(conn, &mut spares, &e, &limits).await? {
                            Some(fresh) => {
                                conn = fresh;
                                continue;
                            }
                            None => return Err(pool.error(&e, class, database_error)),
                        }
                    }
                    (Err(pool.error(&e, class, database_error)), true)
                }
                // The server did not cancel in time: do not hand this connection out again.
                Err(_) => (Err(no_answer(class, limits)), false),
            };
            if !reusable {
                conn.close_on_drop();
            } else if class != OperationClass::Read {
                discard_session(conn);
            }
            return answer;
        }
    }

    pub async fn close(&self) {
        for pool in self.pools.values() {
            pool.close().await;
        }
    }
}

/// Sent with a read's `BEGIN`, in the same message and before it: what the previous read on
/// the connection left on its session past its `ROLLBACK` does not reach this one (EX-3). A
/// read's transaction is read-only and rolled back, which undoes its settings and forbids
/// temporary tables, `LISTEN` and held cursors, but two things a function it calls may do
/// are not transactional and are allowed in a read-only transaction: a session advisory lock
/// (`pg_advisory_lock`), released here, and a statement prepared by SQL (`EXECUTE 'PREPARE
/// …'` in PL/pgSQL). The gate refuses such calls when the statement makes them itself
/// (EX-2), but not inside a function. A statement prepared by SQL could take the name under
/// which sqlx binds a statement it prepared on this connection, after a `DEALLOCATE` of it,
/// and the next job with that text would run it instead, unseen. sqlx prepares through the
/// protocol (`from_sql` false), so one prepared by SQL is residue: it fails this message's
/// cast (a text that is never an integer, evaluated per row, so never folded by the planner),
/// before the `BEGIN`, and the connection is closed and the job moved to another
/// ([`is_session_residue`]). No extra round trip: the statements travel with the `BEGIN`.
/// The function behind the `pg_prepared_statements` view is called directly: the view's
/// rewrite doubled what the check costs PostgreSQL (≈ 50 against ≈ 25 µs a read, measured).
const READ_SESSION_CHECK: &str = "SELECT pg_catalog.pg_advisory_unlock_all(); \
     SELECT ('session residue: a statement prepared by SQL, ' || name)::int \
     FROM pg_catalog.pg_prepared_statement() WHERE from_sql; ";

/// Whether `e` is [`READ_SESSION_CHECK`] finding a statement prepared by SQL on the session.
fn is_session_residue(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some(INVALID_TEXT_REPRESENTATION)
            && db.message().contains("session residue: "))
}

/// How long a connection's session may take to be reset ([`discard_session`]) before the
/// connection is closed instead.
const DISCARD_WITHIN: Duration = Duration::from_secs(5);

/// Resets the session of a connection whose job was a write, DDL or admin statement, then lets
/// it go back to its pool, without holding up the job's answer (EX-3). Such a job commits, and
/// with it whatever it did to its session: settings (`SET`, or `set_config` inside a function
/// the statement calls), the role, temporary tables, prepared statements, cursors held past
/// the commit, `LISTEN`, session advisory locks. Left in place, each would reach the next job
/// on the connection, another requester's approved statement: a `search_path` pointing its
/// table names elsewhere, a temporary table shadowing the real one, triggers and foreign keys
/// off (`session_replication_role`), a prepared statement under the name sqlx binds the next
/// job's statement by. `DISCARD ALL` undoes all of that, the statements this connection
/// prepared included, so sqlx forgets those too. A read needs none of it: its `ROLLBACK`
/// undoes its settings, the gate refuses the calls whose effects outlive it (EX-2), and what
/// a function it called may still leave is ended by the next read's `BEGIN` message
/// ([`READ_SESSION_CHECK`]). A connection whose reset fails or takes longer than
/// [`DISCARD_WITHIN`] is closed.
fn discard_session(mut conn: PoolConnection<Postgres>) {
    tokio::spawn(async move {
        let session: &mut PgConnection = &mut conn;
        let reset = async {
            // Sends any `ROLLBACK` the job left queued first.
            sqlx::raw_sql("DISCARD ALL").execute(&mut *session).await?;
            session.clear_cached_statements().await
        };
        if !matches!(
            tokio::time::timeout(DISCARD_WITHIN, reset).await,
            Ok(Ok(()))
        ) {
            conn.close_on_drop();
        }
    });
}

/// Whether `e` says the connection's prepared form of a statement is gone or out of date, at
/// its bind, before it executed: a session deallocated it (`DEALLOCATE ALL`, `DISCARD ALL`),
/// or a change to a table it reads changed its result's columns, which PostgreSQL does not
/// re-plan a prepared statement across. The same errors raised inside a function's body (its
/// own plans, after some of it may have run) carry a context and are not this.
fn stale_statement(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
        return false;
    };
    if pg.r#where().is_some() {
        return false;
    }
    match pg.code() {
        // sqlx names the statements it keeps `sqlx_s_<n>`.
        INVALID_STATEMENT_NAME => {
            pg.message().contains("\"sqlx_s_")
                || pg.message().contains("unnamed prepared statement")
        }
        FEATURE_NOT_SUPPORTED => pg
            .message()
            .contains("cached plan must not change result type"),
        _ => false,
    }
}

fn database_error(db: &dyn sqlx::error::DatabaseError) -> FailureCode {
    match db.code().as_deref() {
        Some(QUERY_CANCELED) => FailureCode::StatementTimeout,
        Some(READ_ONLY_TRANSACTION) => FailureCode::ReadOnlyViolation,
        Some(code) if code.starts_with("08") => FailureCode::StoreUnavailable,
        _ => FailureCode::StoreError,
    }
}

/// A finished run; `drop_connection` when rows were left unread (a cap stopped the read), so
/// closing the connection is cheaper than draining them and the server discards the rest.
struct Run {
    summary: Summary,
    drop_connection: bool,
}

async fn run_on(
    conn: &mut PoolConnection<Postgres>,
    class: OperationClass,
    statement: &str,
    limits: Limits,
    sink: &mut RowSink,
    begun: &mut bool,
) -> Result<Run, sqlx::Error> {
    let conn: &mut PgConnection = conn;
    let read = class == OperationClass::Read;
    // `set_config(…, true)` is `SET LOCAL`; running it as a query also takes the transaction's
    // first snapshot, after which `SET TRANSACTION READ WRITE` can no longer undo READ ONLY.
    // It travels with the BEGIN in one simple-query message (one round trip); the value is
    // the signed integer, formatted here, never text from the request.
    let begin = format!(
        "{}{}; SELECT set_config('statement_timeout', '{}', true)",
        if read { READ_SESSION_CHECK } else { "" },
        if read { "BEGIN READ ONLY" } else { "BEGIN" },
        limits.timeout_ms()
    );
    let mut tx = conn.begin_with(AssertSqlSafe(begin)).await?;
    *begun = true;
    let mut rows = Rows::new(limits, sink);
    let mut affected = 0;
    {
        // One prepared statement, kept on this connection for the next job with the same text
        // (one round trip less). A write's RETURNING rows and its affected count both come
        // back on this stream.
        let query = sqlx::query(AssertSqlSafe(statement.to_owned())).persistent(true);
        let mut stream = (&mut *tx).fetch_many(query);
        while let Some(item) = stream.try_next().await? {
            match item {
                sqlx::Either::Left(done) => affected += done.rows_affected(),
                sqlx::Either::Right(row) => {
                    if !rows.has_columns() {
                        rows.set_columns(columns(&row));
                    }
                    rows.offer(|| row_values(&row)).await;
                    // A write runs to completion whatever its RETURNING rows; a read stops.
                    if read && rows.is_full() {
                        return Ok(Run {
                            summary: rows.finish(),
                            drop_connection: true,
                        });
                    }
                }
            }
        }
    }
    if !rows.has_columns() {
        let prepared = (&mut *tx)
            .prepare(AssertSqlSafe(statement.to_owned()).into_sql_str())
            .await?;
        rows.set_columns(
            prepared
                .columns()
                .iter()
                .map(|c| Column {
                    name: c.name().to_owned(),
                    type_name: c.type_info().name().to_owned(),
                })
                .collect(),
        );
    }
    if read {
        // A read changed nothing, so its result needs no answer from the ROLLBACK: dropping
        // the transaction queues it, and the pool's test of the connection on release (its
        // spawned return to the pool) sends it and waits for it, in the same round trip,
        // while the result goes to the server. A connection is handed out again only after
        // that test succeeded, so the next job never runs inside this transaction; one whose
        // ROLLBACK fails is closed, which ends the transaction too (EX-3).
        drop(tx);
    } else if limits.dry_run {
        // A preview: nothing it did survives.
        tx.rollback().await?;
        rows.set_affected(affected);
    } else {
        tx.commit().await?;
        rows.set_affected(affected);
    }
    Ok(Run {
        summary: rows.finish(),
        drop_connection: false,
    })
}

fn columns(row: &PgRow) -> Vec<Column> {
    row.columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            type_name: c.type_info().name().to_owned(),
        })
        .collect()
}

fn row_values(row: &PgRow) -> Vec<Value> {
    (0..row.len())
        .map(|i| match row.try_get_raw(i) {
            Ok(raw) if raw.is_null() => Value::Null,
            Ok(raw) => {
                let info = raw.type_info().into_owned();
                match raw.as_bytes() {
                    Ok(bytes) if raw.format() == sqlx::postgres::PgValueFormat::Binary => {
                        value(&info, bytes)
                    }
                    Ok(bytes) => super::values::text_or_base64(bytes),
                    Err(_) => super::values::unsupported(info.name()),
                }
            }
            Err(_) => super::values::unsupported("unknown"),
        })
        .collect()
}
