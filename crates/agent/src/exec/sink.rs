//! Where an execution's rows go: collected in memory (tests, `EXPLAIN`), or streamed as NDJSON
//! lines (see `portcullis_proto::stream`) to the upload that carries them to the server, in
//! chunks of [`CHUNK`] bytes through a small bounded channel. A slow reader slows the
//! executor down instead of growing a buffer, so a large result never sits whole in the
//! agent's memory.

use portcullis_proto::api::{Column, ExecError, ExecResult};
use portcullis_proto::stream::{AgentTrailer, StreamHeader};
use serde_json::Value;
use tokio::sync::mpsc;

/// The size of one streamed chunk.
pub const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the executor and the upload.
pub const CHANNEL_CHUNKS: usize = 8;

/// How an execution ended, without its rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub columns: Vec<Column>,
    pub row_count: u64,
    pub truncated: bool,
    pub affected_rows: Option<u64>,
}

#[derive(Debug)]
enum Mode {
    Collect(Vec<Vec<Value>>),
    Stream {
        buf: Vec<u8>,
        tx: Option<mpsc::Sender<Vec<u8>>>,
    },
}

/// The destination of one execution's header and rows.
#[derive(Debug)]
pub struct RowSink {
    mode: Mode,
    header_written: bool,
    broken: bool,
}

impl RowSink {
    /// Keeps every row in memory (bounded by the caps of the execution).
    pub fn collect() -> RowSink {
        RowSink {
            mode: Mode::Collect(Vec::new()),
            header_written: false,
            broken: false,
        }
    }

    /// Streams NDJSON lines; the receiver gets chunks of about [`CHUNK`] bytes and sees the
    /// channel close after [`finish`](Self::finish).
    pub fn stream() -> (RowSink, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let sink = RowSink {
            mode: Mode::Stream {
                buf: Vec::with_capacity(CHUNK),
                tx: Some(tx),
            },
            header_written: false,
            broken: false,
        };
        (sink, rx)
    }

    /// Whether the reader went away: the rest of the rows cannot be delivered, so a read
    /// should stop (a write still runs to completion).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the header line has been written: after that, the columns are fixed.
    pub(crate) fn has_header(&self) -> bool {
        self.header_written
    }

    pub(crate) async fn header(&mut self, columns: &[Column]) {
        if self.header_written {
            return;
        }
        self.header_written = true;
        if let Mode::Stream { buf, .. } = &mut self.mode {
            write_line(
                buf,
                &StreamHeader {
                    columns: columns.to_vec(),
                },
            );
        }
        self.flush_if_full().await;
    }

    pub(crate) async fn row(&mut self, row: Vec<Value>) {
        match &mut self.mode {
            Mode::Collect(rows) => rows.push(row),
            Mode::Stream { buf, .. } => {
                if !self.broken {
                    write_line(buf, &row);
                }
            }
        }
        self.flush_if_full().await;
    }

    /// Writes a whole result built elsewhere (a Redis reply, a write's count).
    pub(crate) async fn result(&mut self, result: ExecResult) -> Summary {
        self.header(&result.columns).await;
        for row in result.rows {
            self.row(row).await;
        }
        Summary {
            columns: result.columns,
            row_count: result.row_count,
            truncated: result.truncated,
            affected_rows: result.affected_rows,
        }
    }

    /// Ends a streamed result with its trailer and closes the channel. Nothing for a
    /// collecting sink.
    pub async fn finish(&mut self, outcome: &Result<Summary, ExecError>) {
        if let Ok(summary) = outcome
            && !self.header_written
        {
            self.header(&summary.columns).await;
        }
        let Mode::Stream { buf, tx } = &mut self.mode else {
            return;
        };
        let trailer = match outcome {
            Ok(s) => AgentTrailer::Succeeded {
                row_count: s.row_count,
                truncated: s.truncated,
                affected_rows: s.affected_rows,
            },
            Err(error) => AgentTrailer::Failed {
                error: error.clone(),
            },
        };
        write_line(buf, &trailer);
        let chunk = std::mem::take(buf);
        if let Some(tx) = tx.take()
            && !self.broken
            && tx.send(chunk).await.is_err()
        {
            self.broken = true;
        }
    }

    /// The collected result; for a streaming sink, the summary alone (its rows went out).
    pub fn into_result(self, summary: Summary) -> ExecResult {
        let rows = match self.mode {
            Mode::Collect(rows) => rows,
            Mode::Stream { .. } => Vec::new(),
        };
        ExecResult {
            columns: summary.columns,
            rows,
            row_count: summary.row_count,
            truncated: summary.truncated,
            affected_rows: summary.affected_rows,
        }
    }

    async fn flush_if_full(&mut self) {
        let Mode::Stream { buf, tx } = &mut self.mode else {
            return;
        };
        if buf.len() < CHUNK {
            return;
        }
        let chunk = std::mem::replace(buf, Vec::with_capacity(CHUNK));
        let sent = match tx {
            Some(tx) if !self.broken => tx.send(chunk).await.is_ok(),
            _ => false,
        };
        if !sent {
            self.broken = true;
            buf.clear();
        }
    }
}

fn write_line(buf: &mut Vec<u8>, value: &impl serde::Serialize) {
    // Serializing JSON values and plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, value);
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::stream::LineSplitter;
    use serde_json::json;

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            type_name: "INT4".into(),
        }
    }

    #[tokio::test]
    async fn a_stream_is_header_rows_and_trailer_in_bounded_chunks() {
        let (mut sink, mut rx) = RowSink::stream();
        let reader = tokio::spawn(async move {
            let mut split = LineSplitter::new(1 << 20);
            let mut lines = Vec::new();
            let mut biggest = 0;
            while let Some(chunk) = rx.recv().await {
                biggest = biggest.max(chunk.len());
                split.push(&chunk);
                while let Some(line) = split.next_line().expect("line") {
                    lines.push(serde_json::from_slice::<Value>(line).expect("json"));
                }
            }
            (lines, biggest)
        });
        sink.header(&[column("n")]).await;
        for i in 0..20_000 {
            sink.row(vec![json!(i)]).await;
        }
        let summary = Summary {
            columns: vec![column("n")],
            row_count: 20_000,
            truncated: false,
            affected_rows: None,
        };
        sink.finish(&Ok(summary)).await;
        drop(sink);
        let (lines, biggest) = reader.await.expect("reader");
        assert_eq!(lines.len(), 20_002);
        assert_eq!(
            lines[0],
            json!({"columns": [{"name": "n", "type": "INT4"}]})
        );
        assert_eq!(lines[1], json!([0]));
        assert_eq!(lines[20_000], json!([19_999]));
        assert_eq!(
            lines[20_001],
            json!({"outcome": "succeeded", "row_count": 20_000, "truncated": false})
        );
        assert!(biggest < CHUNK + 64, "chunks stay near {CHUNK} bytes");
    }

    #[tokio::test]
    async fn a_reader_going_away_breaks_the_sink_instead_of_buffering() {
        let (mut sink, rx) = RowSink::stream();
        drop(rx);
        for i in 0..100_000 {
            sink.row(vec![json!(i), json!("some text to fill the chunk")])
                .await;
        }
        assert!(sink.is_broken());
        let Mode::Stream { buf, .. } = &sink.mode else {
            panic!("stream mode");
        };
        assert!(buf.len() <= CHUNK + 64, "nothing piles up once broken");
    }
}
