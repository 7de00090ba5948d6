//! A future that is not cut short by whoever awaits it.
//!
//! An HTTP handler's future is dropped when its client goes away (hyper notices the closed
//! connection while the handler waits). What follows a commit on the audit writer thread
//! must not be lost that way: an agent that uploaded its result and went away must still
//! have that outcome published to the requester waiting for it, a committed hand-off must
//! reach its agent or go back to the queue, a queued job must be announced to the claims
//! waiting for one. [`to_the_end`] awaits such work in place — no task, no hand-off between
//! threads, on the path every request takes — and, dropped before the work finished, hands
//! what is left of it to a task of its own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::audit::{AuditError, AuditTx};

impl AuditTx {
    /// Commits, then runs `then` — what must follow a commit in memory: forgetting a revoked
    /// credential in the authentication cache (AUTH-7), publishing an outcome to its waiters,
    /// announcing a queued job — both to their end even when the caller is dropped meanwhile.
    /// `then` runs only once the commit succeeded.
    pub async fn commit_then<T, G>(self, then: G) -> Result<T, AuditError>
    where
        G: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        to_the_end(async move { self.commit().await.map(|()| then()) }).await
    }
}

/// Awaits `work`; when the returned future is dropped before `work` finished, `work` runs
/// to its end in a task of its own (its output then goes nowhere).
pub(crate) fn to_the_end<F>(work: F) -> ToTheEnd<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    ToTheEnd(Some(Box::pin(work)))
}

/// See [`to_the_end`].
pub(crate) struct ToTheEnd<F>(Option<Pin<Box<F>>>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static;

impl<F> Future for ToTheEnd<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(work) = self.0.as_mut() else {
            // Invariant: a future is not polled again once it returned Ready.
            panic!("ToTheEnd polled after it finished");
        };
        let output = std::task::ready!(work.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for ToTheEnd<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(work) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = work.await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::sync::oneshot;

    use super::*;

    /// Dropped after its first step, the work still takes its second.
    #[tokio::test]
    async fn work_dropped_halfway_runs_to_its_end() {
        let (go, wait) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<&str>();
        let mut work = to_the_end(async move {
            let _ = wait.await;
            let _ = done.send("second step taken");
        });
        assert!((&mut work).now_or_never().is_none(), "waits for the go");
        drop(work);
        go.send(()).expect("the dropped work is still waiting");
        assert_eq!(finished.await.expect("finished"), "second step taken");
    }

    /// Awaited, it answers like the work itself.
    #[tokio::test]
    async fn work_awaited_answers_in_place() {
        assert_eq!(to_the_end(async { 7 }).await, 7);
    }
}
