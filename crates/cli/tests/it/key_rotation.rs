//! IR-4: the signing key rotates while the server runs. The in-process agent pins only the
//! original key: a job it holds keeps running, and the next token, signed by the new key, is
//! accepted because the announcement of the new key is signed by the pinned one.

use std::time::{Duration, Instant};

use portcullis_core::RequestState;
use portcullis_proto::api::CreateRequest;

use crate::harness::TestApp;

/// Counts to a few million in SQLite: long enough to be in flight during the rotation.
const SLOW: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT COUNT(*) AS n FROM c";

#[tokio::test(flavor = "multi_thread")]
async fn ir4_rotation_keeps_jobs_in_flight_and_agents_follow_the_signed_chain() {
    let app = TestApp::spawn().await;
    let old_key = app.admin.public_key().await.expect("key").key_id;
    let slow = app
        .admin
        .create_request(
            &CreateRequest {
                connection: "demo".parse().expect("name"),
                statement: SLOW.into(),
                reason: "in flight during a key rotation".into(),
                stream: false,
            },
            Duration::ZERO,
        )
        .await
        .expect("create")
        .request
        .id;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = app.admin.request_view(slow).await.expect("view").state;
        if matches!(state, RequestState::Dispatched | RequestState::Running) {
            break;
        }
        assert!(
            !state.is_terminal(),
            "finished before the rotation: {state}"
        );
        assert!(Instant::now() < deadline, "the job never reached the agent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let announcement = app.admin.rotate_key().await.expect("rotate");
    assert_eq!(announcement.prev_key_id, old_key);
    let new_key = app.admin.public_key().await.expect("key").key_id;
    assert_eq!(new_key, announcement.new_key_id);
    assert_ne!(new_key, old_key);

    let done = app
        .admin
        .wait_request(slow, Duration::from_secs(60))
        .await
        .expect("wait");
    assert_eq!(
        done.request.state,
        RequestState::Succeeded,
        "the job in flight finished: {:?}",
        done.request.error
    );
    let after = app.exec(&app.admin, "SELECT 1 AS one").await.expect("exec");
    assert_eq!(
        after.request.state,
        RequestState::Succeeded,
        "the agent accepted the new key through the chain: {:?}",
        after.request.error
    );
    let events = app.audit_events().await;
    assert!(events.iter().any(|e| e["action"] == "key.rotated"));
    let verified = app.admin.audit_verify().await.expect("verify");
    assert!(verified.ok, "{verified:?}");
    let data = app.data_dir().to_owned();
    let offline = portcullis_server::audit::verify_data_dir(&data)
        .await
        .expect("offline verify");
    assert!(offline.ok(), "{offline:?}");
    let retired = std::fs::read_dir(data.join("keys"))
        .expect("keys dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains(&old_key));
    assert!(retired, "the old key file is kept, named by its id");
    app.stop().await;
}
