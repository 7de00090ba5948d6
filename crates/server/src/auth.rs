//! Principals and bearer credentials (AUTH-5, SEC-5).
//!
//! API tokens look like `pct_<id>_<secret>` and agent tokens `pca_<id>_<secret>`: the id
//! (16 hex characters) finds the row, the secret (32 random bytes, base64url) is stored only
//! as its SHA-256 and compared in constant time. A secret of 256 random bits needs no slow
//! hash: it cannot be guessed, only stolen, and the store never holds it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::{Environment, Role};
use portcullis_identity::SessionTimes;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

use crate::store::Store;

pub const API_TOKEN_PREFIX: &str = "pct";
pub const AGENT_TOKEN_PREFIX: &str = "pca";
/// Sessions (AUTH-3): the same shape, stored the same way (SEC-5).
pub const SESSION_PREFIX: &str = "pcs";
/// Invitations: the enrolment token that sets a password and enrols TOTP.
pub const ENROL_PREFIX: &str = "pce";
/// Trusted devices: stands in for the TOTP code at login (never for step-up).
pub const DEVICE_PREFIX: &str = "pcd";

/// A freshly minted credential: the secret string shown once and what to store.
pub struct Minted {
    pub id: String,
    pub secret: String,
    pub secret_hash: [u8; 32],
}

pub fn mint(prefix: &str) -> Minted {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret_bytes = rand::random::<[u8; 32]>();
    let secret = format!("{prefix}_{id}_{}", URL_SAFE_NO_PAD.encode(secret_bytes));
    Minted {
        secret_hash: hash_secret(&secret),
        id,
        secret,
    }
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits a presented bearer credential into (prefix, id) without trusting anything else.
pub fn parse_bearer(token: &str) -> Option<(&str, &str)> {
    let mut parts = token.splitn(3, '_');
    let (prefix, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let id_ok = id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let secret_ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((prefix, id))
}

/// Someone acting through an API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPrincipal {
    pub token_id: String,
    pub token_name: String,
    pub user_id: String,
    pub user_name: String,
    pub role: Role,
    pub environments: Option<Vec<Environment>>,
    /// Acting through a login session (`token_id` is the session's id) rather than an API
    /// token.
    pub session: bool,
    /// For sessions: when the session last passed a TOTP check (login or step-up). `None`
    /// after a login on a trusted device (AUTH-2).
    pub mfa_at_ms: Option<i64>,
}

impl UserPrincipal {
    /// How the principal appears in audit events and request views.
    pub fn display(&self) -> String {
        if self.session {
            format!("{} (session)", self.user_name)
        } else {
            format!("{} (token {})", self.user_name, self.token_name)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPrincipal {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(UserPrincipal),
    Agent(AgentPrincipal),
}

/// Why a credential was refused. Never shown to the caller beyond "unauthenticated".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    Mismatch,
    Expired,
    Revoked,
    Suspended,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Mismatch => "mismatch",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Suspended => "suspended",
        }
    }
}

/// A row looked up for a credential id, cached so that the hot path does not hit the store.
#[derive(Debug, Clone)]
struct Credential {
    secret_hash: [u8; 32],
    principal: Principal,
    expires_at_ms: Option<i64>,
    revoked: bool,
    /// For sessions: when it began and was last used (idle and absolute expiry, AUTH-3).
    session: Option<SessionTimes>,
}

/// Verifies bearer credentials. Revocation through this type takes effect at once: the cache
/// entry is dropped in the same call that writes the revocation, and a lookup that raced with
/// a revocation (read the row before it, finished after) is not cached: every `forget` moves
/// an epoch, and a lookup only caches what it read within one epoch (AUTH-7).
#[derive(Debug)]
pub struct Authenticator {
    cache: Mutex<HashMap<String, Credential>>,
    epoch: AtomicU64,
    last_used: Mutex<HashMap<String, (i64, String)>>,
    last_seen: Mutex<HashMap<String, i64>>,
    idle: Duration,
    absolute: Duration,
}

impl Default for Authenticator {
    fn default() -> Self {
        let s = crate::config::SessionSettings::default();
        Authenticator::new(
            Duration::from_secs(s.idle_timeout_secs),
            Duration::from_secs(s.absolute_lifetime_secs),
        )
    }
}

impl Authenticator {
    pub fn new(idle: Duration, absolute: Duration) -> Authenticator {
        Authenticator {
            cache: Mutex::default(),
            epoch: AtomicU64::new(0),
            last_used: Mutex::default(),
            last_seen: Mutex::default(),
            idle,
            absolute,
        }
    }

    pub async fn authenticate(
        &self,
        store: &Store,
        bearer: &str,
        now_ms: i64,
        addr: &str,
    ) -> Result<Principal, AuthFailure> {
        self.check(store, bearer, now_ms, addr, true).await
    }

    /// Whether a credential already in use is still valid, without counting as a use: a
    /// session's idle clock and a token's last-used time stay as they were (AUTH-3). The
    /// live-events socket re-checks with this, so an open tab never keeps a session alive.
    pub async fn recheck(
        &self,
        store: &Store,
        bearer: &str,
        now_ms: i64,
    ) -> Result<Principal, AuthFailure> {
        self.check(store, bearer, now_ms, "-", false).await
    }

    async fn check(
        &self,
        store: &Store,
        bearer: &str,
        now_ms: i64,
        addr: &str,
        touch: bool,
    ) -> Result<Principal, AuthFailure> {
        let (prefix, id) = parse_bearer(bearer).ok_or(AuthFailure::Malformed)?;
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let credential = match cached {
            Some(c) => c,
            None => {
                let epoch = self.epoch.load(Ordering::SeqCst);
                let c = match prefix {
                    API_TOKEN_PREFIX => load_api_token(store, id).await,
                    AGENT_TOKEN_PREFIX => load_agent(store, id).await,
                    SESSION_PREFIX => load_session(store, id).await,
                    _ => return Err(AuthFailure::Malformed),
                }
                .map_err(|e| {
                    tracing::error!(error = %e, "credential lookup failed");
                    AuthFailure::Unknown
                })?
                .ok_or(AuthFailure::Unknown)?;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if self.epoch.load(Ordering::SeqCst) == epoch {
                    cache.insert(id.to_owned(), c.clone());
                }
                c
            }
        };
        let kind_matches = matches!(
            (&credential.principal, prefix),
            (Principal::User(u), API_TOKEN_PREFIX) if !u.session
        ) || matches!(
            (&credential.principal, prefix),
            (Principal::User(u), SESSION_PREFIX) if u.session
        ) || matches!(
            (&credential.principal, prefix),
            (Principal::Agent(_), AGENT_TOKEN_PREFIX)
        );
        let presented = hash_secret(bearer);
        if !kind_matches || !bool::from(presented.ct_eq(&credential.secret_hash)) {
            return Err(AuthFailure::Mismatch);
        }
        if credential.revoked {
            return Err(AuthFailure::Revoked);
        }
        if credential.expires_at_ms.is_some_and(|exp| now_ms >= exp) {
            return Err(AuthFailure::Expired);
        }
        if let Some(times) = credential.session {
            if times.expired(now_ms, self.idle, self.absolute).is_some() {
                self.forget(id);
                return Err(AuthFailure::Expired);
            }
            if !touch {
                return Ok(credential.principal);
            }
            if let Some(c) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(id)
                .and_then(|c| c.session.as_mut())
            {
                c.last_seen_ms = c.last_seen_ms.max(now_ms);
            }
            self.last_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_owned(), now_ms);
            return Ok(credential.principal);
        }
        if touch && matches!(credential.principal, Principal::User(_)) {
            self.last_used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_owned(), (now_ms, addr.to_owned()));
        }
        Ok(credential.principal)
    }

    /// Drops a cached credential; call after revoking it in the store.
    pub fn forget(&self, id: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        cache.remove(id);
    }

    /// Drops every cached session and token of a user but `except` (the caller's own
    /// session); call after suspending the user or revoking their credentials in the store.
    pub fn forget_user(&self, user_id: &str, except: Option<&str>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        cache.retain(|id, c| {
            !matches!(&c.principal, Principal::User(u) if u.user_id == user_id)
                || except == Some(id.as_str())
        });
    }

    pub fn forget_all(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        cache.clear();
    }

    /// Writes the batched last-used times and addresses of API tokens, and the last-seen
    /// times of sessions.
    pub async fn flush_last_used(&self, store: &Store) -> sqlx::Result<()> {
        let pending: Vec<(String, (i64, String))> = self
            .last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let seen: Vec<(String, i64)> = self
            .last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        if pending.is_empty() && seen.is_empty() {
            return Ok(());
        }
        let mut tx = store.begin().await?;
        for (id, at) in seen {
            sqlx::query(
                "UPDATE sessions SET last_seen_at_ms = MAX(last_seen_at_ms, ?) WHERE id = ?",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        for (id, (at, addr)) in pending {
            sqlx::query(
                "UPDATE api_tokens SET last_used_at_ms = ?, last_used_addr = ? WHERE id = ?",
            )
            .bind(at)
            .bind(addr)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}

async fn load_api_token(store: &Store, id: &str) -> anyhow::Result<Option<Credential>> {
    let row = sqlx::query(
        "SELECT t.secret_hash, t.name, t.role, t.environments, t.expires_at_ms, t.revoked_at_ms, u.id, u.name, u.suspended_at_ms
         FROM api_tokens t JOIN users u ON u.id = t.owner_id WHERE t.id = ?",
    )
    .bind(id)
    .fetch_optional(store.reader())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let environments: Option<String> = row.try_get(3)?;
    let environments = environments
        .map(|e| serde_json::from_str::<Vec<Environment>>(&e))
        .transpose()?;
    let revoked =
        row.try_get::<Option<i64>, _>(5)?.is_some() || row.try_get::<Option<i64>, _>(8)?.is_some();
    Ok(Some(Credential {
        secret_hash: to_hash(row.try_get(0)?),
        principal: Principal::User(UserPrincipal {
            token_id: id.to_owned(),
            token_name: row.try_get(1)?,
            role: row.try_get::<String, _>(2)?.parse()?,
            environments,
            user_id: row.try_get(6)?,
            user_name: row.try_get(7)?,
            session: false,
            mfa_at_ms: None,
        }),
        expires_at_ms: Some(row.try_get(4)?),
        revoked,
        session: None,
    }))
}

async fn load_session(store: &Store, id: &str) -> anyhow::Result<Option<Credential>> {
    let row = sqlx::query(
        "SELECT s.secret_hash, s.created_at_ms, s.last_seen_at_ms, s.revoked_at_ms, u.id, u.name, u.role, u.suspended_at_ms, s.mfa_at_ms
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?",
    )
    .bind(id)
    .fetch_optional(store.reader())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let revoked =
        row.try_get::<Option<i64>, _>(3)?.is_some() || row.try_get::<Option<i64>, _>(7)?.is_some();
    Ok(Some(Credential {
        secret_hash: to_hash(row.try_get(0)?),
        principal: Principal::User(UserPrincipal {
            token_id: id.to_owned(),
            token_name: "session".into(),
            user_id: row.try_get(4)?,
            user_name: row.try_get(5)?,
            role: row.try_get::<String, _>(6)?.parse()?,
            environments: None,
            session: true,
            mfa_at_ms: row.try_get(8)?,
        }),
        expires_at_ms: None,
        revoked,
        session: Some(SessionTimes {
            created_ms: row.try_get(1)?,
            last_seen_ms: row.try_get(2)?,
        }),
    }))
}

async fn load_agent(store: &Store, id: &str) -> anyhow::Result<Option<Credential>> {
    let row = sqlx::query("SELECT secret_hash, name, revoked_at_ms FROM agents WHERE id = ?")
        .bind(id)
        .fetch_optional(store.reader())
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Credential {
        secret_hash: to_hash(row.try_get(0)?),
        principal: Principal::Agent(AgentPrincipal {
            id: id.to_owned(),
            name: row.try_get(1)?,
        }),
        expires_at_ms: None,
        revoked: row.try_get::<Option<i64>, _>(2)?.is_some(),
        session: None,
    }))
}

fn to_hash(v: Vec<u8>) -> [u8; 32] {
    // A malformed stored hash matches nothing: all-zero is not the SHA-256 of any token.
    <[u8; 32]>::try_from(v.as_slice()).unwrap_or([0; 32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_carry_256_bits() {
        let m = mint(API_TOKEN_PREFIX);
        assert_eq!(
            parse_bearer(&m.secret),
            Some((API_TOKEN_PREFIX, m.id.as_str()))
        );
        // The secret may itself contain '_': split like the parser does.
        let secret = m.secret.splitn(3, '_').nth(2).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(secret).unwrap().len(), 32);
        assert_ne!(mint(API_TOKEN_PREFIX).secret, m.secret);
    }

    #[test]
    fn malformed_bearers_are_refused_before_any_lookup() {
        for bad in [
            "",
            "pct",
            "pct_abc_def",
            "pct_0123456789abcdef_short",
            "pct_0123456789ABCDEF_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(parse_bearer(bad), None, "{bad}");
        }
    }
}
