//! Streamed results (see `portcullis_proto::stream`): the agent's upload and the requester's
//! download, both line by line with bounded memory.

use std::time::Duration;

use futures_util::StreamExt;
use portcullis_proto::stream::{LineSplitter, NDJSON};
use reqwest::{Method, header};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{Client, ClientError};

/// The longest line a result stream may carry (one row).
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// How long an upload may take at most; the executor's own timeout ends it far sooner.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3_600);

impl Client {
    /// Agent protocol: uploads a job's result from `chunks` (NDJSON lines, split anywhere).
    /// A result that fits in one chunk goes as one sized body; a larger one streams as the
    /// chunks come. Returns `false`, sending nothing, when the channel closes empty.
    pub async fn upload_result(
        &self,
        job_id: Uuid,
        mut chunks: mpsc::Receiver<Vec<u8>>,
    ) -> Result<bool, ClientError> {
        let Some(first) = chunks.recv().await else {
            return Ok(false);
        };
        let body = match chunks.recv().await {
            None => reqwest::Body::from(first),
            Some(second) => {
                let rest = futures_util::stream::unfold(chunks, |mut rx| async move {
                    rx.recv().await.map(|chunk| (chunk, rx))
                });
                let all = futures_util::stream::iter([first, second])
                    .chain(rest)
                    .map(Ok::<_, std::io::Error>);
                reqwest::Body::wrap_stream(all)
            }
        };
        let path = format!("/api/v1/agent/jobs/{job_id}/result");
        Self::send(
            self.request(Method::POST, &path, UPLOAD_TIMEOUT)?
                .header(header::CONTENT_TYPE, NDJSON)
                .body(body),
        )
        .await
        .map(|_| true)
    }

    /// Opens the result stream of request `id`, waiting up to `wait` for it to begin. Fails
    /// with `result_not_ready` when the request has not produced a result within the wait
    /// (it may still be waiting for approval or for an agent), and `result_gone` when a
    /// streamed result was already delivered.
    pub async fn result_stream(
        &self,
        id: Uuid,
        wait: Duration,
    ) -> Result<ResultStream, ClientError> {
        let path = format!("/api/v1/requests/{id}/result?wait={}", wait.as_secs());
        let response = Self::send(
            self.request(Method::GET, &path, UPLOAD_TIMEOUT)?
                .header(header::ACCEPT, NDJSON),
        )
        .await?;
        Ok(ResultStream {
            body: Box::pin(response.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            split: LineSplitter::new(MAX_LINE),
            ended: false,
        })
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// A result being downloaded: header, rows and trailer, one JSON line at a time.
pub struct ResultStream {
    body: ByteStream,
    split: LineSplitter,
    ended: bool,
}

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream").finish_non_exhaustive()
    }
}

impl ResultStream {
    /// The next line (without its newline), or `None` at the end of the stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(line) = self
                .split
                .next_line()
                .map_err(|e| ClientError::Decode(e.to_string()))?
            {
                return Ok(Some(line.to_vec()));
            }
            if self.ended {
                return Ok(self.split.finish());
            }
            match self.body.next().await {
                Some(chunk) => self.split.push(&chunk?),
                None => self.ended = true,
            }
        }
    }
}
