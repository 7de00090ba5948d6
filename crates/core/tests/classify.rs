//! EX-2: statements are classified from a real parser; multi-statement input, writable CTEs,
//! locking reads, denylisted functions and parser-confusion tricks are caught. Every test name
//! starts with the control it proves.

use portcullis_core::OperationClass::{self, Admin, Ddl, Read, Write};
use portcullis_core::redis::{MAX_REDIS_LEN, RedisCommand, RedisError};
use portcullis_core::sql::{
    DeniedReason, MAX_EXPRESSION_DEPTH, MAX_NESTING, MAX_SQL_LEN, SqlDialect, SqlError, SqlStatement,
};
use proptest::prelude::*;

use SqlDialect::{Mysql as My, Postgres as Pg, Sqlite as Lite};

/// An expected outcome: a class, or the stable code of the error.
type Expect = Result<OperationClass, &'static str>;

const EMPTY: Expect = Err("sql_empty");
const MULTI: Expect = Err("sql_multiple_statements");
const UNPARSABLE: Expect = Err("sql_unparsable");
const FUNCTION: Expect = Err("sql_denied_function");
const DENIED: Expect = Err("sql_denied_statement");
const DEEP: Expect = Err("sql_too_deep");

/// Parses `input` and compares the outcome with `expect`; returns a description of a mismatch.
fn check(dialect: SqlDialect, input: &str, expect: Expect) -> Result<(), String> {
    let got = SqlStatement::parse(dialect, input).map(|s| s.class()).map_err(|e| e.code());
    if got == expect {
        return Ok(());
    }
    let shown: String = input.chars().take(80).collect();
    Err(format!("{dialect:?} {shown:?}: expected {expect:?}, got {got:?}"))
}

fn check_all(cases: &[(SqlDialect, &str, Expect)]) {
    let failures: Vec<String> = cases.iter().filter_map(|(d, input, expect)| check(*d, input, *expect).err()).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Runs `f` on a thread with the 2 MiB stack of a tokio worker, as the server will.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = std::thread::Builder::new().stack_size(2 << 20).spawn(f);
    match handle.map(|h| h.join()) {
        Ok(Ok(value)) => value,
        _ => panic!("classification thread failed"),
    }
}

#[test]
fn ex2_benign_reads_are_reads() {
    check_all(&[
        (Pg, "SELECT 1", Ok(Read)),
        (Pg, "  select * from users where id = 1  ", Ok(Read)),
        (Pg, "SELECT u.id, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > 10", Ok(Read)),
        (Pg, "SELECT id, row_number() OVER (PARTITION BY team ORDER BY score DESC) FROM players", Ok(Read)),
        (Pg, "WITH recent AS (SELECT * FROM orders WHERE at > now() - interval '1 day') SELECT count(*) FROM recent", Ok(Read)),
        (Pg, "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT n FROM t", Ok(Read)),
        (Pg, "SELECT data->>'email', data->'a'->'b' FROM users WHERE data @> '{\"a\":1}'", Ok(Read)),
        (Pg, "SELECT team, count(*), avg(score) FROM players GROUP BY team HAVING count(*) > 1 ORDER BY 2 DESC LIMIT 10 OFFSET 5", Ok(Read)),
        (Pg, "SELECT CAST(id AS text), id::text, currval('s'), lower(name) FROM users", Ok(Read)),
        (Pg, "SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3", Ok(Read)),
        (Pg, "VALUES (1, 'a'), (2, 'b')", Ok(Read)),
        (Pg, "SELECT * FROM generate_series(1, 10)", Ok(Read)),
        (Pg, "SELECT (x).name FROM (SELECT ROW('a') AS x) s", Ok(Read)),
        (Pg, "SHOW search_path", Ok(Read)),
        (Pg, "SELECT U&'\\0041'", Ok(Read)),
        (Pg, "SELECT 'no\u{a0}break space inside a string'", Ok(Read)),
        (My, "SELECT * FROM `users` WHERE `id` = 1 LIMIT 10, 20", Ok(Read)),
        (My, "SELECT 1 FROM dual", Ok(Read)),
        (My, "SELECT data->>'$.email', JSON_EXTRACT(data, '$.a') FROM users", Ok(Read)),
        (My, "SELECT * FROM a STRAIGHT_JOIN b", Ok(Read)),
        (My, "SELECT /*+ MAX_EXECUTION_TIME(1000) */ * FROM users", Ok(Read)),
        (My, "SELECT 'it''s', 'a\\\\', \"double\"", Ok(Read)),
        (My, "SELECT 1 --1", Ok(Read)),
        (My, "SHOW TABLES", Ok(Read)),
        (My, "SHOW CREATE TABLE users", Ok(Read)),
        (My, "SHOW VARIABLES LIKE 'max%'", Ok(Read)),
        (My, "SHOW PROCESSLIST", Ok(Read)),
        (My, "DESCRIBE users", Ok(Read)),
        (My, "DESC users", Ok(Read)),
        (Lite, "SELECT * FROM users", Ok(Read)),
        (Lite, "SELECT * FROM [users] NATURAL JOIN orders", Ok(Read)),
        (Lite, "SELECT json_extract(data, '$.a'), group_concat(name), typeof(1) FROM users", Ok(Read)),
        (Lite, "SELECT * FROM users WHERE name GLOB 'a*'", Ok(Read)),
        (Lite, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT x FROM c", Ok(Read)),
        (Lite, "SELECT id, sum(n) OVER (ORDER BY id) FROM t", Ok(Read)),
    ]);
}

#[test]
fn ex2_explain_is_a_read_unless_it_executes() {
    check_all(&[
        (Pg, "EXPLAIN SELECT * FROM users", Ok(Read)),
        (Pg, "EXPLAIN VERBOSE SELECT 1", Ok(Read)),
        (Pg, "EXPLAIN DELETE FROM users", Ok(Read)),
        (Pg, "EXPLAIN ANALYZE SELECT 1", Ok(Read)),
        (Pg, "EXPLAIN ANALYZE DELETE FROM users", Ok(Write)),
        (Pg, "EXPLAIN (ANALYZE, FORMAT JSON) UPDATE users SET a = 1", Ok(Write)),
        (Pg, "EXPLAIN (ANALYZE false) DELETE FROM users", Ok(Write)),
        (Pg, "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", Ok(Ddl)),
        (Pg, "EXPLAIN GRANT SELECT ON users TO bob", Ok(Admin)),
        (My, "EXPLAIN SELECT * FROM users", Ok(Read)),
        (My, "EXPLAIN FORMAT=TREE SELECT 1", Ok(Read)),
        (My, "DESCRIBE SELECT 1", Ok(Read)),
        (My, "EXPLAIN ANALYZE SELECT 1", Ok(Read)),
        (My, "EXPLAIN ANALYZE DELETE FROM users", Ok(Write)),
        (Lite, "EXPLAIN QUERY PLAN SELECT * FROM users", Ok(Read)),
        (Lite, "EXPLAIN SELECT 1", Ok(Read)),
        (Lite, "EXPLAIN QUERY PLAN DELETE FROM users", Ok(Read)),
    ]);
}

#[test]
fn ex2_data_changes_are_writes() {
    check_all(&[
        (Pg, "INSERT INTO users (id) VALUES (1)", Ok(Write)),
        (Pg, "INSERT INTO users VALUES (1) ON CONFLICT (id) DO UPDATE SET name = excluded.name", Ok(Write)),
        (Pg, "UPDATE users SET name = 'x' WHERE id = 1", Ok(Write)),
        (Pg, "DELETE FROM users WHERE id = 1", Ok(Write)),
        (Pg, "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", Ok(Write)),
        (Pg, "INSERT INTO archive SELECT * FROM users", Ok(Write)),
        (My, "INSERT INTO users VALUES (1) ON DUPLICATE KEY UPDATE a = 1", Ok(Write)),
        (My, "INSERT IGNORE INTO users VALUES (1)", Ok(Write)),
        (My, "REPLACE INTO users VALUES (1)", Ok(Write)),
        (My, "UPDATE users SET a = 1 ORDER BY id LIMIT 1", Ok(Write)),
        (My, "DELETE t FROM t JOIN u ON t.id = u.id", Ok(Write)),
        (Lite, "INSERT OR REPLACE INTO users VALUES (1)", Ok(Write)),
        (Lite, "REPLACE INTO users VALUES (1)", Ok(Write)),
        (Lite, "INSERT INTO users VALUES (1) ON CONFLICT(id) DO UPDATE SET a = 1", Ok(Write)),
        (Lite, "UPDATE users SET a = 1 RETURNING *", Ok(Write)),
        (Lite, "DELETE FROM users WHERE id IN (SELECT id FROM old)", Ok(Write)),
    ]);
}

#[test]
fn ex2_writable_ctes_and_locking_reads_are_writes() {
    check_all(&[
        (Pg, "WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d", Ok(Write)),
        (Pg, "WITH x AS (SELECT 1), u AS (UPDATE users SET a = 1 RETURNING *) SELECT * FROM x", Ok(Write)),
        (Pg, "WITH i AS (INSERT INTO log VALUES (1) RETURNING *) SELECT 1", Ok(Write)),
        (Pg, "SELECT * FROM (WITH d AS (DELETE FROM users RETURNING id) SELECT id FROM d) sub", Ok(Write)),
        (Pg, "WITH d AS (DELETE FROM users RETURNING *) INSERT INTO archive SELECT * FROM d", Ok(Write)),
        (Pg, "EXPLAIN ANALYZE WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d", Ok(Write)),
        (Pg, "SELECT * FROM users FOR UPDATE", Ok(Write)),
        (Pg, "SELECT * FROM users FOR SHARE SKIP LOCKED", Ok(Write)),
        (Pg, "SELECT * FROM users FOR UPDATE OF users NOWAIT", Ok(Write)),
        (Pg, "SELECT * FROM users WHERE id IN (SELECT id FROM t FOR UPDATE)", Ok(Write)),
        (My, "SELECT * FROM users FOR UPDATE", Ok(Write)),
        (My, "SELECT * FROM users FOR SHARE", Ok(Write)),
        // sqlparser 0.63 cannot parse these lock clauses: refused rather than misclassified.
        (Pg, "SELECT * FROM users FOR NO KEY UPDATE", UNPARSABLE),
        (Pg, "SELECT * FROM users FOR KEY SHARE", UNPARSABLE),
        (My, "SELECT * FROM users LOCK IN SHARE MODE", UNPARSABLE),
    ]);
}

#[test]
fn ex2_schema_changes_are_ddl() {
    check_all(&[
        (Pg, "CREATE TABLE t (id int)", Ok(Ddl)),
        (Pg, "CREATE TABLE t2 AS SELECT * FROM users", Ok(Ddl)),
        (Pg, "SELECT * INTO archive FROM users", Ok(Ddl)),
        (Pg, "ALTER TABLE users ADD COLUMN x int", Ok(Ddl)),
        (Pg, "DROP TABLE users CASCADE", Ok(Ddl)),
        (Pg, "TRUNCATE users", Ok(Ddl)),
        (Pg, "CREATE INDEX i ON users (name)", Ok(Ddl)),
        (Pg, "CREATE VIEW v AS SELECT 1", Ok(Ddl)),
        (Pg, "CREATE SCHEMA s", Ok(Ddl)),
        (Pg, "CREATE SEQUENCE s", Ok(Ddl)),
        (My, "CREATE TABLE t (id INT PRIMARY KEY)", Ok(Ddl)),
        (My, "ALTER TABLE users ADD COLUMN x INT", Ok(Ddl)),
        (My, "TRUNCATE TABLE users", Ok(Ddl)),
        (My, "RENAME TABLE a TO b", Ok(Ddl)),
        (My, "DROP VIEW v", Ok(Ddl)),
        (Lite, "CREATE TABLE t (id INTEGER PRIMARY KEY)", Ok(Ddl)),
        (Lite, "CREATE VIRTUAL TABLE v USING fts5(body)", Ok(Ddl)),
        (Lite, "ALTER TABLE users RENAME TO people", Ok(Ddl)),
        (Lite, "DROP TABLE users", Ok(Ddl)),
        (Lite, "CREATE INDEX i ON users(name)", Ok(Ddl)),
        (Lite, "DROP INDEX i", Ok(Ddl)),
    ]);
}

#[test]
fn ex2_privilege_session_and_server_statements_are_admin() {
    check_all(&[
        (Pg, "GRANT SELECT ON users TO bob", Ok(Admin)),
        (Pg, "REVOKE ALL ON users FROM bob", Ok(Admin)),
        (Pg, "CREATE ROLE bob", Ok(Admin)),
        (Pg, "ALTER ROLE bob SUPERUSER", Ok(Admin)),
        (Pg, "DROP ROLE bob", Ok(Admin)),
        (Pg, "SET ROLE admin", Ok(Admin)),
        (Pg, "SET SESSION AUTHORIZATION postgres", Ok(Admin)),
        (Pg, "SET search_path = evil", Ok(Admin)),
        (Pg, "RESET ALL", Ok(Admin)),
        (Pg, "DISCARD ALL", Ok(Admin)),
        (Pg, "BEGIN", Ok(Admin)),
        (Pg, "START TRANSACTION READ WRITE", Ok(Admin)),
        (Pg, "COMMIT", Ok(Admin)),
        (Pg, "ROLLBACK", Ok(Admin)),
        (Pg, "SAVEPOINT s", Ok(Admin)),
        (Pg, "RELEASE SAVEPOINT s", Ok(Admin)),
        (Pg, "COPY users TO '/tmp/x'", Ok(Admin)),
        (Pg, "COPY users FROM STDIN", Ok(Admin)),
        (Pg, "COPY (SELECT 1) TO PROGRAM 'id'", Ok(Admin)),
        (Pg, "CALL p()", Ok(Admin)),
        (Pg, "PREPARE p AS SELECT 1", Ok(Admin)),
        (Pg, "EXECUTE p", Ok(Admin)),
        (Pg, "DEALLOCATE p", Ok(Admin)),
        (Pg, "VACUUM users", Ok(Admin)),
        (Pg, "ANALYZE users", Ok(Admin)),
        (Pg, "LOCK TABLE users", Ok(Admin)),
        (Pg, "LISTEN ch", Ok(Admin)),
        (Pg, "NOTIFY ch", Ok(Admin)),
        (Pg, "CREATE EXTENSION dblink", Ok(Admin)),
        (Pg, "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", Ok(Admin)),
        (Pg, "CREATE TRIGGER tr AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION f()", Ok(Admin)),
        (Pg, "DECLARE c CURSOR FOR SELECT 1", Ok(Admin)),
        (Pg, "CREATE DATABASE x", Ok(Admin)),
        (Pg, "DROP DATABASE prod", Ok(Admin)),
        (My, "SET @x = 1", Ok(Admin)),
        (My, "SET GLOBAL max_connections = 1", Ok(Admin)),
        (My, "SET NAMES utf8mb4", Ok(Admin)),
        (My, "SELECT a INTO @v FROM users", Ok(Admin)),
        (My, "SELECT /*+ SET_VAR(sort_buffer_size = 16M) */ * FROM users", Ok(Admin)),
        (My, "CREATE USER u", Ok(Admin)),
        (My, "START TRANSACTION", Ok(Admin)),
        (My, "COMMIT", Ok(Admin)),
        (My, "LOCK TABLES users READ", Ok(Admin)),
        (My, "UNLOCK TABLES", Ok(Admin)),
        (My, "KILL 5", Ok(Admin)),
        (My, "FLUSH PRIVILEGES", Ok(Admin)),
        (My, "USE otherdb", Ok(Admin)),
        (My, "CALL p()", Ok(Admin)),
        (Lite, "PRAGMA writable_schema = 1", Ok(Admin)),
        (Lite, "PRAGMA journal_mode", Ok(Admin)),
        (Lite, "ATTACH DATABASE '/tmp/x.db' AS x", Ok(Admin)),
        (Lite, "VACUUM", Ok(Admin)),
        (Lite, "ANALYZE", Ok(Admin)),
        (Lite, "BEGIN IMMEDIATE", Ok(Admin)),
        (Lite, "END", Ok(Admin)),
        (Lite, "ROLLBACK", Ok(Admin)),
        (Lite, "SAVEPOINT a", Ok(Admin)),
        (Lite, "CREATE TRIGGER tr AFTER INSERT ON users BEGIN DELETE FROM logs; END", Ok(Admin)),
    ]);
}

#[test]
fn ex2_sqlite_pragmas_are_admin_except_schema_reports() {
    check_all(&[
        (Lite, "PRAGMA table_info('users')", Ok(Read)),
        (Lite, "PRAGMA main.table_info('users')", Ok(Read)),
        (Lite, "PRAGMA table_list", Ok(Read)),
        (Lite, "PRAGMA index_list('users')", Ok(Read)),
        (Lite, "PRAGMA foreign_key_list('users')", Ok(Read)),
        (Lite, "PRAGMA user_version = 5", Ok(Admin)),
        (Lite, "PRAGMA foreign_keys = 0", Ok(Admin)),
        // sqlparser 0.63 only accepts literal pragma arguments.
        (Lite, "PRAGMA table_info(users)", UNPARSABLE),
        (Pg, "PRAGMA table_info('users')", Ok(Admin)),
    ]);
}

#[test]
fn ex2_more_than_one_statement_is_rejected() {
    check_all(&[
        (Pg, "SELECT 1;", Ok(Read)),
        (Pg, "SELECT 1;;", Ok(Read)),
        (Pg, "SELECT 1; -- trailing comment", Ok(Read)),
        (Pg, "SELECT 1; SELECT 2", MULTI),
        (Pg, "COMMIT; DROP TABLE users", MULTI),
        (Pg, "SELECT 1;;DROP TABLE users", MULTI),
        (Pg, "SELECT 1 -- ; DROP TABLE users", Ok(Read)),
        (Pg, "SELECT /* ; DROP TABLE users */ 1", Ok(Read)),
        (Pg, "SELECT 1 /* nested /* ; */ DROP TABLE users; */", Ok(Read)),
        (Pg, "SELECT $$;$$", Ok(Read)),
        (Pg, "SELECT $tag$ ; DROP TABLE users; $tag$", Ok(Read)),
        (Pg, "SELECT E'\\'; DROP TABLE users; --'", Ok(Read)),
        (Pg, "SELECT ';' || \";\" FROM t", Ok(Read)),
        (My, "SELECT 1; DROP TABLE users", MULTI),
        (My, "SELECT 1 # ; DROP TABLE users", Ok(Read)),
        (My, "SELECT 1 -- ; DROP TABLE users", Ok(Read)),
        (My, "SELECT 'x\\\\'; DROP TABLE users", MULTI),
        (Lite, "SELECT 1; SELECT 2", MULTI),
        (Lite, "COMMIT; DROP TABLE users", MULTI),
        (Lite, "SELECT 1 /* ; DROP TABLE users */", Ok(Read)),
        // SQLite comments do not nest: the statement goes on after the first `*/`.
        (Lite, "SELECT 1 /* /* */ ; DROP TABLE users */", UNPARSABLE),
    ]);
}

#[test]
fn ex2_empty_and_unparsable_input_is_rejected() {
    check_all(&[
        (Pg, "", EMPTY),
        (Pg, "  \n\t ", EMPTY),
        (Pg, "-- only a comment", EMPTY),
        (My, "/* only a comment */", EMPTY),
        (Lite, ";", EMPTY),
        (Pg, "SELEC 1", UNPARSABLE),
        (Pg, "SELECT 'unterminated", UNPARSABLE),
        (Pg, "DO $$ BEGIN PERFORM pg_sleep(1); END $$", UNPARSABLE),
        (Pg, "ALTER SYSTEM SET work_mem = '1GB'", UNPARSABLE),
        (My, "LOAD DATA INFILE '/etc/passwd' INTO TABLE t", UNPARSABLE),
        (My, "SELECT a FROM t INTO OUTFILE '/tmp/x'", UNPARSABLE),
        (My, "DO sleep(1)", UNPARSABLE),
        (My, "HANDLER t OPEN", UNPARSABLE),
        (Lite, "DETACH DATABASE x", UNPARSABLE),
        (Lite, "VACUUM INTO '/tmp/x'", UNPARSABLE),
    ]);
}

#[test]
fn ex2_denylisted_functions_are_rejected_anywhere_in_the_tree() {
    check_all(&[
        (Pg, "SELECT pg_sleep(10)", FUNCTION),
        (Pg, "SELECT PG_Sleep(1)", FUNCTION),
        (Pg, "SELECT pg_catalog.pg_sleep(1)", FUNCTION),
        (Pg, "SELECT \"pg_sleep\"(1)", FUNCTION),
        (Pg, "SELECT \"PG_SLEEP\"(1)", FUNCTION),
        (Pg, "SELECT (x).pg_sleep(1) FROM t x", FUNCTION),
        (Pg, "SELECT * FROM users WHERE id IN (SELECT id FROM (SELECT pg_sleep(1) AS id) s)", FUNCTION),
        (Pg, "SELECT CASE WHEN true THEN pg_sleep(1) END", FUNCTION),
        (Pg, "SELECT pg_sleep(1)::text", FUNCTION),
        (Pg, "SELECT CAST(pg_sleep(1) AS text)", FUNCTION),
        (Pg, "SELECT * FROM users ORDER BY pg_sleep(1)", FUNCTION),
        (Pg, "SELECT coalesce(lower(pg_read_file('/etc/passwd')), '')", FUNCTION),
        (Pg, "SELECT count(*) FILTER (WHERE pg_sleep(1) IS NULL) FROM users", FUNCTION),
        (Pg, "SELECT * FROM users WHERE name = ANY(ARRAY[pg_sleep(1)::text])", FUNCTION),
        (Pg, "WITH x AS (SELECT pg_sleep(1)) SELECT * FROM x", FUNCTION),
        (Pg, "EXPLAIN SELECT pg_sleep(1)", FUNCTION),
        (Pg, "INSERT INTO t VALUES (pg_sleep(1))", FUNCTION),
        (Pg, "CREATE TABLE t (id int DEFAULT nextval('s'))", FUNCTION),
        (Pg, "CALL pg_sleep(1)", FUNCTION),
        (Pg, "SELECT * FROM pg_ls_dir('.')", FUNCTION),
        (Pg, "SELECT * FROM dblink('host=evil', 'select 1') AS t(a int)", FUNCTION),
        (Pg, "SELECT dblink_exec('x')", FUNCTION),
        (Pg, "SELECT pg_advisory_lock(1)", FUNCTION),
        (Pg, "SELECT pg_try_advisory_xact_lock(1)", FUNCTION),
        (Pg, "SELECT lo_import('/etc/passwd')", FUNCTION),
        (Pg, "SELECT set_config('role', 'admin', false)", FUNCTION),
        (Pg, "SELECT nextval('s')", FUNCTION),
        (Pg, "SELECT setval('s', 1)", FUNCTION),
        (Pg, "SELECT query_to_xml('select * from secrets', true, true, '')", FUNCTION),
        (Pg, "SELECT table_to_xml('secrets', true, true, '')", FUNCTION),
        (Pg, "SELECT pg_terminate_backend(42)", FUNCTION),
        (Pg, "SELECT pg_stat_reset()", FUNCTION),
        (My, "SELECT sleep(5)", FUNCTION),
        (My, "SELECT BENCHMARK(1000000, MD5('a'))", FUNCTION),
        (My, "SELECT get_lock('x', 10)", FUNCTION),
        (My, "SELECT load_file('/etc/passwd')", FUNCTION),
        (My, "SELECT * FROM users WHERE id = 1 AND (SELECT SLEEP(5))", FUNCTION),
        (My, "SELECT * FROM users ORDER BY (SELECT sleep(1))", FUNCTION),
        (My, "SELECT `sleep`(1)", FUNCTION),
        (My, "SELECT 1 --sleep(5)", FUNCTION),
        (Lite, "SELECT load_extension('/tmp/evil.so')", FUNCTION),
        (Lite, "SELECT writefile('/tmp/x', 'y')", FUNCTION),
        (Lite, "SELECT readfile('/etc/passwd')", FUNCTION),
        (Lite, "SELECT fts3_tokenizer('x')", FUNCTION),
        (Lite, "SELECT * FROM users WHERE id = (SELECT load_extension('x'))", FUNCTION),
    ]);
}

#[test]
fn ex2_syntax_the_server_could_read_differently_is_rejected() {
    check_all(&[
        (Pg, "SELECT U&\"pg\\005fsleep\"(1)", DENIED),
        (Pg, "SELECT u&\"pg!005fsleep\"(1) UESCAPE '!'", DENIED),
        (Pg, "SELECT 1,\x0b2", DENIED),
        (My, "SELECT\x0b1", DENIED),
        // Non-ASCII white space is an identifier character to sqlparser, as to the servers.
        (Pg, "SELECT\u{a0}1", UNPARSABLE),
        (My, "SELECT 1 /*!99999 , sleep(5) */", DENIED),
        (My, "SELECT sleep /*!99999 AS x, */ (5)", DENIED),
        (My, "SELECT 1 /*! */", DENIED),
        (My, "SELECT 1 /*M!100000 , sleep(5) */", DENIED),
        (My, "SELECT 'a\\' , sleep(5) -- '", DENIED),
        (My, "SELECT \"a\\\" , sleep(5) -- \"", DENIED),
        (My, "SELECT 1 --\u{a0}, sleep(5)", DENIED),
    ]);
}

#[test]
fn ex2_errors_carry_typed_details_and_no_sql_text() {
    let parse = |dialect, text: &str| SqlStatement::parse(dialect, text).err();
    assert_eq!(parse(Pg, "SELECT 1; SELECT 2; SELECT 3"), Some(SqlError::MultipleStatements { count: 3 }));
    assert_eq!(
        parse(Pg, "SELECT pg_catalog.PG_SLEEP(1)"),
        Some(SqlError::DeniedFunction { name: "pg_sleep".to_owned() })
    );
    assert_eq!(parse(My, "SELECT 1 /*!50000 , 2 */"), Some(SqlError::Denied { reason: DeniedReason::ExecutableComment }));
    let long = format!("SELECT 1{}", " ".repeat(MAX_SQL_LEN));
    assert_eq!(parse(Pg, &long), Some(SqlError::TooLong { len: long.len(), max: MAX_SQL_LEN }));
    assert!(SqlStatement::parse(Pg, &format!("SELECT '{}'", "x".repeat(MAX_SQL_LEN - 9))).is_ok());

    let Some(error) = parse(Pg, "SELECT secret_column FROM users WHERE") else { panic!("must not parse") };
    assert_eq!(error, SqlError::Unparsable { reason: "syntax error" });
    assert!(!error.to_string().contains("secret_column"), "{error}");

    let all = [
        (SqlError::Empty, "sql_empty"),
        (SqlError::TooLong { len: 1, max: 0 }, "sql_too_long"),
        (SqlError::TooDeep { depth: 1, max: 0 }, "sql_too_deep"),
        (SqlError::Unparsable { reason: "syntax error" }, "sql_unparsable"),
        (SqlError::MultipleStatements { count: 2 }, "sql_multiple_statements"),
        (SqlError::Denied { reason: DeniedReason::UnusualWhitespace }, "sql_denied_statement"),
        (SqlError::DeniedFunction { name: "sleep".to_owned() }, "sql_denied_function"),
    ];
    for (error, code) in all {
        assert_eq!(error.code(), code);
    }
}

#[test]
fn ex2_statement_keeps_its_text_and_lists_its_tables() {
    let cases: &[(SqlDialect, &str, &[&str])] = &[
        (Pg, "SELECT * FROM Public.Users u JOIN orders o ON true JOIN orders p ON true", &["orders", "public.users"]),
        (Pg, "WITH d AS (SELECT 1) SELECT * FROM d, users", &["d", "users"]),
        (Pg, "INSERT INTO logs SELECT * FROM events", &["events", "logs"]),
        (Pg, "UPDATE users SET a = (SELECT max(x) FROM other)", &["other", "users"]),
        (Pg, "DELETE FROM users WHERE id IN (SELECT id FROM banned)", &["banned", "users"]),
        (Pg, "DROP TABLE a, b", &["a", "b"]),
        (Pg, "TRUNCATE a", &["a"]),
        (Pg, "SELECT 1", &[]),
        (My, "SELECT * FROM `Shop`.`Orders`", &["shop.orders"]),
        (My, "RENAME TABLE a TO b", &["a", "b"]),
        (My, "SHOW CREATE TABLE users", &["users"]),
        (Lite, "PRAGMA table_info('Users')", &["users"]),
    ];
    for (dialect, text, tables) in cases {
        let statement = match SqlStatement::parse(*dialect, text) {
            Ok(statement) => statement,
            Err(error) => panic!("{text}: {error}"),
        };
        assert_eq!(statement.text(), *text);
        assert_eq!(statement.tables(), *tables, "{text}");
    }
    let padded = "  SELECT 1 ;  -- kept as is\n";
    assert_eq!(SqlStatement::parse(Pg, padded).map(|s| s.text().to_owned()), Ok(padded.to_owned()));
}

/// A long operator chain of one of the shapes sqlparser nests: its dialect, how many counted
/// tokens each repetition adds to the depth estimate, and the text for `n` repetitions.
type Chain = (SqlDialect, usize, fn(usize) -> String);

const CHAINS: &[Chain] = &[
    (Pg, 1, |n| format!("SELECT 1{}", "+1".repeat(n))),
    (Pg, 1, |n| format!("SELECT * FROM t WHERE {}", vec!["a"; n + 1].join(" OR "))),
    (Pg, 1, |n| vec!["SELECT 1, 2"; n + 1].join(" UNION ")),
    (Pg, 2, |n| format!("SELECT 1{}", "::int".repeat(n))),
    (Pg, 1, |n| format!("SELECT a{}", "[1]".repeat(n))),
    (Pg, 1, |n| format!("SELECT 'a'{}", "||'a'".repeat(n))),
    (Pg, 1, |n| format!("SELECT a{}", "->'a'".repeat(n))),
    (Pg, 1, |n| format!("SELECT a{}", " IS NULL".repeat(n))),
    (Pg, 3, |n| format!("SELECT a{}", " AT TIME ZONE 'UTC'".repeat(n))),
    (My, 1, |n| format!("SELECT 1{}", " - 1".repeat(n))),
    (Lite, 1, |n| format!("SELECT 1{}", "*1".repeat(n))),
];

#[test]
fn ex2_deep_trees_are_refused_before_they_can_overflow_the_stack() {
    // Just under the limit every shape parses, is walked and dropped on a 2 MiB stack; just
    // over it, none is parsed.
    let failures = on_small_stack(|| {
        let mut failures = Vec::new();
        for (dialect, cost, chain) in CHAINS {
            let deepest = MAX_EXPRESSION_DEPTH / cost - 1;
            let text = chain(deepest);
            if let Err(error) = SqlStatement::parse(*dialect, &text) {
                failures.push(format!("{dialect:?} {}… x{deepest}: {error}", &text[..30]));
            }
            if let Err(message) = check(*dialect, &chain(MAX_EXPRESSION_DEPTH / cost + 1), DEEP) {
                failures.push(message.chars().take(120).collect());
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Operators that sqlparser parses by copying the left operand have a much lower bound.
    let copying = on_small_stack(|| {
        [
            (My, format!("SELECT 1{}", " DIV 1".repeat(63)), Ok(Read)),
            (My, format!("SELECT 1{}", " DIV 1".repeat(65)), DEEP),
            (My, format!("SELECT ({}) DIV 2", vec!["1"; 100].join("+")), DEEP),
            (My, format!("SELECT {}, 4 DIV 2", vec!["1"; 500].join("+")), Ok(Read)),
            (Lite, format!("SELECT 1{}", " GLOB 'a'".repeat(63)), Ok(Read)),
            (Lite, format!("SELECT 1{}", " GLOB 'a'".repeat(65)), DEEP),
            (Pg, format!("SELECT 1{}", " DIV 1".repeat(65)), UNPARSABLE),
        ]
        .into_iter()
        .filter_map(|(dialect, text, expect)| check(dialect, &text, expect).err())
        .map(|message| message.chars().take(120).collect::<String>())
        .collect::<Vec<_>>()
    });
    assert!(copying.is_empty(), "{}", copying.join("\n"));

    let parens = |n| format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(
        SqlStatement::parse(Pg, &parens(MAX_NESTING + 1)).err(),
        Some(SqlError::TooDeep { depth: MAX_NESTING + 1, max: MAX_NESTING })
    );
    check_all(&[
        (Pg, &parens(100), UNPARSABLE),
        (Pg, &format!("SELECT a{}", "[".repeat(5000)), DEEP),
        (Pg, &format!("SELECT 1{}", "+1".repeat(MAX_EXPRESSION_DEPTH)), Ok(Read)),
        (Pg, &format!("SELECT 1{}", "+1".repeat(MAX_EXPRESSION_DEPTH + 1)), DEEP),
    ]);
}

fn check_redis(input: &str, expect: Result<OperationClass, &'static str>) -> Result<(), String> {
    let got = RedisCommand::parse(input).map(|c| c.class()).map_err(|e| e.code());
    if got == expect { Ok(()) } else { Err(format!("{input:?}: expected {expect:?}, got {got:?}")) }
}

#[test]
fn ex2_redis_commands_are_classified_from_a_closed_table() {
    let cases: &[(&str, Result<OperationClass, &str>)] = &[
        ("GET k", Ok(Read)),
        ("get k", Ok(Read)),
        ("MGET a b", Ok(Read)),
        ("HGETALL h", Ok(Read)),
        ("SCAN 0 MATCH user:* COUNT 100", Ok(Read)),
        ("ZRANGE z 0 -1 WITHSCORES", Ok(Read)),
        ("XINFO STREAM s", Ok(Read)),
        ("XREAD COUNT 10 STREAMS s 0", Ok(Read)),
        ("XREAD STREAMS block 0", Ok(Read)),
        ("OBJECT ENCODING k", Ok(Read)),
        ("object freq k", Ok(Read)),
        ("MEMORY USAGE k", Ok(Read)),
        ("TTL k", Ok(Read)),
        ("PING", Ok(Read)),
        ("INFO memory", Ok(Read)),
        ("DBSIZE", Ok(Read)),
        ("GEOSEARCH g FROMLONLAT 0 0 BYRADIUS 1 km", Ok(Read)),
        ("SET k v EX 10 NX", Ok(Write)),
        ("DEL a b", Ok(Write)),
        ("HSET h f v", Ok(Write)),
        ("LPUSH l x", Ok(Write)),
        ("ZADD z 1 m", Ok(Write)),
        ("XADD s * f v", Ok(Write)),
        ("EXPIRE k 10", Ok(Write)),
        ("PUBLISH ch msg", Ok(Write)),
        ("RENAME a b", Ok(Write)),
        ("GETDEL k", Ok(Write)),
        ("BITOP AND d a b", Ok(Write)),
        ("XREADGROUP GROUP g c STREAMS s >", Ok(Write)),
        ("FLUSHALL", Ok(Admin)),
        ("flushdb async", Ok(Admin)),
        ("CONFIG SET dir /tmp", Ok(Admin)),
        ("CONFIG GET *", Ok(Admin)),
        ("CLIENT KILL ID 5", Ok(Admin)),
        ("CLIENT LIST", Ok(Admin)),
        ("EVAL \"return 1\" 0", Ok(Admin)),
        ("FCALL f 0", Ok(Admin)),
        ("SCRIPT FLUSH", Ok(Admin)),
        ("DEBUG SLEEP 0", Ok(Admin)),
        ("SHUTDOWN NOSAVE", Ok(Admin)),
        ("OBJECT HELP", Ok(Admin)),
        ("OBJECT", Ok(Admin)),
        ("MEMORY DOCTOR", Ok(Admin)),
        ("SELECT 1", Ok(Admin)),
        ("MOVE k 1", Ok(Admin)),
        ("DUMP k", Ok(Admin)),
        ("RESTORE k 0 x", Ok(Admin)),
        ("REPLICAOF host 6379", Ok(Admin)),
        ("ACL SETUSER x on", Ok(Admin)),
        ("MODULE LOAD /tmp/x.so", Ok(Admin)),
        ("MONITOR", Ok(Admin)),
        ("SWAPDB 0 1", Ok(Admin)),
        ("KEYS *", Err("redis_denied_command")),
        ("MULTI", Err("redis_denied_command")),
        ("EXEC", Err("redis_denied_command")),
        ("WATCH k", Err("redis_denied_command")),
        ("SUBSCRIBE ch", Err("redis_denied_command")),
        ("PSUBSCRIBE *", Err("redis_denied_command")),
        ("AUTH secret", Err("redis_denied_command")),
        ("HELLO 3", Err("redis_denied_command")),
        ("QUIT", Err("redis_denied_command")),
        ("RESET", Err("redis_denied_command")),
        ("WAIT 1 0", Err("redis_denied_command")),
        ("BLPOP l 0", Err("redis_denied_command")),
        ("BRPOP l 0", Err("redis_denied_command")),
        ("BLMOVE a b LEFT RIGHT 0", Err("redis_denied_command")),
        ("BZPOPMIN z 0", Err("redis_denied_command")),
        ("BLMPOP 0 1 l LEFT", Err("redis_denied_command")),
        ("XREAD BLOCK 0 STREAMS s $", Err("redis_denied_command")),
        ("xread count 1 block 100 streams s 0", Err("redis_denied_command")),
        ("XREADGROUP GROUP g c BLOCK 0 STREAMS s >", Err("redis_denied_command")),
        ("JSON.GET k", Err("redis_unknown_command")),
        ("GETT k", Err("redis_unknown_command")),
        ("\"\"", Err("redis_unknown_command")),
        ("ſet k v", Err("redis_unknown_command")),
        ("", Err("redis_empty")),
        ("  \t\r\n ", Err("redis_empty")),
        ("GET \"k", Err("redis_unparsable")),
        ("GET 'k", Err("redis_unparsable")),
        ("GET \"k\"x", Err("redis_unparsable")),
        ("GET 'k'x", Err("redis_unparsable")),
        ("GET \"k\\", Err("redis_unparsable")),
    ];
    let failures: Vec<String> = cases.iter().filter_map(|(input, expect)| check_redis(input, *expect).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ex2_redis_command_lines_are_split_like_redis_cli() {
    let cases: &[(&str, &[&[u8]])] = &[
        ("  GET   k  ", &[b"GET", b"k"]),
        ("get k", &[b"get", b"k"]),
        ("SET k \"hello world\"", &[b"SET", b"k", b"hello world"]),
        ("SET k \"a\\\"b\\\\c\\n\\t\"", &[b"SET", b"k", b"a\"b\\c\n\t"]),
        ("SET k \"\\x41\\x4a\\xff\"", &[b"SET", b"k", b"\x41\x4a\xff"]),
        ("SET k \"\\xZZ\"", &[b"SET", b"k", b"xZZ"]),
        ("SET k 'it\\'s'", &[b"SET", b"k", b"it's"]),
        ("SET k 'a\\nb'", &[b"SET", b"k", b"a\\nb"]),
        ("SET k \"\"", &[b"SET", b"k", b""]),
        ("SET k a\"b c\"", &[b"SET", b"k", b"ab c"]),
        ("SET 'k;DEL' x", &[b"SET", b"k;DEL", b"x"]),
    ];
    for (input, expect) in cases {
        let command = match RedisCommand::parse(input) {
            Ok(command) => command,
            Err(error) => panic!("{input:?}: {error}"),
        };
        let expect: Vec<Vec<u8>> = expect.iter().map(|a| a.to_vec()).collect();
        assert_eq!(command.args(), expect.as_slice(), "{input:?}");
    }
    let client = RedisCommand::parse("client kill id 5").map(|c| c.name().to_owned());
    assert_eq!(client, Ok("CLIENT".to_owned()));
    let long = format!("GET {}", "k".repeat(MAX_REDIS_LEN));
    assert_eq!(RedisCommand::parse(&long).err(), Some(RedisError::TooLong { len: long.len(), max: MAX_REDIS_LEN }));
    assert_eq!(RedisCommand::parse("BLPOP l 0").err(), Some(RedisError::DeniedCommand { name: "BLPOP" }));
    assert_eq!(
        RedisCommand::parse(&format!("{} x", "Z".repeat(100))).err(),
        Some(RedisError::UnknownCommand { name: "Z".repeat(64) })
    );
}

/// SQL-ish fragments, so generated inputs reach deep into the parser rather than failing on
/// the first character.
fn sql_fragments() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("SELECT "), Just("FROM t "), Just("WHERE "), Just("("), Just(")"), Just("["), Just("]"), Just(","),
        Just(";"), Just("'"), Just("\""), Just("`"), Just("$$"), Just("/*"), Just("*/"), Just("--"), Just("/*!"),
        Just("\\"), Just("\n"), Just("+1"), Just(" OR a"), Just(" UNION SELECT 1"), Just("::int"), Just("pg_sleep(1)"),
        Just("WITH d AS (DELETE FROM t RETURNING *) "), Just("EXPLAIN ANALYZE "), Just(" FOR UPDATE"), Just("U&\"x\""),
        Just("\u{a0}"), Just("é"), Just("$1"), Just("?"), Just("CASE WHEN 1 THEN "), Just(" END"), Just("NOT "),
    ];
    prop::collection::vec(fragment, 0..60).prop_map(|parts| parts.concat())
}

fn deep_nesting() -> impl Strategy<Value = String> {
    (prop_oneof![Just("("), Just("["), Just("{"), Just("(SELECT "), Just("- "), Just("NOT ")], 0usize..3000, ".{0,8}")
        .prop_map(|(open, n, tail)| format!("SELECT {}{tail}", open.repeat(n)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ex2_sql_parsing_never_panics_on_arbitrary_text(text in any::<String>()) {
        for dialect in [Pg, My, Lite] {
            if let Ok(statement) = SqlStatement::parse(dialect, &text) {
                prop_assert_eq!(statement.text(), text.as_str());
            }
        }
    }

    #[test]
    fn ex2_sql_parsing_never_panics_on_sql_like_text(text in prop_oneof![sql_fragments(), deep_nesting()]) {
        for dialect in [Pg, My, Lite] {
            if let Ok(statement) = SqlStatement::parse(dialect, &text) {
                let tables = statement.tables();
                prop_assert!(tables.windows(2).all(|pair| pair[0] < pair[1]), "tables sorted and unique");
            }
        }
    }

    #[test]
    fn ex2_redis_parsing_never_panics(text in prop_oneof![any::<String>(), "[a-zA-Z \"'\\\\x0-9]{0,40}"]) {
        if let Ok(command) = RedisCommand::parse(&text) {
            prop_assert!(!command.args().is_empty());
            prop_assert_eq!(command.name().to_owned(), command.name().to_ascii_uppercase());
        }
    }
}
