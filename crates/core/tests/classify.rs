//! EX-2: statements are classified from a real parser; multi-statement input, writable CTEs,
//! locking reads, denylisted functions and parser-confusion tricks are caught. Every test name
//! starts with the control it proves.

use portcullis_core::OperationClass::{self, Admin, Ddl, Read, Write};
use portcullis_core::sql::{
    DeniedReason, MAX_EXPRESSION_DEPTH, MAX_NESTING, MAX_SQL_LEN, SqlDialect, SqlError,
    SqlStatement,
};
use proptest::prelude::*;

use SqlDialect::{Mysql as My, Postgres as Pg, Sqlite as Lite};

/// An expected outcome: a class, or the stable code of the error.
type Expect = Result<OperationClass, &'static str>;

const R: Expect = Ok(Read);
const W: Expect = Ok(Write);
const D: Expect = Ok(Ddl);
const A: Expect = Ok(Admin);
const EMPTY: Expect = Err("sql_empty");
const MULTI: Expect = Err("sql_multiple_statements");
const UNPARSABLE: Expect = Err("sql_unparsable");
const FUNCTION: Expect = Err("sql_denied_function");
const DENIED: Expect = Err("sql_denied_statement");
const DEEP: Expect = Err("sql_too_deep");

/// Parses `input` and compares the outcome with `expect`; returns a description of a mismatch.
fn check(dialect: SqlDialect, input: &str, expect: Expect) -> Result<(), String> {
    let got = SqlStatement::parse(dialect, input)
        .map(|s| s.class())
        .map_err(|e| e.code());
    if got == expect {
        return Ok(());
    }
    let shown: String = input.chars().take(80).collect();
    Err(format!(
        "{dialect:?} {shown:?}: expected {expect:?}, got {got:?}"
    ))
}

fn check_all(dialect: SqlDialect, cases: &[(&str, Expect)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(input, expect)| check(dialect, input, *expect).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
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
    #[rustfmt::skip]
    let postgres = [
        ("SELECT 1", R),
        ("  select * from users where id = 1  ", R),
        ("SELECT u.id, o.total FROM users u JOIN orders o ON o.uid = u.id WHERE o.total > 9", R),
        ("SELECT id, row_number() OVER (PARTITION BY team ORDER BY score DESC) FROM players", R),
        ("WITH r AS (SELECT * FROM orders WHERE at > now() - interval '1 day') SELECT * FROM r", R),
        ("WITH RECURSIVE t(n) AS (SELECT 1 UNION SELECT n+1 FROM t WHERE n<5) SELECT n FROM t", R),
        ("SELECT data->>'email', data->'a'->'b' FROM users WHERE data @> '{\"a\":1}'", R),
        ("SELECT team, avg(x) FROM p GROUP BY team HAVING count(*) > 1 ORDER BY 2 DESC LIMIT 9", R),
        ("SELECT CAST(id AS text), id::text, currval('s'), lower(name) FROM users", R),
        ("SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3", R),
        ("VALUES (1, 'a'), (2, 'b')", R),
        ("SELECT * FROM generate_series(1, 10)", R),
        ("SELECT (x).name FROM (SELECT ROW('a') AS x) s", R),
        ("SHOW search_path", R),
        ("SELECT U&'\\0041'", R),
        ("SELECT 'no\u{a0}break space inside a string'", R),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("SELECT * FROM `users` WHERE `id` = 1 LIMIT 10, 20", R),
        ("SELECT 1 FROM dual", R),
        ("SELECT data->>'$.email', JSON_EXTRACT(data, '$.a') FROM users", R),
        ("SELECT * FROM a STRAIGHT_JOIN b", R),
        ("SELECT /*+ MAX_EXECUTION_TIME(1000) */ * FROM users", R),
        ("SELECT 'it''s', 'a\\\\', \"double\"", R),
        ("SELECT 1 --1", R),
        ("SHOW TABLES", R),
        ("SHOW CREATE TABLE users", R),
        ("SHOW VARIABLES LIKE 'max%'", R),
        ("SHOW PROCESSLIST", R),
        ("DESCRIBE users", R),
        ("DESC users", R),
    ];
    check_all(My, &mysql);
    #[rustfmt::skip]
    let sqlite = [
        ("SELECT * FROM users", R),
        ("SELECT * FROM [users] NATURAL JOIN orders", R),
        ("SELECT json_extract(data, '$.a'), group_concat(name), typeof(1) FROM users", R),
        ("SELECT * FROM users WHERE name GLOB 'a*'", R),
        ("WITH RECURSIVE c(x) AS (SELECT 1 UNION SELECT x+1 FROM c WHERE x<5) SELECT x FROM c", R),
        ("SELECT id, sum(n) OVER (ORDER BY id) FROM t", R),
    ];
    check_all(Lite, &sqlite);
}

#[test]
fn ex2_explain_is_a_read_unless_it_executes() {
    #[rustfmt::skip]
    let postgres = [
        ("EXPLAIN SELECT * FROM users", R),
        ("EXPLAIN VERBOSE SELECT 1", R),
        ("EXPLAIN DELETE FROM users", R),
        ("EXPLAIN ANALYZE SELECT 1", R),
        ("EXPLAIN ANALYZE DELETE FROM users", W),
        ("EXPLAIN (ANALYZE, FORMAT JSON) UPDATE users SET a = 1", W),
        ("EXPLAIN (ANALYZE false) DELETE FROM users", W),
        ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", D),
        ("EXPLAIN GRANT SELECT ON users TO bob", A),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("EXPLAIN SELECT * FROM users", R),
        ("EXPLAIN FORMAT=TREE SELECT 1", R),
        ("DESCRIBE SELECT 1", R),
        ("EXPLAIN ANALYZE SELECT 1", R),
        ("EXPLAIN ANALYZE DELETE FROM users", W),
    ];
    check_all(My, &mysql);
    #[rustfmt::skip]
    let sqlite = [
        ("EXPLAIN QUERY PLAN SELECT * FROM users", R),
        ("EXPLAIN SELECT 1", R),
        ("EXPLAIN QUERY PLAN DELETE FROM users", R),
    ];
    check_all(Lite, &sqlite);
}

#[test]
fn ex2_data_changes_are_writes() {
    #[rustfmt::skip]
    let postgres = [
        ("INSERT INTO users (id) VALUES (1)", W),
        ("INSERT INTO users VALUES (1) ON CONFLICT (id) DO UPDATE SET name = excluded.name", W),
        ("UPDATE users SET name = 'x' WHERE id = 1", W),
        ("DELETE FROM users WHERE id = 1", W),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", W),
        ("INSERT INTO archive SELECT * FROM users", W),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("INSERT INTO users VALUES (1) ON DUPLICATE KEY UPDATE a = 1", W),
        ("INSERT IGNORE INTO users VALUES (1)", W),
        ("REPLACE INTO users VALUES (1)", W),
        ("UPDATE users SET a = 1 ORDER BY id LIMIT 1", W),
        ("DELETE t FROM t JOIN u ON t.id = u.id", W),
    ];
    check_all(My, &mysql);
    #[rustfmt::skip]
    let sqlite = [
        ("INSERT OR REPLACE INTO users VALUES (1)", W),
        ("REPLACE INTO users VALUES (1)", W),
        ("INSERT INTO users VALUES (1) ON CONFLICT(id) DO UPDATE SET a = 1", W),
        ("UPDATE users SET a = 1 RETURNING *", W),
        ("DELETE FROM users WHERE id IN (SELECT id FROM old)", W),
    ];
    check_all(Lite, &sqlite);
}

#[test]
fn ex2_writable_ctes_and_locking_reads_are_writes() {
    #[rustfmt::skip]
    let postgres = [
        ("WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d", W),
        ("WITH x AS (SELECT 1), u AS (UPDATE users SET a = 1 RETURNING *) SELECT * FROM x", W),
        ("WITH i AS (INSERT INTO log VALUES (1) RETURNING *) SELECT 1", W),
        ("SELECT * FROM (WITH d AS (DELETE FROM users RETURNING id) SELECT id FROM d) sub", W),
        ("WITH d AS (DELETE FROM users RETURNING *) INSERT INTO archive SELECT * FROM d", W),
        ("EXPLAIN ANALYZE WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d", W),
        ("SELECT * FROM users FOR UPDATE", W),
        ("SELECT * FROM users FOR SHARE SKIP LOCKED", W),
        ("SELECT * FROM users FOR UPDATE OF users NOWAIT", W),
        ("SELECT * FROM users WHERE id IN (SELECT id FROM t FOR UPDATE)", W),
        // sqlparser 0.63 cannot parse these lock clauses: refused rather than misclassified.
        ("SELECT * FROM users FOR NO KEY UPDATE", UNPARSABLE),
        ("SELECT * FROM users FOR KEY SHARE", UNPARSABLE),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("SELECT * FROM users FOR UPDATE", W),
        ("SELECT * FROM users FOR SHARE", W),
        ("SELECT * FROM users LOCK IN SHARE MODE", UNPARSABLE),
    ];
    check_all(My, &mysql);
}

#[test]
fn ex2_schema_changes_are_ddl() {
    #[rustfmt::skip]
    let postgres = [
        ("CREATE TABLE t (id int)", D),
        ("CREATE TABLE t2 AS SELECT * FROM users", D),
        ("SELECT * INTO archive FROM users", D),
        ("ALTER TABLE users ADD COLUMN x int", D),
        ("DROP TABLE users CASCADE", D),
        ("TRUNCATE users", D),
        ("CREATE INDEX i ON users (name)", D),
        ("CREATE VIEW v AS SELECT 1", D),
        ("CREATE SCHEMA s", D),
        ("CREATE SEQUENCE s", D),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("CREATE TABLE t (id INT PRIMARY KEY)", D),
        ("ALTER TABLE users ADD COLUMN x INT", D),
        ("TRUNCATE TABLE users", D),
        ("RENAME TABLE a TO b", D),
        ("DROP VIEW v", D),
    ];
    check_all(My, &mysql);
    #[rustfmt::skip]
    let sqlite = [
        ("CREATE TABLE t (id INTEGER PRIMARY KEY)", D),
        ("CREATE VIRTUAL TABLE v USING fts5(body)", D),
        ("ALTER TABLE users RENAME TO people", D),
        ("DROP TABLE users", D),
        ("CREATE INDEX i ON users(name)", D),
        ("DROP INDEX i", D),
    ];
    check_all(Lite, &sqlite);
}

#[test]
fn ex2_privilege_session_and_server_statements_are_admin() {
    #[rustfmt::skip]
    let postgres = [
        ("GRANT SELECT ON users TO bob", A),
        ("REVOKE ALL ON users FROM bob", A),
        ("CREATE ROLE bob", A),
        ("ALTER ROLE bob SUPERUSER", A),
        ("DROP ROLE bob", A),
        ("SET ROLE admin", A),
        ("SET SESSION AUTHORIZATION postgres", A),
        ("SET search_path = evil", A),
        ("RESET ALL", A),
        ("DISCARD ALL", A),
        ("BEGIN", A),
        ("START TRANSACTION READ WRITE", A),
        ("COMMIT", A),
        ("ROLLBACK", A),
        ("SAVEPOINT s", A),
        ("RELEASE SAVEPOINT s", A),
        ("COPY users TO '/tmp/x'", A),
        ("COPY users FROM STDIN", A),
        ("COPY (SELECT 1) TO PROGRAM 'id'", A),
        ("CALL p()", A),
        ("PREPARE p AS SELECT 1", A),
        ("EXECUTE p", A),
        ("DEALLOCATE p", A),
        ("VACUUM users", A),
        ("ANALYZE users", A),
        ("LOCK TABLE users", A),
        ("LISTEN ch", A),
        ("NOTIFY ch", A),
        ("CREATE EXTENSION dblink", A),
        ("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", A),
        ("CREATE TRIGGER tr AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION f()", A),
        ("DECLARE c CURSOR FOR SELECT 1", A),
        ("CREATE DATABASE x", A),
        ("DROP DATABASE prod", A),
        ("ALTER TABLE users OWNER TO bob", A),
        ("ALTER TABLE users DISABLE ROW LEVEL SECURITY", A),
        ("ALTER TABLE users DISABLE TRIGGER audit", A),
        ("ALTER SCHEMA s OWNER TO bob", A),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("UPDATE /*+ SET_VAR(sql_mode = '') */ users SET a = 1", A),
        ("SET @x = 1", A),
        ("SET GLOBAL max_connections = 1", A),
        ("SET NAMES utf8mb4", A),
        ("SELECT a INTO @v FROM users", A),
        ("SELECT /*+ SET_VAR(sort_buffer_size = 16M) */ * FROM users", A),
        ("CREATE USER u", A),
        ("START TRANSACTION", A),
        ("COMMIT", A),
        ("LOCK TABLES users READ", A),
        ("UNLOCK TABLES", A),
        ("KILL 5", A),
        ("FLUSH PRIVILEGES", A),
        ("USE otherdb", A),
        ("CALL p()", A),
    ];
    check_all(My, &mysql);
    #[rustfmt::skip]
    let sqlite = [
        ("PRAGMA writable_schema = 1", A),
        ("PRAGMA journal_mode", A),
        ("ATTACH DATABASE '/tmp/x.db' AS x", A),
        ("VACUUM", A),
        ("ANALYZE", A),
        ("BEGIN IMMEDIATE", A),
        ("END", A),
        ("ROLLBACK", A),
        ("SAVEPOINT a", A),
        ("CREATE TRIGGER tr AFTER INSERT ON users BEGIN DELETE FROM logs; END", A),
    ];
    check_all(Lite, &sqlite);
}

#[test]
fn ex2_sqlite_pragmas_are_admin_except_schema_reports() {
    #[rustfmt::skip]
    let sqlite = [
        ("PRAGMA table_info('users')", R),
        ("PRAGMA main.table_info('users')", R),
        ("PRAGMA table_list", R),
        ("PRAGMA index_list('users')", R),
        ("PRAGMA foreign_key_list('users')", R),
        ("PRAGMA user_version = 5", A),
        ("PRAGMA foreign_keys = 0", A),
        // sqlparser 0.63 only accepts literal pragma arguments.
        ("PRAGMA table_info(users)", UNPARSABLE),
    ];
    check_all(Lite, &sqlite);
    check_all(Pg, &[("PRAGMA table_info('users')", A)]);
}

#[test]
fn ex2_more_than_one_statement_is_rejected() {
    #[rustfmt::skip]
    let postgres = [
        ("SELECT 1;", R),
        ("SELECT 1;;", R),
        ("SELECT 1; -- trailing comment", R),
        ("SELECT 1; SELECT 2", MULTI),
        ("COMMIT; DROP TABLE users", MULTI),
        ("SELECT 1;;DROP TABLE users", MULTI),
        ("SELECT 1 -- ; DROP TABLE users", R),
        ("SELECT /* ; DROP TABLE users */ 1", R),
        ("SELECT 1 /* nested /* ; */ DROP TABLE users; */", R),
        ("SELECT $$;$$", R),
        ("SELECT $tag$ ; DROP TABLE users; $tag$", R),
        ("SELECT E'\\'; DROP TABLE users; --'", R),
        ("SELECT ';' || \";\" FROM t", R),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("SELECT 1; DROP TABLE users", MULTI),
        ("SELECT 1 # ; DROP TABLE users", R),
        ("SELECT 1 -- ; DROP TABLE users", R),
        ("SELECT 'x\\\\'; DROP TABLE users", MULTI),
    ];
    check_all(My, &mysql);
    #[rustfmt::skip]
    let sqlite = [
        ("SELECT 1; SELECT 2", MULTI),
        ("COMMIT; DROP TABLE users", MULTI),
        ("SELECT 1 /* ; DROP TABLE users */", R),
        // SQLite comments do not nest: the statement goes on after the first `*/`.
        ("SELECT 1 /* /* */ ; DROP TABLE users */", UNPARSABLE),
    ];
    check_all(Lite, &sqlite);
}

#[test]
fn ex2_empty_and_unparsable_input_is_rejected() {
    #[rustfmt::skip]
    let postgres = [
        ("", EMPTY),
        ("  \n\t ", EMPTY),
        ("-- only a comment", EMPTY),
        ("SELEC 1", UNPARSABLE),
        ("SELECT 'unterminated", UNPARSABLE),
        ("DO $$ BEGIN PERFORM pg_sleep(1); END $$", UNPARSABLE),
        ("ALTER SYSTEM SET work_mem = '1GB'", UNPARSABLE),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("/* only a comment */", EMPTY),
        ("LOAD DATA INFILE '/etc/passwd' INTO TABLE t", UNPARSABLE),
        ("SELECT a FROM t INTO OUTFILE '/tmp/x'", UNPARSABLE),
        ("DO sleep(1)", UNPARSABLE),
        ("HANDLER t OPEN", UNPARSABLE),
    ];
    check_all(My, &mysql);
    #[rustfmt::skip]
    let sqlite = [
        (";", EMPTY),
        ("DETACH DATABASE x", UNPARSABLE),
        ("VACUUM INTO '/tmp/x'", UNPARSABLE),
    ];
    check_all(Lite, &sqlite);
}

#[test]
fn ex2_denylisted_functions_are_rejected_anywhere_in_the_tree() {
    #[rustfmt::skip]
    let postgres = [
        ("SELECT pg_sleep(10)", FUNCTION),
        ("SELECT PG_Sleep(1)", FUNCTION),
        ("SELECT pg_catalog.pg_sleep(1)", FUNCTION),
        ("SELECT \"pg_sleep\"(1)", FUNCTION),
        ("SELECT \"PG_SLEEP\"(1)", FUNCTION),
        ("SELECT (x).pg_sleep(1) FROM t x", FUNCTION),
        ("SELECT * FROM t WHERE id IN (SELECT id FROM (SELECT pg_sleep(1) AS id) s)", FUNCTION),
        ("SELECT CASE WHEN true THEN pg_sleep(1) END", FUNCTION),
        ("SELECT pg_sleep(1)::text", FUNCTION),
        ("SELECT CAST(pg_sleep(1) AS text)", FUNCTION),
        ("SELECT * FROM users ORDER BY pg_sleep(1)", FUNCTION),
        ("SELECT coalesce(lower(pg_read_file('/etc/passwd')), '')", FUNCTION),
        ("SELECT count(*) FILTER (WHERE pg_sleep(1) IS NULL) FROM users", FUNCTION),
        ("SELECT * FROM users WHERE name = ANY(ARRAY[pg_sleep(1)::text])", FUNCTION),
        ("WITH x AS (SELECT pg_sleep(1)) SELECT * FROM x", FUNCTION),
        ("EXPLAIN SELECT pg_sleep(1)", FUNCTION),
        ("INSERT INTO t VALUES (pg_sleep(1))", FUNCTION),
        ("CREATE TABLE t (id int DEFAULT nextval('s'))", FUNCTION),
        ("CALL pg_sleep(1)", FUNCTION),
        ("SELECT * FROM pg_ls_dir('.')", FUNCTION),
        ("SELECT * FROM users, LATERAL pg_sleep(1)", FUNCTION),
        ("SELECT * FROM users JOIN LATERAL (SELECT pg_sleep(1)) s ON true", FUNCTION),
        ("SELECT * FROM dblink('host=evil', 'select 1') AS t(a int)", FUNCTION),
        ("SELECT dblink_exec('x')", FUNCTION),
        ("SELECT pg_advisory_lock(1)", FUNCTION),
        ("SELECT pg_try_advisory_xact_lock(1)", FUNCTION),
        ("SELECT lo_import('/etc/passwd')", FUNCTION),
        ("SELECT set_config('role', 'admin', false)", FUNCTION),
        ("SELECT nextval('s')", FUNCTION),
        ("SELECT setval('s', 1)", FUNCTION),
        ("SELECT query_to_xml('select * from secrets', true, true, '')", FUNCTION),
        ("SELECT table_to_xml('secrets', true, true, '')", FUNCTION),
        ("SELECT pg_terminate_backend(42)", FUNCTION),
        ("SELECT pg_stat_reset()", FUNCTION),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("SELECT sleep(5)", FUNCTION),
        ("SELECT BENCHMARK(1000000, MD5('a'))", FUNCTION),
        ("SELECT get_lock('x', 10)", FUNCTION),
        ("SELECT load_file('/etc/passwd')", FUNCTION),
        ("SELECT * FROM users WHERE id = 1 AND (SELECT SLEEP(5))", FUNCTION),
        ("SELECT * FROM users ORDER BY (SELECT sleep(1))", FUNCTION),
        ("SELECT `sleep`(1)", FUNCTION),
        ("SELECT 1 --sleep(5)", FUNCTION),
    ];
    check_all(My, &mysql);
    #[rustfmt::skip]
    let sqlite = [
        ("SELECT load_extension('/tmp/evil.so')", FUNCTION),
        ("SELECT writefile('/tmp/x', 'y')", FUNCTION),
        ("SELECT readfile('/etc/passwd')", FUNCTION),
        ("SELECT fts3_tokenizer('x')", FUNCTION),
        ("SELECT * FROM users WHERE id = (SELECT load_extension('x'))", FUNCTION),
    ];
    check_all(Lite, &sqlite);
}

#[test]
fn ex2_syntax_the_server_could_read_differently_is_rejected() {
    #[rustfmt::skip]
    let postgres = [
        ("SELECT U&\"pg\\005fsleep\"(1)", DENIED),
        ("SELECT u&\"pg!005fsleep\"(1) UESCAPE '!'", DENIED),
        ("SELECT 1,\x0b2", DENIED),
        ("SELECT 'a\\' , 1 -- ' , pg_sleep(5)", DENIED),
        ("SELECT 'a\\'' , pg_sleep(1) -- '", DENIED),
        ("SELECT 'C:\\temp\\new', 'a\\\\'", R),
        ("SELECT '{\"msg\": \"say \\\"hi\\\"\"}'::jsonb", R),
        // Non-ASCII white space is an identifier character to sqlparser, as to the servers.
        ("SELECT\u{a0}1", UNPARSABLE),
    ];
    check_all(Pg, &postgres);
    #[rustfmt::skip]
    let mysql = [
        ("SELECT\x0b1", DENIED),
        ("SELECT 1 /*!99999 , sleep(5) */", DENIED),
        ("SELECT sleep /*!99999 AS x, */ (5)", DENIED),
        ("SELECT 1 /*! */", DENIED),
        ("SELECT 1 /*M!100000 , sleep(5) */", DENIED),
        ("SELECT 'a\\' , sleep(5) -- '", DENIED),
        ("SELECT \"a\\\" , sleep(5) -- \"", DENIED),
        ("SELECT '{\"msg\": \"say \\\"hi\\\"\"}'", R),
        ("SELECT 1 --\u{a0}, sleep(5)", DENIED),
    ];
    check_all(My, &mysql);
}

#[test]
fn ex2_errors_carry_typed_details_and_no_sql_text() {
    let parse = |dialect, text: &str| SqlStatement::parse(dialect, text).err();
    assert_eq!(
        parse(Pg, "SELECT 1; SELECT 2; SELECT 3"),
        Some(SqlError::MultipleStatements { count: 3 })
    );
    assert_eq!(
        parse(Pg, "SELECT pg_catalog.PG_SLEEP(1)"),
        Some(SqlError::DeniedFunction {
            name: "pg_sleep".to_owned()
        })
    );
    assert_eq!(
        parse(My, "SELECT 1 /*!50000 , 2 */"),
        Some(SqlError::Denied {
            reason: DeniedReason::ExecutableComment
        })
    );
    let long = format!("SELECT 1{}", " ".repeat(MAX_SQL_LEN));
    assert_eq!(
        parse(Pg, &long),
        Some(SqlError::TooLong {
            len: long.len(),
            max: MAX_SQL_LEN
        })
    );
    assert!(SqlStatement::parse(Pg, &format!("SELECT '{}'", "x".repeat(MAX_SQL_LEN - 9))).is_ok());

    let Some(error) = parse(Pg, "SELECT secret_column FROM users WHERE") else {
        panic!("must not parse")
    };
    assert_eq!(
        error,
        SqlError::Unparsable {
            reason: "syntax error"
        }
    );
    assert!(!error.to_string().contains("secret_column"), "{error}");

    #[rustfmt::skip]
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
    #[rustfmt::skip]
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
    assert_eq!(
        SqlStatement::parse(Pg, padded).map(|s| s.text().to_owned()),
        Ok(padded.to_owned())
    );
}

/// Builds a statement with an operator chain `n` levels deep.
type Chain = fn(usize) -> String;

/// Long operator chains of the shapes sqlparser nests, each repetition one level deeper.
#[rustfmt::skip]
const CHAINS: &[(SqlDialect, Chain)] = &[
    (Pg, |n| format!("SELECT 1{}", "+1".repeat(n))),
    (Pg, |n| format!("SELECT * FROM t WHERE {}", vec!["a"; n + 1].join(" OR "))),
    (Pg, |n| vec!["SELECT 1, 2"; n + 1].join(" UNION ")),
    (Pg, |n| format!("SELECT 1{}", "::int".repeat(n))),
    (Pg, |n| format!("SELECT a{}", "[1]".repeat(n))),
    (Pg, |n| format!("SELECT 'a'{}", "||'a'".repeat(n))),
    (Pg, |n| format!("SELECT a{}", "->'a'".repeat(n))),
    (Pg, |n| format!("SELECT a{}", " IS NULL".repeat(n))),
    (Pg, |n| format!("SELECT a{}", " AT TIME ZONE 'UTC'".repeat(n))),
    (My, |n| format!("SELECT 1{}", " - 1".repeat(n))),
    (Lite, |n| format!("SELECT 1{}", "*1".repeat(n))),
];

#[test]
fn ex2_deep_trees_are_refused_before_they_can_overflow_the_stack() {
    // Just under the limit every shape parses, is walked and dropped on a 2 MiB stack; just
    // over it, none is parsed.
    let failures = on_small_stack(|| {
        let mut failures = Vec::new();
        for (dialect, chain) in CHAINS {
            let deepest = MAX_EXPRESSION_DEPTH - 1;
            let text = chain(deepest);
            if let Err(error) = SqlStatement::parse(*dialect, &text) {
                failures.push(format!("{dialect:?} {}… x{deepest}: {error}", &text[..30]));
            }
            if let Err(message) = check(*dialect, &chain(MAX_EXPRESSION_DEPTH + 1), DEEP) {
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
            (
                My,
                format!("SELECT ({}) DIV 2", vec!["1"; 100].join("+")),
                DEEP,
            ),
            (
                My,
                format!("SELECT {}, 4 DIV 2", vec!["1"; 500].join("+")),
                Ok(Read),
            ),
            (
                Lite,
                format!("SELECT 1{}", " GLOB 'a'".repeat(63)),
                Ok(Read),
            ),
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
        Some(SqlError::TooDeep {
            depth: MAX_NESTING + 1,
            max: MAX_NESTING
        })
    );
    let plus = |n| format!("SELECT 1{}", "+1".repeat(n));
    let rows = vec!["(1, 'a', NULL, -1.5, now())"; 2000].join(", ");
    let terms: Vec<String> = (0..400).map(|i| format!("id = {i}")).collect();
    #[rustfmt::skip]
    let postgres = [
        // Large but realistic statements stay well under the bounds.
        (format!("INSERT INTO t VALUES {rows}"), W),
        (format!("SELECT * FROM t WHERE {}", terms.join(" OR ")), R),
        (parens(100), UNPARSABLE),
        (format!("SELECT a{}", "[".repeat(5000)), DEEP),
        (plus(MAX_EXPRESSION_DEPTH), R),
        (plus(MAX_EXPRESSION_DEPTH + 1), DEEP),
    ];
    let postgres: Vec<(&str, Expect)> = postgres.iter().map(|(t, e)| (t.as_str(), *e)).collect();
    check_all(Pg, &postgres);
}

/// SQL-ish fragments, so generated inputs reach deep into the parser rather than failing on
/// the first character.
fn sql_fragments() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("SELECT "),
        Just("FROM t "),
        Just("WHERE "),
        Just("("),
        Just(")"),
        Just("["),
        Just("]"),
        Just(","),
        Just(";"),
        Just("'"),
        Just("\""),
        Just("`"),
        Just("$$"),
        Just("/*"),
        Just("*/"),
        Just("--"),
        Just("/*!"),
        Just("\\"),
        Just("\n"),
        Just("+1"),
        Just(" OR a"),
        Just(" UNION SELECT 1"),
        Just("::int"),
        Just("pg_sleep(1)"),
        Just("WITH d AS (DELETE FROM t RETURNING *) "),
        Just("EXPLAIN ANALYZE "),
        Just(" FOR UPDATE"),
        Just("U&\"x\""),
        Just("\u{a0}"),
        Just("é"),
        Just("$1"),
        Just("?"),
        Just("CASE WHEN 1 THEN "),
        Just(" END"),
        Just("NOT "),
    ];
    prop::collection::vec(fragment, 0..60).prop_map(|parts| parts.concat())
}

fn deep_nesting() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("("),
            Just("["),
            Just("{"),
            Just("(SELECT "),
            Just("- "),
            Just("NOT ")
        ],
        0usize..3000,
        ".{0,8}",
    )
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
    fn ex2_sql_parsing_never_panics_on_sql_like_text(
        text in prop_oneof![sql_fragments(), deep_nesting()]
    ) {
        for dialect in [Pg, My, Lite] {
            if let Ok(statement) = SqlStatement::parse(dialect, &text) {
                let tables = statement.tables();
                let sorted_unique = tables.windows(2).all(|pair| pair[0] < pair[1]);
                prop_assert!(sorted_unique, "tables must be sorted and unique: {:?}", tables);
            }
        }
    }
}

/// Found by the attack suite (EX-2): state that outlives the request on a pooled connection,
/// functions that block like sleep or write the catalog inside a read-only transaction, and a
/// dollar quote PostgreSQL does not read as a string.
#[test]
fn ex2_attack_suite_findings_are_refused() {
    check_all(
        My,
        &[
            (
                "SELECT @evil := (SELECT name FROM customers WHERE id = 1)",
                DENIED,
            ),
            ("SELECT id, @n := @n + 1 FROM customers", DENIED),
            ("SELECT LAST_INSERT_ID(42)", DENIED),
            ("SELECT LAST_INSERT_ID()", R),
            ("SELECT @probe", R),
            ("SELECT MASTER_GTID_WAIT('0-1-1000000', 2)", FUNCTION),
        ],
    );
    check_all(
        Pg,
        &[
            ("SELECT setseed(0.5)", FUNCTION),
            ("SELECT pg_replication_origin_create('evil')", FUNCTION),
            ("SELECT * FROM pg_ls_logicalsnapdir()", FUNCTION),
            ("SELECT * FROM pg_ls_logicalmapdir()", FUNCTION),
            ("SELECT * FROM pg_ls_replslotdir('s')", FUNCTION),
            ("SELECT $1$; DROP TABLE customers; $1$", DENIED),
            ("SELECT $a1$ text $a1$", R),
            ("SELECT random()", R),
        ],
    );
}

/// The explain jobs the server sends for approvers classify as reads on the agent.
#[test]
fn ex2_plain_explain_of_a_write_is_a_read() {
    check_all(
        Pg,
        &[
            (
                "EXPLAIN UPDATE customers SET country = 'FR' WHERE id = 1",
                R,
            ),
            ("EXPLAIN ANALYZE UPDATE customers SET country = 'FR'", W),
        ],
    );
    check_all(
        My,
        &[
            (
                "EXPLAIN UPDATE customers SET country = 'FR' WHERE id = 1",
                R,
            ),
            ("EXPLAIN DELETE FROM customers WHERE id = 1", R),
        ],
    );
    check_all(
        Lite,
        &[(
            "EXPLAIN QUERY PLAN UPDATE customers SET country = 'FR' WHERE id = 1",
            R,
        )],
    );
}
