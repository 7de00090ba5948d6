//! Rate limiting (WEB-4): a sliding window per bucket and key, kept in this process's memory
//! (the default, one replica) or in Redis (shared by every replica).
//!
//! The window is a two-counter sliding window: each key keeps the count of the current fixed
//! window and of the one before it, and a request is admitted while
//! `current + previous × (time left in the current window / window)` stays under the limit.
//! Unlike a fixed window, a burst at the end of one window still counts at the start of the
//! next; unlike a log of timestamps, a key costs two counters whatever its limit. Only
//! admitted requests are counted, so a refused client gets its budget back as the window
//! slides. Both backends run the same arithmetic ([`admit`] here, the same steps in the Redis
//! script), and one test suite runs against both.
//!
//! A backend that cannot answer fails closed: the request is refused with 503, never let
//! through unlimited.

mod memory;
mod redis;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

use crate::auth::Principal;
use crate::config::{RateLimitBackend, RateLimitSettings};
use crate::error::ApiError;

/// The hourly buckets (sign-in, token creation, OAuth registration) use this window.
const HOUR_MS: u64 = 3_600_000;

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// What a request is counted against. Each bucket has its own limit and window, and keys of
/// different buckets never share a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// A signed-in person (all their sessions together) or an API token.
    Authenticated,
    /// An agent. Its traffic follows the jobs that users' (limited) requests create: about
    /// two calls per job (claim, then result upload) plus heartbeats for long statements,
    /// while idle long-polls cost one claim per worker every 25 s. Counted under the
    /// authenticated limit it would cap dispatch for everyone at half that limit in jobs, so
    /// it has its own limit, sized above what the server can dispatch.
    Agent,
    /// A client address without a credential, or whose credential was refused.
    Anonymous,
    /// Sign-in attempts (login, bootstrap, enrolment, step-up) per client address, per hour.
    Login,
    /// API token creations per person, per hour.
    TokenCreation,
    /// OAuth client registrations per client address, per hour.
    OAuthRegistration,
}

impl Bucket {
    /// Stable: part of Redis keys and of the `reason` of a 429 problem document.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Authenticated => "authenticated",
            Bucket::Agent => "agent",
            Bucket::Anonymous => "anonymous",
            Bucket::Login => "login",
            Bucket::TokenCreation => "token_creation",
            Bucket::OAuthRegistration => "oauth_registration",
        }
    }
}

/// One bucket's limit: at most `max` admitted requests per sliding `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window_ms: u64,
}

/// Every bucket's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub authenticated: Limit,
    pub agent: Limit,
    pub anonymous: Limit,
    pub login: Limit,
    pub token_creation: Limit,
    pub oauth_registration: Limit,
}

impl Limits {
    pub fn from_settings(s: &RateLimitSettings) -> Limits {
        let general = s.window_secs.saturating_mul(1_000);
        let per_window = |max| Limit {
            max,
            window_ms: general,
        };
        let per_hour = |max| Limit {
            max,
            window_ms: HOUR_MS,
        };
        Limits {
            authenticated: per_window(s.authenticated),
            agent: per_window(s.agent),
            anonymous: per_window(s.anonymous),
            login: per_hour(s.login_per_hour),
            token_creation: per_hour(s.token_create_per_hour),
            oauth_registration: per_hour(s.oauth_register_per_hour),
        }
    }

    pub fn of(&self, bucket: Bucket) -> Limit {
        match bucket {
            Bucket::Authenticated => self.authenticated,
            Bucket::Agent => self.agent,
            Bucket::Anonymous => self.anonymous,
            Bucket::Login => self.login,
            Bucket::TokenCreation => self.token_creation,
            Bucket::OAuthRegistration => self.oauth_registration,
        }
    }
}

/// The verdict on one request, with what the `X-RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests still admitted right now (after this one, when it was admitted).
    pub remaining: u32,
    /// Seconds until the current fixed window ends and its count starts to fade.
    pub reset_secs: u64,
    /// For a refusal, whole seconds until a request would be admitted again; 0 otherwise.
    pub retry_after_secs: u64,
    /// This refusal is the key's first in the current window (so it is worth a log line).
    pub first_refusal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rate_limit.backend = \"redis\" needs rate_limit.redis_url")]
    MissingRedisUrl,
    #[error("cannot reach the rate-limit Redis (rate_limit.redis_url): {0}")]
    Connect(::redis::RedisError),
    #[error("the rate-limit store is unavailable: {0}")]
    Unavailable(::redis::RedisError),
}

/// The rate limiter of this server, one backend chosen by `rate_limit.backend`.
pub struct RateLimiter {
    limits: Limits,
    backend: Backend,
}

enum Backend {
    Memory(memory::Windows),
    Redis(redis::Windows),
}

impl RateLimiter {
    /// The limiter `settings` ask for, or `None` when rate limiting is turned off. With the
    /// Redis backend this connects and loads the script first, so that a server whose Redis is
    /// unreachable does not start.
    pub async fn from_settings(settings: &RateLimitSettings) -> Result<Option<RateLimiter>, Error> {
        if !settings.enabled {
            return Ok(None);
        }
        let limits = Limits::from_settings(settings);
        Ok(Some(match settings.backend {
            RateLimitBackend::Memory => RateLimiter::memory(limits),
            RateLimitBackend::Redis => {
                let url = settings
                    .redis_url
                    .as_deref()
                    .ok_or(Error::MissingRedisUrl)?;
                RateLimiter::redis(url, &settings.redis_prefix, limits).await?
            }
        }))
    }

    /// In this process's memory, holding at most [`memory::MAX_KEYS`] keys.
    pub fn memory(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            backend: Backend::Memory(memory::Windows::new(memory::MAX_KEYS)),
        }
    }

    /// In Redis at `url`, every key starting with `prefix`.
    pub async fn redis(url: &str, prefix: &str, limits: Limits) -> Result<RateLimiter, Error> {
        Ok(RateLimiter {
            limits,
            backend: Backend::Redis(redis::Windows::connect(url, prefix).await?),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts one request of `key` against `bucket` at `now_ms`, unless it is refused.
    pub async fn check(&self, bucket: Bucket, key: &str, now_ms: i64) -> Result<Decision, Error> {
        let limit = self.limits.of(bucket);
        let now = u64::try_from(now_ms).unwrap_or(0);
        match &self.backend {
            Backend::Memory(w) => Ok(w.check(bucket, key, limit, now)),
            Backend::Redis(w) => w.check(bucket, key, limit, now).await,
        }
    }
}

/// One key's two counters: admitted requests in fixed window `window` (its index since the
/// epoch) and in the window before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub(crate) window: u64,
    pub(crate) current: u64,
    pub(crate) previous: u64,
}

impl Counts {
    /// The counters as seen from the window holding `now`. A stored window ahead of `now`
    /// (another replica's clock runs ahead) is kept as it is rather than rolled back.
    fn at(self, now: u64, window_ms: u64) -> Counts {
        let index = now / window_ms;
        if self.window >= index {
            self
        } else if self.window + 1 == index {
            Counts {
                window: index,
                current: 0,
                previous: self.current,
            }
        } else {
            Counts {
                window: index,
                current: 0,
                previous: 0,
            }
        }
    }

    /// The sliding-window count at `now` (which lies in `self.window` or before it).
    fn used(self, now: u64, window_ms: u64) -> u64 {
        let elapsed = now.saturating_sub(self.window * window_ms).min(window_ms);
        self.current + self.previous * (window_ms - elapsed) / window_ms
    }
}

/// The sliding-window step both backends take: roll the counters to `now`'s window, admit
/// the request when the count is under the limit, and count it. Returns the new counters and
/// whether the request was admitted.
pub(crate) fn admit(stored: Option<Counts>, limit: Limit, now: u64) -> (Counts, bool) {
    let mut counts = stored.unwrap_or_default().at(now, limit.window_ms);
    let allowed = counts.used(now, limit.window_ms) < u64::from(limit.max);
    if allowed {
        counts.current += 1;
    }
    (counts, allowed)
}

/// What the headers report after [`admit`] left `counts`.
pub(crate) fn decision(
    counts: Counts,
    allowed: bool,
    first_refusal: bool,
    limit: Limit,
    now: u64,
) -> Decision {
    let w = limit.window_ms;
    let now = now.max(counts.window * w);
    let used = counts.used(now, w);
    let max = u64::from(limit.max);
    let window_end = (counts.window + 1) * w;
    let retry_after_secs = if allowed {
        0
    } else {
        ceil_secs(next_admission(counts, max, w).saturating_sub(now)).max(1)
    };
    Decision {
        allowed,
        limit: limit.max,
        remaining: u32::try_from(max.saturating_sub(used)).unwrap_or(u32::MAX),
        reset_secs: ceil_secs(window_end - now),
        retry_after_secs,
        first_refusal: first_refusal && !allowed,
    }
}

/// The first millisecond at which a request would be admitted, given `counts` and no other
/// request in between.
fn next_admission(counts: Counts, max: u64, w: u64) -> u64 {
    // In window `start`, with `previous` fading and `current` fixed, the first elapsed time
    // `e` at which `current + floor(previous × (w − e) / w) < max`, i.e. at which
    // `previous × (w − e) < (max − current) × w`.
    let first_in = |start: u64, previous: u64, current: u64| -> Option<u64> {
        let room = max.checked_sub(current).filter(|r| *r > 0)?;
        let e = match previous {
            0 => 0,
            p => w.saturating_sub((room * w - 1) / p),
        };
        (e < w).then_some(start + e)
    };
    let start = counts.window * w;
    first_in(start, counts.previous, counts.current)
        .or_else(|| first_in(start + w, counts.current, 0))
        .unwrap_or(start + 2 * w)
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1_000)
}

/// The key of a client address: the address itself for IPv4, the /64 network for IPv6 (one
/// host commonly holds a whole /64, so single addresses would be free to rotate through).
pub fn address_key(client_addr: &str) -> String {
    match client_addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => client_addr.to_owned(),
    }
}

/// The key of an authenticated principal: a person's sessions share one key (signing in
/// again gives no fresh budget); each API token and each agent has its own.
pub fn principal_key(principal: &Principal) -> String {
    match principal {
        Principal::User(u) if u.session => format!("user:{}", u.user_id),
        Principal::User(u) => format!("token:{}", u.token_id),
        Principal::Agent(a) => format!("agent:{}", a.id),
    }
}

/// The person behind a principal, for the token-creation bucket: tokens made by tokens are
/// owned by the same person and share that person's budget, so a token cannot multiply it.
pub fn owner_key(principal: &Principal) -> String {
    match principal {
        Principal::User(u) => format!("user:{}", u.user_id),
        Principal::Agent(a) => format!("agent:{}", a.id),
    }
}

/// Counts a request against each `(bucket, key)` in turn, stopping at the first refusal.
/// Returns the decision whose headers the response carries (the one with the fewest
/// requests left), or the response to send instead: 429 for a refusal, 503 when the store
/// cannot answer (fail closed). `None` when rate limiting is off.
pub async fn enforce(
    limiter: Option<&RateLimiter>,
    client_addr: &str,
    checks: &[(Bucket, &str)],
    now_ms: i64,
) -> Result<Option<Decision>, Response> {
    use axum::response::IntoResponse;
    let Some(limiter) = limiter else {
        return Ok(None);
    };
    let mut shown: Option<Decision> = None;
    for (bucket, key) in checks {
        let d = match limiter.check(*bucket, key, now_ms).await {
            Ok(d) => d,
            Err(e) => {
                // Fail closed: without the store's answer the request is not admitted. The
                // error (not the Redis URL) goes to the log under the response's error id.
                return Err(ApiError::Unavailable(anyhow::Error::new(e)).into_response());
            }
        };
        if !d.allowed {
            // A refusal is logged, not audited: appending each one to the hash chain would
            // turn a flood into the write load the limit exists to prevent. Only the first
            // refusal of a key in a window reaches WARN, so the log cannot be flooded either.
            if d.first_refusal {
                tracing::warn!(
                    client = %client_addr,
                    bucket = bucket.as_str(),
                    key = %key,
                    limit = d.limit,
                    retry_after_secs = d.retry_after_secs,
                    "rate limit reached; refusing further requests until the window slides (WEB-4)"
                );
            } else {
                tracing::debug!(client = %client_addr, bucket = bucket.as_str(), key = %key, "rate limited (WEB-4)");
            }
            return Err(ApiError::RateLimited {
                bucket: bucket.as_str(),
                limit: d.limit,
                reset_secs: d.reset_secs,
                retry_after_secs: d.retry_after_secs,
            }
            .into_response());
        }
        shown = tighter(shown, Some(d));
    }
    Ok(shown)
}

/// Of two decisions, the one a response reports: the one with fewer requests left.
pub fn tighter(a: Option<Decision>, b: Option<Decision>) -> Option<Decision> {
    match (a, b) {
        (Some(a), Some(b)) if b.remaining < a.remaining => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// Adds the `X-RateLimit-*` headers of `decision` to `response`.
pub fn with_headers(mut response: Response, decision: Option<Decision>) -> Response {
    if let Some(d) = decision {
        let h = response.headers_mut();
        h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(d.limit));
        h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
        h.insert(X_RATELIMIT_RESET, HeaderValue::from(d.reset_secs));
    }
    response
}
