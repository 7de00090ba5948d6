//! The guards every execution runs under (EX-3): the signed statement timeout and row cap, and
//! the connection's byte cap. Hitting a cap is not an error: the result stops there and says
//! `truncated`.

use std::time::Duration;

use portcullis_proto::api::Column;
use serde_json::Value;

use super::sink::{RowSink, Summary};
use super::values::json_len;
use crate::permit::Permit;

/// What one execution may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows returned at most (signed).
    pub row_cap: u64,
    /// Approximate JSON size of the returned rows at most (configured per connection).
    pub max_bytes: u64,
    /// Server-side statement timeout (signed), never zero.
    pub timeout: Duration,
    /// A preview for approvers (signed): the write runs in a transaction that is rolled
    /// back, and only its affected-row count is kept.
    pub dry_run: bool,
}

impl Limits {
    /// The permit's signed caps with the connection's byte cap.
    pub fn of(permit: &Permit<'_>) -> Limits {
        Limits {
            row_cap: permit.row_cap(),
            max_bytes: permit.target().max_result_bytes,
            timeout: Duration::from_millis(permit.timeout_ms().max(1)),
            dry_run: permit.dry_run(),
        }
    }

    /// The timeout in whole milliseconds, at least 1 (0 would mean "none" to the stores).
    pub fn timeout_ms(&self) -> u64 {
        (self.timeout.as_millis() as u64).max(1)
    }
}

/// Counts rows into a [`RowSink`], stopping at the first cap.
#[derive(Debug)]
pub(crate) struct Rows<'s> {
    sink: &'s mut RowSink,
    summary: Summary,
    limits: Limits,
    /// JSON bytes of the rows so far, the `[`, `]` and commas of the row list included.
    bytes: u64,
}

impl<'s> Rows<'s> {
    pub(crate) fn new(limits: Limits, sink: &'s mut RowSink) -> Rows<'s> {
        Rows {
            sink,
            summary: Summary::default(),
            limits,
            bytes: 2,
        }
    }

    pub(crate) fn has_columns(&self) -> bool {
        !self.summary.columns.is_empty()
    }

    pub(crate) fn set_columns(&mut self, columns: Vec<Column>) {
        self.summary.columns = columns;
    }

    /// Whether the caller should stop reading: a cap was reached, or the reader of a
    /// streamed result went away.
    pub(crate) fn is_full(&self) -> bool {
        self.summary.truncated || self.sink.is_broken()
    }

    /// Offers the next row; `row` is only built when the row cap leaves room. Once a cap
    /// refuses a row the result is `truncated` and every later offer is ignored.
    pub(crate) async fn offer(&mut self, row: impl FnOnce() -> Vec<Value>) {
        if self.summary.truncated {
            return;
        }
        if self.summary.row_count >= self.limits.row_cap {
            self.summary.truncated = true;
            return;
        }
        let row = row();
        let separator = u64::from(self.summary.row_count > 0);
        let size = json_len(&row) + separator;
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            self.summary.truncated = true;
            return;
        }
        if !self.sink.has_header() {
            self.sink.header(&self.summary.columns).await;
        }
        self.bytes += size;
        self.sink.row(row).await;
        self.summary.row_count += 1;
    }

    pub(crate) fn set_affected(&mut self, affected: u64) {
        self.summary.affected_rows = Some(affected);
    }

    pub(crate) fn finish(self) -> Summary {
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::api::ExecResult;
    use serde_json::json;

    fn limits(row_cap: u64, max_bytes: u64) -> Limits {
        Limits {
            row_cap,
            max_bytes,
            timeout: Duration::from_secs(1),
            dry_run: false,
        }
    }

    fn fill(limits: Limits, n: usize) -> ExecResult {
        let mut sink = RowSink::collect();
        let mut rows = Rows::new(limits, &mut sink);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            for i in 0..n {
                rows.offer(|| vec![json!("abcdefgh"), json!(i)]).await;
            }
        });
        let summary = rows.finish();
        sink.into_result(summary)
    }

    #[test]
    fn caps_truncate_at_exactly_the_cap() {
        // Each row is `["abcdefgh",N]`: 14 bytes, plus a comma after the first.
        for (row_cap, max_bytes, offered, kept, truncated) in [
            (10, 1_000, 5, 5, false),
            (5, 1_000, 5, 5, false),
            (5, 1_000, 6, 5, true),
            (0, 1_000, 1, 0, true),
            (100, 2 + 14 + 15 * 2, 10, 3, true),
            (100, 2 + 14 + 15 * 2 - 1, 10, 2, true),
            (100, 10, 1, 0, true),
        ] {
            let result = fill(limits(row_cap, max_bytes), offered);
            assert_eq!(result.row_count, kept, "{row_cap} {max_bytes} {offered}");
            assert_eq!(result.rows.len() as u64, kept);
            assert_eq!(
                result.truncated, truncated,
                "{row_cap} {max_bytes} {offered}"
            );
        }
    }

    #[test]
    fn the_byte_cap_counts_the_serialized_rows() {
        let result = fill(limits(100, 2 + 14 + 15 * 2), 3);
        let text = serde_json::to_string(&result.rows).expect("json");
        assert_eq!(text.len(), 2 + 14 + 15 * 2);
    }
}
