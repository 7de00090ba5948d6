//! Data-store connection URLs (SEC-4). A [`ConnectionUrl`] is built only by
//! [`ConnectionUrl::parse`]; its password is kept in zeroized memory, `Debug` and `Display`
//! show `user:***`, and [`ConnectionUrl::redact`] scrubs the password and any `user:pass@`
//! userinfo out of text that came back from a driver, which may echo the URL it was given.

use std::fmt;

use portcullis_core::ConnectionKind;
use reqwest::Url;
use zeroize::Zeroizing;

/// What replaces a password wherever one could be shown.
pub const MASK: &str = "***";

/// Why a connection URL was refused. Never carries the URL itself: it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the connection URL is not a valid URL ({0})")]
    Malformed(String),
    #[error("a {kind} connection URL must start with {expected}, not {scheme}://")]
    Scheme {
        kind: ConnectionKind,
        scheme: String,
        expected: &'static str,
    },
    #[error("{0} connections are not configured with a URL")]
    UnsupportedKind(ConnectionKind),
}

/// A parsed data-store URL whose password never leaves through `Debug`, `Display` or errors.
pub struct ConnectionUrl {
    kind: ConnectionKind,
    /// The URL as the driver needs it, password included.
    full: Zeroizing<String>,
    /// The same URL with the password replaced by [`MASK`].
    redacted: String,
    /// The password as written (percent-encoded) and decoded, for scrubbing driver messages.
    secrets: Vec<Zeroizing<String>>,
}

impl ConnectionUrl {
    /// Parses `text` as a URL for a `kind` store; the scheme must match the kind
    /// (`postgres`/`postgresql`, `mysql`/`mariadb`, `redis`/`rediss`).
    pub fn parse(kind: ConnectionKind, text: &str) -> Result<ConnectionUrl, UrlError> {
        let expected = match kind {
            ConnectionKind::Postgres => "postgres:// or postgresql://",
            ConnectionKind::Mysql => "mysql:// or mariadb://",
            ConnectionKind::Redis => "redis:// or rediss://",
            other => return Err(UrlError::UnsupportedKind(other)),
        };
        let mut url = Url::parse(text.trim()).map_err(|e| UrlError::Malformed(e.to_string()))?;
        let scheme = url.scheme().to_owned();
        let scheme_ok = match kind {
            ConnectionKind::Postgres => matches!(scheme.as_str(), "postgres" | "postgresql"),
            ConnectionKind::Mysql => matches!(scheme.as_str(), "mysql" | "mariadb"),
            _ => matches!(scheme.as_str(), "redis" | "rediss"),
        };
        if !scheme_ok {
            return Err(UrlError::Scheme {
                kind,
                scheme: scheme.chars().take(32).collect(),
                expected,
            });
        }
        if scheme == "mariadb" {
            // The driver speaks one protocol for both and knows only the `mysql` scheme.
            url.set_scheme("mysql")
                .map_err(|()| UrlError::Malformed("cannot normalise the scheme".into()))?;
        }
        let mut secrets = Vec::new();
        if let Some(encoded) = url.password().filter(|p| !p.is_empty()) {
            let decoded = percent_decode(encoded);
            secrets.push(Zeroizing::new(encoded.to_owned()));
            if decoded != encoded {
                secrets.push(Zeroizing::new(decoded));
            }
        }
        let full = Zeroizing::new(url.as_str().to_owned());
        let redacted = if secrets.is_empty() {
            url.as_str().to_owned()
        } else {
            let mut shown = url.clone();
            shown
                .set_password(Some(MASK))
                .map_err(|()| UrlError::Malformed("cannot mask the password".into()))?;
            // `set_password` percent-encodes the mask; show it as written.
            shown.as_str().replace("%2A%2A%2A", MASK)
        };
        Ok(ConnectionUrl {
            kind,
            full,
            redacted,
            secrets,
        })
    }

    pub fn kind(&self) -> ConnectionKind {
        self.kind
    }

    /// The whole URL, password included. Only for handing to a driver; never log it.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// `text` with this URL's password and every `user:pass@` userinfo masked. Every message
    /// that comes out of a driver passes through here before it leaves the executor.
    pub fn redact(&self, text: &str) -> String {
        let mut out = redact_userinfo(text);
        for secret in &self.secrets {
            if !secret.is_empty() {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionUrl({})", self.redacted)
    }
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Masks the password of every `scheme://user:pass@host` in `text`, whatever the URL.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`') || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// Decodes `%XX` escapes; anything malformed is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_parse(kind: ConnectionKind, input: &str, expect: Result<&str, &str>) {
        let got = ConnectionUrl::parse(kind, input)
            .map(|u| u.to_string())
            .map_err(|e| e.to_string());
        match (&got, expect) {
            (Ok(shown), Ok(want)) => assert_eq!(shown, want, "{input}"),
            (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{input}: {e}"),
            _ => panic!("{input}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn urls_parse_by_kind_and_display_without_the_password() {
        use ConnectionKind::{Mysql, Postgres, Redis, Sqlite};
        for (kind, input, expect) in [
            (
                Postgres,
                "postgres://app:s3cret@db:5432/prod?sslmode=verify-full",
                Ok("postgres://app:***@db:5432/prod?sslmode=verify-full"),
            ),
            (
                Postgres,
                "postgresql://app@db/prod",
                Ok("postgresql://app@db/prod"),
            ),
            (
                Mysql,
                "mariadb://root:p%40ss@127.0.0.1:3306/test",
                Ok("mysql://root:***@127.0.0.1:3306/test"),
            ),
            (
                Redis,
                "rediss://:tok@cache:6380/0",
                Ok("rediss://:***@cache:6380/0"),
            ),
            (
                Postgres,
                "mysql://a:b@h/db",
                Err("must start with postgres://"),
            ),
            (Redis, "http://h", Err("must start with redis://")),
            (Mysql, "not a url", Err("not a valid URL")),
            (Sqlite, "sqlite://x", Err("not configured with a URL")),
        ] {
            check_parse(kind, input, expect);
        }
    }

    #[test]
    fn errors_about_a_url_never_echo_it() {
        let err = ConnectionUrl::parse(ConnectionKind::Postgres, "mysql://u:hunter2@h/db")
            .expect_err("wrong scheme");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn redaction_removes_the_password_in_every_spelling_and_any_userinfo() {
        let url = ConnectionUrl::parse(
            ConnectionKind::Postgres,
            "postgres://app:p%40ss%2Fw0rd@db/prod",
        )
        .expect("url");
        assert!(!format!("{url:?}").contains("w0rd"));
        for (input, expect) in [
            ("auth failed for p@ss/w0rd", "auth failed for ***"),
            ("auth failed for p%40ss%2Fw0rd", "auth failed for ***"),
            (
                "cannot reach mysql://other:topsecret@10.0.0.1:3306/x now",
                "cannot reach mysql://other:***@10.0.0.1:3306/x now",
            ),
            ("redis://:tok@h", "redis://:***@h"),
            ("redis://user@h/0", "redis://user@h/0"),
            ("no url here", "no url here"),
        ] {
            assert_eq!(url.redact(input), expect, "{input}");
        }
    }
}
