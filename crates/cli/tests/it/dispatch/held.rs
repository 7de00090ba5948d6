//! The writer thread held by a test: transactions given to it meanwhile queue behind the
//! test's own, which puts a request's, a claim's or a report's transaction in a chosen order
//! against what the test does next, with no timing involved.

use std::time::Duration;

/// Far longer than a held transaction takes to commit once released.
const RELEASED_WITHIN: Duration = Duration::from_secs(15);

/// The writer thread held by a transaction of the test's own: `work` runs in it, then the
/// thread waits, the transaction uncommitted, until [`HeldWriter::release`]. Every transaction
/// given to the writer meanwhile runs after it.
pub(super) struct HeldWriter {
    release: std::sync::mpsc::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl HeldWriter {
    pub(super) async fn hold(
        state: &portcullis_server::AppState,
        work: impl FnOnce(&mut portcullis_server::audit::Member<'_>) + Send + 'static,
    ) -> HeldWriter {
        let (entered, holding) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let audit = std::sync::Arc::clone(&state.audit);
        let done = tokio::spawn(async move {
            audit
                .transact(move |m| {
                    work(m);
                    let _ = entered.send(());
                    let _ = released.recv();
                    Ok(())
                })
                .await
                .expect("the test's own transaction commits");
        });
        holding
            .await
            .expect("the writer thread ran the test's transaction");
        HeldWriter { release, done }
    }

    pub(super) async fn release(self) {
        self.release.send(()).expect("the writer thread waits");
        tokio::time::timeout(RELEASED_WITHIN, self.done)
            .await
            .expect("the test's transaction committed")
            .expect("join");
    }
}
