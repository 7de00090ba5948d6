//! A job starts on a clean session: nothing the job before it on the same pooled connection
//! did to its session reaches it (EX-3). A write, DDL or admin job commits, and with it what it
//! did to its session; the next job on that connection is another requester's, approved for
//! what it says, not for what a `search_path`, a temporary table or a role left behind would
//! make of it.

use crate::common::*;
use crate::mysql::My;
use OperationClass::{Admin, Ddl, Read, Write as WriteClass};
use portcullis_agent::config::TargetConfig;
use portcullis_agent::exec::{MySqlTarget, PgTarget};
use portcullis_core::{ConnectionKind, Environment, OperationClass};
use portcullis_proto::agent::JobReport;
use serde_json::json;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// EX-3 (PostgreSQL): each job leaves something on its session — a setting (as `SET`, or as
/// a function the statement calls would, with `set_config`), a session advisory lock, a
/// temporary table, a role, a prepared statement, a cursor held past the commit, a `LISTEN` —
/// and the next job of the same class, on the same connection (same backend), finds none of
/// it. The read's `ROLLBACK` undoes its setting; the other classes' sessions are reset
/// (`DISCARD ALL`) before their connection goes back to its pool. Without the reset every
/// case but the read's fails.
#[tokio::test]
pub(crate) async fn ex3_pg_no_job_leaves_its_session_changed_for_the_next_one() {
    let pg = Pg::new().await;
    let t = PgTarget::open(&pg.target(&[Read, WriteClass, Ddl, Admin])).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    let lock = 1 + u32::from(rand::random::<u16>());
    let lock_taken = format!("SELECT pg_advisory_lock({lock})");
    // (class, what the job leaves behind, a question about the session that is true when the
    // session is clean)
    let cases: [(OperationClass, &str, &str); 9] = [
        (
            Read,
            "SELECT set_config('search_path', 'left_behind', false)",
            "SELECT current_setting('search_path') <> 'left_behind'",
        ),
        (
            WriteClass,
            "SELECT set_config('search_path', 'left_behind', false)",
            "SELECT current_setting('search_path') <> 'left_behind'",
        ),
        (
            WriteClass,
            &lock_taken,
            "SELECT count(*) = 0 FROM pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
        (
            Ddl,
            "CREATE TEMP TABLE left_behind (id int)",
            "SELECT to_regclass('pg_temp.left_behind') IS NULL",
        ),
        (
            Admin,
            "SET session_replication_role = replica",
            "SELECT current_setting('session_replication_role') = 'origin'",
        ),
        (
            Admin,
            "SET ROLE pg_read_all_data",
            "SELECT current_user = session_user",
        ),
        (
            Admin,
            "PREPARE left_behind AS SELECT 1",
            "SELECT count(*) = 0 FROM pg_prepared_statements WHERE name = 'left_behind'",
        ),
        (
            Admin,
            "DECLARE left_behind CURSOR WITH HOLD FOR SELECT 1",
            "SELECT count(*) = 0 FROM pg_cursors WHERE name = 'left_behind'",
        ),
        (
            Admin,
            "LISTEN left_behind",
            "SELECT count(*) = 0 FROM pg_listening_channels() AS c WHERE c = 'left_behind'",
        ),
    ];
    for (class, leaves, clean) in cases {
        let pid = backend(&t, class, lim).await;
        t.run_unchecked(class, leaves, lim)
            .await
            .unwrap_or_else(|e| panic!("{class}: {leaves}: {e:?}"));
        back_in_pool(|| t.idle_connections(class)).await;
        let probe = format!("SELECT ({clean}), pg_backend_pid()");
        let after = t
            .run_unchecked(class, &probe, lim)
            .await
            .unwrap_or_else(|e| panic!("{class}: after {leaves}: {e:?}"));
        assert_eq!(
            after.rows[0][1],
            json!(pid),
            "{class}: the next job ran on another connection, so this proves nothing"
        );
        assert_eq!(
            after.rows[0][0],
            json!(true),
            "{class}: `{leaves}` reached the next job on its connection"
        );
        back_in_pool(|| t.idle_connections(class)).await;
    }
    // A write's statement is prepared again after the reset (sqlx forgot it with the session),
    // and the same write runs again on the same connection.
    let pid = backend(&t, WriteClass, lim).await;
    for _ in 0..2 {
        back_in_pool(|| t.idle_connections(WriteClass)).await;
        let again = t
            .run_unchecked(WriteClass, "SELECT pg_backend_pid()", lim)
            .await
            .expect("the same write again");
        assert_eq!(again.rows[0][0], json!(pid));
    }
    t.close().await;
}

/// EX-3 (PostgreSQL): a read's transaction is read-only and rolled back, yet a function it
/// calls may still take a session advisory lock, or prepare a statement by SQL; neither is
/// undone by the `ROLLBACK`, and the gate does not see inside a function (EX-2). The next read
/// on the connection finds neither: the lock is released before its `BEGIN`, and a statement
/// prepared by SQL — here under the name by which sqlx bound an approved statement on that
/// connection — closes the connection, and the job runs on another with the approved text.
/// Without the check the lock is still held, and the approved text answers the hijacker's row.
#[tokio::test]
pub(crate) async fn ex3_pg_what_a_function_a_read_calls_leaves_does_not_reach_the_next_read() {
    let pg = Pg::new().await;
    pg.exec(
        "CREATE FUNCTION $s.lock_it(k bigint) RETURNS int LANGUAGE plpgsql AS $f$ \
         BEGIN PERFORM pg_advisory_lock(k); RETURN 1; END $f$",
    )
    .await;
    pg.exec(
        "CREATE FUNCTION $s.take_name(stmt text) RETURNS int LANGUAGE plpgsql AS $f$ \
         BEGIN EXECUTE format('DEALLOCATE %I', stmt); \
         EXECUTE format('PREPARE %I AS SELECT %L::text AS answer', stmt, 'hijacked'); \
         RETURN 1; END $f$",
    )
    .await;
    let t = PgTarget::open(&pg.target(&[Read])).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    let schema = &pg.schema;

    // A session advisory lock taken inside a function.
    let lock = 1 + u32::from(rand::random::<u16>());
    let pid = backend(&t, Read, lim).await;
    t.run_unchecked(Read, &format!("SELECT {schema}.lock_it({lock})"), lim)
        .await
        .expect("a read whose function takes a lock");
    back_in_pool(|| t.idle_connections(Read)).await;
    let probe = format!(
        "SELECT count(*) = 0, pg_backend_pid() FROM pg_locks \
         WHERE locktype = 'advisory' AND classid = 0 AND objid = {lock}"
    );
    let after = t.run_unchecked(Read, &probe, lim).await.expect("probe");
    assert_eq!(
        after.rows[0][1],
        json!(pid),
        "the next read ran on another connection, so this proves nothing"
    );
    assert_eq!(
        after.rows[0][0],
        json!(true),
        "the lock a read's function took is still held when the next read runs"
    );
    back_in_pool(|| t.idle_connections(Read)).await;

    // A statement prepared by SQL under the name sqlx bound an approved one by.
    let approved = "SELECT 'approved'::text AS answer";
    let first = t
        .run_unchecked(Read, approved, lim)
        .await
        .expect("approved");
    assert_eq!(first.rows[0][0], json!("approved"));
    back_in_pool(|| t.idle_connections(Read)).await;
    let named = t
        .run_unchecked(
            Read,
            &format!(
                "SELECT name FROM pg_prepared_statements WHERE statement = '{}'",
                approved.replace('\'', "''")
            ),
            lim,
        )
        .await
        .expect("the name sqlx prepared it under");
    let name = named.rows[0][0]
        .as_str()
        .expect("the approved statement is kept on the connection")
        .to_owned();
    back_in_pool(|| t.idle_connections(Read)).await;
    t.run_unchecked(Read, &format!("SELECT {schema}.take_name('{name}')"), lim)
        .await
        .expect("a read whose function prepares a statement by SQL");
    back_in_pool(|| t.idle_connections(Read)).await;
    let again = t
        .run_unchecked(Read, approved, lim)
        .await
        .expect("the approved read runs, on another connection");
    assert_eq!(
        again.rows[0][0],
        json!("approved"),
        "the approved text ran a statement a function prepared under sqlx's name"
    );
    t.close().await;
}

/// The backend of the one connection the `class` pool has after a job.
async fn backend(t: &PgTarget, class: OperationClass, lim: portcullis_agent::exec::Limits) -> i64 {
    let r = t
        .run_unchecked(class, "SELECT pg_backend_pid()", lim)
        .await
        .unwrap_or_else(|e| panic!("{class}: {e:?}"));
    back_in_pool(|| t.idle_connections(class)).await;
    r.rows[0][0].as_i64().expect("a backend pid")
}

/// EX-3 (MariaDB/MySQL): a write, DDL or admin job's connection is closed after the job, not
/// pooled again, since the driver has no session reset: a session variable (`SET SESSION
/// foreign_key_checks = 0`), a user variable, a temporary table left behind is gone for the
/// next job, which runs on a new connection. A read's connection is pooled and reused, and a
/// named lock a function it called took (`GET_LOCK`, which its `ROLLBACK` keeps) is released
/// before the next read. Without the close every case fails; without the release, the last.
#[tokio::test]
pub(crate) async fn ex3_mysql_no_job_leaves_its_session_changed_for_the_next_one() {
    let my = My::new().await;
    my.exec("CREATE TABLE $d.items (id int PRIMARY KEY) ENGINE=InnoDB")
        .await;
    my.exec("INSERT INTO $d.items VALUES (1)").await;
    let t = MySqlTarget::open(&my.target(&[Read, WriteClass, Ddl, Admin])).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    let cases: [(OperationClass, &str, &str); 3] = [
        (
            WriteClass,
            "SET @left_behind = 1",
            "SELECT @left_behind IS NULL",
        ),
        (
            Ddl,
            // Empty, it hides the real table's one row from the next job on its session.
            "CREATE TEMPORARY TABLE items (id int)",
            "SELECT COUNT(*) = 1 FROM items",
        ),
        (
            Admin,
            "SET SESSION foreign_key_checks = 0",
            "SELECT @@SESSION.foreign_key_checks = 1",
        ),
    ];
    for (class, leaves, clean) in cases {
        t.run_unchecked(class, leaves, lim)
            .await
            .unwrap_or_else(|e| panic!("{class}: {leaves}: {e:?}"));
        // Its connection is closed, or back in the pool (where, without the close, the next
        // job would take it up again), before the next job asks for one.
        settled(|| t.busy_connections(class)).await;
        let after = t
            .run_unchecked(class, clean, lim)
            .await
            .unwrap_or_else(|e| panic!("{class}: after {leaves}: {e:?}"));
        assert_eq!(
            after.rows[0][0],
            json!(1),
            "{class}: `{leaves}` reached the next job"
        );
    }
    // A read's connection is pooled: two reads, one session.
    let first = t
        .run_unchecked(Read, "SELECT CONNECTION_ID()", lim)
        .await
        .expect("read");
    back_in_pool(|| t.idle_connections(Read)).await;
    let second = t
        .run_unchecked(Read, "SELECT CONNECTION_ID()", lim)
        .await
        .expect("read");
    assert_eq!(
        first.rows[0][0], second.rows[0][0],
        "the read's connection was not reused"
    );
    back_in_pool(|| t.idle_connections(Read)).await;
    // A named lock a read's function takes is the session's: its ROLLBACK keeps it, and the
    // next read on the same connection must find it released.
    my.exec("CREATE FUNCTION $d.lock_it(k varchar(64)) RETURNS int NO SQL RETURN GET_LOCK(k, 0)")
        .await;
    let lock = format!("{}_left_behind", my.database);
    let taken = t
        .run_unchecked(
            Read,
            &format!("SELECT {}.lock_it('{lock}'), CONNECTION_ID()", my.database),
            lim,
        )
        .await
        .expect("a read whose function takes a lock");
    assert_eq!(taken.rows[0][0], json!(1), "the lock was taken");
    back_in_pool(|| t.idle_connections(Read)).await;
    let after = t
        .run_unchecked(
            Read,
            &format!("SELECT IS_USED_LOCK('{lock}') IS NULL, CONNECTION_ID()"),
            lim,
        )
        .await
        .expect("probe");
    assert_eq!(
        after.rows[0][1], taken.rows[0][1],
        "the next read ran on another connection, so this proves nothing"
    );
    assert_eq!(
        after.rows[0][0],
        json!(1),
        "the lock a read's function took is still held when the next read runs"
    );
    t.close().await;
}

/// EX-3 (MariaDB): what a function a read calls leaves on its session past the read's
/// `ROLLBACK` — session variables (`time_zone`, `timestamp`, `sql_select_limit`, the
/// isolation level, the result character set, the division scale) and a user variable —
/// does not reach the next read. The variables are set back as the read's connection goes
/// back to its pool, and the next read runs on that connection: without that, its
/// timestamps shift, `NOW()` answers 2001, one row of two comes back, and the rest differ.
/// A connection whose session holds a user variable is closed there instead of pooled, and
/// the next read runs on another: without the check, the next read on the same connection
/// reads it.
#[tokio::test]
pub(crate) async fn ex3_mysql_what_a_function_a_read_calls_leaves_does_not_reach_the_next_read() {
    let my = My::new().await;
    my.exec("CREATE TABLE $d.items (id int PRIMARY KEY, at timestamp NULL) ENGINE=InnoDB")
        .await;
    my.exec("INSERT INTO $d.items VALUES (1, '2020-01-01 12:00:00'), (2, NULL)")
        .await;
    my.exec(
        "CREATE FUNCTION $d.taint() RETURNS int NOT DETERMINISTIC BEGIN \
           SET SESSION time_zone = '+05:00'; SET SESSION timestamp = 1000000000; \
           SET SESSION sql_select_limit = 1; SET SESSION tx_isolation = 'READ-UNCOMMITTED'; \
           SET SESSION character_set_results = 'latin1'; \
           SET SESSION div_precision_increment = 0; RETURN 1; END",
    )
    .await;
    my.exec(
        "CREATE FUNCTION $d.leave_variable() RETURNS int NOT DETERMINISTIC BEGIN \
           SET @left_behind = 'secret'; RETURN 1; END",
    )
    .await;
    let t = MySqlTarget::open(&my.target(&[Read])).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    let d = &my.database;
    let look = format!(
        "SELECT id, at, CONNECTION_ID(), @@time_zone, UNIX_TIMESTAMP() > 1700000000, \
         @@tx_isolation = @@GLOBAL.tx_isolation, @@character_set_results, 1/3 \
         FROM {d}.items ORDER BY id"
    );
    let before = t.run_unchecked(Read, &look, lim).await.expect("look");
    assert_eq!(before.rows.len(), 2, "{before:?}");
    back_in_pool(|| t.idle_connections(Read)).await;
    t.run_unchecked(Read, &format!("SELECT {d}.taint()"), lim)
        .await
        .expect("a read whose function changes its session");
    back_in_pool(|| t.idle_connections(Read)).await;
    let after = t.run_unchecked(Read, &look, lim).await.expect("look again");
    assert_eq!(
        after.rows.first().map(|r| &r[2]),
        Some(&before.rows[0][2]),
        "the next read ran on another connection, so this proves nothing: {after:?}"
    );
    assert_eq!(
        after.rows, before.rows,
        "what the function set on the session reached the next read"
    );
    back_in_pool(|| t.idle_connections(Read)).await;
    // A user variable: the next read runs, on another connection.
    left_behind_does_not_reach_the_next_read(&t, d).await;
    t.close().await;
}

/// EX-3 (MariaDB, the fallback): where a session cannot list its own user variables (MySQL
/// without access to its performance schema; forced here, since MariaDB always can), a
/// read's connection is closed after the read, so a user variable a function set never
/// reaches the next one. Without the close, the next read finds it on the same connection.
#[tokio::test]
pub(crate) async fn ex3_mysql_a_session_that_cannot_list_its_user_variables_is_not_reused() {
    let my = My::new().await;
    my.exec(
        "CREATE FUNCTION $d.leave_variable() RETURNS int NOT DETERMINISTIC BEGIN \
           SET @left_behind = 'secret'; RETURN 1; END",
    )
    .await;
    let t = MySqlTarget::open(&my.target(&[Read])).expect("target");
    t.take_user_variables_as_unlisted();
    left_behind_does_not_reach_the_next_read(&t, &my.database).await;
    assert_eq!(
        t.idle_connections(Read),
        0,
        "a read's connection was pooled"
    );
    t.close().await;
}

/// A read calls `{database}.leave_variable()`, which sets `@left_behind`; its connection
/// must not go back to the pool, and the next read must not see the variable, and so runs
/// on another connection.
async fn left_behind_does_not_reach_the_next_read(t: &MySqlTarget, database: &str) {
    let lim = limits(10, 1 << 20, 5_000);
    let idle = t.idle_connections(Read);
    let left = t
        .run_unchecked(
            Read,
            &format!("SELECT {database}.leave_variable(), CONNECTION_ID()"),
            lim,
        )
        .await
        .expect("a read whose function sets a user variable");
    settled(|| t.busy_connections(Read)).await;
    assert_eq!(
        t.idle_connections(Read),
        idle.saturating_sub(1),
        "the connection holding the user variable went back to its pool"
    );
    let next = t
        .run_unchecked(Read, "SELECT @left_behind IS NULL, CONNECTION_ID()", lim)
        .await
        .expect("the next read");
    assert_eq!(
        next.rows[0][0],
        json!(1),
        "the user variable a read's function set reached the next read"
    );
    assert_ne!(
        next.rows[0][1], left.rows[0][1],
        "the connection holding the user variable served the next read"
    );
    settled(|| t.busy_connections(Read)).await;
}

/// EX-3 (SQLite), through the agent's gate: a DDL job's temporary table does not outlive the
/// job. Unqualified names find a temporary table before the real one, so on a kept connection
/// the next approved write would go into it and vanish with the connection, reported as
/// done. The write's connection is closed after each job: the row is in the real table.
#[tokio::test]
pub(crate) async fn ex3_sqlite_a_temporary_table_does_not_outlive_its_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("target.db");
    let file = SqliteConnectOptions::new().filename(&path);
    let mut direct = SqliteConnection::connect_with(&file.clone().create_if_missing(true))
        .await
        .expect("sqlite");
    sqlx::raw_sql("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        .execute(&mut direct)
        .await
        .expect("table");
    let target = TargetConfig {
        path: Some(path.clone()),
        ..TargetConfig::new(
            "lite".parse().expect("name"),
            ConnectionKind::Sqlite,
            Environment::Development,
            vec![Read, WriteClass, Ddl],
        )
    };
    let rig = Rig::new(target).await;
    rig.ok("CREATE TEMP TABLE items (id INTEGER)", Ddl).await;
    let written = rig.ok("INSERT INTO items VALUES (5)", WriteClass).await;
    assert_eq!(written.affected_rows, Some(1));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM main.items WHERE id = 5")
        .fetch_one(&mut direct)
        .await
        .expect("count");
    assert_eq!(
        stored, 1,
        "the write went into the temporary table an earlier job left on its connection"
    );
    direct.close().await.expect("close");
}

/// EX-3 (Redis), through the agent's gate: every command of a class goes over one shared
/// connection, so a command that would change that connection for the commands after it —
/// another requester's — is refused, even as an admin command: `SELECT` (every later command
/// in another database), `CLIENT REPLY SKIP` (the next command's reply dropped, so each
/// later one would get the reply of the one after it), `CLIENT SETNAME`, `MONITOR`. The
/// shared connection is still on the URL's database, unnamed, and answers the next command.
#[tokio::test]
pub(crate) async fn ex3_redis_no_command_changes_the_connection_the_next_one_shares() {
    let rig = Rig::new(target(
        "cache",
        ConnectionKind::Redis,
        &[(Admin, REDIS_ADMIN)],
    ))
    .await;
    for command in [
        "SELECT 3",
        "CLIENT REPLY SKIP",
        "CLIENT SETNAME left_behind",
        "MONITOR",
    ] {
        match rig.report(command, Admin, 10).await {
            JobReport::Refused { error } => {
                assert!(
                    error.message.contains("not allowed"),
                    "{command}: {error:?}"
                );
            }
            other => panic!("{command} was not refused: {other:?}"),
        }
    }
    let info = rig.ok("CLIENT INFO", Admin).await;
    let text = serde_json::to_string(&info.rows).expect("json");
    assert!(text.contains(" db=0 "), "the connection moved: {text}");
    assert!(text.contains(" name= "), "the connection was named: {text}");
}
