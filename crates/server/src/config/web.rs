//! The web surface's settings: security headers, CORS, body and connection limits (WEB-1,
//! WEB-2, WEB-3, and the listener's limits of `crate::listener`).

use serde::{Deserialize, Serialize};

/// Security headers (WEB-1). Each one can be replaced; an empty string removes it. The CSP
/// must contain `{nonce}` where the per-response nonce goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderSettings {
    pub content_security_policy: String,
    /// Sent only on responses served over TLS (natively or behind a TLS proxy).
    pub strict_transport_security: String,
    pub x_content_type_options: String,
    pub x_frame_options: String,
    pub referrer_policy: String,
    pub permissions_policy: String,
    pub cross_origin_opener_policy: String,
    /// On API responses (everything but static assets).
    pub cache_control: String,
}

impl Default for HeaderSettings {
    fn default() -> Self {
        HeaderSettings {
            content_security_policy: "default-src 'self'; script-src 'nonce-{nonce}' 'strict-dynamic'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'".into(),
            strict_transport_security: "max-age=63072000; includeSubDomains".into(),
            x_content_type_options: "nosniff".into(),
            x_frame_options: "DENY".into(),
            referrer_policy: "strict-origin-when-cross-origin".into(),
            permissions_policy: "camera=(), microphone=(), geolocation=(), payment=(), usb=(), accelerometer=(), gyroscope=(), magnetometer=()".into(),
            cross_origin_opener_policy: "same-origin".into(),
            cache_control: "no-store".into(),
        }
    }
}

/// The web surface: headers, CORS, body and connection limits (WEB-1, WEB-2, WEB-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    pub headers: HeaderSettings,
    /// Origins (`https://host[:port]`) allowed to call the API from a browser; none by
    /// default. `*` is refused: credentials are never shared with every origin.
    pub cors_origins: Vec<String>,
    /// The largest request body, in bytes (agent result uploads stream under their own).
    pub body_limit_bytes: usize,
    /// A connection that has not sent a whole request head this long after it opened, or
    /// after its previous response, is closed: a slow or silent client (a TLS handshake has
    /// 10 s) cannot hold it. The same holds for HTTP/2: a connection with no request open
    /// this long (at most twice this long) is closed, whatever frames it sends. Requests in flight, long polls,
    /// streamed results and event sockets are not cut.
    pub header_read_timeout_secs: u64,
    /// A request body (other than an agent's report or result) that has not arrived whole
    /// this long after its head is refused with 408 and its connection closed.
    pub body_read_timeout_secs: u64,
    /// A connection whose client has taken none of what the server is sending for this long
    /// (a client that stopped reading, or is gone without a word) is closed, and what it was
    /// being sent is abandoned: a streamed result then ends `result_not_delivered`. The same
    /// holds for a response: one whose client has not taken its head, or the last piece of
    /// its body handed on (at most 16 KiB), for this long closes its connection (an HTTP/2
    /// client that never opens its stream's flow-control window included), so a client must
    /// take at least 16 KiB per this timeout of a large response.
    pub send_timeout_secs: u64,
    /// Open connections at most, all clients together; one more is closed as it arrives.
    /// Keep it under the process's open-files limit (`ulimit -n`).
    pub max_connections: usize,
    /// Open connections at most from one client address; addresses in `trusted_proxies`
    /// count only towards `max_connections`.
    pub max_connections_per_address: usize,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            headers: HeaderSettings::default(),
            cors_origins: Vec::new(),
            body_limit_bytes: 1024 * 1024,
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 30,
            send_timeout_secs: 60,
            max_connections: 8192,
            max_connections_per_address: 1024,
        }
    }
}

impl WebSettings {
    /// The listener's limits are within reason: timeouts of 1 s to 1 h, at least one
    /// connection, and no more from one address than from all of them.
    pub(super) fn check_connection_limits(&self) -> Result<(), super::ConfigError> {
        let invalid = |m: String| Err(super::ConfigError::Invalid(m));
        for (key, secs) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("send_timeout_secs", self.send_timeout_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                return invalid(format!("web.{key} must be between 1 and 3600, got {secs}"));
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return invalid(format!(
                "web.max_connections must be between 1 and 1000000, got {}",
                self.max_connections
            ));
        }
        if self.max_connections_per_address == 0
            || self.max_connections_per_address > self.max_connections
        {
            return invalid(format!(
                "web.max_connections_per_address must be between 1 and web.max_connections ({}), got {}",
                self.max_connections, self.max_connections_per_address
            ));
        }
        Ok(())
    }
}

/// Why `origin` cannot be a CORS allowlist entry (WEB-2), or `None` when it can: exactly
/// `http(s)://host[:port]` as a browser sends it in `Origin` (lowercase, no path, no trailing
/// slash), never `*` or `null`.
pub fn cors_origin_problem(origin: &str) -> Option<&'static str> {
    if origin.contains('*') {
        return Some("wildcards are refused: credentials are never shared with every origin");
    }
    let Some(authority) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return Some("an origin is http:// or https:// followed by a host, as browsers send it");
    };
    let (host_ok, rest) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) => (
                ip.parse::<std::net::Ipv6Addr>().is_ok() && ip == ip.to_ascii_lowercase(),
                after,
            ),
            None => (false, ""),
        },
        None => {
            let end = authority.find(':').unwrap_or(authority.len());
            let host = &authority[..end];
            let label = |l: &str| {
                (1..=63).contains(&l.len())
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            (host.split('.').all(label), &authority[end..])
        }
    };
    if !host_ok {
        return Some(
            "the host must be a lowercase DNS name or an IP address, with no user, path, query or trailing slash",
        );
    }
    let port_ok = rest.is_empty()
        || rest.strip_prefix(':').is_some_and(|p| {
            (1..=5).contains(&p.len())
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n > 0)
        });
    if !port_ok {
        return Some("after the host comes at most :PORT, with no path, query or trailing slash");
    }
    None
}
