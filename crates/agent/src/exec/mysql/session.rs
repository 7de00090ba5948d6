//! What a read's session is set back to as its connection goes back to its pool (EX-3).
//!
//! A read runs in `START TRANSACTION READ ONLY … ROLLBACK`, but in MariaDB and MySQL neither
//! session variables nor user variables are transactional, and a stored function the read
//! calls may set both (`SET SESSION time_zone = …`, `SET @v = …`; measured on MariaDB
//! 10.11). The gate refuses a statement that assigns them itself (EX-2), not one inside a
//! function. Left on the pooled connection they reach the next read, another requester's:
//! its `TIMESTAMP` values shifted yet shown as UTC, `NOW()` answering a time of the
//! function's choosing, every result cut to `sql_select_limit` rows, uncommitted rows read
//! under `READ UNCOMMITTED`, and whatever the function left in a user variable.
//!
//! So a read's connection, on its way back to the pool after the result has left
//! ([`set_back_on_release`]), ends the read's transaction (`ROLLBACK`), sets the session
//! variables that change what a read returns or whether it runs back to what a new
//! connection has, releases the named locks the session holds, and lists the session's user
//! variables, all in one message: one it finds there is closed instead of pooled, with a
//! warning, since the driver has no session reset. Every read therefore starts on a new
//! connection or on one set back this way, and the read does not wait for any of it. Which
//! of the variables the server has, what character sets a new connection has and where the
//! session can list its user variables are found once per pool, on a connection of its own
//! ([`ReadSession::probe`]).
//! A server where the session cannot list them (MySQL without `SELECT` on
//! `performance_schema.user_variables_by_thread`, or with the performance schema off) gets
//! its read connections closed after each read instead, with a warning once: fail closed.
//! `sql_mode` needs nothing: a stored function runs under its own and the caller's is
//! restored after it. Variables that change how a read runs but not what it returns
//! (buffer sizes, optimizer switches, timeouts of the connection itself) are not reset.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::ConnectionName;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::pool::PoolOptions;
use sqlx::{AssertSqlSafe, Connection, MySql, MySqlConnection};
use tokio::sync::OnceCell;

use super::Flavour;

/// The session's time zone, on every connection: `TIMESTAMP` values are read as instants
/// and shown with `Z`.
pub(super) const TIME_ZONE: &str = "+00:00";

/// Session variables a function can leave that change what the next read returns or
/// whether it runs, each set back to its global value (what a new connection has). The
/// names the server does not have, or that are not session variables there, are dropped
/// once per pool ([`ReadSession::probe`]).
const TO_DEFAULT: [&str; 17] = [
    // `NOW()` and every function of the current time.
    "timestamp",
    // Every `SELECT` without a `LIMIT` cut to this many rows.
    "sql_select_limit",
    // `READ UNCOMMITTED`: the next read sees changes that were never committed. MariaDB
    // before 11.1 and MySQL 5.7 name it `tx_isolation`; MySQL 8 only the other.
    "tx_isolation",
    "transaction_isolation",
    // The scale of every division's result.
    "div_precision_increment",
    // `GROUP_CONCAT` cut short, with a warning only.
    "group_concat_max_len",
    // Month and day names of `DATE_FORMAT`.
    "lc_time_names",
    // What `WEEK()` counts.
    "default_week_format",
    // `WHERE id IS NULL` finding the last inserted row.
    "sql_auto_is_null",
    // `ORDER BY` comparing only a prefix of long values.
    "max_sort_length",
    // MariaDB: a recursive CTE stopping early, without an error.
    "max_recursive_iterations",
    // MySQL: a recursive CTE refused.
    "cte_max_recursion_depth",
    // Reads refused as too large (in this order: the first sets the second).
    "max_join_size",
    "sql_big_selects",
    // MariaDB: system-versioned tables read as of another time.
    "system_versioning_asof",
    // MySQL: what `AES_ENCRYPT` and `AES_DECRYPT` compute.
    "block_encryption_mode",
    // The session's statements, other requesters' included, kept for `SHOW PROFILES`.
    "profiling",
];

/// The connection's character sets: set back to what a new connection has (the driver's
/// `SET NAMES`), which the probe reads. The collation last: setting a character set resets it.
const CHARACTER_SETS: [&str; 4] = [
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
];

/// MariaDB `ER_UNKNOWN_SYSTEM_VARIABLE`, `ER_GLOBAL_VARIABLE` and
/// `ER_INCORRECT_GLOBAL_LOCAL_VAR`: a name the probe drops.
const NOT_A_SESSION_VARIABLE: [u16; 3] = [1193, 1229, 1238];

/// How long setting a read's session back ([`set_back_on_release`]) may take before the
/// connection is closed instead.
const SET_BACK_WITHIN: Duration = Duration::from_secs(5);

/// Where each flavour lists the session's own user variables (`FROM …`). Queried directly,
/// not through a derived table, which more than doubled what the check cost MariaDB.
const MARIADB_USER_VARIABLES: &str = "FROM information_schema.USER_VARIABLES";
const MYSQL_USER_VARIABLES: &str =
    "FROM performance_schema.user_variables_by_thread WHERE THREAD_ID = PS_CURRENT_THREAD_ID()";

/// What sets a read's session back, found once per pool.
#[derive(Debug)]
pub(super) struct ReadSession {
    /// One message: the read's transaction rolled back, the variables of [`TO_DEFAULT`] the
    /// server has, the time zone and the character sets set back, the session's named locks
    /// released, and a `SELECT` with a row for each user variable the session holds. `None`
    /// when the session cannot list its own, and each read's connection is closed after the
    /// read.
    set_back: Option<String>,
}

impl ReadSession {
    /// Reads, on `conn` (a new connection of the pool's credential, closed after), whether a
    /// session can list its own user variables and, when it can, which variables the server
    /// has and its new sessions' character sets. `unlisted` takes the first as no, to
    /// exercise the fallback (tests only).
    pub(super) async fn probe(
        mut conn: MySqlConnection,
        flavour: Flavour,
        unlisted: bool,
    ) -> Result<ReadSession, sqlx::Error> {
        let probed = async {
            let source = match flavour {
                Flavour::MariaDb => MARIADB_USER_VARIABLES,
                Flavour::MySql => MYSQL_USER_VARIABLES,
            };
            let listing = if unlisted {
                None
            } else {
                listed(&mut conn, source).await?
            };
            // Without the listing every read's connection is closed after the read, and
            // nothing else here would be used.
            let Some(listing) = listing else {
                return Ok(ReadSession { set_back: None });
            };
            let mut reset = format!("SET SESSION time_zone = '{TIME_ZONE}'");
            for name in CHARACTER_SETS {
                let value: Option<String> =
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT @@SESSION.{name}")))
                        .fetch_one(&mut conn)
                        .await?;
                match value {
                    // Names of character sets and collations, from the server: letters,
                    // digits and underscores, checked before they go into the text.
                    Some(v)
                        if !v.is_empty()
                            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        reset.push_str(&format!(", {name} = '{v}'"));
                    }
                    None => reset.push_str(&format!(", {name} = NULL")),
                    Some(v) => {
                        return Err(sqlx::Error::Protocol(format!(
                            "the server's {name} is {v:?}, not a character set's name"
                        )));
                    }
                }
            }
            for name in TO_DEFAULT {
                match sqlx::raw_sql(AssertSqlSafe(format!("SET SESSION {name} = DEFAULT")))
                    .execute(&mut conn)
                    .await
                {
                    Ok(_) => reset.push_str(&format!(", {name} = DEFAULT")),
                    Err(e)
                        if error_number(&e)
                            .is_some_and(|n| NOT_A_SESSION_VARIABLE.contains(&n)) => {}
                    // One this credential may not set (a privilege it lacks): every read
                    // would fail on it, so it is left out, and said.
                    Err(sqlx::Error::Database(db)) => tracing::warn!(
                        variable = name,
                        error = db.message(),
                        "a MariaDB/MySQL read's session cannot set this variable back; a function a read calls could leave it changed for the next read"
                    ),
                    Err(e) => return Err(e),
                }
            }
            // A named lock (`GET_LOCK`) is the session's, not the transaction's, so one a
            // function took outlives the read's `ROLLBACK`. `RELEASE_ALL_LOCKS()` exists from
            // MySQL 5.7 and MariaDB 10.5.2 on; on an older server the message fails and
            // every read's connection is closed after its read.
            Ok(ReadSession {
                set_back: Some(format!(
                    "ROLLBACK; {reset}; DO RELEASE_ALL_LOCKS(); {listing}"
                )),
            })
        };
        let session = probed.await;
        let _ = conn.close().await;
        session
    }

    /// Whether each read's connection is to be closed after the read: its user variables
    /// cannot be checked.
    pub(super) fn close_after_each_read(&self) -> bool {
        self.set_back.is_none()
    }
}

/// Adds to a read credential's pool options the end of each read's transaction and the
/// setting back of its session as its connection goes back to the pool (module docs): a
/// connection whose session holds a user variable, whose message fails or takes longer than
/// [`SET_BACK_WITHIN`], or whose pool has no [`ReadSession`] yet or one that cannot list
/// user variables ([`ReadSession::close_after_each_read`]), is closed instead. A
/// connection closed after its job (a write's, or one whose read stopped early) never gets
/// here. It runs in the task that returns the connection, so the read's result does not
/// wait for it, and the next read finds the connection only once it is done.
pub(super) fn set_back_on_release(
    options: PoolOptions<MySql>,
    session: Arc<OnceCell<ReadSession>>,
    connection: ConnectionName,
) -> PoolOptions<MySql> {
    let connection = Arc::new(connection);
    options.after_release(move |conn, _| {
        let session = Arc::clone(&session);
        let connection = Arc::clone(&connection);
        Box::pin(async move {
            let Some(set_back) = session.get().and_then(|s| s.set_back.as_deref()) else {
                return Ok(false);
            };
            let rows = tokio::time::timeout(
                SET_BACK_WITHIN,
                sqlx::raw_sql(AssertSqlSafe(set_back)).fetch_all(&mut *conn),
            )
            .await
            .map_err(|_| {
                sqlx::Error::Protocol(format!(
                    "setting a read's session back took longer than {} s",
                    SET_BACK_WITHIN.as_secs()
                ))
            })??;
            if rows.is_empty() {
                return Ok(true);
            }
            tracing::warn!(
                connection = %connection,
                "a read's session held a user variable, left by a function the read called; its connection is closed rather than pooled"
            );
            Ok(false)
        })
    })
}

/// The listing, when the session lists a user variable it set itself through `source`;
/// `None` when it does not (no privilege, no such table, the performance schema off).
async fn listed(conn: &mut MySqlConnection, source: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::raw_sql("SET @portcullis_probe = 1")
        .execute(&mut *conn)
        .await?;
    let seen: Result<i64, sqlx::Error> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) {source} {} VARIABLE_NAME = 'portcullis_probe'",
        if source.contains(" WHERE ") {
            "AND"
        } else {
            "WHERE"
        }
    )))
    .fetch_one(&mut *conn)
    .await;
    Ok(match seen {
        // One row when the session holds any.
        Ok(1) => Some(format!("SELECT 1 {source} LIMIT 1")),
        Ok(_) => None,
        Err(sqlx::Error::Database(_)) => None,
        Err(e) => return Err(e),
    })
}

fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}
