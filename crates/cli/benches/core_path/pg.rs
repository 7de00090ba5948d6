//! The PostgreSQL target: a schema of the benchmark's own with one small table, the direct
//! baseline over a plain sqlx connection, and the agent-side connection that serves it.

use std::collections::BTreeMap;

use portcullis_agent::config::{Credential, SecretUrl, TargetConfig};
use portcullis_core::OperationClass;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection as _};

use super::*;

use crate::shared::create_pg_schema;

/// The connection name the server and agents know the PostgreSQL target by.
pub(crate) const PG_CONNECTION: &str = "pg";
const TABLE_ROWS: i32 = 100;

pub(crate) struct PgTarget {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) statement: String,
}

impl PgTarget {
    /// Creates a schema with a unique name holding `customers` (primary key `id`).
    pub(crate) async fn create() -> anyhow::Result<PgTarget> {
        let (url, schema) = create_pg_schema("portcullis_bench", |schema| {
            format!(
                "CREATE TABLE {schema}.customers (id integer PRIMARY KEY, name text NOT NULL, country text NOT NULL);
                 INSERT INTO {schema}.customers (id, name, country)
                     SELECT g, 'customer ' || g, (ARRAY['GB', 'FR', 'DE', 'US'])[1 + g % 4]
                     FROM generate_series(1, {TABLE_ROWS}) AS g;
                 ANALYZE {schema}.customers;"
            )
        })
        .await?;
        let statement = format!("SELECT id, name, country FROM {schema}.customers WHERE id = 3");
        Ok(PgTarget {
            url,
            schema,
            statement,
        })
    }

    /// Drops the schema and everything in it.
    pub(crate) async fn drop_schema(&self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.url).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(())
    }

    /// The auto-approved read every PostgreSQL figure sends.
    pub(crate) fn body(&self) -> CreateRequest {
        CreateRequest {
            connection: PG_CONNECTION.parse().expect("a valid connection name"),
            statement: self.statement.clone(),
            reason: "benchmark".into(),
            stream: false,
        }
    }

    /// The agent's side of the connection: reads only, with one credential.
    pub(crate) fn agent_target(&self) -> TargetConfig {
        TargetConfig {
            credentials: BTreeMap::from([(
                OperationClass::Read,
                Credential {
                    url: Some(SecretUrl::new(self.url.clone())),
                    url_env: None,
                },
            )]),
            ..TargetConfig::new(
                PG_CONNECTION.parse().expect("a valid connection name"),
                ConnectionKind::Postgres,
                Environment::Development,
                vec![OperationClass::Read],
            )
        }
    }

    /// The same statement over one kept-alive sqlx connection (prepared once, then reused
    /// from the connection's statement cache), sequentially.
    pub(crate) async fn direct(&self) -> anyhow::Result<Stats> {
        let mut conn = PgConnection::connect(&self.url).await?;
        let statement = self.statement.clone();
        for _ in 0..DIRECT_WARMUP {
            once(&mut conn, &statement).await?;
        }
        let mut lat = Vec::with_capacity(DIRECT_ITERATIONS);
        for _ in 0..DIRECT_ITERATIONS {
            let t = Instant::now();
            once(&mut conn, &statement).await?;
            lat.push(t.elapsed());
        }
        conn.close().await?;
        Ok(Stats::of(lat))
    }
}

async fn once(conn: &mut PgConnection, statement: &str) -> anyhow::Result<()> {
    let rows: Vec<(i32, String, String)> = sqlx::query_as(AssertSqlSafe(statement.to_owned()))
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() != 1 {
        bail!("expected one row, got {}", rows.len());
    }
    Ok(())
}
