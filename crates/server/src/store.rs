//! The state store: embedded SQLite in WAL mode at `<data dir>/portcullis.db`, with versioned
//! migrations. Writes go through one connection so that every transaction is serialized
//! (`BEGIN IMMEDIATE`) and the audit chain head is never raced; reads use a separate pool,
//! and the WAL is checkpointed in the background on a connection of its own
//! ([`run_wal_checkpointer`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::watch;

pub const STATE_FILE: &str = "portcullis.db";

/// WAL frames the writer connection lets pile up before it checkpoints the WAL itself, inside
/// the commit that crosses the mark (SQLite's auto-checkpoint; its default is 1,000).
/// [`run_wal_checkpointer`] copies the frames beside the writer, so the writer's own
/// checkpoint finds most of them copied already; it still comes, because a checkpoint that
/// runs while commits keep coming never catches up with the last one, and only a WAL copied
/// up to its end is reused from its start. The mark bounds how far the WAL file grows: a file
/// that keeps growing makes every commit's fsync write its new size as well.
const WRITER_AUTOCHECKPOINT_FRAMES: u32 = 4_000;
/// The WAL is cut back to this size when it restarts after having grown past it (a burst, or
/// readers that kept old frames in use).
const WAL_SIZE_LIMIT_BYTES: u64 = 32 * 1024 * 1024;
/// How long a connection waits for another's write lock before its statement fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two background WAL checkpoints: commits in between are copied by
/// the next one, each page once.
const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

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
    Migration {
        version: 10,
        name: "request_list",
        sql: include_str!("migrations/0010_request_list.sql"),
    },
];

pub fn latest_migration() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The background WAL checkpointer's own connection, opened at its first use.
    wal_checkpointer: SqlitePool,
    /// How many background WAL checkpoints ran (including ones that failed).
    wal_checkpoints: std::sync::Arc<watch::Sender<u64>>,
    path: PathBuf,
    durability: Durability,
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
            .busy_timeout(BUSY_TIMEOUT);
        // No ping before each acquire (sqlx's default): an embedded connection cannot have
        // lost its peer, and the ping is one more round trip to the connection's thread on
        // every query and transaction.
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                options
                    .clone()
                    .pragma(
                        "wal_autocheckpoint",
                        WRITER_AUTOCHECKPOINT_FRAMES.to_string(),
                    )
                    .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string())
                    // What a savepoint journals (the original content of the pages it
                    // changes) stays in memory: past 64 KiB SQLite would spill it to a
                    // temporary file outside the data directory, a copy of state-store pages
                    // created and deleted inside the commit. What the writers journal is a
                    // few pages per transaction; the readers keep SQLite's default.
                    .pragma("temp_store", "memory"),
            )
            .await?;
        let wal_checkpointer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.clone());
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
            wal_checkpointer,
            wal_checkpoints: std::sync::Arc::new(watch::channel(0).0),
            path,
            durability,
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

    /// A second writer connection, for the audit writer thread (`audit/thread.rs`), which
    /// runs whole transactions on it without a hand-off per statement. Opened like the sqlx
    /// writer (WAL, the store's durability, foreign keys, the same busy timeout and WAL
    /// limits, temporary data in memory); the two never write at the same time, as both
    /// write only while holding the audit writer lock, except the few plain transactions of
    /// [`Store::begin`], which the busy timeout serializes.
    pub(crate) fn open_thread_writer(&self) -> rusqlite::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_EXRESCODE,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let synchronous = match self.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; \
             PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_FRAMES}; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}; \
             PRAGMA temp_store = MEMORY;"
        ))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
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
        self.wal_checkpointer.close().await;
        self.writer.close().await;
        self.reader.close().await;
    }

    /// Copies the WAL's committed frames into the database file without waiting for readers
    /// or the writer (`PASSIVE`), on the checkpointer's own connection. With `synchronous =
    /// full` the database file is fsynced after the copy. Frames a reader still needs stay in
    /// the WAL for the next checkpoint.
    pub async fn checkpoint_wal(&self) -> sqlx::Result<WalCheckpoint> {
        let (busy, frames, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&self.wal_checkpointer)
                .await?;
        Ok(WalCheckpoint {
            busy: busy != 0,
            frames,
            copied,
        })
    }

    /// Counts the background WAL checkpoints as they end ([`run_wal_checkpointer`]).
    pub fn wal_checkpoints(&self) -> watch::Receiver<u64> {
        self.wal_checkpoints.subscribe()
    }
}

/// What one [`Store::checkpoint_wal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCheckpoint {
    /// Another checkpoint was running (the writer's own): this one did nothing.
    pub busy: bool,
    /// Frames in the WAL.
    pub frames: i64,
    /// Of those, frames now in the database file.
    pub copied: i64,
}

/// Checkpoints the state store's WAL in the background after commits, at most once per
/// [`WAL_CHECKPOINT_INTERVAL`]: woken by `commits` (pushed, never polled), it waits out the
/// interval so that a burst of commits costs one checkpoint, then copies what they wrote.
/// Ends when `stop` turns true (the server's shutdown) or `commits` closes. A failed
/// checkpoint is logged and retried after the next commit; the writer's own auto-checkpoint
/// keeps the WAL bounded even when this task cannot run.
pub async fn run_wal_checkpointer<T>(
    store: Store,
    commits: watch::Receiver<T>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        () = checkpoint_after_commits(&store, commits) => {}
        _ = stop.wait_for(|stopping| *stopping) => {}
    }
}

async fn checkpoint_after_commits<T>(store: &Store, mut commits: watch::Receiver<T>) {
    while commits.changed().await.is_ok() {
        tokio::time::sleep(WAL_CHECKPOINT_INTERVAL).await;
        commits.mark_unchanged();
        match store.checkpoint_wal().await {
            Ok(c) => {
                tracing::trace!(
                    busy = c.busy,
                    frames = c.frames,
                    copied = c.copied,
                    "WAL checkpoint"
                );
            }
            Err(e) => tracing::warn!(
                error = %e,
                "checkpointing the state store's WAL failed; retried after the next commit"
            ),
        }
        store.wal_checkpoints.send_modify(|n| *n += 1);
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

    /// Commits a table `filler` of `rows` rows of 3,000 bytes each (about one page a row).
    async fn fill(store: &Store, rows: u32) {
        let mut tx = store.begin().await.unwrap();
        sqlx::query("CREATE TABLE filler (b BLOB NOT NULL)")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) INSERT INTO filler SELECT zeroblob(3000) FROM n",
        )
        .bind(rows)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    /// The writer leaves WAL checkpoints to the background checkpointer: a commit that
    /// writes more than SQLite's default auto-checkpoint mark (1,000 frames) copies nothing
    /// into the database file, and the checkpointer, woken by a commit, does.
    #[tokio::test]
    async fn the_wal_is_checkpointed_beside_the_writer_not_in_its_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let file_len = || {
            std::fs::metadata(Store::state_file(dir.path()))
                .unwrap()
                .len()
        };
        let before = file_len();
        fill(&store, 1_500).await;
        let wal = std::fs::metadata(dir.path().join(format!("{STATE_FILE}-wal")))
            .unwrap()
            .len();
        assert!(wal > 1_200 * 4096, "the commit wrote {wal} bytes of WAL");
        assert_eq!(
            file_len(),
            before,
            "the writer checkpointed the WAL inside its commit"
        );

        let (commits, woken) = watch::channel(());
        let (shutdown, stop) = watch::channel(false);
        let mut checkpoints = store.wal_checkpoints();
        let checkpointer = tokio::spawn(run_wal_checkpointer(store.clone(), woken, stop));
        commits.send_replace(());
        tokio::time::timeout(Duration::from_secs(30), checkpoints.changed())
            .await
            .expect("a checkpoint within 30 s of a commit")
            .unwrap();
        assert!(
            file_len() > before + 1_200 * 4096,
            "the checkpointer copied the WAL into the database file: {} bytes",
            file_len()
        );
        // It ends at the server's shutdown, commits or not (the server waits for it).
        shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), checkpointer)
            .await
            .expect("the checkpointer ends at shutdown")
            .unwrap();
        drop(commits);
        store.close().await;
    }

    /// SQLite's temporary files (`etilqs_*` under `/var/tmp`, `$TMPDIR`, ...) open now in
    /// this process (read from `/proc`, so these tests are Linux's).
    #[cfg(target_os = "linux")]
    fn temp_files() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().contains("etilqs_"))
            .count()
    }

    /// Updates every row of `filler` inside a savepoint of an open transaction, so that the
    /// savepoint's sub-journal (the original content of the pages it changes) passes SQLite's
    /// 64 KiB mark for keeping it in memory, and returns how many temporary files were open
    /// at that point.
    #[cfg(target_os = "linux")]
    fn temp_files_of_a_large_savepoint(conn: &rusqlite::Connection) -> usize {
        conn.execute_batch(
            "BEGIN IMMEDIATE; SAVEPOINT member; UPDATE filler SET b = zeroblob(3001);",
        )
        .unwrap();
        let open = temp_files();
        conn.execute_batch("ROLLBACK").unwrap();
        open
    }

    /// NET-5: neither writer connection spills what it journals to a temporary file: a
    /// member's savepoint keeps the original content of the pages it changes, and past 64 KiB
    /// SQLite would write it to a file outside the data directory (a copy of state-store
    /// pages, credential hashes among them, and a file created and deleted inside the
    /// commit). The plain connection shows the same savepoint does spill without `temp_store`.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_writers_keep_their_journals_of_savepoints_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        fill(&store, 100).await;

        let plain = rusqlite::Connection::open(Store::state_file(dir.path())).unwrap();
        assert!(
            temp_files_of_a_large_savepoint(&plain) > 0,
            "the savepoint was expected to spill on a connection with the default temp_store"
        );
        drop(plain);
        let thread_writer = store.open_thread_writer().unwrap();
        assert_eq!(
            temp_files_of_a_large_savepoint(&thread_writer),
            0,
            "the writer thread's connection spilled its savepoint journal to a file"
        );
        drop(thread_writer);
        let mut writer = store.writer_connection().await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE; SAVEPOINT member; UPDATE filler SET b = zeroblob(3001);")
            .execute(&mut *writer)
            .await
            .unwrap();
        let open = temp_files();
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut *writer)
            .await
            .unwrap();
        assert_eq!(
            open, 0,
            "the sqlx writer spilled its savepoint journal to a file"
        );
        drop(writer);
        store.close().await;
    }
}
