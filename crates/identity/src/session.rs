//! Opaque browser sessions (AUTH-3), stored only as hashes (SEC-5).
//!
//! A session id is `pcs_` followed by 32 random bytes in unpadded URL-safe base64. The browser
//! holds the id in a cookie; the server stores only its SHA-256 and looks sessions up by that
//! hash, so a leaked table cannot be replayed as cookies. A presented id is checked for shape
//! before hashing, so junk never reaches the store.
//!
//! Sessions end on whichever comes first: the idle timeout since the last request, or the
//! absolute lifetime since creation. The cookie is always `HttpOnly; SameSite=Strict; Path=/`
//! and `Secure` except on the loopback-only development server.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Prefix of every session id; makes ids recognisable to secret scanners and in support
/// tickets.
pub const SESSION_ID_PREFIX: &str = "pcs_";
/// Random bytes in a session id.
const SESSION_ID_BYTES: usize = 32;
/// Length of a session id: the prefix plus 43 base64 characters.
pub const SESSION_ID_LEN: usize = SESSION_ID_PREFIX.len() + 43;
/// Default idle timeout (AUTH-3).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Cookie name when served over HTTPS. The `__Host-` prefix makes browsers insist on `Secure`,
/// `Path=/` and no `Domain`, so a sibling subdomain cannot plant or overwrite it.
pub const SESSION_COOKIE_SECURE: &str = "__Host-portcullis_session";
/// Cookie name on the plain-HTTP loopback development server, where `__Host-` is not allowed.
pub const SESSION_COOKIE_INSECURE: &str = "portcullis_session";

/// The cookie name to use with [`cookie_header`] for the given transport.
pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        SESSION_COOKIE_SECURE
    } else {
        SESSION_COOKIE_INSECURE
    }
}

/// A fresh session id for the cookie and the SHA-256 to store in its place.
pub fn new_session_id() -> (String, [u8; 32]) {
    let mut random = Zeroizing::new([0u8; SESSION_ID_BYTES]);
    rand::fill(&mut random[..]);
    let id = format!("{SESSION_ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(&random[..]));
    let hash = Sha256::digest(id.as_bytes()).into();
    (id, hash)
}

/// The stored hash for a presented id, or `None` when the id does not have the shape of one
/// this server issued (wrong prefix, wrong length, not canonical base64url).
pub fn hash_session_id(id: &str) -> Option<[u8; 32]> {
    if id.len() != SESSION_ID_LEN {
        return None;
    }
    let encoded = id.strip_prefix(SESSION_ID_PREFIX)?;
    let mut decoded = Zeroizing::new(Vec::with_capacity(SESSION_ID_BYTES));
    URL_SAFE_NO_PAD.decode_vec(encoded, &mut decoded).ok()?;
    if decoded.len() != SESSION_ID_BYTES {
        return None;
    }
    Some(Sha256::digest(id.as_bytes()).into())
}

/// Constant-time equality of two stored hashes, for the rare place that compares them in
/// memory rather than through an indexed lookup.
pub fn hashes_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// Why a session is no longer valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No request for longer than the idle timeout.
    Idle,
    /// Older than the absolute lifetime, however active.
    Absolute,
}

/// The two instants expiry depends on, in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimes {
    /// When the session was created (login).
    pub created_ms: i64,
    /// When the session last served a request.
    pub last_seen_ms: i64,
}

impl SessionTimes {
    /// Whether the session has expired at `now_ms`. A session is valid while strictly less than
    /// `idle` has passed since `last_seen_ms` and strictly less than `absolute` since
    /// `created_ms`; the absolute lifetime is reported first when both have run out.
    pub fn expired(&self, now_ms: i64, idle: Duration, absolute: Duration) -> Option<Expiry> {
        if elapsed_at_least(self.created_ms, now_ms, absolute) {
            Some(Expiry::Absolute)
        } else if elapsed_at_least(self.last_seen_ms, now_ms, idle) {
            Some(Expiry::Idle)
        } else {
            None
        }
    }
}

fn elapsed_at_least(since_ms: i64, now_ms: i64, limit: Duration) -> bool {
    let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(since_ms) >= limit_ms
}

/// Why a cookie could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The name is empty or not an RFC 6265 token.
    #[error("invalid cookie name")]
    InvalidName,
    /// The value holds characters outside RFC 6265 cookie-octets (`;`, `,`, quotes, spaces,
    /// control characters…), which could inject attributes.
    #[error("invalid cookie value")]
    InvalidValue,
}

/// A `Set-Cookie` header value:
/// `name=value; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=N`.
/// `Secure` is left out only when `secure` is false (the loopback development server).
pub fn cookie_header(
    name: &str,
    value: &str,
    max_age: Duration,
    secure: bool,
) -> Result<String, CookieError> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(CookieError::InvalidName);
    }
    if !value.bytes().all(is_cookie_octet) {
        return Err(CookieError::InvalidValue);
    }
    let secure = if secure { " Secure;" } else { "" };
    Ok(format!(
        "{name}={value}; HttpOnly;{secure} SameSite=Strict; Path=/; Max-Age={}",
        max_age.as_secs()
    ))
}

/// A `Set-Cookie` header value that removes the cookie (logout).
pub fn clear_cookie_header(name: &str, secure: bool) -> Result<String, CookieError> {
    cookie_header(name, "", Duration::ZERO, secure)
}

/// RFC 6265 `cookie-octet`.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn session_ids_are_prefixed_random_and_hashed() {
        let (id, hash) = new_session_id();
        assert!(id.starts_with("pcs_"), "{id}");
        assert_eq!(id.len(), SESSION_ID_LEN);
        assert_eq!(id.len(), 47);
        let expected: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        assert_eq!(hash, expected);
        assert_eq!(hash_session_id(&id), Some(hash));
        let ids: HashSet<String> = (0..1000).map(|_| new_session_id().0).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn ids_of_the_wrong_shape_have_no_hash() {
        let (id, _) = new_session_id();
        let body = &id[4..];
        let cases = [
            String::new(),
            "pcs_".to_owned(),
            body.to_owned(),
            format!("pct_{body}"),
            format!("PCS_{body}"),
            id[..id.len() - 1].to_owned(),
            format!("{id}A"),
            format!("pcs_{}", "!".repeat(43)),
            format!("pcs_{}+", &body[..42]),
            format!("pcs_{}=", &body[..42]),
            // 43 characters whose last one carries non-zero padding bits is not canonical.
            format!("pcs_{}B", &"A".repeat(42)),
        ];
        for case in cases {
            assert_eq!(hash_session_id(&case), None, "{case:?}");
        }
        assert!(hash_session_id(&format!("pcs_{}", "A".repeat(43))).is_some());
    }

    #[test]
    fn hashes_match_compares_whole_arrays() {
        let (_, a) = new_session_id();
        let (_, b) = new_session_id();
        assert!(hashes_match(&a, &a));
        assert!(!hashes_match(&a, &b));
        let mut c = a;
        c[31] ^= 1;
        assert!(!hashes_match(&a, &c));
    }

    const IDLE: Duration = Duration::from_secs(15 * 60);
    const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
    const T0: i64 = 1_700_000_000_000;

    fn check(created_ms: i64, last_seen_ms: i64, now_ms: i64, expect: Option<Expiry>) {
        let times = SessionTimes {
            created_ms,
            last_seen_ms,
        };
        assert_eq!(
            times.expired(now_ms, IDLE, ABSOLUTE),
            expect,
            "{times:?} at {now_ms}"
        );
    }

    #[test]
    fn expiry_boundaries() {
        let idle_ms = 15 * 60 * 1000;
        let absolute_ms = 12 * 3600 * 1000;
        let table = [
            (T0, T0, T0, None),
            (T0, T0, T0 + idle_ms - 1, None),
            (T0, T0, T0 + idle_ms, Some(Expiry::Idle)),
            (T0, T0 + 60_000, T0 + idle_ms, None),
            (T0, T0 + 60_000, T0 + 60_000 + idle_ms, Some(Expiry::Idle)),
            // Active all along, but past the absolute lifetime.
            (T0, T0 + absolute_ms - 1000, T0 + absolute_ms - 1, None),
            (
                T0,
                T0 + absolute_ms - 1000,
                T0 + absolute_ms,
                Some(Expiry::Absolute),
            ),
            // Both ran out: the absolute lifetime is reported.
            (T0, T0, T0 + absolute_ms + idle_ms, Some(Expiry::Absolute)),
            // A clock step backwards does not expire anything.
            (T0, T0, T0 - 5000, None),
        ];
        for (created, last_seen, now, expect) in table {
            check(created, last_seen, now, expect);
        }
        assert_eq!(DEFAULT_IDLE_TIMEOUT, IDLE);
    }

    #[test]
    fn extreme_durations_do_not_overflow() {
        let times = SessionTimes {
            created_ms: i64::MIN,
            last_seen_ms: i64::MIN,
        };
        assert_eq!(
            times.expired(i64::MAX, Duration::MAX, Duration::MAX),
            Some(Expiry::Absolute)
        );
        let fresh = SessionTimes {
            created_ms: T0,
            last_seen_ms: T0,
        };
        assert_eq!(fresh.expired(T0 + 1, Duration::MAX, Duration::MAX), None);
    }

    #[test]
    fn cookie_has_every_hardening_attribute() {
        let (id, _) = new_session_id();
        assert_eq!(
            cookie_header(SESSION_COOKIE_SECURE, &id, IDLE, true),
            Ok(format!(
                "__Host-portcullis_session={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=900"
            ))
        );
        assert_eq!(
            cookie_header(SESSION_COOKIE_INSECURE, &id, IDLE, false),
            Ok(format!(
                "portcullis_session={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=900"
            ))
        );
        assert_eq!(
            clear_cookie_header(session_cookie_name(true), true),
            Ok(
                "__Host-portcullis_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0"
                    .to_owned()
            )
        );
        assert_eq!(session_cookie_name(false), SESSION_COOKIE_INSECURE);
    }

    #[test]
    fn cookie_rejects_attribute_injection() {
        for value in [
            "a; Domain=evil.example",
            "a\r\nSet-Cookie: x=y",
            "a b",
            "\"a\"",
            "a,b",
            "a\\b",
        ] {
            assert_eq!(
                cookie_header("s", value, IDLE, true),
                Err(CookieError::InvalidValue),
                "{value:?}"
            );
        }
        for name in ["", "a b", "a=b", "a;b", "sess\u{e9}"] {
            assert_eq!(
                cookie_header(name, "v", IDLE, true),
                Err(CookieError::InvalidName),
                "{name:?}"
            );
        }
    }
}
