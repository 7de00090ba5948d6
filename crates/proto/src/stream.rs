//! Streamed results: newline-delimited JSON, one value per line, so that neither the agent,
//! the server nor the client ever holds a large result whole.
//!
//! Agent → server (`POST /api/v1/agent/jobs/{id}/result`):
//! 1. an optional header `{"columns": [{"name": …, "type": …}, …]}` (absent only when the
//!    execution failed before it had columns),
//! 2. zero or more rows, each a JSON array with one value per column,
//! 3. exactly one [`AgentTrailer`], the last line.
//!
//! Server → client (`GET /api/v1/requests/{id}/result`): the same header and rows, then one
//! [`ResultTrailer`] written by the server after it recorded the outcome. A stream that ends
//! without a trailer was cut: its rows are incomplete.

use portcullis_core::RequestState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{Column, ExecError};
use crate::openapi;

/// The media type of a streamed result.
pub const NDJSON: &str = "application/x-ndjson";

/// The first line: the result's columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    pub columns: Vec<Column>,
}

/// The agent's last line: how the execution ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentTrailer {
    Succeeded {
        row_count: u64,
        truncated: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affected_rows: Option<u64>,
    },
    Failed {
        error: ExecError,
    },
}

/// The server's last line to the client, after the outcome is recorded and audited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ResultTrailer {
    #[schema(value_type = openapi::RequestState)]
    pub state: RequestState,
    pub row_count: u64,
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecError>,
}

/// What one line of a result stream is, told apart by its first byte: rows are arrays, the
/// header and the trailers are objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Row,
    Object,
}

impl LineKind {
    pub fn of(line: &[u8]) -> Option<LineKind> {
        match line.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => Some(LineKind::Row),
            Some(b'{') => Some(LineKind::Object),
            _ => None,
        }
    }
}

/// Why a stream could not be split into lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("a line of the result stream is longer than {max} bytes")]
    LineTooLong { max: usize },
}

/// Splits a byte stream into lines without copying more than one partial line. Feed chunks
/// with [`push`](Self::push), take complete lines with [`next_line`](Self::next_line), and
/// call [`finish`](Self::finish) at the end for a last line without a newline.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    start: usize,
    max_line: usize,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            start: 0,
            max_line,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line (without its newline); empty lines are skipped.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, SplitError> {
        let found = loop {
            let rest = &self.buf[self.start..];
            let Some(pos) = rest.iter().position(|b| *b == b'\n') else {
                if rest.len() > self.max_line {
                    return Err(SplitError::LineTooLong { max: self.max_line });
                }
                return Ok(None);
            };
            if pos > self.max_line {
                return Err(SplitError::LineTooLong { max: self.max_line });
            }
            let begin = self.start;
            self.start += pos + 1;
            if !rest[..pos].iter().all(u8::is_ascii_whitespace) {
                break begin..begin + pos;
            }
        };
        Ok(Some(trim_cr(&self.buf[found])))
    }

    /// The last line when the stream did not end with a newline.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = trim_cr(&self.buf[self.start..]).to_vec();
        self.start = self.buf.len();
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], max: usize) -> Result<Vec<String>, SplitError> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            while let Some(l) = s.next_line()? {
                out.push(String::from_utf8_lossy(l).into_owned());
            }
        }
        if let Some(l) = s.finish() {
            out.push(String::from_utf8_lossy(&l).into_owned());
        }
        Ok(out)
    }

    #[test]
    fn lines_survive_any_chunking() {
        let text = b"{\"columns\":[]}\n[1,2]\r\n\n[3,\"a\\nb\"]\n{\"outcome\":\"failed\"}";
        let whole = lines(&[text], 100).expect("split");
        assert_eq!(
            whole,
            [
                "{\"columns\":[]}",
                "[1,2]",
                "[3,\"a\\nb\"]",
                "{\"outcome\":\"failed\"}"
            ]
        );
        for size in 1..text.len() {
            let chunks: Vec<&[u8]> = text.chunks(size).collect();
            assert_eq!(lines(&chunks, 100).expect("split"), whole, "chunk {size}");
        }
    }

    #[test]
    fn an_overlong_line_is_an_error_even_before_its_newline() {
        assert_eq!(
            lines(&[b"[1]\n", &[b'x'; 20]], 10),
            Err(SplitError::LineTooLong { max: 10 })
        );
        assert_eq!(
            lines(&[&[b'x'; 20], b"\n"], 10),
            Err(SplitError::LineTooLong { max: 10 })
        );
        assert!(lines(&[&[b'x'; 10], b"\n"], 10).is_ok());
    }

    #[test]
    fn kinds_are_told_apart_by_the_first_byte() {
        assert_eq!(LineKind::of(b" [1]"), Some(LineKind::Row));
        assert_eq!(LineKind::of(b"{}"), Some(LineKind::Object));
        assert_eq!(LineKind::of(b"1"), None);
        assert_eq!(LineKind::of(b""), None);
    }

    #[test]
    fn trailers_have_a_stable_shape() {
        let t = AgentTrailer::Succeeded {
            row_count: 2,
            truncated: false,
            affected_rows: None,
        };
        assert_eq!(
            serde_json::to_string(&t).expect("json"),
            r#"{"outcome":"succeeded","row_count":2,"truncated":false}"#
        );
        assert!(
            serde_json::from_str::<AgentTrailer>(r#"{"outcome":"succeeded","row_count":1}"#)
                .is_err()
        );
    }
}
