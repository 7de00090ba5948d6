//! Store handles: setup, seeding, clean-up and the checksum oracle of each store.

use super::*;

// ------------------------------------------------------------------------------------------
// Targets: setup, checksum, teardown

pub(crate) fn env_url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// `url` with its database (the path) replaced by `db`, query kept.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{db}{query}", &base[..host_end])
}

pub(crate) enum Handle {
    Sqlite(sqlx::SqlitePool),
    Postgres {
        admin: sqlx::PgPool,
        pool: sqlx::PgPool,
        db: String,
        url: String,
    },
    Mysql {
        admin: sqlx::MySqlPool,
        pool: sqlx::MySqlPool,
        db: String,
        url: String,
    },
    Redis {
        conn: Mutex<Resp>,
        prefix: String,
        url: String,
    },
}

impl Handle {
    pub(crate) async fn open(store: Store, demo_db: &Path, suffix: &str) -> Result<Handle, String> {
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", store.as_str());
        match store {
            Store::Sqlite => {
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(
                        sqlx::sqlite::SqliteConnectOptions::new()
                            .filename(demo_db)
                            .read_only(true),
                    )
                    .await
                    .map_err(|e| err(&e))?;
                Ok(Handle::Sqlite(pool))
            }
            Store::Postgres => {
                let base = env_url(
                    "PORTCULLIS_ATTACK_PG_URL",
                    "postgres://postgres@127.0.0.1:5432/test",
                );
                let admin = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(&base)
                    .await
                    .map_err(|e| err(&e))?;
                let db = format!("pcx_attack_{suffix}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                    .execute(&admin)
                    .await
                    .map_err(|e| err(&e))?;
                let url = with_database(&base, &db);
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .map_err(|e| err(&e))?;
                let seed = std::fs::read_to_string(attack_dir().join("seed-postgres.sql"))
                    .map_err(|e| err(&e))?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(seed))
                    .execute(&pool)
                    .await
                    .map_err(|e| err(&e))?;
                Ok(Handle::Postgres {
                    admin,
                    pool,
                    db,
                    url,
                })
            }
            Store::Mysql => {
                let base = env_url(
                    "PORTCULLIS_ATTACK_MYSQL_URL",
                    "mysql://root@127.0.0.1:3306/test",
                );
                let admin = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(&base)
                    .await
                    .map_err(|e| err(&e))?;
                let db = format!("pcx_attack_{suffix}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                    .execute(&admin)
                    .await
                    .map_err(|e| err(&e))?;
                let url = with_database(&base, &db);
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .map_err(|e| err(&e))?;
                let seed = std::fs::read_to_string(attack_dir().join("seed-mysql.sql"))
                    .map_err(|e| err(&e))?;
                for statement in seed.split(";\n").filter(|s| {
                    s.lines()
                        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
                }) {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
                        .execute(&pool)
                        .await
                        .map_err(|e| err(&e))?;
                }
                Ok(Handle::Mysql {
                    admin,
                    pool,
                    db,
                    url,
                })
            }
            Store::Redis => {
                let url = env_url("PORTCULLIS_ATTACK_REDIS_URL", "redis://127.0.0.1:6379");
                let mut conn = Resp::connect(&url).await.map_err(|e| err(&e))?;
                let prefix = format!("attack:{suffix}:");
                for seed in load_cases("seed-redis.cases", None)? {
                    let line = seed.input.replace("{prefix}", &prefix);
                    let args: Vec<&str> = line.split_whitespace().collect();
                    if let Reply::Error(e) = conn.call(&args).await.map_err(|e| err(&e))? {
                        return Err(err(&format!("seed {}: {e}", seed.id)));
                    }
                }
                Ok(Handle::Redis {
                    conn: Mutex::new(conn),
                    prefix,
                    url,
                })
            }
        }
    }

    /// Removes what a successful attack of an earlier run would have left behind (the
    /// `pcx_evil` names), so every run starts from the same state. Errors are ignored: there is
    /// normally nothing to remove.
    pub(crate) async fn scrub(&self) {
        match self {
            Handle::Sqlite(_) => {}
            Handle::Postgres { admin, .. } => {
                for statement in [
                    "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin \
                     WHERE roname LIKE 'pcx\\_evil%'",
                    "DROP DATABASE IF EXISTS pcx_evil WITH (FORCE)",
                    "DROP ROLE IF EXISTS pcx_evil",
                ] {
                    let _ = sqlx::raw_sql(statement).execute(admin).await;
                }
            }
            Handle::Mysql { admin, .. } => {
                for statement in [
                    "DROP USER IF EXISTS 'pcx_evil'@'%'",
                    "DROP USER IF EXISTS 'pcx_evil'@'localhost'",
                    "DROP DATABASE IF EXISTS pcx_evil",
                ] {
                    let _ = sqlx::raw_sql(statement).execute(admin).await;
                }
            }
            Handle::Redis { conn, .. } => {
                let mut conn = conn.lock().await;
                if let Ok(keys) = redis_scan(&mut conn, "pcx_evil*").await {
                    for key in keys {
                        let _ = conn.call(&[b"DEL".as_slice(), key.as_slice()]).await;
                    }
                }
                let _ = conn.call(&["ACL", "DELUSER", "pcx_evil"]).await;
                let _ = conn.call(&["FUNCTION", "DELETE", "pcx_evil"]).await;
            }
        }
    }

    pub(crate) fn substitute(&self, input: &str) -> String {
        match self {
            Handle::Postgres { db, .. } | Handle::Mysql { db, .. } => input.replace("{db}", db),
            Handle::Redis { prefix, .. } => input.replace("{prefix}", prefix),
            Handle::Sqlite(_) => input.to_owned(),
        }
    }

    /// The agent's `[[connections]]` entry for this store, in the agent's own format.
    pub(crate) fn agent_target(&self, store: Store) -> Option<Value> {
        let (url, allow): (&str, &[&str]) = match self {
            Handle::Sqlite(_) => return None,
            Handle::Postgres { url, .. } | Handle::Mysql { url, .. } => {
                (url, &["read", "write", "ddl"])
            }
            Handle::Redis { url, .. } => (url, &["read", "write"]),
        };
        let credentials: serde_json::Map<String, Value> = allow
            .iter()
            .map(|class| ((*class).to_owned(), json!({ "url": url })))
            .collect();
        Some(json!({
            "name": store.connection(),
            "kind": store.kind().as_str(),
            "environment": "development",
            "allow": allow,
            "credentials": credentials,
        }))
    }

    /// A SHA-256 over everything an attack on this store could change (see the README).
    pub(crate) async fn checksum(&self) -> Result<String, String> {
        let mut h = Sha256::new();
        match self {
            Handle::Sqlite(pool) => sqlite_checksum(pool, &mut h).await?,
            Handle::Postgres { pool, .. } => pg_checksum(pool, &mut h).await?,
            Handle::Mysql { pool, .. } => mysql_checksum(pool, &mut h).await?,
            Handle::Redis { conn, prefix, .. } => {
                redis_checksum(&mut *conn.lock().await, prefix, &mut h).await?
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    pub(crate) async fn teardown(self) {
        self.scrub().await;
        match self {
            Handle::Sqlite(pool) => pool.close().await,
            Handle::Postgres {
                admin, pool, db, ..
            } => {
                pool.close().await;
                let drop = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
            Handle::Mysql {
                admin, pool, db, ..
            } => {
                pool.close().await;
                let drop = format!("DROP DATABASE IF EXISTS {db}");
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
            Handle::Redis { conn, prefix, .. } => {
                let mut conn = conn.into_inner();
                if let Ok(keys) = redis_scan(&mut conn, &format!("{prefix}*")).await {
                    for key in keys {
                        let _ = conn.call(&[b"DEL".as_slice(), key.as_slice()]).await;
                    }
                }
            }
        }
    }
}

pub(crate) async fn sqlite_checksum(pool: &sqlx::SqlitePool, h: &mut Sha256) -> Result<(), String> {
    let schema: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT type, name, COALESCE(sql, '') FROM sqlite_master ORDER BY type, name",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| format!("sqlite schema: {e}"))?;
    for (kind, name, sql) in &schema {
        h.update(format!("{kind}\0{name}\0{sql}\0"));
        if kind != "table" {
            continue;
        }
        let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{}')",
            name.replace('\'', "''")
        )))
        .fetch_all(pool)
        .await
        .map_err(|e| format!("sqlite columns of {name}: {e}"))?;
        if columns.is_empty() {
            continue;
        }
        let expr = columns
            .iter()
            .map(|c| format!("quote(\"{}\")", c.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {expr} FROM \"{}\" ORDER BY 1",
            name.replace('"', "\"\"")
        )))
        .fetch_all(pool)
        .await
        .map_err(|e| format!("sqlite rows of {name}: {e}"))?;
        for row in rows {
            h.update(row);
            h.update(b"\n");
        }
    }
    for pragma in ["user_version", "journal_mode", "application_id"] {
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT CAST({pragma} AS TEXT) FROM pragma_{pragma}"
        )))
        .fetch_one(pool)
        .await
        .map_err(|e| format!("sqlite pragma {pragma}: {e}"))?;
        h.update(format!("{pragma}={v}\n"));
    }
    Ok(())
}

/// Catalog queries whose rows (as text, sorted) must not change: the run's database and the
/// server-wide objects an attack names.
pub(crate) const PG_CATALOG: &[&str] = &[
    "SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relrowsecurity, \
     c.relforcerowsecurity, obj_description(c.oid, 'pg_class'), c.relacl \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
    "SELECT table_schema, table_name, column_name, data_type, column_default, is_nullable \
     FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
     AND table_schema NOT LIKE 'pg\\_temp%'",
    "SELECT nspname, pg_get_userbyid(nspowner), nspacl FROM pg_namespace \
     WHERE nspname NOT LIKE 'pg\\_temp%' AND nspname NOT LIKE 'pg\\_toast\\_temp%'",
    "SELECT schemaname, sequencename, last_value FROM pg_sequences",
    "SELECT schemaname, indexdef FROM pg_indexes WHERE schemaname <> 'pg_catalog'",
    "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal",
    "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')",
    "SELECT extname FROM pg_extension",
    "SELECT srvname FROM pg_foreign_server",
    "SELECT count(*) FROM pg_largeobject_metadata",
    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
    "SELECT defaclrole, defaclobjtype, defaclacl FROM pg_default_acl",
    "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, \
     rolreplication, rolbypassrls, rolpassword FROM pg_authid \
     WHERE rolname LIKE 'pcx\\_evil%' OR rolname = current_user",
    "SELECT r.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid \
     JOIN pg_roles m ON m.oid = a.member \
     WHERE m.rolname LIKE 'pcx\\_evil%' \
     OR (m.rolname = current_user AND r.rolname LIKE 'pg\\_%')",
    "SELECT datname, datacl FROM pg_database \
     WHERE datname LIKE 'pcx\\_evil%' OR datname = current_database()",
    "SELECT roname FROM pg_replication_origin WHERE roname LIKE 'pcx\\_evil%'",
];

pub(crate) async fn pg_checksum(pool: &sqlx::PgPool, h: &mut Sha256) -> Result<(), String> {
    pub(crate) async fn text(pool: &sqlx::PgPool, query: &str) -> String {
        let wrapped = format!(
            "SELECT coalesce(string_agg(q::text, E'\\n' ORDER BY q::text), '') FROM ({query}) q"
        );
        match sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(wrapped))
            .fetch_one(pool)
            .await
        {
            Ok(text) => text,
            // A catalog the credential may not read still has to answer the same way.
            Err(e) => format!("error: {e}"),
        }
    }
    for query in PG_CATALOG {
        h.update(text(pool, query).await);
        h.update(b"\0");
    }
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| format!("postgres tables: {e}"))?;
    for (schema, table) in tables {
        let quoted = format!(
            "\"{}\".\"{}\"",
            schema.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        h.update(format!("{quoted}\n"));
        h.update(text(pool, &format!("SELECT * FROM {quoted}")).await);
    }
    Ok(())
}

pub(crate) const MYSQL_CATALOG: &[&str] = &[
    "SELECT CONCAT_WS('|', table_name, table_type, IFNULL(engine, ''), IFNULL(table_comment, '')) \
     FROM information_schema.tables WHERE table_schema = DATABASE()",
    "SELECT CONCAT_WS('|', table_name, column_name, column_type, IFNULL(column_default, 'NULL'), \
     is_nullable) FROM information_schema.columns WHERE table_schema = DATABASE()",
    "SELECT CONCAT_WS('|', table_name, index_name, column_name) FROM information_schema.statistics \
     WHERE table_schema = DATABASE()",
    "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = DATABASE()",
    "SELECT routine_name FROM information_schema.routines WHERE routine_schema = DATABASE()",
    "SELECT CONCAT_WS('|', grantee, table_name, privilege_type) \
     FROM information_schema.table_privileges WHERE table_schema = DATABASE()",
    "SELECT CONCAT_WS('|', user, host, authentication_string) FROM mysql.user \
     WHERE user LIKE 'pcx\\_evil%' OR user = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
    "SELECT schema_name FROM information_schema.schemata \
     WHERE schema_name LIKE 'pcx\\_evil%' OR schema_name = DATABASE()",
    "SELECT CONCAT_WS('|', @@global.read_only, @@global.general_log, @@global.local_infile)",
    "SELECT name FROM mysql.plugin",
    "SELECT name FROM mysql.func",
];

pub(crate) async fn mysql_checksum(pool: &sqlx::MySqlPool, h: &mut Sha256) -> Result<(), String> {
    pub(crate) async fn lines(pool: &sqlx::MySqlPool, query: &str) -> String {
        match sqlx::query(sqlx::AssertSqlSafe(query.to_owned()))
            .fetch_all(pool)
            .await
        {
            Ok(rows) => {
                let mut lines: Vec<String> = rows
                    .iter()
                    .map(|row| {
                        row.try_get::<Option<String>, _>(0)
                            .map(|v| v.unwrap_or_else(|| "NULL".into()))
                            .or_else(|_| {
                                row.try_get::<Option<Vec<u8>>, _>(0).map(|v| {
                                    v.map_or_else(
                                        || "NULL".into(),
                                        |b| String::from_utf8_lossy(&b).into_owned(),
                                    )
                                })
                            })
                            .unwrap_or_else(|e| format!("undecodable: {e}"))
                    })
                    .collect();
                lines.sort();
                lines.join("\n")
            }
            Err(e) => format!("error: {e}"),
        }
    }
    for query in MYSQL_CATALOG {
        h.update(lines(pool, query).await);
        h.update(b"\0");
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_type IN ('BASE TABLE', 'SEQUENCE') ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| format!("mysql tables: {e}"))?;
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(pool)
        .await
        .map_err(|e| format!("mysql columns of {table}: {e}"))?;
        let expr = columns
            .iter()
            .map(|c| format!("IFNULL(CAST(`{}` AS CHAR), 'NULL')", c.replace('`', "``")))
            .collect::<Vec<_>>()
            .join(", ");
        h.update(format!("{table}\n"));
        h.update(
            lines(
                pool,
                &format!(
                    "SELECT CONCAT_WS('|', {expr}) FROM `{}`",
                    table.replace('`', "``")
                ),
            )
            .await,
        );
    }
    Ok(())
}

pub(crate) async fn redis_scan(conn: &mut Resp, pattern: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = BTreeSet::new();
    let mut cursor = b"0".to_vec();
    loop {
        let args: [&[u8]; 6] = [
            b"SCAN",
            cursor.as_slice(),
            b"MATCH",
            pattern.as_bytes(),
            b"COUNT",
            b"1000",
        ];
        let reply = conn
            .call(&args)
            .await
            .map_err(|e| format!("redis scan: {e}"))?;
        let Reply::Array(Some(parts)) = reply else {
            return Err(format!("redis scan: unexpected reply {reply:?}"));
        };
        match parts.as_slice() {
            [Reply::Bulk(Some(next)), Reply::Array(Some(found))] => {
                for key in found {
                    if let Reply::Bulk(Some(key)) = key {
                        keys.insert(key.clone());
                    }
                }
                if next == b"0" {
                    return Ok(keys.into_iter().collect());
                }
                cursor = next.clone();
            }
            _ => return Err(format!("redis scan: unexpected reply {parts:?}")),
        }
    }
}

pub(crate) async fn redis_checksum(
    conn: &mut Resp,
    prefix: &str,
    h: &mut Sha256,
) -> Result<(), String> {
    let mut keys = redis_scan(conn, &format!("{prefix}*")).await?;
    keys.extend(redis_scan(conn, "pcx_evil*").await?);
    let io = |e: std::io::Error| format!("redis: {e}");
    for key in keys {
        h.update(&key);
        for command in ["TYPE", "DUMP", "EXPIRETIME"] {
            let reply = conn
                .call(&[command.as_bytes(), key.as_slice()])
                .await
                .map_err(io)?;
            h.update(format!("{reply:?}\n"));
        }
    }
    for global in [
        &["CONFIG", "GET", "dir"][..],
        &["CONFIG", "GET", "dbfilename"],
        &["CONFIG", "GET", "appendonly"],
        &["CONFIG", "GET", "save"],
        &["CONFIG", "GET", "maxmemory"],
        &["ACL", "GETUSER", "default"],
        &["ACL", "GETUSER", "pcx_evil"],
        &["FUNCTION", "LIST", "LIBRARYNAME", "pcx_evil"],
    ] {
        let reply = conn.call(global).await.map_err(io)?;
        h.update(format!("{global:?}={reply:?}\n"));
    }
    // The replication role only, not the offsets that move on their own.
    let role = conn.call(&["ROLE"]).await.map_err(io)?;
    if let Reply::Array(Some(parts)) = &role {
        h.update(format!("role={:?}\n", parts.first()));
    }
    Ok(())
}
