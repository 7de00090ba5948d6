//! People: the master key and the vault (SEC-1, SEC-3), first-start bootstrap (SEC-2),
//! password and TOTP logins (AUTH-1, AUTH-2) and sessions (AUTH-3). The primitives live in
//! `portcullis-identity`; this module stores and audits.

pub mod bootstrap;
pub mod login;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::RwLock;

use portcullis_identity::password::{Hasher, WorkLimiter};
use portcullis_identity::vault::{KeyRing, SealContext};
use portcullis_identity::{Lockout, MasterKey};
use sqlx::Row;
use zeroize::Zeroizing;

use crate::auth::hash_secret;
use crate::config::ServerConfig;
use crate::store::Store;

/// The setting holding the vault's current key version.
const VAULT_VERSION: &str = "vault_key_version";
/// The setting holding the SHA-256 of the one-time setup token.
pub(crate) const SETUP_TOKEN_HASH: &str = "setup_token_sha256";
/// The prefix of the one-time setup token.
pub const SETUP_TOKEN_PREFIX: &str = "pcsetup";

/// Secrets the server needs before it can start (SEC-1).
pub struct ServerSecrets {
    pub master_key: MasterKey,
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecrets(<redacted>)")
    }
}

/// Everything about people the request handlers share.
pub struct People {
    pub vault: RwLock<KeyRing>,
    pub hasher: Hasher,
    pub lockout: Lockout,
}

impl std::fmt::Debug for People {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("People").finish_non_exhaustive()
    }
}

impl People {
    /// Derives the key ring at the stored version and opens every sealed value, so that a
    /// wrong master key stops the start instead of failing logins later (SEC-3).
    pub async fn open(
        store: &Store,
        config: &ServerConfig,
        secrets: &ServerSecrets,
    ) -> anyhow::Result<People> {
        let version: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                .bind(VAULT_VERSION)
                .fetch_optional(store.reader())
                .await?;
        let version = match version {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| anyhow::anyhow!("the stored vault key version is corrupt"))?,
            None => {
                let mut conn = store.begin().await?;
                sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?)")
                    .bind(VAULT_VERSION)
                    .bind(b"1".as_slice())
                    .execute(&mut *conn)
                    .await?;
                conn.commit().await?;
                1
            }
        };
        let ring = KeyRing::new(&secrets.master_key, version)?;
        let sealed =
            sqlx::query("SELECT id, name, totp_sealed FROM users WHERE totp_sealed IS NOT NULL")
                .fetch_all(store.reader())
                .await?;
        for row in sealed {
            let id: String = row.try_get(0)?;
            let name: String = row.try_get(1)?;
            let value: Vec<u8> = row.try_get(2)?;
            ring.open(&value, &totp_context(&id)).map_err(|e| {
                anyhow::anyhow!(
                    "the vault cannot open the TOTP secret of user {name} ({e}); is PORTCULLIS_MASTER_KEY the key this data directory was created with?"
                )
            })?;
        }
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let limit = match config.login.max_concurrent_hashes {
            0 => cores,
            n => n,
        };
        Ok(People {
            vault: RwLock::new(ring),
            hasher: Hasher::new(limit)?,
            lockout: Lockout {
                threshold: config.login.lockout_threshold,
                base: std::time::Duration::from_secs(config.login.lockout_base_secs),
                max: std::time::Duration::from_secs(config.login.lockout_max_secs),
            },
        })
    }

    pub fn permits(&self) -> &WorkLimiter {
        self.hasher.permits()
    }

    pub fn seal_totp(&self, user_id: &str, secret: &[u8]) -> anyhow::Result<Vec<u8>> {
        let ring = self.vault.read().unwrap_or_else(|e| e.into_inner());
        Ok(ring.seal(secret, &totp_context(user_id))?)
    }

    pub fn open_totp(&self, user_id: &str, sealed: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let ring = self.vault.read().unwrap_or_else(|e| e.into_inner());
        Ok(ring.open(sealed, &totp_context(user_id))?)
    }
}

/// Where a user's TOTP seed is sealed: the AAD binds it to this row and column.
fn totp_context(user_id: &str) -> SealContext<'_> {
    SealContext {
        table: "users",
        row: user_id,
        column: "totp_sealed",
    }
}

/// First start without users (SEC-2): writes a fresh one-time setup token to `file` (0600)
/// and stores only its hash. Returns `true` when it did.
pub async fn provision_setup_token(store: &Store, file: &Path) -> anyhow::Result<bool> {
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(store.reader())
        .await?;
    if users > 0 {
        if file.exists() {
            let _ = std::fs::remove_file(file);
        }
        return Ok(false);
    }
    let token = crate::auth::mint(SETUP_TOKEN_PREFIX).secret;
    let mut tx = store.begin().await?;
    sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(SETUP_TOKEN_HASH)
        .bind(hash_secret(&token).to_vec())
        .execute(&mut *tx)
        .await?;
    let _ = std::fs::remove_file(file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| anyhow::anyhow!("cannot write the setup token to {}: {e}", file.display()))?;
    out.write_all(format!("{token}\n").as_bytes())?;
    out.sync_all()?;
    tx.commit().await?;
    Ok(true)
}
