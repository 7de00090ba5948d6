//! `portcullis exec --stream`: the result as NDJSON on stdout, row by row as the agent
//! produces it, so results of any size pass through with flat memory.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use portcullis_client::Client;
use portcullis_proto::ErrorCode;
use portcullis_proto::stream::{LineKind, ResultTrailer};
use uuid::Uuid;

use crate::exit::{self, Exit};

/// The longest single HTTP wait for the stream to begin; longer waits are several calls.
const WAIT_SLICE: u64 = 60;

/// Waits up to `wait_secs` for request `id`'s result to begin, then copies its lines to
/// stdout. The exit code follows the trailer's state; a stream cut before its trailer is an
/// error, since its rows are incomplete.
pub(crate) async fn print(client: &Client, id: Uuid, wait_secs: u64) -> anyhow::Result<u8> {
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = ProgressBar::new_spinner();
        s.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        s.set_message(format!("waiting for the result of request {id}"));
        s.enable_steady_tick(Duration::from_millis(120));
        s
    });
    let mut stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let slice = Duration::from_secs(left.as_secs().clamp(1, WAIT_SLICE));
        match client.result_stream(id, slice).await {
            Ok(stream) => break stream,
            Err(e) if e.code() == Some(ErrorCode::ResultNotReady) && !left.is_zero() => {
                if let Some(s) = &spinner {
                    s.set_message(e.to_string());
                }
            }
            Err(e) if e.code() == Some(ErrorCode::ResultNotReady) => {
                return Err(Exit::new(
                    exit::TIMED_OUT,
                    format!(
                        "request {id} has not produced a result yet ({e}); resume with `portcullis request wait {id}`"
                    ),
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut rows = 0u64;
    let mut last: Option<Vec<u8>> = None;
    while let Some(line) = stream.next_line().await? {
        if LineKind::of(&line) == Some(LineKind::Row) {
            rows += 1;
        }
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        last = Some(line);
    }
    out.flush()?;
    let trailer = last
        .filter(|l| LineKind::of(l) == Some(LineKind::Object))
        .and_then(|l| serde_json::from_slice::<ResultTrailer>(&l).ok());
    let Some(trailer) = trailer else {
        return Err(Exit::new(
            exit::ERROR,
            format!("the result stream of request {id} was cut after {rows} row(s); the rows above are incomplete"),
        )
        .into());
    };
    let code = exit::for_state(trailer.state);
    if code == exit::OK {
        return Ok(code);
    }
    let why = trailer
        .error
        .map(|e| format!(": {} ({})", e.message, e.code))
        .unwrap_or_default();
    Err(Exit::new(code, format!("request {id} ended {}{why}", trailer.state)).into())
}
