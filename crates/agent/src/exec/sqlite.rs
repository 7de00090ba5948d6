//! SQLite targets. Reads run on a connection opened read-only with `query_only` set, so a
//! write that slipped past classification still cannot change anything (EX-3); writes and DDL
//! run in an immediate transaction on a separate pool.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::TryStreamExt;
use portcullis_core::OperationClass;
use portcullis_proto::api::{Column, ExecError, ExecResult};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{
    AssertSqlSafe, Column as _, Executor, Row, SqlSafeStr, Statement as _, TypeInfo, ValueRef,
};

use super::store_error;
use crate::permit::Permit;

#[derive(Debug)]
pub struct SqliteTarget {
    read: SqlitePool,
    write: SqlitePool,
}

impl SqliteTarget {
    pub async fn open(path: &Path) -> anyhow::Result<SqliteTarget> {
        if !path.exists() {
            anyhow::bail!("sqlite database {} does not exist", path.display());
        }
        let base = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .busy_timeout(Duration::from_secs(5));
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(base.clone().read_only(true).pragma("query_only", "1"))
            .await?;
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base)
            .await?;
        Ok(SqliteTarget { read, write })
    }

    pub async fn execute(&self, permit: &Permit<'_>) -> Result<ExecResult, ExecError> {
        let timeout = Duration::from_millis(permit.timeout_ms());
        let work = async {
            match permit.class() {
                OperationClass::Read => self.read(permit.statement(), permit.row_cap()).await,
                _ => self.write(permit.statement()).await,
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ExecError {
                code: "statement_timeout".into(),
                message: format!("the statement ran longer than {} ms", permit.timeout_ms()),
            }),
        }
    }

    async fn read(&self, statement: &str, row_cap: u64) -> Result<ExecResult, ExecError> {
        let mut conn = self
            .read
            .acquire()
            .await
            .map_err(|e| store_error("store_unavailable", e))?;
        let mut result = ExecResult::default();
        {
            let mut rows = sqlx::query(AssertSqlSafe(statement.to_owned())).fetch(&mut *conn);
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(|e| store_error("store_error", e))?
            {
                if result.columns.is_empty() {
                    result.columns = columns(&row);
                }
                if result.row_count >= row_cap {
                    result.truncated = true;
                    break;
                }
                result.rows.push(values(&row)?);
                result.row_count += 1;
            }
        }
        if result.columns.is_empty() {
            let prepared = (&mut *conn)
                .prepare(AssertSqlSafe(statement.to_owned()).into_sql_str())
                .await
                .map_err(|e| store_error("store_error", e))?;
            result.columns = prepared
                .columns()
                .iter()
                .map(|c| Column {
                    name: c.name().to_owned(),
                    type_name: c.type_info().name().to_owned(),
                })
                .collect();
        }
        Ok(result)
    }

    async fn write(&self, statement: &str) -> Result<ExecResult, ExecError> {
        let mut tx = self
            .write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| store_error("store_unavailable", e))?;
        let done = sqlx::query(AssertSqlSafe(statement.to_owned()))
            .execute(&mut *tx)
            .await
            .map_err(|e| store_error("store_error", e))?;
        tx.commit()
            .await
            .map_err(|e| store_error("store_error", e))?;
        Ok(ExecResult {
            affected_rows: Some(done.rows_affected()),
            ..ExecResult::default()
        })
    }
}

fn columns(row: &SqliteRow) -> Vec<Column> {
    row.columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            type_name: c.type_info().name().to_owned(),
        })
        .collect()
}

/// Converts a row faithfully: integers stay integers, REAL stays a float, TEXT a string,
/// BLOB becomes base64, NULL null.
fn values(row: &SqliteRow) -> Result<Vec<Value>, ExecError> {
    let decode = |e: sqlx::Error| store_error("decode_error", e);
    (0..row.len())
        .map(|i| {
            let raw = row.try_get_raw(i).map_err(decode)?;
            if raw.is_null() {
                return Ok(Value::Null);
            }
            let kind = raw.type_info().name().to_owned();
            Ok(match kind.as_str() {
                "INTEGER" => Value::from(row.try_get_unchecked::<i64, _>(i).map_err(decode)?),
                "REAL" => serde_json::Number::from_f64(
                    row.try_get_unchecked::<f64, _>(i).map_err(decode)?,
                )
                .map_or(Value::Null, Value::Number),
                "BLOB" => Value::String(
                    STANDARD.encode(row.try_get_unchecked::<Vec<u8>, _>(i).map_err(decode)?),
                ),
                _ => Value::String(row.try_get_unchecked::<String, _>(i).map_err(decode)?),
            })
        })
        .collect()
}
