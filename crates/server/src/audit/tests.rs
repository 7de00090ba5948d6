use std::sync::Arc;

use super::*;

/// A new state store in a temp dir (kept alive by the returned guard) and its audit chain.
async fn fresh() -> (tempfile::TempDir, Store, Arc<Audit>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let audit = Audit::open(&store, &CheckpointFile::in_dir(dir.path()))
        .await
        .unwrap();
    (dir, store, audit)
}

fn event(actor: String, target: String) -> Event {
    Event {
        actor,
        action: Action::ServerStarted,
        target,
        outcome: Outcome::Success,
        details: serde_json::json!({}),
    }
}

/// AUD-2 without false alarms: many concurrent transactions never take a head this
/// process committed for a tampered one, and the chain stays dense. The race this guards
/// against (the next transaction reading the store between a commit and the in-memory
/// head update) showed under the benchmark's 32-client load; this test is its regression
/// check, not a reliable reproducer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transactions_never_see_a_stale_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), crate::store::Durability::Normal)
        .await
        .unwrap();
    let audit = Audit::open(&store, &CheckpointFile::in_dir(dir.path()))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (store, audit) = (store.clone(), Arc::clone(&audit));
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let mut tx = AuditTx::begin(&store, &audit).await?;
                tx.append(
                    &Context::system("test"),
                    event(format!("task-{t}"), i.to_string()),
                )
                .await?;
                tx.commit().await?;
            }
            Ok::<(), AuditError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!(report.events, 1_200);
    assert_eq!(report.first_bad_seq, None);
}

/// AUD-2 under group commit: a transaction is acknowledged only once its events are
/// durable and visible to every reader; a transaction dropped mid-group rolls back alone
/// (its state change and its events) while the others of its group commit; and
/// concurrent transactions share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_acknowledges_after_commit_and_rolls_back_members_alone() {
    let (_dir, store, audit) = fresh().await;
    let mut setup = store.begin().await.unwrap();
    sqlx::query("CREATE TABLE marks (who TEXT NOT NULL, dropped INTEGER NOT NULL)")
        .execute(&mut *setup)
        .await
        .unwrap();
    setup.commit().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (store, audit) = (store.clone(), Arc::clone(&audit));
        tasks.push(tokio::spawn(async move {
            let mut kept = 0_u64;
            for i in 0..60 {
                let drop_it = i % 3 == 2;
                let mut tx = AuditTx::begin(&store, &audit).await.unwrap();
                let who = format!("task-{t}-{i}");
                sqlx::query("INSERT INTO marks (who, dropped) VALUES (?, ?)")
                    .bind(&who)
                    .bind(drop_it)
                    .execute(tx.conn().await.unwrap())
                    .await
                    .unwrap();
                let seq = tx
                    .append(&Context::system("test"), event(who.clone(), i.to_string()))
                    .await
                    .unwrap();
                if drop_it {
                    // Fails after its writes: everything of it must vanish.
                    drop(tx);
                    continue;
                }
                tx.commit().await.unwrap();
                kept += 1;
                // Acknowledged means committed: a separate reader connection sees it.
                let seen: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM audit_events WHERE seq = ? AND actor = ?",
                )
                .bind(seq)
                .bind(&who)
                .fetch_one(store.reader())
                .await
                .unwrap();
                assert_eq!(seen, 1, "{who} acknowledged before its commit was visible");
            }
            kept
        }));
    }
    let mut kept = 0;
    for task in tasks {
        kept += task.await.unwrap();
    }
    assert_eq!(kept, 8 * 40);
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!(report.events, kept);
    assert_eq!(report.first_bad_seq, None);
    let (marks, dropped): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(dropped), 0) FROM marks")
            .fetch_one(store.reader())
            .await
            .unwrap();
    assert_eq!(marks as u64, kept);
    assert_eq!(dropped, 0, "a dropped transaction's write survived");
    assert_eq!(audit.head().seq as u64, kept);
    assert!(
        audit.commits() < kept,
        "{} commits for {kept} concurrent transactions: none shared a commit",
        audit.commits()
    );
}

/// A lone transaction is committed at once (nobody to wait for), and a dropped first
/// transaction leaves nothing behind and does not block the next one.
#[tokio::test]
async fn a_lone_transaction_commits_at_once_and_a_dropped_one_leaves_nothing() {
    let (_dir, store, audit) = fresh().await;
    let mut tx = AuditTx::begin(&store, &audit).await.unwrap();
    tx.append(&Context::system("test"), event("a".into(), "1".into()))
        .await
        .unwrap();
    drop(tx);
    let mut tx = AuditTx::begin(&store, &audit).await.unwrap();
    tx.append(&Context::system("test"), event("b".into(), "2".into()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(audit.commits(), 1);
    assert_eq!(audit.head().seq, 1);
    let actors: Vec<String> = sqlx::query_scalar("SELECT actor FROM audit_events")
        .fetch_all(store.reader())
        .await
        .unwrap();
    assert_eq!(actors, ["b"]);
}

/// AUD-2: a commit runs to its end even when its caller goes away at once (a client that
/// disconnected): the transaction, released and due to commit, is committed with its event,
/// the chain verifies, and the next transaction continues it.
#[tokio::test]
async fn a_commit_whose_caller_is_dropped_at_its_first_poll_still_commits() {
    let (_dir, store, audit) = fresh().await;
    let mut tx = AuditTx::begin(&store, &audit).await.unwrap();
    tx.append(&Context::system("test"), event("gone".into(), "1".into()))
        .await
        .unwrap();
    let mut commit = Box::pin(tx.commit());
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(commit.as_mut(), cx))
    })
    .await;
    assert!(
        first.is_pending(),
        "a durable commit cannot be done in one poll"
    );
    drop(commit);
    let mut head = audit.subscribe();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        head.wait_for(|h| h.seq == 1),
    )
    .await
    .expect("the dropped caller's transaction is committed")
    .unwrap();
    let mut next = AuditTx::begin(&store, &audit).await.unwrap();
    next.append(&Context::system("test"), event("next".into(), "2".into()))
        .await
        .unwrap();
    next.commit().await.unwrap();
    let actors: Vec<String> = sqlx::query_scalar("SELECT actor FROM audit_events ORDER BY seq")
        .fetch_all(store.reader())
        .await
        .unwrap();
    assert_eq!(actors, ["gone", "next"]);
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!((report.events, report.first_bad_seq), (2, None));
}

/// AUD-2: a group's audit rows are written with its COMMIT; when the store refuses them,
/// the whole group rolls back and no member is acknowledged: neither the member whose event
/// was refused nor the one that shared its commit keeps its change, and the next
/// transaction continues the chain from the last committed head.
#[tokio::test]
async fn a_group_whose_audit_rows_are_refused_commits_nothing() {
    let (_dir, store, audit) = fresh().await;
    let mut setup = store.begin().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE marks (who TEXT NOT NULL);
         CREATE TRIGGER refuse BEFORE INSERT ON audit_events WHEN NEW.actor = 'refused'
         BEGIN SELECT RAISE(ABORT, 'audit row refused'); END;",
    )
    .execute(&mut *setup)
    .await
    .unwrap();
    setup.commit().await.unwrap();
    let mark = |who: &'static str| sqlx::query("INSERT INTO marks (who) VALUES (?)").bind(who);

    let mut first = AuditTx::begin(&store, &audit).await.unwrap();
    mark("first")
        .execute(first.conn().await.unwrap())
        .await
        .unwrap();
    first
        .append(&Context::system("test"), event("first".into(), "1".into()))
        .await
        .unwrap();
    // A second transaction waits for the writer, so the first one's group stays open for it.
    let second = tokio::spawn({
        let (store, audit) = (store.clone(), Arc::clone(&audit));
        async move {
            let mut tx = AuditTx::begin(&store, &audit).await?;
            mark("second").execute(tx.conn().await?).await?;
            tx.append(
                &Context::system("test"),
                event("refused".into(), "2".into()),
            )
            .await?;
            tx.commit().await
        }
    });
    while audit.waiting.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let first = first.commit().await;
    let second = second.await.unwrap();
    let err = first.expect_err("acknowledged although its group's audit rows were refused");
    assert!(err.to_string().contains("audit row refused"), "{err}");
    assert!(second.is_err(), "the refused member was acknowledged");
    assert_eq!(audit.head().seq, 0);
    let marks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM marks")
        .fetch_one(store.reader())
        .await
        .unwrap();
    assert_eq!(marks, 0, "a change was committed without its audit rows");

    let mut next = AuditTx::begin(&store, &audit).await.unwrap();
    mark("next")
        .execute(next.conn().await.unwrap())
        .await
        .unwrap();
    let seq = next
        .append(&Context::system("test"), event("next".into(), "3".into()))
        .await
        .unwrap();
    next.commit().await.unwrap();
    assert_eq!(seq, 1);
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!((report.events, report.first_bad_seq), (1, None));
}

/// A `marks` table to write to, and an open commit group with no member yet, too young to
/// be committed for its age while the test's members come and go: they all join it.
async fn marks_and_an_open_group(store: &Store, audit: &Arc<Audit>) {
    let mut setup = store.begin().await.unwrap();
    sqlx::raw_sql("CREATE TABLE marks (who TEXT NOT NULL)")
        .execute(&mut *setup)
        .await
        .unwrap();
    setup.commit().await.unwrap();
    let mut w = audit.lock_writer().await;
    let (conn, _) = super::group::GroupConn::begin(store).await.unwrap();
    let mut group = super::group::Group::open(conn);
    group.opened = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    w.group = Some(group);
}

/// Exactly `who`'s marks, in order, were committed, each with its one event (the actor named
/// after it), and the chain verifies.
async fn assert_committed(store: &Store, who: &[&str]) {
    let marks: Vec<String> = sqlx::query_scalar("SELECT who FROM marks ORDER BY rowid")
        .fetch_all(store.reader())
        .await
        .unwrap();
    assert_eq!(marks, who);
    let actors: Vec<String> = sqlx::query_scalar("SELECT actor FROM audit_events ORDER BY seq")
        .fetch_all(store.reader())
        .await
        .unwrap();
    assert_eq!(actors, who);
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!(
        (report.events, report.first_bad_seq),
        (who.len() as u64, None)
    );
}

/// A first batch that marks `who`.
const MARK: &str = "INSERT INTO marks (who) VALUES (?)";
/// A first batch that marks `who`, then fails.
const FAILING_MARK: &str = "INSERT INTO marks (who) VALUES (?);INSERT INTO missing VALUES (1)";

/// Runs `tx`'s first batch, `plain` binding `who`, after checking that what opens it is
/// `opening` (the savepoint statements, or nothing).
async fn run_first_batch(
    tx: &mut AuditTx,
    plain: &'static str,
    opening: &str,
    who: &str,
) -> sqlx::Result<()> {
    let (sql, conn) = tx.first_batch(plain);
    assert_eq!(sql, format!("{opening}{plain}"));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(who)
        .execute(conn)
        .await
        .map(drop)
}

/// AUD-2: a member's savepoint opens with its first statement batch. A member dropped after
/// its batch failed half-way rolls back alone; one dropped before its batch ever reached
/// the connection (no savepoint to undo) breaks nothing; the next member commits with the
/// group, and only its change and its event are kept.
#[tokio::test]
async fn a_member_whose_first_batch_failed_or_never_ran_rolls_back_alone() {
    let (_dir, store, audit) = fresh().await;
    marks_and_an_open_group(&store, &audit).await;

    let mut half = AuditTx::begin(&store, &audit).await.unwrap();
    assert_eq!(half.savepoint, Savepoint::Pending);
    half.append(&Context::system("test"), event("half".into(), "1".into()))
        .await
        .unwrap();
    let err = run_first_batch(&mut half, FAILING_MARK, "SAVEPOINT member_a;", "half")
        .await
        .expect_err("the batch's second statement fails");
    assert!(err.to_string().contains("missing"), "{err}");
    drop(half);

    let mut unsent = AuditTx::begin(&store, &audit).await.unwrap();
    assert_eq!(unsent.savepoint, Savepoint::Pending);
    let (sql, _conn) = unsent.first_batch(FAILING_MARK);
    assert_eq!(sql, format!("SAVEPOINT member_a;{FAILING_MARK}"));
    drop(unsent);

    let mut kept = AuditTx::begin(&store, &audit).await.unwrap();
    assert_eq!(
        kept.savepoint,
        Savepoint::Pending,
        "the group was left open"
    );
    run_first_batch(&mut kept, MARK, "SAVEPOINT member_a;", "kept")
        .await
        .unwrap();
    let seq = kept
        .append(&Context::system("test"), event("kept".into(), "3".into()))
        .await
        .unwrap();
    kept.commit().await.unwrap();

    assert_eq!(seq, 1, "the dropped member's event was not taken back");
    assert_committed(&store, &["kept"]).await;
}

/// Starts `AuditTx::begin` in a task and returns once it waits for the writer, so that the
/// holder's release leaves the group open for it.
async fn begin_waiting(
    store: &Store,
    audit: &Arc<Audit>,
) -> tokio::task::JoinHandle<Result<AuditTx, AuditError>> {
    let waiting_before = audit.waiting.load(Ordering::SeqCst);
    let (store, audit2) = (store.clone(), Arc::clone(audit));
    let task = tokio::spawn(async move { AuditTx::begin(&store, &audit2).await });
    while audit.waiting.load(Ordering::SeqCst) == waiting_before {
        tokio::task::yield_now().await;
    }
    task
}

/// AUD-2: a member that finished leaves its savepoint for the next member's first batch to
/// release (no trip of its own). A next member dropped before that batch ran, or whose
/// batch failed half-way, undoes only its own statements: the finished member's change is
/// kept and committed with the group, with its event, and so is the last member's.
#[tokio::test]
async fn a_member_dropped_after_one_that_finished_never_undoes_the_finished_ones_work() {
    let (_dir, store, audit) = fresh().await;
    marks_and_an_open_group(&store, &audit).await;
    let ctx = Context::system("test");

    let mut first = AuditTx::begin(&store, &audit).await.unwrap();
    run_first_batch(&mut first, MARK, "SAVEPOINT member_a;", "first")
        .await
        .unwrap();
    first
        .append(&ctx, event("first".into(), "1".into()))
        .await
        .unwrap();
    let next = begin_waiting(&store, &audit).await;
    let first_done = tokio::spawn(first.commit());

    // Sent to release the finished member's savepoint and open its own, but dropped before
    // its batch ran: its undo must not reach the finished member's savepoint.
    let mut unsent = next.await.unwrap().unwrap();
    let (sql, _conn) = unsent.first_batch(MARK);
    assert_eq!(sql, format!("RELEASE member_a;SAVEPOINT member_b;{MARK}"));
    let next = begin_waiting(&store, &audit).await;
    drop(unsent);

    // The undo above released the finished member's savepoint too (the dropped batch was to
    // do it): a second member dropped before its batch ran, under the first name again,
    // finds no savepoint of that name to undo.
    let mut unsent_again = next.await.unwrap().unwrap();
    let (sql, _conn) = unsent_again.first_batch(MARK);
    assert_eq!(sql, format!("SAVEPOINT member_a;{MARK}"));
    let next = begin_waiting(&store, &audit).await;
    drop(unsent_again);

    // Its batch opened its savepoint, wrote, then failed: it rolls back alone.
    let mut half = next.await.unwrap().unwrap();
    half.append(&ctx, event("half".into(), "2".into()))
        .await
        .unwrap();
    let err = run_first_batch(&mut half, FAILING_MARK, "SAVEPOINT member_a;", "half")
        .await
        .expect_err("the batch's second statement fails");
    assert!(err.to_string().contains("missing"), "{err}");
    let next = begin_waiting(&store, &audit).await;
    drop(half);

    let mut kept = next.await.unwrap().unwrap();
    run_first_batch(&mut kept, MARK, "SAVEPOINT member_a;", "kept")
        .await
        .unwrap();
    kept.append(&ctx, event("kept".into(), "3".into()))
        .await
        .unwrap();
    kept.commit().await.unwrap();
    first_done.await.unwrap().unwrap();

    assert_committed(&store, &["first", "kept"]).await;
}

/// AUD-3: the chain checked in concurrent ranges reports exactly what one pass in sequence
/// order reports, for an intact chain and for every kind of damage at and between the
/// joints of the ranges (altered row, broken link, missing rows, a gap at a range's end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_in_ranges_reports_what_one_pass_reports() {
    use sqlx::Connection as _;
    const EVENTS: i64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), crate::store::Durability::Normal)
        .await
        .unwrap();
    let audit = Audit::open(&store, &CheckpointFile::in_dir(dir.path()))
        .await
        .unwrap();
    for i in 0..EVENTS {
        let mut tx = AuditTx::begin(&store, &audit).await.unwrap();
        tx.append(
            &Context::system("test"),
            event("verifier".into(), i.to_string()),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let checkpoint = Checkpoint::sign(audit.head(), &key);
    let verifying = key.verifying_key();
    let reports = |store: Store| {
        let checkpoint = checkpoint.clone();
        async move {
            let mut out = Vec::new();
            for parts in [1, 2, 3, 4, 7] {
                out.push(
                    verify::verify_in_parts(
                        store.reader(),
                        Some((&checkpoint, &verifying)),
                        Some(parts),
                    )
                    .await
                    .unwrap(),
                );
            }
            out
        }
    };
    let intact = reports(store.clone()).await;
    assert!(
        intact
            .iter()
            .all(|r| r.ok() && r.events == EVENTS as u64 && r.head_seq == EVENTS)
    );

    // With 40 rows, ranges start at 1, 11, 21, 31 (4 parts), 1, 21 (2 parts), 1, 15, 29
    // (3 parts) and every 6th row (7 parts): damage lands on joints and inside ranges.
    let state = Store::state_file(dir.path());
    // Each with the first bad sequence number it must be reported at.
    let damage: [(&[&str], i64); 8] = [
        (
            &["UPDATE audit_events SET details = '{\"x\":1}' WHERE seq = 21"],
            21,
        ),
        (
            &["UPDATE audit_events SET prev_hash = zeroblob(32) WHERE seq = 11"],
            11,
        ),
        (&["DELETE FROM audit_events WHERE seq = 15"], 15),
        (&["DELETE FROM audit_events WHERE seq IN (20, 21, 22)"], 20),
        (&["DELETE FROM audit_events WHERE seq = 10"], 10),
        (&["DELETE FROM audit_events WHERE seq >= 30"], 30),
        // A value of another type where the writer stored bytes: altered, not an error.
        (
            &["UPDATE audit_events SET prev_hash = 42 WHERE seq = 21"],
            21,
        ),
        (&["UPDATE audit_events SET hash = 7.5 WHERE seq = 11"], 11),
    ];
    for (statements, first_bad) in damage {
        let copy = tempfile::tempdir().unwrap();
        let copied = Store::state_file(copy.path());
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", state.display()))
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "VACUUM INTO '{}'",
            copied.display()
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", copied.display()))
            .await
            .unwrap();
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(*sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
        let damaged = Store::open_with(copy.path(), crate::store::Durability::Normal)
            .await
            .unwrap();
        let found = reports(damaged.clone()).await;
        assert!(!found[0].ok(), "{statements:?} went unnoticed");
        assert_eq!(found[0].first_bad_seq, Some(first_bad), "{statements:?}");
        for report in &found[1..] {
            assert_eq!(report, &found[0], "{statements:?}");
        }
        damaged.close().await;
    }
}

/// A `marks` table for the writer thread's tests.
async fn marks_table(store: &Store, extra: &str) {
    let mut setup = store.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE marks (who TEXT NOT NULL); {extra}"
    )))
    .execute(&mut *setup)
    .await
    .unwrap();
    setup.commit().await.unwrap();
}

/// A writer-thread transaction that marks `who` and appends an event by `who`; it fails
/// after both when `fail`.
fn marking(
    who: String,
    fail: bool,
) -> impl FnOnce(&mut Member<'_>) -> Result<i64, crate::error::ApiError> + Send + 'static {
    move |m| {
        m.conn()
            .prepare_cached("INSERT INTO marks (who) VALUES (?)")?
            .execute([&who])?;
        let seq = m.append_at(&Context::system("test"), event(who, "t".into()), 1)?;
        if fail {
            return Err(crate::error::ApiError::bad_request("failing on purpose"));
        }
        Ok(seq)
    }
}

async fn marks(store: &Store) -> Vec<String> {
    sqlx::query_scalar("SELECT who FROM marks ORDER BY who")
        .fetch_all(store.reader())
        .await
        .unwrap()
}

/// AUD-2 on the writer thread: transactions queued while the writer is busy run as one
/// group with one commit; one that fails rolls back alone (its change and its event), the
/// others commit with a dense chain, and each is acknowledged only once its commit is
/// visible to other connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_thread_groups_share_a_commit_and_members_fail_alone() {
    let (_dir, store, audit) = fresh().await;
    marks_table(&store, "").await;
    // The writer held: the thread takes the first transaction and waits; the others queue.
    let held = Arc::clone(&audit.writer).lock_owned().await;
    let mut pending = Vec::new();
    for (who, fail) in [("a", false), ("b", true), ("c", false)] {
        let mut answer = Box::pin(audit.transact(marking(who.into(), fail)));
        assert!(futures_util::poll!(&mut answer).is_pending());
        pending.push(answer);
    }
    drop(held);
    let a = pending.remove(0).await.expect("a commits");
    let b = pending.remove(0).await.expect_err("b fails alone");
    let c = pending.remove(0).await.expect("c commits");
    assert!(b.to_string().contains("failing on purpose"), "{b}");
    assert_eq!((a, c), (1, 2), "the failed member's event left a gap");
    assert_eq!(
        audit.commits(),
        1,
        "the queued transactions did not share one commit"
    );
    assert_eq!(marks(&store).await, ["a", "c"]);
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!((report.events, report.first_bad_seq), (2, None));
}

/// AUD-2 on the writer thread: when the store refuses the group's audit rows, no member is
/// acknowledged and none keeps its change; the next transaction continues from the last
/// committed head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_thread_group_whose_audit_rows_are_refused_commits_nothing() {
    let (_dir, store, audit) = fresh().await;
    marks_table(
        &store,
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_events WHEN NEW.actor = 'refused'
         BEGIN SELECT RAISE(ABORT, 'audit row refused'); END;",
    )
    .await;
    let held = Arc::clone(&audit.writer).lock_owned().await;
    let mut first = Box::pin(audit.transact(marking("first".into(), false)));
    let mut refused = Box::pin(audit.transact(marking("refused".into(), false)));
    assert!(futures_util::poll!(&mut first).is_pending());
    assert!(futures_util::poll!(&mut refused).is_pending());
    drop(held);
    let err = first
        .await
        .expect_err("acknowledged although its audit rows were refused");
    assert!(format!("{err:?}").contains("audit row refused"), "{err:?}");
    refused
        .await
        .expect_err("the refused member was acknowledged");
    assert_eq!(audit.head().seq, 0);
    assert!(
        marks(&store).await.is_empty(),
        "a change committed without its audit rows"
    );
    assert_eq!(
        audit.transact(marking("next".into(), false)).await.unwrap(),
        1
    );
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!((report.events, report.first_bad_seq), (1, None));
}

/// AUD-2 with both writers at once: `AuditTx`s and writer-thread transactions from several
/// tasks, some failing, extend one dense chain; every acknowledged change and event is
/// committed, no failed one is, and the in-memory head never disagrees with the store's
/// (a mismatch fails every transaction closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_thread_and_audit_txs_extend_one_chain() {
    let (_dir, store, audit) = fresh().await;
    marks_table(&store, "").await;
    let mut tasks = Vec::new();
    for t in 0..6 {
        let (store, audit) = (store.clone(), Arc::clone(&audit));
        tasks.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            for i in 0..40 {
                let who = format!("t{t}-{i:02}");
                let fail = i % 5 == 4;
                if i % 3 == 0 {
                    let mut tx = AuditTx::begin(&store, &audit).await.unwrap();
                    sqlx::query("INSERT INTO marks (who) VALUES (?)")
                        .bind(&who)
                        .execute(tx.conn().await.unwrap())
                        .await
                        .unwrap();
                    tx.append(&Context::system("test"), event(who.clone(), "t".into()))
                        .await
                        .unwrap();
                    if fail {
                        drop(tx);
                        continue;
                    }
                    tx.commit().await.unwrap();
                } else {
                    let done = audit.transact(marking(who.clone(), fail)).await;
                    assert_eq!(done.is_ok(), !fail, "{who}: {done:?}");
                    if fail {
                        continue;
                    }
                }
                kept.push(who);
            }
            kept
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        kept.extend(task.await.unwrap());
    }
    kept.sort();
    assert_eq!(marks(&store).await, kept);
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!(
        (report.events, report.first_bad_seq),
        (kept.len() as u64, None)
    );
    assert_eq!(audit.head().seq, kept.len() as i64);
}

/// A writer-thread transaction whose caller stops waiting (a client that went away) still
/// runs and commits with its event: what the caller asked for is recorded whole or not at
/// all, never left half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_thread_transaction_commits_after_its_caller_went_away() {
    let (_dir, store, audit) = fresh().await;
    marks_table(&store, "").await;
    let mut committed = audit.subscribe();
    let held = Arc::clone(&audit.writer).lock_owned().await;
    let mut gone = Box::pin(audit.transact(marking("gone".into(), false)));
    assert!(futures_util::poll!(&mut gone).is_pending());
    drop(gone);
    drop(held);
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        committed.wait_for(|head| head.seq == 1),
    )
    .await
    .expect("the transaction was dropped with its caller")
    .unwrap();
    assert_eq!(marks(&store).await, ["gone"]);
    let report = verify(store.reader(), None).await.unwrap();
    assert_eq!((report.events, report.first_bad_seq), (1, None));
}
