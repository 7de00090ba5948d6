//! MariaDB/MySQL executor tests.

use crate::common::*;
use OperationClass::{Ddl, Read, Write as WriteClass};
use portcullis_agent::config::{DEFAULT_POOL_SIZE, TargetConfig};
use portcullis_agent::exec::{Limits, MySqlTarget};
use portcullis_core::{ConnectionKind, OperationClass};
use serde_json::json;
use sqlx::Connection;
use std::time::{Duration, Instant};

pub(crate) struct My {
    pub(crate) database: String,
    pub(crate) url: String,
    pub(crate) admin: sqlx::MySqlPool,
    pub(crate) _scratch: Scratch,
}

impl My {
    pub(crate) async fn new() -> My {
        let database = format!("t_{}", suffix());
        let admin = sqlx::MySqlPool::connect(MYSQL_ADMIN)
            .await
            .expect("mariadb");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .expect("database");
        let drop_database = database.clone();
        My {
            url: format!("mysql://root@127.0.0.1:3306/{database}"),
            database,
            admin,
            _scratch: Scratch::new(async move {
                if let Ok(mut c) = sqlx::MySqlConnection::connect(MYSQL_ADMIN).await {
                    // Sessions still in the database (a read's transaction ends as its
                    // connection goes back to its pool, in the test's runtime, blocked while
                    // this runs) would keep the DROP waiting for their metadata locks.
                    let ids: Vec<i64> = sqlx::query_scalar(
                        "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
                         WHERE DB = ? AND ID <> CONNECTION_ID()",
                    )
                    .bind(&drop_database)
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| {
                        eprintln!("cleanup of {drop_database}: listing its sessions: {e}");
                        Vec::new()
                    });
                    for id in ids {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
                            .execute(&mut c)
                            .await;
                    }
                    let sql = format!("DROP DATABASE {drop_database}");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut c)
                        .await;
                }
            }),
        }
    }

    pub(crate) async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.replace("$d", &self.database)))
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub(crate) async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.{table}",
            self.database
        )))
        .fetch_one(&self.admin)
        .await
        .expect("count")
    }

    pub(crate) fn target(&self, classes: &[OperationClass]) -> TargetConfig {
        let urls: Vec<_> = classes.iter().map(|c| (*c, self.url.as_str())).collect();
        target("mysql", ConnectionKind::Mysql, &urls)
    }
}

/// EX-3: a write that slipped past classification is blocked by the read-only transaction.
#[tokio::test]
pub(crate) async fn ex3_mysql_read_only_transaction_blocks_writes_that_slipped_past_classification()
{
    let my = My::new().await;
    my.exec("CREATE TABLE $d.items (id int PRIMARY KEY, name text) ENGINE=InnoDB")
        .await;
    my.exec("INSERT INTO $d.items VALUES (1, 'one')").await;
    let t = MySqlTarget::open(&my.target(&[Read])).expect("target");
    for statement in [
        "INSERT INTO items VALUES (2, 'two')",
        "UPDATE items SET name = 'changed'",
        "DELETE FROM items",
        // DDL commits a transaction implicitly: only the session's READ ONLY stops these.
        "CREATE TABLE sneaky (id int)",
        "DROP TABLE items",
        "TRUNCATE TABLE items",
    ] {
        let e = failed(
            t.run_unchecked(Read, statement, limits(100, 1 << 20, 5_000))
                .await,
        );
        assert_eq!(e.code, "read_only_violation", "{statement}: {e:?}");
        assert!(e.message.contains("READ ONLY"), "{e:?}");
    }
    assert_eq!(my.count("items").await, 1);
    let tables: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = '{}'",
        my.database
    )))
    .fetch_all(&my.admin)
    .await
    .expect("tables");
    assert_eq!(tables, ["items"]);
    t.close().await;
}

/// EX-3: the signed timeout is enforced by the server (`max_statement_time` on MariaDB).
#[tokio::test]
pub(crate) async fn ex3_mysql_statement_timeout_fires() {
    let my = My::new().await;
    let t = MySqlTarget::open(&my.target(&[Read, WriteClass])).expect("target");
    for class in [Read, WriteClass] {
        let started = Instant::now();
        let e = failed(
            t.run_unchecked(class, "SELECT SLEEP(2)", limits(10, 1 << 20, 200))
                .await,
        );
        assert_eq!(e.code, "statement_timeout", "{class}: {e:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
    }
    let r = t
        .run_unchecked(Read, "SELECT 1", limits(10, 1 << 20, 5_000))
        .await
        .expect("after timeout");
    assert_eq!(r.rows, vec![vec![json!(1)]]);
}

/// EX-3: a statement the store does not stop itself (on MySQL, a write:
/// `max_execution_time` bounds only `SELECT`) is stopped by the agent's `KILL QUERY` once its
/// timeout and grace have passed, sent from a connection of its own: in a pool of one, the
/// timed-out connection still holds the only place.
#[tokio::test]
pub(crate) async fn ex3_mysql_a_statement_past_its_timeout_is_killed_even_from_a_pool_of_one() {
    let my = My::new().await;
    let mut config = my.target(&[WriteClass]);
    config.pool_size = 1;
    let t = MySqlTarget::open(&config).expect("target");
    t.take_writes_as_untimed();
    // Seen running while the job waits (so the check below cannot pass by not finding it),
    // then, once the job has answered, gone: the kill was answered before the job's error
    // came back, and the store ends the statement at its next check of the kill flag.
    let (result, ()) = tokio::join!(
        t.run_unchecked(WriteClass, "DO SLEEP(600)", limits(10, 1 << 20, 200)),
        sleepers(&my, 1, "the statement never ran")
    );
    let e = failed(result);
    assert_eq!(e.code, "outcome_unknown", "{e:?}");
    sleepers(&my, 0, "the statement ran on after its timeout").await;
    let r = t
        .run_unchecked(WriteClass, "SELECT 1", limits(10, 1 << 20, 5_000))
        .await
        .expect("the pool's next job");
    assert_eq!(r.rows, vec![vec![json!(1)]]);
    t.close().await;
}

/// Waits (bounded) until `want` sessions of the test's database run `DO SLEEP(600)`.
async fn sleepers(my: &My, want: i64, failure: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND INFO = 'DO SLEEP(600)'",
        )
        .bind(&my.database)
        .fetch_one(&my.admin)
        .await
        .expect("processlist");
        if running == want {
            return;
        }
        assert!(Instant::now() < deadline, "{failure} ({running} running)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// EX-3: row and byte caps stop a read at exactly the cap.
#[tokio::test]
pub(crate) async fn ex3_mysql_row_and_byte_caps_truncate_at_exactly_the_cap() {
    let my = My::new().await;
    my.exec("CREATE TABLE $d.nums (n int PRIMARY KEY)").await;
    my.exec("INSERT INTO $d.nums WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 50) SELECT n FROM s").await;
    let rig = Rig::new(TargetConfig {
        max_result_bytes: 2 + 104 + 105 * 9,
        ..my.target(&[Read])
    })
    .await;
    let r = rig
        .ok_capped("SELECT n FROM nums ORDER BY n", Read, 5)
        .await;
    assert_eq!((r.row_count, r.truncated), (5, true));
    assert_eq!(r.rows, (1..=5).map(|i| vec![json!(i)]).collect::<Vec<_>>());
    let r = rig
        .ok_capped("SELECT n FROM nums WHERE n <= 5 ORDER BY n", Read, 5)
        .await;
    assert_eq!((r.row_count, r.truncated), (5, false));
    let r = rig
        .ok_capped("SELECT REPEAT('x', 100) FROM nums", Read, 1_000)
        .await;
    assert_eq!((r.row_count, r.truncated), (10, true));
    let r = rig.ok("SELECT 2 AS two", Read).await;
    assert_eq!(r.rows, vec![vec![json!(2)]]);
}

#[tokio::test]
pub(crate) async fn mysql_writes_commit_and_report_what_they_changed() {
    let my = My::new().await;
    let rig = Rig::new(my.target(&[Read, WriteClass, Ddl])).await;
    rig.ok(
        "CREATE TABLE items (id int AUTO_INCREMENT PRIMARY KEY, name text)",
        Ddl,
    )
    .await;
    let r = rig
        .ok("INSERT INTO items (name) VALUES ('a'), ('b')", WriteClass)
        .await;
    assert_eq!((r.affected_rows, r.row_count), (Some(2), 0));
    let r = rig
        .ok("UPDATE items SET name = 'z' WHERE id = 1", WriteClass)
        .await;
    assert_eq!(r.affected_rows, Some(1));
    assert_eq!(my.count("items").await, 2);
    let r = rig.ok("SELECT id, name FROM items WHERE 1 = 0", Read).await;
    assert_eq!(r.row_count, 0);
    assert_eq!(
        column_types(&r),
        vec![("id".into(), "INT".into()), ("name".into(), "TEXT".into())]
    );
}

#[tokio::test]
pub(crate) async fn mysql_every_type_round_trips() {
    let my = My::new().await;
    my.exec(
        "CREATE TABLE $d.types (
            c_null INT, c_tinyint TINYINT, c_bool BOOLEAN, c_utiny TINYINT UNSIGNED,
            c_small SMALLINT, c_usmall SMALLINT UNSIGNED, c_medium MEDIUMINT, c_int INT,
            c_uint INT UNSIGNED, c_bigint BIGINT, c_ubig BIGINT UNSIGNED,
            c_decimal DECIMAL(30, 10), c_float FLOAT, c_double DOUBLE,
            c_char CHAR(3), c_varchar VARCHAR(20), c_varchar_bin VARCHAR(20) COLLATE utf8mb4_bin,
            c_text TEXT, c_binary BINARY(2), c_varbinary VARBINARY(10), c_blob BLOB,
            c_date DATE, c_datetime DATETIME(6), c_timestamp TIMESTAMP(3) NULL,
            c_time TIME(6), c_neg_time TIME, c_year YEAR, c_bit BIT(10),
            c_enum ENUM('a', 'b'), c_set SET('x', 'y'), c_json JSON, c_uuid UUID);
         INSERT INTO $d.types VALUES (
            NULL, -128, 1, 255, -32768, 65535, -8388608, -2147483648, 4294967295,
            -9223372036854775808, 18446744073709551615,
            '12345678901234567890.1234567890', 1.1, 0.1,
            'ab', 'héllo', 'Bin', 'long text', 'xy', X'00FF', X'0102',
            '2024-02-29', '2024-02-29 13:05:09.123456', '2024-02-29 13:05:09.500',
            '13:05:09.5', '-26:03:04', 2024, b'1000000001',
            'b', 'x,y', '{\"a\": [1, 2.5, null]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');",
    )
    .await;
    let rig = Rig::new(my.target(&[Read])).await;
    let r = rig.ok("SELECT * FROM types", Read).await;
    check_row(
        &r,
        &[
            ("c_null", "INT", json!(null)),
            ("c_tinyint", "TINYINT", json!(-128)),
            ("c_bool", "BOOLEAN", json!(1)),
            ("c_utiny", "TINYINT UNSIGNED", json!(255)),
            ("c_small", "SMALLINT", json!(-32768)),
            ("c_usmall", "SMALLINT UNSIGNED", json!(65535)),
            ("c_medium", "MEDIUMINT", json!(-8388608)),
            ("c_int", "INT", json!(-2147483648)),
            ("c_uint", "INT UNSIGNED", json!(4294967295u32)),
            ("c_bigint", "BIGINT", json!(-9223372036854775808i64)),
            ("c_ubig", "BIGINT UNSIGNED", json!(18446744073709551615u64)),
            (
                "c_decimal",
                "DECIMAL",
                json!("12345678901234567890.1234567890"),
            ),
            ("c_float", "FLOAT", json!(1.1)),
            ("c_double", "DOUBLE", json!(0.1)),
            ("c_char", "CHAR", json!("ab")),
            ("c_varchar", "VARCHAR", json!("héllo")),
            ("c_varchar_bin", "VARCHAR", json!("Bin")),
            ("c_text", "TEXT", json!("long text")),
            ("c_binary", "BINARY", json!("eHk=")),
            ("c_varbinary", "VARBINARY", json!("AP8=")),
            ("c_blob", "BLOB", json!("AQI=")),
            ("c_date", "DATE", json!("2024-02-29")),
            (
                "c_datetime",
                "DATETIME",
                json!("2024-02-29T13:05:09.123456"),
            ),
            ("c_timestamp", "TIMESTAMP", json!("2024-02-29T13:05:09.5Z")),
            ("c_time", "TIME", json!("13:05:09.5")),
            ("c_neg_time", "TIME", json!("-26:03:04")),
            ("c_year", "YEAR", json!(2024)),
            ("c_bit", "BIT", json!(513)),
            ("c_enum", "ENUM", json!("b")),
            // sqlx names SET columns by their wire type.
            ("c_set", "CHAR", json!("x,y")),
            // MariaDB keeps JSON as LONGTEXT (utf8mb4_bin) and says so on the wire.
            ("c_json", "TEXT", json!("{\"a\": [1, 2.5, null]}")),
            (
                "c_uuid",
                "CHAR",
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Redis

/// EX-3: a pooled connection whose session was killed while it sat idle in the pool costs no
/// job: it fails while the job's session is set up, before any of the statement was sent,
/// and the job runs on another connection. Pooled connections are not tested before each
/// job, so this is what keeps such a job from failing. Only reads' connections are pooled;
/// a write's is closed after its job (`session.rs`). The same with a pool of one connection.
#[tokio::test]
pub(crate) async fn ex3_mysql_a_connection_that_died_in_the_pool_costs_no_job_and_no_rerun() {
    let my = My::new().await;
    let t = MySqlTarget::open(&my.target(&[Read])).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    let id = connection_id(&t, Read, lim).await;
    kill_while_idle(&my, &t, Read, id).await;
    let moved = connection_id(&t, Read, lim).await;
    assert_ne!(moved, id, "ran on the connection that was killed");
    t.close().await;

    // A pool of one: the killed connection leaves the pool before another is asked for, so
    // the job does not wait for its place until its timeout and fail `store_unavailable`.
    let mut config = my.target(&[Read]);
    config.pool_size = 1;
    let t = MySqlTarget::open(&config).expect("target");
    let id = connection_id(&t, Read, lim).await;
    kill_while_idle(&my, &t, Read, id).await;
    let moved = connection_id(&t, Read, lim).await;
    assert_ne!(
        moved, id,
        "a pool of one ran on the connection that was killed"
    );
    t.close().await;
}

/// A write's connection is closed after its job, never pooled again, so the pool keeps one
/// connection opened ahead for the next write: one no job has used, which the next write
/// takes without waiting for a connect, and which is closed after it like any other. Without
/// it, no write connection is ever idle in the pool and every write opens its own.
#[tokio::test]
pub(crate) async fn mysql_a_write_takes_a_connection_opened_ahead_that_no_job_used() {
    let my = My::new().await;
    let t = MySqlTarget::open(&my.target(&[WriteClass])).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    let first = connection_id(&t, WriteClass, lim).await;
    // The first write's connection is gone, not pooled again: `opened_ahead` waits for that.
    let ahead = opened_ahead(&my, &t, first).await;
    let second = connection_id(&t, WriteClass, lim).await;
    assert_eq!(
        second, ahead,
        "the second write did not run on the connection opened ahead"
    );
    // And the connection opened ahead, once used, goes like any other.
    opened_ahead(&my, &t, second).await;
    t.close().await;
}

/// EX-3: a write's connection opened ahead that died while it waited (a restart, an
/// administrator's `KILL`, the server's `wait_timeout`) costs no job: the write fails in its
/// session's setup, before any of the statement was sent, and runs on another connection,
/// once. The same in a pool of two, half of which the one opened ahead fills (a pool of one
/// keeps none).
#[tokio::test]
pub(crate) async fn ex3_mysql_a_write_whose_connection_opened_ahead_died_runs_once_on_another() {
    let my = My::new().await;
    my.exec("CREATE TABLE $d.items (id int AUTO_INCREMENT PRIMARY KEY, conn bigint) ENGINE=InnoDB")
        .await;
    let lim = limits(10, 1 << 20, 5_000);
    let insert = "INSERT INTO items (conn) VALUES (CONNECTION_ID())";
    for pool_size in [DEFAULT_POOL_SIZE, 2] {
        let mut config = my.target(&[WriteClass]);
        config.pool_size = pool_size;
        let t = MySqlTarget::open(&config).expect("target");
        t.run_unchecked(WriteClass, insert, lim)
            .await
            .unwrap_or_else(|e| panic!("pool of {pool_size}: the first write: {e:?}"));
        let written: i64 = my.count("items").await;
        let ahead = opened_ahead(&my, &t, u64::MAX).await;
        kill_while_idle(&my, &t, WriteClass, ahead).await;
        t.run_unchecked(WriteClass, insert, lim)
            .await
            .unwrap_or_else(|e| {
                panic!("pool of {pool_size}: the write after its connection died: {e:?}")
            });
        assert_eq!(
            my.count("items").await,
            written + 1,
            "pool of {pool_size}: the write ran other than once"
        );
        let last: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT conn FROM {}.items ORDER BY id DESC LIMIT 1",
            my.database
        )))
        .fetch_one(&my.admin)
        .await
        .expect("the last row");
        assert_ne!(
            last as u64, ahead,
            "pool of {pool_size}: ran on the connection that was killed"
        );
        t.close().await;
    }
}

/// EX-3: a read's transaction has ended before its connection serves another job: the read
/// does not wait for its `ROLLBACK`, which travels with the message that sets its session
/// back as the connection goes back to its pool, so once the connection is back in its pool
/// InnoDB holds no transaction for its session.
#[tokio::test]
pub(crate) async fn ex3_mysql_a_read_ends_its_transaction_before_its_connection_is_reused() {
    let my = My::new().await;
    my.exec("CREATE TABLE $d.items (id int PRIMARY KEY) ENGINE=InnoDB")
        .await;
    let t = MySqlTarget::open(&my.target(&[Read])).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    // Reading an InnoDB table starts the transaction's read view, which lists it in
    // `innodb_trx` for as long as it is open.
    let job = "SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM items), @@in_transaction";
    let first = t.run_unchecked(Read, job, lim).await.expect("first read");
    let id = first.rows[0][0].as_u64().expect("a connection id");
    assert_eq!(
        first.rows[0][2],
        json!(1),
        "the read ran outside a transaction"
    );
    back_in_pool(|| t.idle_connections(Read)).await;
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?",
    )
    .bind(id)
    .fetch_one(&my.admin)
    .await
    .expect("innodb_trx");
    assert_eq!(
        open, 0,
        "the read's transaction is still open on its pooled connection"
    );
    let next = t.run_unchecked(Read, job, lim).await.expect("second read");
    assert_eq!(
        next.rows[0][0].as_u64(),
        Some(id),
        "not the pooled connection"
    );
    t.close().await;
}

/// A read's connection keeps the statements it prepared: one run again is executed without
/// a new prepare, and none is closed while the connection lives (`COM_STMT_CLOSE`, a message
/// the server does not answer, held back the connection's next message until a delayed
/// acknowledgement, milliseconds later). A connection whose cache is full (32 statements)
/// is closed after its job instead, so the server never holds more than that for it.
/// Without the kept statements the counts of prepares and closes grow with every read.
#[tokio::test]
pub(crate) async fn mysql_a_read_connection_keeps_its_statements_until_its_cache_is_full() {
    let my = My::new().await;
    let mut config = my.target(&[Read]);
    config.pool_size = 1;
    let t = MySqlTarget::open(&config).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    let counters = "SELECT CONNECTION_ID(), \
         (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
          WHERE VARIABLE_NAME = 'COM_STMT_PREPARE'), \
         (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
          WHERE VARIABLE_NAME = 'COM_STMT_CLOSE')";
    let first = t.run_unchecked(Read, counters, lim).await.expect("read");
    back_in_pool(|| t.idle_connections(Read)).await;
    for _ in 0..3 {
        t.run_unchecked(Read, "SELECT 1", lim).await.expect("read");
        back_in_pool(|| t.idle_connections(Read)).await;
    }
    let again = t.run_unchecked(Read, counters, lim).await.expect("read");
    back_in_pool(|| t.idle_connections(Read)).await;
    assert_eq!(
        again.rows[0][0], first.rows[0][0],
        "not the pooled connection"
    );
    let count = |r: &portcullis_proto::api::ExecResult, i: usize| -> u64 {
        r.rows[0][i]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a count: {r:?}"))
    };
    // The first look ran after its own prepare; since then `SELECT 1` was prepared once and
    // the look itself was not prepared again.
    assert_eq!(
        count(&again, 1),
        count(&first, 1) + 1,
        "statements were prepared again: {first:?} then {again:?}"
    );
    assert_eq!(
        count(&again, 2),
        0,
        "statements were closed on a live connection"
    );
    // More statements than a connection keeps (32): the connection goes once its cache is
    // full, and a later job runs on a new one.
    for i in 2..34 {
        t.run_unchecked(Read, &format!("SELECT {i}"), lim)
            .await
            .expect("read");
    }
    settled(|| t.busy_connections(Read)).await;
    let after = t
        .run_unchecked(Read, "SELECT CONNECTION_ID()", lim)
        .await
        .expect("read");
    assert_ne!(
        after.rows[0][0], first.rows[0][0],
        "a connection with a full statement cache was pooled again"
    );
    t.close().await;
}

async fn connection_id(t: &MySqlTarget, class: OperationClass, lim: Limits) -> u64 {
    let r = t
        .run_unchecked(class, "SELECT CONNECTION_ID()", lim)
        .await
        .unwrap_or_else(|e| panic!("{class}: {e:?}"));
    r.rows[0][0].as_u64().expect("a connection id")
}

/// Waits (bounded) until the `class` connection is back in its pool, tested on release, then
/// kills its session (connection `id`) and waits until it is gone.
async fn kill_while_idle(my: &My, t: &MySqlTarget, class: OperationClass, id: u64) {
    back_in_pool(|| t.idle_connections(class)).await;
    my.exec(&format!("KILL {id}")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
        )
        .bind(id)
        .fetch_one(&my.admin)
        .await
        .expect("processlist")
            == 0;
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "connection {id} was not killed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until the write pool holds one connection opened ahead and the session of
/// connection `done` (the last write's, closed after it) is gone, and returns the one opened
/// ahead: the only session left in the test's database.
async fn opened_ahead(my: &My, t: &MySqlTarget, done: u64) -> u64 {
    back_in_pool(|| t.idle_connections(WriteClass)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sessions: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = ? \
             ORDER BY ID",
        )
        .bind(&my.database)
        .fetch_all(&my.admin)
        .await
        .expect("processlist");
        if let [only] = sessions[..]
            && only as u64 != done
        {
            return only as u64;
        }
        assert!(
            Instant::now() < deadline,
            "not one session opened ahead in the database: {sessions:?} (the last write's: {done})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
