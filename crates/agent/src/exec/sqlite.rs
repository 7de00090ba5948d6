//! SQLite targets. Reads run on a connection opened read-only with `query_only` set, so a
//! write that slipped past classification still cannot change anything (EX-3); writes and DDL
//! run in an immediate transaction on a separate connection, closed after each job.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use portcullis_core::OperationClass;
use portcullis_proto::api::{Column, ExecError, ExecResult};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{
    AssertSqlSafe, Column as _, Connection, Executor, Row, SqlSafeStr, Statement as _, TypeInfo,
    ValueRef,
};

use super::limits::Rows;
use super::sink::{RowSink, Summary};
use super::values::{base64, float, unsupported};
use super::{FailureCode, Limits, failure};
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

    pub async fn execute(
        &self,
        permit: &Permit<'_>,
        sink: &mut RowSink,
    ) -> Result<Summary, ExecError> {
        let limits = Limits::of(permit);
        let work = async {
            match permit.class() {
                OperationClass::Read => self.read(permit.statement(), limits, sink).await,
                _ => {
                    let result = self.write(permit.statement(), limits.dry_run).await?;
                    Ok(sink.result(result).await)
                }
            }
        };
        match tokio::time::timeout(limits.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(failure(
                FailureCode::StatementTimeout,
                format!("the statement ran longer than {} ms", limits.timeout_ms()),
            )),
        }
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    async fn read(
        &self,
        statement: &str,
        limits: Limits,
        sink: &mut RowSink,
    ) -> Result<Summary, ExecError> {
        let mut conn = self
            .read
            .acquire()
            .await
            .map_err(|e| failure(FailureCode::StoreUnavailable, e.to_string()))?;
        let mut rows = Rows::new(limits, sink);
        {
            let mut stream = sqlx::query(AssertSqlSafe(statement.to_owned())).fetch(&mut *conn);
            while let Some(row) = stream.try_next().await.map_err(store_error)? {
                if !rows.has_columns() {
                    rows.set_columns(columns(&row));
                }
                rows.offer(|| values(&row)).await;
                if rows.is_full() {
                    break;
                }
            }
        }
        if !rows.has_columns() {
            let prepared = (&mut *conn)
                .prepare(AssertSqlSafe(statement.to_owned()).into_sql_str())
                .await
                .map_err(store_error)?;
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
        Ok(rows.finish())
    }

    /// A write, DDL or admin job's connection is closed after the job, never pooled again
    /// (EX-3): whatever the job did to its connection — a temporary table, which unqualified
    /// names then find before the real one; an attached database; a pragma — would otherwise
    /// reach the next job. Opening a SQLite connection is a file open.
    async fn write(&self, statement: &str, dry_run: bool) -> Result<ExecResult, ExecError> {
        let mut conn = self
            .write
            .acquire()
            .await
            .map_err(|e| failure(FailureCode::StoreUnavailable, e.to_string()))?;
        conn.close_on_drop();
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| failure(FailureCode::StoreUnavailable, e.to_string()))?;
        let done = sqlx::query(AssertSqlSafe(statement.to_owned()))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if dry_run {
            // A preview: nothing it did survives.
            tx.rollback().await.map_err(store_error)?;
        } else {
            tx.commit().await.map_err(store_error)?;
        }
        Ok(ExecResult {
            affected_rows: Some(done.rows_affected()),
            ..ExecResult::default()
        })
    }
}

/// SQLite's read-only connection refusing a change (`SQLITE_READONLY`, and `query_only`'s
/// "attempt to write a readonly database") is the read-only guard at work (EX-3).
fn store_error(e: sqlx::Error) -> ExecError {
    let read_only = match &e {
        sqlx::Error::Database(db) => {
            db.code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 8)
                || db.message().contains("readonly database")
        }
        _ => false,
    };
    let code = if read_only {
        FailureCode::ReadOnlyViolation
    } else {
        FailureCode::StoreError
    };
    failure(code, e.to_string())
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
/// BLOB becomes base64, NULL null; a value that cannot be decoded becomes
/// `{"unsupported_type": …}` rather than failing the result.
fn values(row: &SqliteRow) -> Vec<Value> {
    (0..row.len())
        .map(|i| {
            let Ok(raw) = row.try_get_raw(i) else {
                return unsupported("unknown");
            };
            if raw.is_null() {
                return Value::Null;
            }
            let kind = raw.type_info().name().to_owned();
            let value = match kind.as_str() {
                "INTEGER" => row.try_get_unchecked::<i64, _>(i).map(Value::from),
                "REAL" => row.try_get_unchecked::<f64, _>(i).map(float),
                "BLOB" => row.try_get_unchecked::<Vec<u8>, _>(i).map(|b| base64(&b)),
                _ => row.try_get_unchecked::<String, _>(i).map(Value::String),
            };
            value.unwrap_or_else(|_| unsupported(&kind))
        })
        .collect()
}
