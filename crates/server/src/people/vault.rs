//! Vault rotation (SEC-3): every sealed value is re-sealed under a new key version in one
//! transaction, together with the new version number; the running server then swaps in the
//! new key ring without a restart. Until the swap, the old ring still opens values sealed
//! under the next version, so no request fails in between. A scheduled rotation runs every
//! `vault_key_rotation_days`.

use std::time::Duration;

use portcullis_identity::vault::{KeyRing, SealContext};
use portcullis_proto::people::VaultRotated;
use serde_json::json;
use sqlx::Row;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::clock;
use crate::error::ApiError;
use crate::store::Store;

/// The setting holding the vault's current key version.
pub(crate) const VAULT_VERSION: &str = "vault_key_version";
/// The setting holding when the vault last rotated (epoch ms).
pub(crate) const VAULT_ROTATED_AT: &str = "vault_rotated_at_ms";

/// A column of sealed values, the key column that names each row in its AAD, and the two
/// statements that read and re-seal it (fixed text: nothing here is built at run time).
#[derive(Debug, Clone, Copy)]
pub struct SealedColumn {
    pub table: &'static str,
    pub key: &'static str,
    pub column: &'static str,
    /// Selects `(key, column)` of every row with a sealed value.
    select: &'static str,
    /// Sets `column` of row `key`: binds the new value, then the key.
    update: &'static str,
}

/// Every place the server keeps a sealed secret. A new secret column is added here, so that
/// start-up checks and rotation cover it.
pub const SEALED: &[SealedColumn] = &[SealedColumn {
    table: "users",
    key: "id",
    column: "totp_sealed",
    select: "SELECT id, totp_sealed FROM users WHERE totp_sealed IS NOT NULL",
    update: "UPDATE users SET totp_sealed = ? WHERE id = ?",
}];

impl SealedColumn {
    pub fn context<'a>(&self, row: &'a str) -> SealContext<'a> {
        SealContext {
            table: self.table,
            row,
            column: self.column,
        }
    }
}

/// Opens every sealed value with `ring`, naming the first one that fails.
pub(crate) async fn check_all(store: &Store, ring: &KeyRing) -> anyhow::Result<u64> {
    let mut opened = 0;
    for place in SEALED {
        let rows = sqlx::query(place.select).fetch_all(store.reader()).await?;
        for row in rows {
            let key: String = row.try_get(0)?;
            let value: Vec<u8> = row.try_get(1)?;
            ring.open(&value, &place.context(&key)).map_err(|e| {
                anyhow::anyhow!(
                    "the vault cannot open {}.{} of row {key} ({e}); is PORTCULLIS_MASTER_KEY the key this data directory was created with?",
                    place.table,
                    place.column
                )
            })?;
            opened += 1;
        }
    }
    Ok(opened)
}

pub(crate) async fn setting_ms(store: &Store, key: &str) -> anyhow::Result<Option<i64>> {
    let value: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
        .bind(key)
        .fetch_optional(store.reader())
        .await?;
    value
        .map(|v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| anyhow::anyhow!("the stored setting {key} is corrupt"))
        })
        .transpose()
}

async fn put_setting(tx: &mut AuditTx, key: &str, value: i64) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value.to_string().into_bytes())
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// Re-seals everything under a new key version and swaps the ring in (`portcullis vault
/// rotate`, and the schedule).
pub async fn rotate(
    state: &AppState,
    ctx: &Context,
    actor: &str,
) -> Result<VaultRotated, ApiError> {
    let _one_at_a_time = state.people.rotating.lock().await;
    let next = {
        let ring = state.people.vault.read().unwrap_or_else(|e| e.into_inner());
        ring.rotated()
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("vault rotation: {e}")))?
    };
    let from = next.current_version() - 1;
    let to = next.current_version();
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let mut resealed = 0u64;
    for place in SEALED {
        // Read inside the write transaction: every value committed before it is covered.
        let rows = sqlx::query(place.select)
            .fetch_all(tx.conn().await?)
            .await?;
        for row in rows {
            let key: String = row.try_get(0)?;
            let value: Vec<u8> = row.try_get(1)?;
            let context = place.context(&key);
            let plain = next.open(&value, &context).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!(
                    "vault rotation: {}.{} of row {key} does not open: {e}",
                    place.table,
                    place.column
                ))
            })?;
            let sealed = next
                .seal(&plain, &context)
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("vault rotation: {e}")))?;
            sqlx::query(place.update)
                .bind(sealed)
                .bind(&key)
                .execute(tx.conn().await?)
                .await?;
            resealed += 1;
        }
    }
    put_setting(&mut tx, VAULT_VERSION, i64::from(to)).await?;
    put_setting(&mut tx, VAULT_ROTATED_AT, now).await?;
    let event = Event {
        actor: actor.to_owned(),
        action: Action::VaultRotated,
        target: "vault".into(),
        outcome: Outcome::Success,
        details: json!({ "from_version": from, "to_version": to, "resealed": resealed }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    *state
        .people
        .vault
        .write()
        .unwrap_or_else(|e| e.into_inner()) = next;
    tracing::info!(
        version = to,
        resealed,
        "vault rotated: every sealed value is under the new key version"
    );
    Ok(VaultRotated {
        version: to,
        resealed,
    })
}

/// How long until the next scheduled rotation is due (zero when overdue).
fn due_in(rotated_at_ms: i64, days: u64, now_ms: i64) -> Duration {
    let due = rotated_at_ms.saturating_add((days as i64).saturating_mul(86_400_000));
    Duration::from_millis(u64::try_from(due.saturating_sub(now_ms)).unwrap_or(0))
}

/// The schedule: sleeps until the next rotation is due (re-checking at least hourly, in case
/// the clock moves), rotates, repeats. Does nothing when `vault_key_rotation_days` is 0.
pub async fn run_schedule(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let days = state.config.vault_key_rotation_days;
    if days == 0 {
        return;
    }
    let ctx = Context::system("vault-schedule");
    loop {
        let rotated_at = match setting_ms(&state.store, VAULT_ROTATED_AT).await {
            Ok(at) => at.unwrap_or_else(clock::now_ms),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "vault schedule: reading the last rotation failed");
                clock::now_ms()
            }
        };
        let wait = due_in(rotated_at, days, clock::now_ms());
        if wait.is_zero() {
            if let Err(e) = rotate(&state, &ctx, "system (vault schedule)").await {
                tracing::error!(alert = true, error = %e, "ALERT: the scheduled vault rotation failed; retrying in an hour");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_falls_due_after_the_configured_days() {
        let day = 86_400_000;
        assert_eq!(due_in(0, 90, 0), Duration::from_millis(90 * day as u64));
        assert_eq!(due_in(0, 90, 89 * day), Duration::from_millis(day as u64));
        assert!(due_in(0, 90, 90 * day).is_zero());
        assert!(due_in(0, 90, 400 * day).is_zero());
    }
}
