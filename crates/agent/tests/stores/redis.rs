//! Redis executor tests.

use crate::common::*;
use OperationClass::{Read, Write as WriteClass};
use portcullis_agent::config::TargetConfig;
use portcullis_agent::exec::RedisTarget;
use portcullis_core::{ConnectionKind, OperationClass};
use serde_json::json;
use std::time::{Duration, Instant};

pub(crate) struct Keys {
    pub(crate) prefix: String,
    pub(crate) admin: redis::aio::MultiplexedConnection,
    pub(crate) _scratch: Scratch,
}

impl Keys {
    pub(crate) async fn new() -> Keys {
        let prefix = format!("t:{}:", suffix());
        let client = redis::Client::open(REDIS_ADMIN).expect("redis url");
        let admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let pattern = format!("{prefix}*");
        Keys {
            prefix,
            admin,
            _scratch: Scratch::new(async move {
                let Ok(client) = redis::Client::open(REDIS_ADMIN) else {
                    return;
                };
                let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                    return;
                };
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                for key in keys {
                    let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut c).await;
                }
            }),
        }
    }

    pub(crate) fn cmd(&self, text: &str) -> String {
        text.replace("$k", &self.prefix)
    }

    pub(crate) async fn get(&mut self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(self.cmd(key))
            .query_async(&mut self.admin)
            .await
            .expect("get")
    }
}

#[tokio::test]
pub(crate) async fn redis_every_reply_type_round_trips() {
    let keys = Keys::new().await;
    let rig = Rig::new(target(
        "cache",
        ConnectionKind::Redis,
        &[(Read, REDIS_ADMIN), (WriteClass, REDIS_ADMIN)],
    ))
    .await;
    for (command, class, reply_type, expect) in [
        (
            "SET $kstr \"hello world\"",
            WriteClass,
            "simple-string",
            json!("OK"),
        ),
        ("GET $kstr", Read, "bulk-string", json!("hello world")),
        (
            "SET $kbin \"\\xff\\xfe\"",
            WriteClass,
            "simple-string",
            json!("OK"),
        ),
        ("GET $kbin", Read, "bulk-string", json!({"base64": "//4="})),
        ("INCR $kcount", WriteClass, "integer", json!(1)),
        ("GET $kmissing", Read, "nil", json!(null)),
        ("RPUSH $klist a b c", WriteClass, "integer", json!(3)),
        ("LRANGE $klist 0 -1", Read, "array", json!(["a", "b", "c"])),
        ("HSET $khash f1 v1 f2 v2", WriteClass, "integer", json!(2)),
        (
            "HGETALL $khash",
            Read,
            "map",
            json!({"f1": "v1", "f2": "v2"}),
        ),
        ("SADD $kset only", WriteClass, "integer", json!(1)),
        ("SMEMBERS $kset", Read, "set", json!(["only"])),
        ("ZADD $kz 1.5 m", WriteClass, "integer", json!(1)),
        ("ZSCORE $kz m", Read, "double", json!(1.5)),
        (
            "ZRANGE $kz 0 -1 WITHSCORES",
            Read,
            "array",
            json!([["m", 1.5]]),
        ),
        ("SISMEMBER $kset only", Read, "integer", json!(1)),
        ("TYPE $khash", Read, "simple-string", json!("hash")),
        ("DEL $kmissing", WriteClass, "integer", json!(0)),
    ] {
        let command = keys.cmd(command);
        let r = rig.ok(&command, class).await;
        assert_eq!(
            column_types(&r),
            vec![("reply".into(), reply_type.into())],
            "{command}"
        );
        assert_eq!(r.rows, vec![vec![expect]], "{command}");
        assert_eq!((r.row_count, r.truncated), (1, false));
    }
    // Nested: SCAN answers [cursor, [keys…]].
    let r = rig.ok(&keys.cmd("SCAN 0 MATCH $k* COUNT 1000"), Read).await;
    let reply = &r.rows[0][0];
    assert_eq!(reply[0], json!("0"), "{reply}");
    let mut found: Vec<String> = reply[1]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            k.as_str()
                .expect("key")
                .trim_start_matches(&keys.prefix)
                .to_owned()
        })
        .collect();
    found.sort();
    assert_eq!(found, ["bin", "count", "hash", "list", "set", "str", "z"]);
}

/// The byte cap keeps a prefix of an aggregate reply.
#[tokio::test]
pub(crate) async fn redis_byte_cap_keeps_a_prefix_of_a_large_reply() {
    let keys = Keys::new().await;
    let rig = Rig::new(TargetConfig {
        // `[[["aaaa","aaaa",…]]]`: 6 for the brackets, then 6 per element plus commas.
        max_result_bytes: 6 + 6 + 7 * 4,
        ..target(
            "cache",
            ConnectionKind::Redis,
            &[(Read, REDIS_ADMIN), (WriteClass, REDIS_ADMIN)],
        )
    })
    .await;
    rig.ok(
        &keys.cmd("RPUSH $kl aaaa aaaa aaaa aaaa aaaa aaaa aaaa aaaa aaaa aaaa"),
        WriteClass,
    )
    .await;
    let r = rig.ok(&keys.cmd("LRANGE $kl 0 -1"), Read).await;
    assert!(r.truncated);
    assert_eq!(r.rows, vec![vec![json!(vec!["aaaa"; 5])]]);
    assert_eq!(
        serde_json::to_string(&r.rows).expect("json").len(),
        6 + 6 + 7 * 4
    );
    let r = rig.ok(&keys.cmd("GET $kmissing"), Read).await;
    assert!(!r.truncated);
}

/// EX-3 for Redis: the signed timeout is enforced client-side, and a write that got no answer
/// in time is `outcome_unknown`, because it may still apply (here it does, once the server
/// resumes). `CLIENT PAUSE … WRITE` holds only write commands, briefly, for every client.
#[tokio::test]
pub(crate) async fn ex3_redis_timeout_fires_and_an_unanswered_write_is_outcome_unknown() {
    let mut keys = Keys::new().await;
    let t = RedisTarget::open(&target(
        "cache",
        ConnectionKind::Redis,
        &[(Read, REDIS_ADMIN), (WriteClass, REDIS_ADMIN)],
    ))
    .expect("target");
    // Connect first, so the pause below holds the command and not the handshake.
    t.run_unchecked(Read, "PING", limits(1, 1 << 20, 5_000))
        .await
        .expect("ping");
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(700)
        .arg("WRITE")
        .query_async(&mut keys.admin)
        .await
        .expect("pause");
    let started = Instant::now();
    let e = failed(
        t.run_unchecked(
            WriteClass,
            &keys.cmd("SET $klate applied"),
            limits(1, 1 << 20, 200),
        )
        .await,
    );
    assert_eq!(e.code, "outcome_unknown", "{e:?}");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    let mut applied = None;
    for _ in 0..40 {
        applied = keys.get("$klate").await;
        if applied.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        applied.as_deref(),
        Some("applied"),
        "the unanswered write applied later"
    );
}

/// EX-3 for Redis: with an ACL user limited to read commands as the read credential, a write
/// that slipped past classification fails with `read_only_violation`.
#[tokio::test]
pub(crate) async fn ex3_redis_read_credential_acl_blocks_writes() {
    let mut keys = Keys::new().await;
    let user = format!("reader_{}", suffix());
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{SECRET}"))
        .arg(format!("~{}*", keys.prefix))
        .arg("-@all")
        .arg("+@read")
        .query_async(&mut keys.admin)
        .await
        .expect("acl");
    let drop_user = user.clone();
    let _acl = Scratch::new(async move {
        if let Ok(client) = redis::Client::open(REDIS_ADMIN)
            && let Ok(mut c) = client.get_multiplexed_async_connection().await
        {
            let _: Result<(), _> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(drop_user)
                .query_async(&mut c)
                .await;
        }
    });
    let _: () = redis::cmd("SET")
        .arg(keys.cmd("$kguarded"))
        .arg("original")
        .query_async(&mut keys.admin)
        .await
        .expect("set");
    let url = format!("redis://{user}:{SECRET}@127.0.0.1:6379/0");
    let t = RedisTarget::open(&target(
        "cache",
        ConnectionKind::Redis,
        &[(Read, url.as_str())],
    ))
    .expect("target");
    let r = t
        .run_unchecked(Read, &keys.cmd("GET $kguarded"), limits(10, 1 << 20, 5_000))
        .await
        .expect("read");
    assert_eq!(r.rows, vec![vec![json!("original")]]);
    for command in [
        "SET $kguarded changed",
        "DEL $kguarded",
        "EXPIRE $kguarded 1",
    ] {
        let e = failed(
            t.run_unchecked(Read, &keys.cmd(command), limits(10, 1 << 20, 5_000))
                .await,
        );
        assert_eq!(e.code, "read_only_violation", "{command}: {e:?}");
        assert!(!e.message.contains(SECRET));
    }
    assert_eq!(keys.get("$kguarded").await.as_deref(), Some("original"));
}

// ---------------------------------------------------------------------------------------------
// SEC-4: secrets
