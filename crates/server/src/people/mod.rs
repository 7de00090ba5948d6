//! People: the master key and the vault (SEC-1, SEC-3), first-start bootstrap (SEC-2),
//! password and TOTP logins (AUTH-1, AUTH-2) and sessions (AUTH-3). The primitives live in
//! `portcullis-identity`; this module stores and audits.

pub mod account;
pub mod bootstrap;
pub mod lockdown;
pub mod login;
pub mod users;
pub mod vault;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::RwLock;

use portcullis_identity::password::{Hasher, WorkLimiter};
use portcullis_identity::vault::{KeyRing, SealContext};
use portcullis_identity::{Lockout, MasterKey};
use zeroize::Zeroizing;

use crate::auth::hash_secret;
use crate::config::ServerConfig;
use crate::store::Store;

use vault::{VAULT_ROTATED_AT, VAULT_VERSION};
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
    /// One rotation at a time.
    pub(crate) rotating: tokio::sync::Mutex<()>,
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
        let version = vault::setting_ms(store, VAULT_VERSION).await?;
        let version = match version {
            Some(v) => u32::try_from(v)
                .map_err(|_| anyhow::anyhow!("the stored vault key version is corrupt"))?,
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
        if vault::setting_ms(store, VAULT_ROTATED_AT).await?.is_none() {
            let mut conn = store.begin().await?;
            sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?)")
                .bind(VAULT_ROTATED_AT)
                .bind(crate::clock::now_ms().to_string().into_bytes())
                .execute(&mut *conn)
                .await?;
            conn.commit().await?;
        }
        let ring = KeyRing::new(&secrets.master_key, version)?;
        vault::check_all(store, &ring).await?;
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
            rotating: tokio::sync::Mutex::new(()),
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
    vault::SEALED[0].context(user_id)
}

/// First start without anyone who can sign in (SEC-2): writes a fresh one-time setup token
/// to `file` (0600) and stores only its hash. Users declared in `[[users]]` do not count:
/// they have no password until invited, and inviting needs an admin. Returns `true` when it
/// wrote the token.
pub async fn provision_setup_token(store: &Store, file: &Path) -> anyhow::Result<bool> {
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE source <> 'config'")
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
