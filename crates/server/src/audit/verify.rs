//! Checking the whole chain (AUD-1, AUD-3): `portcullis audit verify`, offline on a data
//! directory or through the running server.
//!
//! Each row's hash covers its own fields and its stored `prev_hash`, so rows can be rehashed
//! independently: a long chain is split into consecutive sequence ranges read and checked
//! concurrently on separate read connections, and only the joints between ranges (the first
//! row of a range links to the last row of the one before) are checked afterwards. The report
//! is the one a single pass in sequence order gives: the first problem by sequence number,
//! with the count of events that verified before it.

use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::VerifyingKey;
use rusqlite::types::ValueRef;
use sqlx::SqlitePool;

use super::{Checkpoint, CheckpointFile, Head, hash_columns};
use crate::store::Store;

/// Chains shorter than this are checked in one pass: splitting costs more than it saves.
const SPLIT_ABOVE: i64 = 100_000;
/// The most ranges checked at once (each holds one read connection while it runs).
const MAX_PARTS: usize = 4;
/// How much of the state file an offline verification maps into memory at most.
const VERIFY_MMAP_BYTES: u64 = 1 << 30;

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub head_seq: i64,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad_seq.is_none() && self.problem.is_none()
    }
}

/// What checking one range `lo..=hi` found.
struct Part {
    lo: i64,
    hi: i64,
    /// The first row's `prev_hash` (checked against the previous range's last hash).
    first_prev: Option<Vec<u8>>,
    /// Rows that verified, in order, before the first problem (if any).
    events: u64,
    /// The last row that verified.
    last: Option<Head>,
    /// The hash of the checkpointed row, when it is in this range and verified.
    checkpoint_hash: Option<[u8; 32]>,
    /// The first problem in the range: its sequence number and description.
    problem: Option<(i64, String)>,
}

/// Checks the whole chain in `pool` and, when given, the signed checkpoint: dense sequence
/// from 1, each `prev_hash` equal to the previous row's hash, each hash recomputed, and the
/// checkpoint's row present with the checkpoint's hash. Names the first bad sequence number.
pub async fn verify(
    pool: &SqlitePool,
    checkpoint: Option<(&Checkpoint, &VerifyingKey)>,
) -> anyhow::Result<VerifyReport> {
    verify_in_parts(pool, checkpoint, None).await
}

/// [`verify`] with the number of ranges fixed (tests), or chosen from the chain's length and
/// the cores available.
pub(super) async fn verify_in_parts(
    pool: &SqlitePool,
    checkpoint: Option<(&Checkpoint, &VerifyingKey)>,
    parts: Option<usize>,
) -> anyhow::Result<VerifyReport> {
    let (min, max): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM audit_events")
            .fetch_one(pool)
            .await?;
    let bad = |seq: i64, events: u64, head: i64, problem: String| VerifyReport {
        events,
        head_seq: head,
        first_bad_seq: Some(seq),
        problem: Some(problem),
    };
    let checkpoint_seq = checkpoint.map(|(cp, _)| cp.seq);
    let mut prev = Head::GENESIS;
    let mut events = 0u64;
    let mut checkpoint_hash: Option<[u8; 32]> = None;
    if let (Some(min), Some(max)) = (min, max) {
        if min != 1 {
            return Ok(bad(
                1,
                0,
                0,
                format!("sequence 1 is missing (next row is {min})"),
            ));
        }
        let parts = parts.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            if max > SPLIT_ABOVE {
                cores.clamp(1, MAX_PARTS)
            } else {
                1
            }
        });
        let parts = check_ranges(pool, max, parts, checkpoint_seq).await?;
        for part in parts {
            // The joint: the range's first row follows the last row checked so far (a
            // range with no first row reported its gap).
            if let Some(first_prev) = &part.first_prev
                && first_prev.as_slice() != prev.hash
            {
                return Ok(bad(
                    part.lo,
                    events,
                    prev.seq,
                    format!(
                        "sequence {} does not link to sequence {}",
                        part.lo, prev.seq
                    ),
                ));
            }
            events += part.events;
            if let Some(last) = part.last {
                prev = last;
            }
            if part.checkpoint_hash.is_some() {
                checkpoint_hash = part.checkpoint_hash;
            }
            if let Some((seq, problem)) = part.problem {
                if !problem.is_empty() {
                    return Ok(bad(seq, events, prev.seq, problem));
                }
                // A gap at the range's end: name the row that comes next, or, with none, the
                // chain simply ends here (the checkpoint decides whether it was cut short).
                let next: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(seq) FROM audit_events WHERE seq > ?")
                        .bind(prev.seq)
                        .fetch_one(pool)
                        .await?;
                match next {
                    Some(next) => {
                        let problem = format!("sequence {seq} is missing (next row is {next})");
                        return Ok(bad(seq, events, prev.seq, problem));
                    }
                    None => break,
                }
            }
            debug_assert_eq!(prev.seq, part.hi);
        }
    }
    if let Some((cp, key)) = checkpoint {
        if !cp.verify(key) {
            return Ok(bad(
                cp.seq,
                events,
                prev.seq,
                "the audit checkpoint signature is invalid".to_owned(),
            ));
        }
        match checkpoint_hash {
            None => {
                return Ok(bad(
                    prev.seq + 1,
                    events,
                    prev.seq,
                    format!(
                        "the chain ends at sequence {} but the signed checkpoint covers sequence {}: events were truncated",
                        prev.seq, cp.seq
                    ),
                ));
            }
            Some(h) if h != cp.hash => {
                return Ok(bad(
                    cp.seq,
                    events,
                    prev.seq,
                    format!(
                        "sequence {} differs from the signed checkpoint: the chain was truncated and rewritten",
                        cp.seq
                    ),
                ));
            }
            Some(_) => {}
        }
    } else if events > 0 {
        return Ok(VerifyReport {
            events,
            head_seq: prev.seq,
            first_bad_seq: None,
            problem: Some("no signed audit checkpoint was found beside the state file".to_owned()),
        });
    }
    Ok(VerifyReport {
        events,
        head_seq: prev.seq,
        first_bad_seq: None,
        problem: None,
    })
}

/// Splits `1..=max` into `parts` consecutive ranges and checks them concurrently, in order.
async fn check_ranges(
    pool: &SqlitePool,
    max: i64,
    parts: usize,
    checkpoint_seq: Option<i64>,
) -> anyhow::Result<Vec<Part>> {
    let parts = i64::try_from(parts.max(1)).unwrap_or(1).min(max.max(1));
    let size = (max + parts - 1) / parts;
    // Each range is read on a thread of its own through a connection of its own, straight
    // from SQLite's row: no copy of each column value and no hand-off per row to a task.
    let file = pool.connect_options().get_filename().to_owned();
    let checks: Vec<_> = (0..parts)
        .map(|i| {
            let lo = i * size + 1;
            let hi = ((i + 1) * size).min(max);
            let file = file.clone();
            tokio::task::spawn_blocking(move || check_range(&file, lo, hi, checkpoint_seq))
        })
        .collect();
    let mut found = Vec::with_capacity(checks.len());
    for check in checks {
        found.push(check.await??);
    }
    Ok(found)
}

/// The rows of one range, in order, with every column the hash covers.
const RANGE_ROWS: &str = "SELECT seq, at, actor, action, target, outcome, correlation_id, client_addr, details, prev_hash, hash FROM audit_events WHERE seq >= ? AND seq <= ? ORDER BY seq";

/// Checks the rows `lo..=hi` of the state file `file`, read-only: dense, each linked to the
/// one before (within the range), each hash recomputed. Stops at the first problem; a gap
/// at the end is reported with an empty description, which the caller completes with the
/// next row's number.
fn check_range(file: &Path, lo: i64, hi: i64, checkpoint_seq: Option<i64>) -> anyhow::Result<Part> {
    let mut part = Part {
        lo,
        hi,
        first_prev: None,
        events: 0,
        last: None,
        checkpoint_hash: None,
        problem: None,
    };
    let conn = rusqlite::Connection::open_with_flags(
        file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} to verify the audit chain", file.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Memory-mapped reads: the pages are hashed straight from the page cache, without a
    // copy per page into SQLite's own cache (read-only, so a mapping cannot be written).
    conn.execute_batch(&format!("PRAGMA mmap_size = {VERIFY_MMAP_BYTES}"))?;
    let mut statement = conn.prepare(RANGE_ROWS)?;
    let mut rows = statement.query([lo, hi])?;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let expected = part.last.as_ref().map_or(lo, |h| h.seq + 1);
        if seq != expected {
            part.problem = Some((
                expected,
                format!("sequence {expected} is missing (next row is {seq})"),
            ));
            return Ok(part);
        }
        // Text columns are hashed as their bytes, so they are read as bytes (no UTF-8
        // pass). A value of any other type is not what was written: altered.
        let mut columns: [&[u8]; 11] = [&[]; 11];
        for (i, column) in columns.iter_mut().enumerate().skip(1) {
            match row.get_ref(i)? {
                ValueRef::Text(bytes) | ValueRef::Blob(bytes) => *column = bytes,
                other => {
                    part.problem = Some((
                        seq,
                        format!(
                            "sequence {seq} was altered (column {i} holds {:?}, not text or bytes)",
                            other.data_type()
                        ),
                    ));
                    return Ok(part);
                }
            }
        }
        let (prev_hash, stored) = (columns[9], columns[10]);
        match &part.last {
            None => part.first_prev = Some(prev_hash.to_vec()),
            Some(prev) if prev_hash != prev.hash => {
                part.problem = Some((
                    seq,
                    format!("sequence {seq} does not link to sequence {}", prev.seq),
                ));
                return Ok(part);
            }
            Some(_) => {}
        }
        // The stored `prev_hash`, then `at` through `details`.
        let hashed: [&[u8]; 9] = std::array::from_fn(|k| columns[if k == 0 { 9 } else { k }]);
        let hash = hash_columns(seq, hashed);
        if stored != hash {
            part.problem = Some((seq, format!("sequence {seq} was altered (hash mismatch)")));
            return Ok(part);
        }
        if checkpoint_seq == Some(seq) {
            part.checkpoint_hash = Some(hash);
        }
        part.events += 1;
        part.last = Some(Head { seq, hash });
    }
    let reached = part.last.as_ref().map_or(lo - 1, |h| h.seq);
    if reached < hi {
        part.problem = Some((reached + 1, String::new()));
    }
    Ok(part)
}

/// Offline verification of a data directory (`portcullis audit verify --data DIR`): opens
/// the state file read-only, reads the checkpoint first (it never runs ahead of the store),
/// and checks it with the public half of the signing key in the same directory.
pub async fn verify_data_dir(data_dir: &Path) -> anyhow::Result<VerifyReport> {
    use sqlx::sqlite::SqliteConnectOptions;
    let state = Store::state_file(data_dir);
    if !state.exists() {
        anyhow::bail!("no state file at {}", state.display());
    }
    let checkpoint = CheckpointFile::in_dir(data_dir).read()?;
    let current = crate::keys::load_verifying_key(data_dir)?;
    // The ranges are read through connections of their own (`check_range`); this pool
    // answers the rest (the chain's bounds, a rotated key).
    let options = SqliteConnectOptions::new().filename(&state).read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(MAX_PARTS as u32)
        .connect_with(options)
        .await?;
    // A checkpoint may predate a key rotation: check it with the key it names.
    let key = match &checkpoint {
        Some(cp) => crate::key_rotation::historical_key(&pool, current, &cp.key_id)
            .await?
            .unwrap_or(current),
        None => current,
    };
    let report = verify(&pool, checkpoint.as_ref().map(|c| (c, &key))).await;
    pool.close().await;
    report
}
