//! Push dispatch and result relay, in memory.
//!
//! Agents waiting in a long-poll are woken the moment a job is queued on one of their
//! connections: there is no polling interval anywhere on the dispatch path. Each queued job
//! wakes exactly one waiting worker of that connection (`notify_one`), not every worker of
//! every agent, so idle agents do not stampede the state store. Finished outcomes are
//! handed to waiting clients through a per-request watch channel and kept only for the
//! configured retention (results are stream-only by default; the store never holds them).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;

use portcullis_core::ConnectionName;
use portcullis_core::RequestState;
use portcullis_proto::agent::JobAssignment;
use portcullis_proto::api::{ExecError, ExecResult, RequestView};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use uuid::Uuid;

/// How long a finished request's view stays with its outcome (then up to one more reaper
/// tick). Its waiters take it at once; anyone later reads the store. Bounds what a high
/// request rate keeps in memory to a second or two of views, while results stay for the
/// whole retention.
pub const VIEW_RETENTION_MS: i64 = 1_000;

/// How a request ended, as relayed to its waiters.
#[derive(Debug, Clone)]
pub struct Finished {
    pub state: RequestState,
    pub result: Option<Arc<ExecResult>>,
    pub error: Option<ExecError>,
    /// The request as committed when it finished, when the finishing transaction read it
    /// (an execution's report): its waiters answer with it instead of reading it again.
    pub view: Option<Box<RequestView>>,
}

struct Slot {
    sender: watch::Sender<Option<Arc<Finished>>>,
    finished_at_ms: Option<i64>,
    /// The requester waiting for a streamed result, until an upload takes it.
    reader: Option<mpsc::Sender<Bytes>>,
    /// Wakes an upload waiting for its reader.
    reader_arrived: Arc<Notify>,
    /// A streamed result went to its reader; it cannot be had again.
    delivered: bool,
    /// Bumped on every approval decision, for clients showing live progress.
    progress: watch::Sender<u64>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            sender: watch::channel(None).0,
            finished_at_ms: None,
            reader: None,
            reader_arrived: Arc::new(Notify::new()),
            delivered: false,
            progress: watch::channel(0).0,
        }
    }
}

/// Where a requester stands with a streamed result.
#[derive(Debug)]
pub enum Reader {
    /// Registered: the rows arrive on this receiver once an agent's upload takes it.
    Waiting(mpsc::Receiver<Bytes>),
    /// Already delivered to a reader (results are delivered once).
    Delivered,
}

/// How long a look at the queue that found nothing stands in for the next ones: a claim
/// within this time, with no job queued on its connections since, skips the store read.
/// Every transaction that leaves a job queued announces it ([`Dispatch::job_queued`]) after
/// its commit, so the bound only limits how long a job queued some other way could wait.
pub const QUEUE_VIEW_TTL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Dispatch {
    /// Per connection: the wake-up of its waiting workers, and what is known of its queue.
    queues: Mutex<HashMap<ConnectionName, Queue>>,
    slots: Mutex<HashMap<Uuid, Slot>>,
    /// Agent workers idle in their claim, per connection they serve, most recent last.
    idle: Mutex<Idle>,
    /// Jobs leased with a collected result — an execution handed to an idle worker as it was
    /// created, or any job taken from the queue by a claim — until their report or the end of
    /// their lease: the result upload finds its job here without a store read.
    handed: Mutex<HashMap<Uuid, HandedJob>>,
    /// Agents revoked while this server runs (IR-5). Their claims that were authenticated
    /// before the revocation are refused from then on, and no job is handed to them. Agent
    /// names are never reused, so an entry never needs removing once its revocation commits.
    revoked: Mutex<HashSet<String>>,
}

/// One connection's queue as the dispatcher sees it: its workers' wake-up, and what the
/// claims know of it without reading the store.
#[derive(Debug, Default)]
struct Queue {
    ready: Arc<Notify>,
    /// Jobs announced queued so far (each [`Dispatch::job_queued`]).
    announced: u64,
    /// `announced` as it was when a look at the queue that found nothing began, and when.
    empty_as_of: Option<(u64, std::time::Instant)>,
}

/// Where each of a claim's connections stood before it looked at the queue
/// ([`Dispatch::queue_mark`]); handed back to [`Dispatch::queue_found_empty`].
#[derive(Debug)]
pub struct QueueMark {
    at: std::time::Instant,
    announced: Vec<(ConnectionName, u64)>,
}

/// A job leased to an agent worker (handed over as its request was created, or claimed from
/// the queue), and committed so.
#[derive(Debug, Clone)]
pub struct HandedJob {
    pub agent: String,
    /// The end of the lease as granted; a renewal is not seen here.
    pub lease_until_ms: i64,
}

/// An agent worker idle in its claim, ready to take a job handed to it directly.
#[derive(Debug)]
pub struct IdleClaim {
    pub agent: String,
    /// The claim's own request, for the dispatch event.
    pub ctx: crate::audit::Context,
    pub deliver: oneshot::Sender<JobAssignment>,
}

impl IdleClaim {
    /// Whether its claim still waits for a job (the agent's request was not dropped).
    fn waiting(&self) -> bool {
        !self.deliver.is_closed()
    }
}

type IdleCell = Arc<Mutex<Option<IdleClaim>>>;

#[derive(Default)]
struct Idle {
    next_ticket: u64,
    by_connection: HashMap<ConnectionName, Vec<(u64, IdleCell)>>,
}

/// A worker's registration as idle; withdrawn by [`IdleTicket::finish`] or on drop.
#[derive(Debug)]
pub struct IdleTicket<'a> {
    dispatch: &'a Dispatch,
    ticket: u64,
    connections: Vec<ConnectionName>,
    cell: IdleCell,
    pub receiver: oneshot::Receiver<JobAssignment>,
}

impl IdleTicket<'_> {
    fn withdraw(&self) {
        let mut idle = self.dispatch.idle.lock().unwrap_or_else(|e| e.into_inner());
        for c in &self.connections {
            if let Some(list) = idle.by_connection.get_mut(c) {
                list.retain(|(t, _)| *t != self.ticket);
            }
        }
    }

    /// Stops being idle. Returns the job handed over in the meantime, if one was: when a
    /// hand-off took this worker it waits for that transaction's outcome (a failed one
    /// gives nothing).
    pub async fn finish(mut self) -> Option<JobAssignment> {
        self.withdraw();
        let taken = self
            .cell
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_none();
        if taken {
            (&mut self.receiver).await.ok()
        } else {
            None
        }
    }
}

impl Drop for IdleTicket<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch").finish_non_exhaustive()
    }
}

impl Dispatch {
    fn notify(&self, connection: &ConnectionName) -> Arc<Notify> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.entry(connection.clone()).or_default().ready.clone()
    }

    /// Agent workers idle in their claim on `connection`, ready for a hand-off.
    pub fn idle_workers(&self, connection: &ConnectionName) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.by_connection.get(connection).map_or(0, |list| {
            list.iter()
                .filter(|(_, cell)| {
                    cell.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .is_some_and(IdleClaim::waiting)
                })
                .count()
        })
    }

    /// Notes a committed lease of a job whose result is collected (not streamed), for
    /// [`Dispatch::handed_to`].
    pub fn note_handed(&self, job_id: Uuid, job: HandedJob) {
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_id, job);
    }

    /// Whether job `job_id` was handed to `agent` and the lease as granted still runs at
    /// `now_ms`. Only a shortcut: whoever gets `false` asks the store, and the report that
    /// ends the job still checks the lease in the store (EX-3).
    pub fn handed_to(&self, job_id: Uuid, agent: &str, now_ms: i64) -> bool {
        let handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        handed
            .get(&job_id)
            .is_some_and(|job| job.agent == agent && job.lease_until_ms > now_ms)
    }

    /// Forgets the hand-off of job `job_id` to `agent`: its job was reported, or went back to
    /// the queue. Another agent's report of the job, refused, forgets nothing.
    pub fn forget_handed(&self, job_id: Uuid, agent: &str) {
        let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        if handed.get(&job_id).is_some_and(|job| job.agent == agent) {
            handed.remove(&job_id);
        }
    }

    /// Marks `agent` revoked (IR-5), before the revocation commits: its workers idle in a
    /// claim are withdrawn, so [`Dispatch::take_idle`] no longer finds them, and their claims
    /// end (and, checking [`Dispatch::is_revoked`], are refused). A worker that registers in
    /// the instant between the mark and its claim's own check can still be taken; the
    /// delivery of a committed hand-off checks the mark too, and sends the job back to the
    /// queue instead (`lease::deliver`).
    pub fn revoke(&self, agent: &str) {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(agent.to_owned());
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for list in idle.by_connection.values_mut() {
            list.retain(|(_, cell)| {
                let mut claim = cell.lock().unwrap_or_else(|e| e.into_inner());
                if claim.as_ref().is_some_and(|c| c.agent == agent) {
                    // Dropping the claim closes its delivery channel: the claim wakes.
                    claim.take();
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Undoes [`Dispatch::revoke`] when the revocation did not commit.
    pub fn revocation_failed(&self, agent: &str) {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(agent);
    }

    /// Whether `agent` was revoked while this server runs (see [`Dispatch::revoke`]).
    pub fn is_revoked(&self, agent: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(agent)
    }

    /// Wakes one worker waiting for work on `connection`. When none is waiting, the wake-up
    /// is kept for the next one; workers also look at the queue before every wait.
    pub fn job_queued(&self, connection: &ConnectionName) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = queues.entry(connection.clone()).or_default();
        queue.announced += 1;
        queue.ready.notify_one();
    }

    /// Whether the queue of every one of `connections` is known to be empty without reading
    /// the store: a look at it found nothing less than [`QUEUE_VIEW_TTL`] ago, and no job has
    /// been announced queued on it since that look began. Unknown (a connection never looked
    /// at, as after a restart) counts as not empty.
    pub fn queue_known_empty(&self, connections: &[ConnectionName]) -> bool {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        connections.iter().all(|c| {
            queues.get(c).is_some_and(|v| {
                v.empty_as_of.is_some_and(|(announced, at)| {
                    announced == v.announced && at.elapsed() < QUEUE_VIEW_TTL
                })
            })
        })
    }

    /// Takes note of where `connections` stand before a look at the queue. A job committed
    /// before the mark is announced before it, so the look sees it; one announced after it
    /// moves the count past the mark.
    pub fn queue_mark(&self, connections: &[ConnectionName]) -> QueueMark {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        QueueMark {
            at: std::time::Instant::now(),
            announced: connections
                .iter()
                .map(|c| (c.clone(), queues.get(c).map_or(0, |q| q.announced)))
                .collect(),
        }
    }

    /// Records that the look begun at `mark` found no queued job on its connections. A
    /// connection with a job announced since the mark stays unknown.
    pub fn queue_found_empty(&self, mark: QueueMark) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        for (c, announced) in mark.announced {
            let queue = queues.entry(c).or_default();
            if queue.announced == announced {
                queue.empty_as_of = Some((announced, mark.at));
            }
        }
    }

    /// Futures that complete when a job is queued on one of `connections`. Create (and
    /// enable) them *before* looking at the queue so that a job queued in between is not
    /// missed. A wake-up received by a dropped future passes to another waiter.
    pub fn waiters(
        &self,
        connections: &[ConnectionName],
    ) -> Vec<std::pin::Pin<Box<OwnedNotified>>> {
        connections
            .iter()
            .map(|c| {
                let mut fut = Box::pin(self.notify(c).notified_owned());
                fut.as_mut().enable();
                fut
            })
            .collect()
    }

    /// Registers a worker of `agent` as idle on `connections` until the ticket is finished
    /// or dropped. A job handed to it arrives on the ticket's receiver.
    pub fn register_idle(
        &self,
        connections: &[ConnectionName],
        agent: &str,
        ctx: &crate::audit::Context,
    ) -> IdleTicket<'_> {
        let (deliver, receiver) = oneshot::channel();
        let cell: IdleCell = Arc::new(Mutex::new(Some(IdleClaim {
            agent: agent.to_owned(),
            ctx: ctx.clone(),
            deliver,
        })));
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.next_ticket += 1;
        let ticket = idle.next_ticket;
        for c in connections {
            idle.by_connection
                .entry(c.clone())
                .or_default()
                .push((ticket, Arc::clone(&cell)));
        }
        IdleTicket {
            dispatch: self,
            ticket,
            connections: connections.to_vec(),
            cell,
            receiver,
        }
    }

    /// Takes the most recently idle worker serving `connection`, if any, for a direct
    /// hand-off. The caller owes it the job (or drops it, which frees the worker).
    pub fn take_idle(&self, connection: &ConnectionName) -> Option<IdleClaim> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.by_connection.get_mut(connection)?;
        while let Some((_, cell)) = list.pop() {
            let claim = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(claim) = claim.filter(IdleClaim::waiting) {
                return Some(claim);
            }
        }
        None
    }

    /// Announces a step forward (an approval decision) to the clients watching `id`.
    pub fn progress(&self, id: Uuid) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(&id) {
            slot.progress.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Subscribes to the progress announcements of `id`.
    pub fn subscribe_progress(&self, id: Uuid) -> watch::Receiver<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(id)
            .or_insert_with(Slot::new)
            .progress
            .subscribe()
    }

    /// Subscribes to the outcome of `id`.
    pub fn subscribe(&self, id: Uuid) -> watch::Receiver<Option<Arc<Finished>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(id).or_insert_with(Slot::new).sender.subscribe()
    }

    /// How many callers wait for `id`'s outcome now.
    pub fn waiting_for(&self, id: Uuid) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(&id)
            .map_or(0, |slot| slot.sender.receiver_count())
    }

    /// Registers the reader of `id`'s streamed result, replacing one that gave up, and wakes
    /// an upload waiting for it. `capacity` chunks may wait in between.
    pub fn register_reader(&self, id: Uuid, capacity: usize) -> Reader {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(id).or_insert_with(Slot::new);
        if slot.delivered {
            return Reader::Delivered;
        }
        let (tx, rx) = mpsc::channel(capacity);
        slot.reader = Some(tx);
        slot.reader_arrived.notify_one();
        Reader::Waiting(rx)
    }

    /// Withdraws a reader that stopped waiting before any upload took it. Returns `false`
    /// when an upload took it in the meantime (its receiver then has the rows).
    pub fn withdraw_reader(&self, id: Uuid) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get_mut(&id) {
            Some(slot) if !slot.delivered => {
                slot.reader = None;
                true
            }
            _ => false,
        }
    }

    /// Waits up to `wait` for a live reader of `id` and takes it: from then on the result is
    /// delivered and no other reader can have it.
    pub async fn take_reader(&self, id: Uuid, wait: Duration) -> Option<mpsc::Sender<Bytes>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                let slot = slots.entry(id).or_insert_with(Slot::new);
                if let Some(tx) = slot.reader.take()
                    && !tx.is_closed()
                {
                    slot.delivered = true;
                    return Some(tx);
                }
                slot.reader_arrived.clone()
            };
            let notified = arrived.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Publishes the outcome of `id` to every waiter, present and future (until retention).
    pub fn complete(&self, id: Uuid, finished: Finished, now_ms: i64) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(id).or_insert_with(Slot::new);
        slot.finished_at_ms = Some(now_ms);
        slot.sender.send_replace(Some(Arc::new(finished)));
    }

    /// Drops outcomes older than the retention, and subscriptions nobody holds any more; and
    /// the request views of outcomes older than [`VIEW_RETENTION_MS`].
    pub fn prune(&self, now_ms: i64, retention_ms: i64) {
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, job| job.lease_until_ms > now_ms);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| match slot.finished_at_ms {
            Some(at) => {
                if now_ms - at >= VIEW_RETENTION_MS {
                    slot.sender.send_if_modified(|outcome| match outcome {
                        Some(f) if f.view.is_some() => {
                            *outcome = Some(Arc::new(Finished {
                                view: None,
                                ..Finished::clone(f)
                            }));
                            true
                        }
                        _ => false,
                    });
                }
                now_ms - at < retention_ms
            }
            None => slot.sender.receiver_count() > 0 || slot.reader.is_some(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Context;

    fn conn(name: &str) -> ConnectionName {
        name.parse().unwrap()
    }

    /// A claim skips the store's queue only while no job was announced on any of its
    /// connections since a look that found the queue empty, and never on a connection that
    /// was not looked at; a job announced while a look runs keeps the connection unknown.
    #[test]
    fn the_queue_is_known_empty_only_until_a_job_is_announced() {
        let d = Dispatch::default();
        let (a, b) = (conn("a"), conn("b"));
        let both = [a.clone(), b.clone()];
        assert!(
            !d.queue_known_empty(std::slice::from_ref(&a)),
            "never looked at"
        );

        let mark = d.queue_mark(&both);
        d.queue_found_empty(mark);
        assert!(d.queue_known_empty(&both));
        assert!(d.queue_known_empty(std::slice::from_ref(&b)));

        d.job_queued(&a);
        assert!(!d.queue_known_empty(std::slice::from_ref(&a)));
        assert!(
            !d.queue_known_empty(&both),
            "one unknown connection is enough"
        );
        assert!(d.queue_known_empty(std::slice::from_ref(&b)));

        // Announced while the look ran: the look's "empty" does not count for it.
        let mark = d.queue_mark(&both);
        d.job_queued(&a);
        d.queue_found_empty(mark);
        assert!(!d.queue_known_empty(std::slice::from_ref(&a)));
        assert!(d.queue_known_empty(std::slice::from_ref(&b)));

        // A connection no look has covered is unknown even beside known ones.
        assert!(!d.queue_known_empty(&[b.clone(), conn("c")]));
    }

    /// The skip is bounded in time: a look older than `QUEUE_VIEW_TTL` is not trusted.
    #[test]
    fn an_old_look_at_the_queue_is_not_trusted() {
        let d = Dispatch::default();
        let a = conn("a");
        let mut mark = d.queue_mark(std::slice::from_ref(&a));
        mark.at = mark.at.checked_sub(QUEUE_VIEW_TTL).unwrap();
        d.queue_found_empty(mark);
        assert!(!d.queue_known_empty(std::slice::from_ref(&a)));
    }

    /// IR-5: revoking an agent withdraws its idle workers and ends their claims; the others
    /// stay available.
    #[test]
    fn a_revoked_agents_idle_workers_are_withdrawn_and_their_claims_end() {
        use tokio::sync::oneshot::error::TryRecvError;
        let d = Dispatch::default();
        let a = conn("a");
        let ctx = Context::system("test");
        let mut doomed = d.register_idle(std::slice::from_ref(&a), "doomed", &ctx);
        let _kept = d.register_idle(std::slice::from_ref(&a), "kept", &ctx);
        assert!(!d.is_revoked("doomed"));
        assert!(matches!(
            doomed.receiver.try_recv(),
            Err(TryRecvError::Empty)
        ));
        d.revoke("doomed");
        assert!(d.is_revoked("doomed") && !d.is_revoked("kept"));
        assert_eq!(d.idle_workers(&a), 1);
        assert!(
            matches!(doomed.receiver.try_recv(), Err(TryRecvError::Closed)),
            "the revoked worker's claim is not ended"
        );
        assert_eq!(d.take_idle(&a).map(|c| c.agent).as_deref(), Some("kept"));
        assert!(d.take_idle(&a).is_none(), "the revoked worker was taken");
        d.revocation_failed("doomed");
        assert!(!d.is_revoked("doomed"));
    }

    /// EX-3: the upload's shortcut knows a handed job only for its agent and only while the
    /// lease as granted runs; its agent's report, its return to the queue or the lease's end
    /// forgets it, another agent's report does not.
    #[test]
    fn a_handed_job_is_known_only_to_its_agent_and_until_its_lease_ends() {
        let d = Dispatch::default();
        let (job, other) = (Uuid::new_v4(), Uuid::new_v4());
        let handed = |until| HandedJob {
            agent: "holder".into(),
            lease_until_ms: until,
        };
        d.note_handed(job, handed(2_000));
        d.note_handed(other, handed(2_000));
        assert!(d.handed_to(job, "holder", 1_999));
        assert!(!d.handed_to(job, "intruder", 1_999), "another agent");
        assert!(!d.handed_to(job, "holder", 2_000), "the lease ended");
        assert!(
            !d.handed_to(Uuid::new_v4(), "holder", 1_000),
            "an unknown job"
        );
        d.forget_handed(job, "intruder");
        assert!(
            d.handed_to(job, "holder", 1_000),
            "forgotten for another agent"
        );
        d.forget_handed(job, "holder");
        assert!(!d.handed_to(job, "holder", 1_000), "reported");
        assert!(d.handed_to(other, "holder", 1_000));
        d.prune(2_000, 60_000);
        assert!(
            !d.handed_to(other, "holder", 1_000),
            "kept past its lease's end"
        );
    }

    /// A finished request's view goes to its waiters with its outcome, is dropped from the
    /// outcome after `VIEW_RETENTION_MS` (the result stays), and the outcome after the
    /// retention.
    #[test]
    fn a_finished_view_is_kept_only_briefly_and_the_outcome_for_the_retention() {
        let d = Dispatch::default();
        let id = Uuid::new_v4();
        let view: RequestView = serde_json::from_value(serde_json::json!({
            "id": id, "connection": "demo", "kind": "sqlite", "environment": "production",
            "class": "read", "state": "succeeded", "decision": "auto_approve",
            "requester": "alice", "reason": "r", "statement": "SELECT 1",
            "created_at": "t0", "updated_at": "t1",
        }))
        .expect("a view");
        let result = Arc::new(ExecResult {
            columns: Vec::new(),
            rows: Vec::new(),
            row_count: 0,
            truncated: false,
            affected_rows: None,
        });
        let waiter = d.subscribe(id);
        let finished = Finished {
            state: RequestState::Succeeded,
            result: Some(Arc::clone(&result)),
            error: None,
            view: Some(Box::new(view.clone())),
        };
        d.complete(id, finished, 1_000);
        let seen = waiter.borrow().clone().expect("published");
        assert_eq!(seen.view.as_deref(), Some(&view));

        let retention = 60_000;
        d.prune(1_000 + VIEW_RETENTION_MS - 1, retention);
        assert!(
            d.subscribe(id)
                .borrow()
                .as_ref()
                .expect("kept")
                .view
                .is_some()
        );
        d.prune(1_000 + VIEW_RETENTION_MS, retention);
        let kept = d.subscribe(id).borrow().clone().expect("outcome kept");
        assert!(kept.view.is_none(), "the view is dropped");
        assert_eq!(kept.state, RequestState::Succeeded);
        assert!(
            kept.result
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(r, &result))
        );

        d.prune(1_000 + retention, retention);
        assert!(d.subscribe(id).borrow().is_none(), "the outcome is gone");
    }

    /// A hand-off takes the most recently idle worker of the connection, exactly once across
    /// all the connections it serves, and a worker that stopped waiting is never taken.
    #[tokio::test]
    async fn idle_workers_are_taken_once_and_withdrawn_when_they_leave() {
        let d = Dispatch::default();
        let ctx = Context::system("test");
        let (a, b) = (conn("a"), conn("b"));
        let first = d.register_idle(&[a.clone(), b.clone()], "one", &ctx);
        let second = d.register_idle(std::slice::from_ref(&a), "two", &ctx);
        assert_eq!(d.take_idle(&a).map(|c| c.agent).as_deref(), Some("two"));
        let taken = d.take_idle(&b).expect("the first worker serves b too");
        assert_eq!(taken.agent, "one");
        // Already taken through b: not available through a any more.
        assert!(d.take_idle(&a).is_none());
        drop(taken);
        // The hand-off was dropped before delivering: the worker gets nothing.
        assert!(first.finish().await.is_none());
        drop(second);
        let third = d.register_idle(std::slice::from_ref(&a), "three", &ctx);
        drop(third);
        assert!(d.take_idle(&a).is_none(), "a withdrawn worker was taken");
    }
}
