//! WEB-4: one suite of behaviours, run against the in-memory backend and against the real
//! Redis on 127.0.0.1:6379 (each Redis test under its own key prefix, removed at the end);
//! then what only one backend has: the memory bound, key prefixes and expiry, failing closed.
//! Time is injected: no test sleeps or depends on speed.

use std::sync::Arc;

use ::redis::Commands;

use super::memory::{MAX_KEYS, Windows};
use super::{
    Bucket, Decision, Error, Limit, Limits, RateLimiter, address_key, owner_key, principal_key,
};
use crate::auth::Principal;
use crate::config::{RateLimitBackend, RateLimitSettings};

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A start on both a minute and an hour boundary, so that window arithmetic is readable.
const T0: i64 = 1_764_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn limits() -> Limits {
    let minute = |max| Limit {
        max,
        window_ms: MINUTE as u64,
    };
    let hour = |max| Limit {
        max,
        window_ms: HOUR as u64,
    };
    Limits {
        authenticated: minute(3),
        agent: minute(4),
        anonymous: minute(2),
        login: hour(2),
        token_creation: hour(5),
        oauth_registration: hour(1),
    }
}

/// Removes every key under a test's prefix when the test ends, passed or failed.
struct Prefix(String);

impl Prefix {
    fn new() -> Prefix {
        Prefix(format!(
            "portcullis-test:rl:{}:",
            uuid::Uuid::new_v4().simple()
        ))
    }

    fn keys(&self) -> Vec<String> {
        let mut c = ::redis::Client::open(REDIS_URL)
            .and_then(|c| c.get_connection())
            .expect("redis at 127.0.0.1:6379");
        let keys: Vec<String> = c
            .scan_match::<_, String>(format!("{}*", self.0))
            .expect("scan")
            .collect::<Result<_, _>>()
            .expect("scan");
        keys
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(mut c) = ::redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = match c.scan_match::<_, String>(format!("{}*", self.0)) {
            Ok(keys) => keys.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for key in keys {
            let _: Result<(), _> = c.del(key);
        }
    }
}

async fn redis_limiter(prefix: &Prefix) -> RateLimiter {
    RateLimiter::redis(REDIS_URL, &prefix.0, limits())
        .await
        .expect("redis at 127.0.0.1:6379")
}

async fn check(l: &RateLimiter, bucket: Bucket, key: &str, at: i64) -> Decision {
    l.check(bucket, key, at).await.expect("check")
}

/// How many of `n` requests at `at` are admitted.
async fn admitted(l: &RateLimiter, bucket: Bucket, key: &str, at: i64, n: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        if check(l, bucket, key, at).await.allowed {
            allowed += 1;
        }
    }
    allowed
}

/// Runs each behaviour below once against memory and once against Redis.
macro_rules! both_backends {
    ($($behaviour:ident),+ $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let limiter = super::RateLimiter::memory(super::limits());
                    super::$behaviour(std::sync::Arc::new(limiter)).await;
                }
            )+
        }
        mod redis_backend {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let prefix = super::Prefix::new();
                    let limiter = super::redis_limiter(&prefix).await;
                    super::$behaviour(std::sync::Arc::new(limiter)).await;
                }
            )+
        }
    };
}

both_backends!(
    admits_up_to_the_limit_and_refuses_the_next,
    remaining_counts_down_to_zero,
    refused_requests_are_not_counted,
    a_burst_at_the_end_of_a_window_still_counts_at_the_start_of_the_next,
    the_count_fades_as_the_window_slides,
    after_two_quiet_windows_a_key_starts_afresh,
    keys_are_independent,
    buckets_are_independent,
    hourly_buckets_keep_their_count_for_an_hour,
    reset_and_retry_after_name_the_moment_a_request_is_admitted_again,
    only_the_first_refusal_of_a_key_in_a_window_is_marked,
    a_clock_behind_the_stored_window_does_not_reset_the_count,
    concurrent_checks_never_admit_more_than_the_limit,
);

async fn admits_up_to_the_limit_and_refuses_the_next(l: Arc<RateLimiter>) {
    for i in 0..3 {
        assert!(
            check(&l, Bucket::Authenticated, "a", T0).await.allowed,
            "request {i}"
        );
    }
    let refused = check(&l, Bucket::Authenticated, "a", T0).await;
    assert!(!refused.allowed);
    assert_eq!(refused.limit, 3);
}

async fn remaining_counts_down_to_zero(l: Arc<RateLimiter>) {
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(check(&l, Bucket::Authenticated, "a", T0).await.remaining);
    }
    assert_eq!(seen, [2, 1, 0, 0]);
}

async fn refused_requests_are_not_counted(l: Arc<RateLimiter>) {
    assert_eq!(admitted(&l, Bucket::Authenticated, "a", T0, 20).await, 3);
    // Had the 17 refusals been counted, the previous window would weigh 20 and keep the key
    // refused here; with 3 counted, 59 999/60 000 of 3 rounds down to 2.
    assert!(
        check(&l, Bucket::Authenticated, "a", T0 + MINUTE + 1)
            .await
            .allowed
    );
}

async fn a_burst_at_the_end_of_a_window_still_counts_at_the_start_of_the_next(l: Arc<RateLimiter>) {
    assert_eq!(
        admitted(&l, Bucket::Authenticated, "a", T0 + 59_000, 3).await,
        3
    );
    // A fixed window would admit 3 more half a second later; the sliding window still weighs
    // the burst at 59.5/60 of 3, which leaves room for one.
    assert_eq!(
        admitted(&l, Bucket::Authenticated, "a", T0 + MINUTE + 500, 3).await,
        1
    );
}

async fn the_count_fades_as_the_window_slides(l: Arc<RateLimiter>) {
    assert_eq!(admitted(&l, Bucket::Authenticated, "a", T0, 3).await, 3);
    // A third into the next window the burst weighs 2 (of 3): one request fits.
    assert_eq!(
        admitted(&l, Bucket::Authenticated, "a", T0 + MINUTE + 20_000, 3).await,
        1
    );
    // Two thirds in it weighs 1, and the one admitted since counts fully: one more fits.
    assert_eq!(
        admitted(&l, Bucket::Authenticated, "a", T0 + MINUTE + 40_000, 3).await,
        1
    );
}

async fn after_two_quiet_windows_a_key_starts_afresh(l: Arc<RateLimiter>) {
    assert_eq!(admitted(&l, Bucket::Authenticated, "a", T0, 5).await, 3);
    let fresh = check(&l, Bucket::Authenticated, "a", T0 + 2 * MINUTE).await;
    assert!(fresh.allowed);
    assert_eq!(fresh.remaining, 2);
}

async fn keys_are_independent(l: Arc<RateLimiter>) {
    assert_eq!(admitted(&l, Bucket::Authenticated, "a", T0, 5).await, 3);
    assert_eq!(admitted(&l, Bucket::Authenticated, "b", T0, 5).await, 3);
}

async fn buckets_are_independent(l: Arc<RateLimiter>) {
    // One key, exhausted in one bucket, still has each other bucket's full limit.
    assert_eq!(admitted(&l, Bucket::Authenticated, "k", T0, 9).await, 3);
    assert_eq!(admitted(&l, Bucket::Agent, "k", T0, 9).await, 4);
    assert_eq!(admitted(&l, Bucket::Anonymous, "k", T0, 9).await, 2);
    assert_eq!(admitted(&l, Bucket::Login, "k", T0, 9).await, 2);
    assert_eq!(admitted(&l, Bucket::TokenCreation, "k", T0, 9).await, 5);
    assert_eq!(admitted(&l, Bucket::OAuthRegistration, "k", T0, 9).await, 1);
}

async fn hourly_buckets_keep_their_count_for_an_hour(l: Arc<RateLimiter>) {
    for bucket in [
        Bucket::Login,
        Bucket::TokenCreation,
        Bucket::OAuthRegistration,
    ] {
        let max = l.limits().of(bucket).max as usize;
        assert_eq!(
            admitted(&l, bucket, "h", T0, max + 1).await,
            max,
            "{bucket:?}"
        );
        // Past a minute window, an hourly bucket still refuses.
        let later = check(&l, bucket, "h", T0 + 59 * MINUTE).await;
        assert!(!later.allowed, "{bucket:?}");
        assert_eq!(later.reset_secs, 60, "{bucket:?}");
        // The hour's count weighs under the limit 1 ms into the next hour: 60.001 s away.
        assert_eq!(later.retry_after_secs, 61, "{bucket:?}");
    }
}

async fn reset_and_retry_after_name_the_moment_a_request_is_admitted_again(l: Arc<RateLimiter>) {
    let at = T0 + 500;
    assert_eq!(admitted(&l, Bucket::Authenticated, "a", at, 3).await, 3);
    let refused = check(&l, Bucket::Authenticated, "a", at).await;
    assert_eq!(
        refused.reset_secs, 60,
        "59.5 s left in the window, rounded up"
    );
    // The first instant the burst weighs under 3 is 1 ms into the next window: 59.501 s.
    assert_eq!(refused.retry_after_secs, 60);

    let at = T0 + MINUTE + 500;
    let admitted_one = check(&l, Bucket::Authenticated, "a", at).await;
    assert!(admitted_one.allowed);
    assert_eq!(admitted_one.retry_after_secs, 0);
    let refused = check(&l, Bucket::Authenticated, "a", at).await;
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    // 1 counted now plus 3 fading: room again once 3 × (60 − e)/60 < 2, at e = 20.001 s,
    // which is 19.501 s after `at`.
    assert_eq!(refused.retry_after_secs, 20);
    assert!(
        !check(&l, Bucket::Authenticated, "a", T0 + MINUTE + 20_000)
            .await
            .allowed
    );
    assert!(
        check(&l, Bucket::Authenticated, "a", T0 + MINUTE + 20_001)
            .await
            .allowed
    );
}

async fn only_the_first_refusal_of_a_key_in_a_window_is_marked(l: Arc<RateLimiter>) {
    assert_eq!(admitted(&l, Bucket::Anonymous, "a", T0, 2).await, 2);
    let first = check(&l, Bucket::Anonymous, "a", T0).await;
    let second = check(&l, Bucket::Anonymous, "a", T0 + 1).await;
    assert!(!first.allowed && first.first_refusal);
    assert!(!second.allowed && !second.first_refusal);
    // In the next window the key is refused again (its burst still weighs 2): marked anew.
    let next = check(&l, Bucket::Anonymous, "a", T0 + MINUTE).await;
    assert!(!next.allowed && next.first_refusal);
}

async fn a_clock_behind_the_stored_window_does_not_reset_the_count(l: Arc<RateLimiter>) {
    // Replicas' clocks differ a little; a check from one that is behind must not roll the
    // shared counters back to an older window and forget them.
    assert_eq!(
        admitted(&l, Bucket::Authenticated, "a", T0 + MINUTE, 3).await,
        3
    );
    assert!(
        !check(&l, Bucket::Authenticated, "a", T0 + MINUTE - 1_000)
            .await
            .allowed
    );
}

async fn concurrent_checks_never_admit_more_than_the_limit(l: Arc<RateLimiter>) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let l = l.clone();
        tasks.spawn(async move { check(&l, Bucket::Agent, "c", T0).await.allowed });
    }
    let mut allowed = 0;
    while let Some(r) = tasks.join_next().await {
        allowed += usize::from(r.expect("task"));
    }
    assert_eq!(allowed, 4);
}

#[tokio::test]
async fn redis_keys_carry_the_prefix_and_expire_after_two_windows() {
    let prefix = Prefix::new();
    let l = redis_limiter(&prefix).await;
    check(&l, Bucket::Anonymous, "192.0.2.1", T0).await;
    check(&l, Bucket::Login, "192.0.2.1", T0).await;
    let mut keys = prefix.keys();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{}anonymous:192.0.2.1", prefix.0),
            format!("{}login:192.0.2.1", prefix.0),
        ]
    );
    let mut c = ::redis::Client::open(REDIS_URL)
        .and_then(|c| c.get_connection())
        .expect("redis");
    let minute: i64 = c.pttl(&keys[0]).expect("pttl");
    let hour: i64 = c.pttl(&keys[1]).expect("pttl");
    assert!(minute > 0 && minute <= 2 * MINUTE, "{minute}");
    assert!(hour > 2 * MINUTE && hour <= 2 * HOUR, "{hour}");
}

#[tokio::test]
async fn redis_limiters_with_different_prefixes_never_share_a_count() {
    let (p1, p2) = (Prefix::new(), Prefix::new());
    let (l1, l2) = (redis_limiter(&p1).await, redis_limiter(&p2).await);
    assert_eq!(admitted(&l1, Bucket::Authenticated, "a", T0, 5).await, 3);
    assert_eq!(admitted(&l2, Bucket::Authenticated, "a", T0, 5).await, 3);
    // And two limiters with the same prefix (two replicas) do share it.
    let l3 = redis_limiter(&p1).await;
    assert!(!check(&l3, Bucket::Authenticated, "a", T0).await.allowed);
}

#[tokio::test]
async fn a_limiter_refuses_to_start_when_redis_cannot_be_reached() {
    let port = closed_port().await;
    let result = RateLimiter::redis(&format!("redis://127.0.0.1:{port}"), "x:", limits()).await;
    assert!(
        matches!(result, Err(Error::Connect(_))),
        "{:?}",
        result.err()
    );
    let settings = RateLimitSettings {
        backend: RateLimitBackend::Redis,
        redis_url: None,
        ..RateLimitSettings::default()
    };
    assert!(matches!(
        RateLimiter::from_settings(&settings).await,
        Err(Error::MissingRedisUrl)
    ));
}

#[tokio::test]
async fn a_check_fails_instead_of_admitting_when_redis_goes_away() {
    let prefix = Prefix::new();
    let relay = Relay::start().await;
    let l = RateLimiter::redis(&relay.url(), &prefix.0, limits())
        .await
        .expect("redis through the relay");
    assert!(check(&l, Bucket::Authenticated, "a", T0).await.allowed);
    relay.stop().await;
    let result = l.check(Bucket::Authenticated, "a", T0).await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
}

#[tokio::test]
async fn turned_off_there_is_no_limiter_and_nothing_is_counted() {
    let off = RateLimitSettings {
        enabled: false,
        ..RateLimitSettings::default()
    };
    assert!(
        RateLimiter::from_settings(&off)
            .await
            .expect("off")
            .is_none()
    );
    let on = RateLimiter::from_settings(&RateLimitSettings::default())
        .await
        .expect("memory");
    assert!(on.is_some(), "enabled by default, in memory");
}

#[test]
fn many_addresses_never_grow_the_memory_table_beyond_its_capacity() {
    let w = Windows::new(64);
    let limit = limits().anonymous;
    for i in 0..10_000u32 {
        w.check(
            Bucket::Anonymous,
            &format!("198.51.{}.{}", i / 256, i % 256),
            limit,
            T0 as u64,
        );
        assert!(w.len() <= 64, "{} keys after {i}", w.len());
    }
}

#[test]
fn a_heavy_hitter_stays_limited_while_one_off_addresses_are_evicted() {
    let w = Windows::new(64);
    let limit = limits().anonymous;
    let now = T0 as u64;
    for _ in 0..2 {
        assert!(w.check(Bucket::Anonymous, "heavy", limit, now).allowed);
    }
    for i in 0..10_000u32 {
        w.check(Bucket::Anonymous, &format!("one-off-{i}"), limit, now);
    }
    assert!(!w.check(Bucket::Anonymous, "heavy", limit, now).allowed);
}

#[test]
fn expired_memory_entries_are_swept_away() {
    let w = Windows::new(MAX_KEYS);
    let limit = limits().anonymous;
    for i in 0..1_000 {
        w.check(Bucket::Anonymous, &format!("early-{i}"), limit, T0 as u64);
    }
    assert_eq!(w.len(), 1_000);
    // Two windows later the early keys weigh nothing; the next checks sweep them out.
    let later = (T0 + 2 * MINUTE) as u64;
    for i in 0..1_000 {
        w.check(Bucket::Anonymous, &format!("late-{i}"), limit, later);
    }
    assert_eq!(w.len(), 1_000);
}

#[test]
fn addresses_are_keyed_by_ipv4_host_and_ipv6_slash_64() {
    for (addr, key) in [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("-", "-"),
    ] {
        assert_eq!(address_key(addr), key, "{addr}");
    }
}

#[test]
fn sessions_share_their_person_s_key_while_each_token_and_agent_has_its_own() {
    use crate::auth::{AgentPrincipal, UserPrincipal};
    let user = |token_id: &str, session: bool| {
        Principal::User(UserPrincipal {
            token_id: token_id.into(),
            token_name: "t".into(),
            user_id: "u1".into(),
            user_name: "ann".into(),
            role: portcullis_core::Role::Developer,
            environments: None,
            session,
            mfa_at_ms: None,
        })
    };
    assert_eq!(
        principal_key(&user("s1", true)),
        principal_key(&user("s2", true))
    );
    assert_ne!(
        principal_key(&user("t1", false)),
        principal_key(&user("t2", false))
    );
    assert_eq!(owner_key(&user("t1", false)), owner_key(&user("t2", false)));
    assert_eq!(
        owner_key(&user("t1", false)),
        principal_key(&user("s1", true))
    );
    let agent = Principal::Agent(AgentPrincipal {
        id: "a1".into(),
        name: "agent".into(),
    });
    assert_eq!(principal_key(&agent), "agent:a1");
}

/// A port with nothing listening on it.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// A TCP relay to the real Redis that can be stopped, closing every connection through it:
/// Redis going away, without touching the Redis other tests use.
struct Relay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let held = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:6379").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().expect("lock").push(pipe);
            }
        });
        Relay {
            port,
            task,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let pipes: Vec<_> = self.connections.lock().expect("lock").drain(..).collect();
        // Awaited, so that every relayed socket is closed when this returns.
        for pipe in pipes {
            pipe.abort();
            let _ = pipe.await;
        }
    }
}

#[test]
fn the_configuration_refuses_redis_without_a_url_and_limits_out_of_range() {
    fn valid(change: fn(&mut RateLimitSettings)) -> bool {
        let mut config = crate::config::ServerConfig::default();
        change(&mut config.rate_limit);
        config.validate().is_ok()
    }
    type Change = fn(&mut RateLimitSettings);
    let cases: [(Change, bool); 9] = [
        (|_| {}, true),
        (|r| r.backend = RateLimitBackend::Redis, false),
        (
            |r| {
                r.backend = RateLimitBackend::Redis;
                r.redis_url = Some(REDIS_URL.into());
            },
            true,
        ),
        (|r| r.window_secs = 0, false),
        (|r| r.window_secs = 86_401, false),
        (|r| r.login_per_hour = 0, false),
        (|r| r.token_create_per_hour = 0, false),
        (|r| r.anonymous = 1_000_001, false),
        // Turned off, the limits are not read.
        (
            |r| {
                r.enabled = false;
                r.login_per_hour = 0;
            },
            true,
        ),
    ];
    for (i, (change, expect)) in cases.into_iter().enumerate() {
        assert_eq!(valid(change), expect, "case {i}");
    }
}
