//! The state store: embedded SQLite in WAL mode at `<data dir>/portcullis.db`, with versioned
//! migrations. Writes go through one connection so that every transaction is serialized
//! (`BEGIN IMMEDIATE`) and the audit chain head is never raced; reads use a separate pool.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

pub const STATE_FILE: &str = "portcullis.db";

portcullis_core::names::closed_enum! {
    /// How hard a commit is pushed to disk. `full` (the default): every commit, and so every
    /// audit append, is fsynced and survives power loss. `normal`: commits survive a crash of
    /// the process but the last ones may roll back on power loss (the WAL is synced only at
    /// checkpoints); faster on slow disks.
    #[derive(Default)]
    Durability, "durability" {
        #[default]
        Full => "full",
        Normal => "normal",
    }
}

/// One migration: applied once, in order, inside its own transaction.
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "explain",
        sql: include_str!("migrations/0002_explain.sql"),
    },
    Migration {
        version: 3,
        name: "result_mode",
        sql: include_str!("migrations/0003_result_mode.sql"),
    },
    Migration {
        version: 4,
        name: "people",
        sql: include_str!("migrations/0004_people.sql"),
    },
    Migration {
        version: 5,
        name: "users",
        sql: include_str!("migrations/0005_users.sql"),
    },
    Migration {
        version: 6,
        name: "approvals",
        sql: include_str!("migrations/0006_approvals.sql"),
    },
    Migration {
        version: 7,
        name: "break_glass",
        sql: include_str!("migrations/0007_break_glass.sql"),
    },
    Migration {
        version: 8,
        name: "key_rotations",
        sql: include_str!("migrations/0008_key_rotations.sql"),
    },
    Migration {
        version: 9,
        name: "preview",
        sql: include_str!("migrations/0009_preview.sql"),
    },
];

pub fn latest_migration() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
}

pub type Tx = Transaction<'static, Sqlite>;

impl Store {
    pub fn state_file(data_dir: &Path) -> PathBuf {
        data_dir.join(STATE_FILE)
    }

    /// Opens (creating if needed) the state file and applies pending migrations.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Store> {
        Self::open_with(data_dir, Durability::Full).await
    }

    pub async fn open_with(data_dir: &Path, durability: Durability) -> anyhow::Result<Store> {
        let path = Self::state_file(data_dir);
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // No ping before each acquire (sqlx's default): an embedded connection cannot have
        // lost its peer, and the ping is one more round trip to the connection's thread on
        // every query and transaction.
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.read_only(true))
            .await?;
        // The state holds credential hashes and the audit chain: owner-only.
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                std::fs::set_permissions(
                    &file,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )?;
            }
        }
        let store = Store {
            writer,
            reader,
            path,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await?;
        if current > latest_migration() {
            anyhow::bail!(
                "state file {} has schema version {current}, newer than this binary's {}",
                self.path.display(),
                latest_migration()
            );
        }
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?, ?, ?)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(crate::clock::now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Begins a write transaction. `IMMEDIATE` takes the write lock up front, so a
    /// transaction never fails half-way on lock upgrade.
    pub async fn begin(&self) -> sqlx::Result<Tx> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// The writer connection itself, for a transaction its holder begins and ends with its
    /// own statements: the audit commit group (`audit::group`), which begins with its first
    /// read and commits with its last writes, one trip to the connection each. A holder that
    /// lets go of it inside its transaction must roll back first, or close it (which rolls
    /// back), never return it to the pool with the transaction open.
    pub(crate) async fn writer_connection(&self) -> sqlx::Result<PoolConnection<Sqlite>> {
        self.writer.acquire().await
    }

    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// True when the store answers and every migration of this binary is applied.
    pub async fn ready(&self) -> bool {
        let version: Result<i64, _> =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&self.reader)
                .await;
        matches!(version, Ok(v) if v == latest_migration())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WEB-9: `/ready` answers 200 only while every migration of this binary is applied.
    #[tokio::test]
    async fn ready_only_with_every_migration_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert!(store.ready().await);
        let mut tx = store.begin().await.unwrap();
        sqlx::query("DELETE FROM schema_migrations WHERE version = ?")
            .bind(latest_migration())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(!store.ready().await);
        store.close().await;
    }

    /// A state file from a newer binary is refused rather than misread.
    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (9999, 'future', 0)").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        store.close().await;
        let err = Store::open(dir.path()).await.unwrap_err().to_string();
        assert!(err.contains("newer than this binary"), "{err}");
    }
}
