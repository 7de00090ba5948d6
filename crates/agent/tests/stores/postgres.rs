//! PostgreSQL executor tests.

use crate::common::*;
use OperationClass::{Ddl, Read, Write as WriteClass};
use portcullis_agent::config::{DEFAULT_POOL_SIZE, TargetConfig};
use portcullis_agent::exec::PgTarget;
use portcullis_core::OperationClass;
use serde_json::json;
use std::time::{Duration, Instant};

/// EX-3: a write that slipped past classification is blocked by the read-only transaction.
#[tokio::test]
pub(crate) async fn ex3_pg_read_only_transaction_blocks_writes_that_slipped_past_classification() {
    let pg = Pg::new().await;
    pg.exec("CREATE TABLE $s.items (id int PRIMARY KEY, name text)")
        .await;
    pg.exec("INSERT INTO $s.items VALUES (1, 'one')").await;
    let t = PgTarget::open(&pg.target(&[Read])).expect("target");
    for statement in [
        "INSERT INTO $s.items VALUES (2, 'two')",
        "UPDATE $s.items SET name = 'changed'",
        "DELETE FROM $s.items",
        "CREATE TABLE $s.sneaky (id int)",
        "WITH d AS (DELETE FROM $s.items RETURNING *) SELECT * FROM d",
    ] {
        let e = failed(
            t.run_unchecked(Read, &pg.sql(statement), limits(100, 1 << 20, 5_000))
                .await,
        );
        assert_eq!(e.code, "read_only_violation", "{statement}: {e:?}");
        assert!(e.message.contains("read-only transaction"), "{e:?}");
    }
    assert_eq!(pg.count("items").await, 1);
    let name: String = sqlx::query_scalar(sqlx::AssertSqlSafe(pg.sql("SELECT name FROM $s.items")))
        .fetch_one(&pg.admin)
        .await
        .expect("name");
    assert_eq!(name, "one");
    t.close().await;
}

/// EX-2 (second layer): the prepared protocol refuses stacked statements even if the parser
/// were fooled.
#[tokio::test]
pub(crate) async fn ex2_pg_prepared_statements_refuse_stacked_statements() {
    let pg = Pg::new().await;
    pg.exec("CREATE TABLE $s.items (id int)").await;
    let t = PgTarget::open(&pg.target(&[WriteClass])).expect("target");
    let e = failed(
        t.run_unchecked(
            WriteClass,
            &pg.sql("SELECT 1; INSERT INTO $s.items VALUES (1)"),
            limits(100, 1 << 20, 5_000),
        )
        .await,
    );
    assert_eq!(e.code, "store_error");
    assert!(e.message.contains("multiple commands"), "{e:?}");
    assert_eq!(pg.count("items").await, 0);
}

/// EX-3: the signed timeout is enforced by the server (`statement_timeout`).
#[tokio::test]
pub(crate) async fn ex3_pg_statement_timeout_fires() {
    let pg = Pg::new().await;
    let t = PgTarget::open(&pg.target(&[Read, WriteClass])).expect("target");
    for class in [Read, WriteClass] {
        let started = Instant::now();
        let e = failed(
            t.run_unchecked(class, "SELECT pg_sleep(2)", limits(10, 1 << 20, 200))
                .await,
        );
        assert_eq!(e.code, "statement_timeout", "{class}: {e:?}");
        assert!(e.message.contains("statement timeout"), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
    }
    // The pooled connection is still good, and the timeout was local to that transaction.
    let r = t
        .run_unchecked(
            Read,
            "SELECT current_setting('statement_timeout')",
            limits(10, 1 << 20, 5_000),
        )
        .await
        .expect("after timeout");
    assert_eq!(r.rows, vec![vec![json!("5s")]]);
}

/// EX-3: the signed row cap and the connection's byte cap stop a read at exactly the cap.
#[tokio::test]
pub(crate) async fn ex3_pg_row_and_byte_caps_truncate_at_exactly_the_cap() {
    let pg = Pg::new().await;
    let rig = Rig::new(TargetConfig {
        // Each row is `["xxx…"]` with 100 x: 104 bytes, plus a comma after the first; the
        // list's brackets add 2. Ten rows fit exactly.
        max_result_bytes: 2 + 104 + 105 * 9,
        ..pg.target(&[Read])
    })
    .await;
    let r = rig
        .ok_capped("SELECT g FROM generate_series(1, 100) AS g", Read, 5)
        .await;
    assert_eq!((r.row_count, r.truncated), (5, true));
    assert_eq!(r.rows, (1..=5).map(|i| vec![json!(i)]).collect::<Vec<_>>());
    let r = rig
        .ok_capped("SELECT g FROM generate_series(1, 5) AS g", Read, 5)
        .await;
    assert_eq!(
        (r.row_count, r.truncated),
        (5, false),
        "exactly the cap is not truncated"
    );
    let r = rig
        .ok_capped(
            "SELECT repeat('x', 100) FROM generate_series(1, 50)",
            Read,
            1_000,
        )
        .await;
    assert_eq!((r.row_count, r.truncated), (10, true));
    assert_eq!(
        serde_json::to_string(&r.rows).expect("json").len(),
        2 + 104 + 105 * 9
    );
    let r = rig
        .ok_capped(
            "SELECT repeat('x', 100) FROM generate_series(1, 10)",
            Read,
            1_000,
        )
        .await;
    assert_eq!((r.row_count, r.truncated), (10, false));
    // A million-row read stops at the cap quickly, and the pool recovers from dropping it.
    let started = Instant::now();
    let r = rig
        .ok_capped("SELECT g FROM generate_series(1, 1000000) AS g", Read, 3)
        .await;
    assert_eq!((r.row_count, r.truncated), (3, true));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let r = rig.ok("SELECT 1 AS one", Read).await;
    assert_eq!(r.rows, vec![vec![json!(1)]]);
}

/// Writes commit and report affected rows and RETURNING rows; DDL runs with its own class;
/// an empty read still names its columns.
#[tokio::test]
pub(crate) async fn pg_writes_commit_and_report_what_they_changed() {
    let pg = Pg::new().await;
    let rig = Rig::new(pg.target(&[Read, WriteClass, Ddl])).await;
    let r = rig
        .ok(
            &pg.sql("CREATE TABLE $s.items (id serial PRIMARY KEY, name text)"),
            Ddl,
        )
        .await;
    assert_eq!(r.affected_rows, Some(0));
    let r = rig
        .ok(
            &pg.sql("INSERT INTO $s.items (name) VALUES ('a'), ('b')"),
            WriteClass,
        )
        .await;
    assert_eq!((r.affected_rows, r.row_count), (Some(2), 0));
    let r = rig
        .ok(
            &pg.sql("UPDATE $s.items SET name = upper(name) RETURNING id, name"),
            WriteClass,
        )
        .await;
    assert_eq!(r.affected_rows, Some(2));
    assert_eq!(
        r.rows,
        vec![vec![json!(1), json!("A")], vec![json!(2), json!("B")]]
    );
    assert_eq!(pg.count("items").await, 2);
    let r = rig
        .ok(&pg.sql("SELECT id, name FROM $s.items WHERE false"), Read)
        .await;
    assert_eq!(r.row_count, 0);
    assert_eq!(
        column_types(&r),
        vec![("id".into(), "INT4".into()), ("name".into(), "TEXT".into())]
    );
    assert_eq!(r.affected_rows, None);
}

/// Column types survive the trip: every listed type, with its driver type name.
#[tokio::test]
pub(crate) async fn pg_every_type_round_trips() {
    let pg = Pg::new().await;
    pg.exec(
        "CREATE TYPE $s.mood AS ENUM ('happy', 'sad');
         CREATE DOMAIN $s.posint AS integer CHECK (VALUE > 0);
         CREATE TYPE $s.pair AS (a int, b text);
         CREATE TABLE $s.types (
            c_null int, c_int2 int2, c_int4 int4, c_int8 int8,
            c_numeric numeric(30, 10), c_numeric_big numeric, c_numeric_nan numeric,
            c_float4 float4, c_float8 float8, c_float_nan float8, c_float_inf float8,
            c_bool bool, c_text text, c_varchar varchar(10), c_char char(3), c_name name,
            c_bytea bytea, c_date date, c_date_inf date, c_date_bc date, c_time time,
            c_timetz timetz, c_ts timestamp, c_tstz timestamptz, c_interval interval,
            c_uuid uuid, c_json json, c_jsonb jsonb,
            c_int_arr int4[], c_text_arr text[], c_uuid_arr uuid[], c_bool_arr bool[],
            c_float_arr float8[], c_numeric_arr numeric[], c_2d int4[], c_empty_arr int4[],
            c_enum $s.mood, c_domain $s.posint, c_composite $s.pair,
            c_inet inet, c_cidr cidr, c_bit bit(4), c_money money, c_point point);
         INSERT INTO $s.types VALUES (
            NULL, -32768, 2147483647, -9223372036854775808,
            '12345678901234567890.1234567890',
            '-123456789012345678901234567890.000000000000000000000000000001', 'NaN',
            1.1, 0.1, 'NaN', '-Infinity',
            true, 'héllo \"q\"', 'vc', 'ab', 'nm',
            '\\x00ff10', '2024-02-29', 'infinity', '0044-03-15 BC', '13:05:09.5',
            '13:05:09+05:30', '2024-02-29 13:05:09.123456', '2024-02-29 13:05:09.5+02',
            '1 year 2 months 3 days 04:05:06.5',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2.5, null]}',
            '{\"b\": {\"c\": true}, \"a\": \"x\"}',
            '{1,NULL,3}', '{a,NULL,\"b c\"}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
            '{true,false}', '{1.5,NaN}', '{0.10,-2}', '{{1,2},{3,4}}', '{}',
            'sad', 7, ROW(1, 'x'),
            '10.1.2.3/24', '10.0.0.0/8', B'1010', '12.34', '(1,2)');",
    )
    .await;
    let rig = Rig::new(pg.target(&[Read])).await;
    let r = rig.ok(&pg.sql("SELECT * FROM $s.types"), Read).await;
    // Types made by users are named with their schema.
    let (mood, pair) = (pg.sql("$s.mood"), pg.sql("$s.pair"));
    check_row(
        &r,
        &[
            ("c_null", "INT4", json!(null)),
            ("c_int2", "INT2", json!(-32768)),
            ("c_int4", "INT4", json!(2147483647)),
            ("c_int8", "INT8", json!(-9223372036854775808i64)),
            (
                "c_numeric",
                "NUMERIC",
                json!("12345678901234567890.1234567890"),
            ),
            (
                "c_numeric_big",
                "NUMERIC",
                json!("-123456789012345678901234567890.000000000000000000000000000001"),
            ),
            ("c_numeric_nan", "NUMERIC", json!("NaN")),
            ("c_float4", "FLOAT4", json!(1.1)),
            ("c_float8", "FLOAT8", json!(0.1)),
            ("c_float_nan", "FLOAT8", json!("NaN")),
            ("c_float_inf", "FLOAT8", json!("-Infinity")),
            ("c_bool", "BOOL", json!(true)),
            ("c_text", "TEXT", json!("héllo \"q\"")),
            ("c_varchar", "VARCHAR", json!("vc")),
            ("c_char", "CHAR", json!("ab ")),
            ("c_name", "NAME", json!("nm")),
            ("c_bytea", "BYTEA", json!("AP8Q")),
            ("c_date", "DATE", json!("2024-02-29")),
            ("c_date_inf", "DATE", json!("infinity")),
            ("c_date_bc", "DATE", json!("-0043-03-15")),
            ("c_time", "TIME", json!("13:05:09.5")),
            ("c_timetz", "TIMETZ", json!("13:05:09+05:30")),
            ("c_ts", "TIMESTAMP", json!("2024-02-29T13:05:09.123456")),
            ("c_tstz", "TIMESTAMPTZ", json!("2024-02-29T11:05:09.5Z")),
            ("c_interval", "INTERVAL", json!("P1Y2M3DT4H5M6.5S")),
            (
                "c_uuid",
                "UUID",
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ),
            ("c_json", "JSON", json!({"a": [1, 2.5, null]})),
            ("c_jsonb", "JSONB", json!({"a": "x", "b": {"c": true}})),
            ("c_int_arr", "INT4[]", json!([1, null, 3])),
            ("c_text_arr", "TEXT[]", json!(["a", null, "b c"])),
            (
                "c_uuid_arr",
                "UUID[]",
                json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
            ),
            ("c_bool_arr", "BOOL[]", json!([true, false])),
            ("c_float_arr", "FLOAT8[]", json!([1.5, "NaN"])),
            ("c_numeric_arr", "NUMERIC[]", json!(["0.10", "-2"])),
            ("c_2d", "INT4[]", json!([[1, 2], [3, 4]])),
            ("c_empty_arr", "INT4[]", json!([])),
            ("c_enum", &mood, json!("sad")),
            ("c_domain", "INT4", json!(7)),
            ("c_composite", &pair, json!({"a": 1, "b": "x"})),
            ("c_inet", "INET", json!("10.1.2.3/24")),
            ("c_cidr", "CIDR", json!("10.0.0.0/8")),
            ("c_bit", "BIT", json!("1010")),
            ("c_money", "MONEY", json!({"unsupported_type": "MONEY"})),
            ("c_point", "POINT", json!({"unsupported_type": "POINT"})),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// MariaDB / MySQL

/// EX-3: a pooled connection whose session ended while it sat idle in the pool (a restart,
/// an administrator's `pg_terminate_backend`) costs no job: it fails at its BEGIN, before
/// any of the statement was sent, and the job runs on another connection, once. Pooled
/// connections are not tested before each job, so this is what keeps such a job from
/// failing (a read) or from ending `outcome_unknown` (a write). The same with a pool of one.
#[tokio::test]
pub(crate) async fn ex3_pg_a_connection_that_died_in_the_pool_costs_no_job_and_no_rerun() {
    let pg = Pg::new().await;
    pg.exec("CREATE TABLE $s.items (id serial PRIMARY KEY, name text)")
        .await;
    let lim = limits(10, 1 << 20, 5_000);
    // In a pool of one, the dead connection is the only one the pool may hold: it leaves the
    // pool before another is asked for, or the job waits for its place until its timeout and
    // fails `store_unavailable`.
    for pool_size in [DEFAULT_POOL_SIZE, 1] {
        let mut config = pg.target(&[Read, WriteClass]);
        config.pool_size = pool_size;
        let t = PgTarget::open(&config).expect("target");
        for (class, statement) in [
            (Read, "SELECT pg_backend_pid()".to_owned()),
            (
                WriteClass,
                pg.sql("INSERT INTO $s.items (name) VALUES ('once') RETURNING pg_backend_pid()"),
            ),
        ] {
            let first = t
                .run_unchecked(class, "SELECT pg_backend_pid()", lim)
                .await
                .expect("first job");
            let pid = first.rows[0][0].as_i64().expect("a backend pid");
            end_session_while_idle(&pg, &t, class, pid).await;
            let next = t.run_unchecked(class, &statement, lim).await.unwrap_or_else(|e| {
                panic!("{class}, pool of {pool_size}: the job after its pooled session ended: {e:?}")
            });
            let moved = next.rows[0][0].as_i64().expect("a backend pid");
            assert_ne!(moved, pid, "{class}: ran on the connection that was ended");
        }
        t.close().await;
    }
    assert_eq!(pg.count("items").await, 2, "each write ran exactly once");
}

/// EX-3: a read's transaction has ended before its connection serves another job. The read
/// does not wait for its `ROLLBACK` (nothing it did needs undoing for its result to stand); the
/// pool's test on release sends it. So once the connection is back in its pool its session is
/// idle, not idle in a transaction, and the next job on it runs in a transaction of its own,
/// with its own timeout.
#[tokio::test]
pub(crate) async fn ex3_pg_a_read_ends_its_transaction_before_its_connection_is_reused() {
    let pg = Pg::new().await;
    let t = PgTarget::open(&pg.target(&[Read])).expect("target");
    let job = "SELECT pg_backend_pid(), current_setting('statement_timeout'), \
               current_setting('transaction_read_only')";
    let first = t
        .run_unchecked(Read, job, limits(10, 1 << 20, 3_000))
        .await
        .expect("first read");
    let pid = first.rows[0][0].as_i64().expect("a backend pid");
    assert_eq!(first.rows[0][1..], [json!("3s"), json!("on")]);
    back_in_pool(|| t.idle_connections(Read)).await;
    let (state, in_transaction): (Option<String>, bool) =
        sqlx::query_as("SELECT state, xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = $1")
            .bind(pid as i32)
            .fetch_one(&pg.admin)
            .await
            .expect("pg_stat_activity");
    assert_eq!(
        (state.as_deref(), in_transaction),
        (Some("idle"), false),
        "the read's transaction is still open on its pooled connection"
    );
    let next = t
        .run_unchecked(Read, job, limits(10, 1 << 20, 5_000))
        .await
        .expect("second read");
    assert_eq!(
        next.rows[0][0].as_i64(),
        Some(pid),
        "not the pooled connection"
    );
    assert_eq!(next.rows[0][1..], [json!("5s"), json!("on")]);
    t.close().await;
}

/// A statement a read's connection has prepared stays prepared there, so the next read with
/// the same text skips its parse and describe. When that kept form goes stale (the table's
/// columns changed under it, or a session deallocated it), the job's bind fails before
/// anything ran and the statement is prepared again: the job succeeds. (A write's, DDL's or
/// admin job's connection keeps nothing: its session is reset after each job, `session.rs`.)
#[tokio::test]
pub(crate) async fn pg_a_kept_statement_is_reused_and_prepared_again_when_stale() {
    let pg = Pg::new().await;
    pg.exec("CREATE TABLE $s.items (id int PRIMARY KEY)").await;
    pg.exec("INSERT INTO $s.items VALUES (1)").await;
    let t = PgTarget::open(&pg.target(&[Read])).expect("target");
    let lim = limits(10, 1 << 20, 5_000);
    let read = pg.sql("SELECT *, pg_backend_pid() AS pid FROM $s.items");
    let (class, statement) = (Read, &read);
    let first = t.run_unchecked(class, statement, lim).await.expect("first");
    let pid = first.rows[0]
        .last()
        .and_then(|v| v.as_i64())
        .expect("a backend pid");
    back_in_pool(|| t.idle_connections(class)).await;
    let kept = t
        .run_unchecked(
            class,
            &format!(
                "SELECT count(*), pg_backend_pid() FROM pg_prepared_statements \
                 WHERE statement = '{statement}'"
            ),
            lim,
        )
        .await
        .expect("pg_prepared_statements");
    assert_eq!(
        kept.rows[0],
        [json!(1), json!(pid)],
        "{class}: the statement is not kept prepared on its connection"
    );
    // Its result's columns change: PostgreSQL refuses the kept plan.
    pg.exec(&format!(
        "ALTER TABLE $s.items ADD COLUMN {class}_note text DEFAULT 'n'"
    ))
    .await;
    back_in_pool(|| t.idle_connections(class)).await;
    let changed = t
        .run_unchecked(class, statement, lim)
        .await
        .unwrap_or_else(|e| panic!("{class}: after the table changed: {e:?}"));
    let names: Vec<_> = changed.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), first.columns.len() + 1, "{class}: {names:?}");
    assert!(
        names.contains(&format!("{class}_note").as_str()),
        "{class}: {names:?}"
    );
    assert_eq!(
        changed.rows[0].last(),
        Some(&json!(pid)),
        "{class}: another connection"
    );
    // A session's own DEALLOCATE ALL drops every statement it kept.
    back_in_pool(|| t.idle_connections(class)).await;
    t.run_unchecked(class, "DEALLOCATE ALL", lim)
        .await
        .expect("DEALLOCATE ALL");
    back_in_pool(|| t.idle_connections(class)).await;
    let again = t
        .run_unchecked(class, statement, lim)
        .await
        .unwrap_or_else(|e| panic!("{class}: after DEALLOCATE ALL: {e:?}"));
    assert_eq!(
        again.rows[0].last(),
        Some(&json!(pid)),
        "{class}: another connection"
    );
    t.close().await;
}

/// EX-3: only a kept statement gone stale at its bind is prepared again and retried. The same
/// errors raised from inside a function's body, after some of it ran, fail the job and are
/// never retried: the sequence the function advances moves once per job.
#[tokio::test]
pub(crate) async fn ex3_pg_stale_statement_errors_raised_inside_a_function_are_not_retried() {
    let pg = Pg::new().await;
    pg.exec("CREATE SEQUENCE $s.runs").await;
    pg.exec(
        "CREATE FUNCTION $s.fails(code text, msg text) RETURNS int LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM nextval('$s.runs'); RAISE EXCEPTION USING ERRCODE = code, MESSAGE = msg; \
         END $$",
    )
    .await;
    let t = PgTarget::open(&pg.target(&[WriteClass])).expect("target");
    let raised = [
        ("0A000", "cached plan must not change result type"),
        ("26000", "prepared statement \"sqlx_s_1\" does not exist"),
    ];
    for (code, message) in raised {
        let e = failed(
            t.run_unchecked(
                WriteClass,
                &pg.sql(&format!("SELECT $s.fails('{code}', '{message}')")),
                limits(10, 1 << 20, 5_000),
            )
            .await,
        );
        assert_eq!(e.code, "store_error", "{code}: {e:?}");
        assert!(e.message.contains(message), "{code}: {e:?}");
    }
    let runs: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(
        pg.sql("SELECT last_value FROM $s.runs"),
    ))
    .fetch_one(&pg.admin)
    .await
    .expect("last_value");
    assert_eq!(runs, raised.len() as i64, "a job was run again");
    t.close().await;
}

/// Waits (bounded) until the `class` connection is back in its pool, tested on release, then
/// ends its session (backend `pid`) and waits until it is gone.
async fn end_session_while_idle(pg: &Pg, t: &PgTarget, class: OperationClass, pid: i64) {
    back_in_pool(|| t.idle_connections(class)).await;
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid as i32)
        .fetch_one(&pg.admin)
        .await
        .expect("pg_terminate_backend");
    assert!(ended, "backend {pid} did not end");
}
