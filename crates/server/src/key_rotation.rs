//! Signing-key rotation (IR-4): `portcullis key rotate` makes a new Ed25519 key, announces
//! it in a statement signed by the current key, records the announcement and the audit
//! event in one transaction, installs the new key file and swaps the key in the running
//! server. Agents that pin an older key accept the new one by following the chain
//! (`GET /api/v1/agent/keys`); tokens the old key signed stop being accepted one maximum
//! token lifetime later. Jobs in flight keep running: their tokens were verified at claim.

use ed25519_dalek::{SigningKey, VerifyingKey};
use portcullis_proto::token::{KeyAnnouncement, KeyId, public_key_base64};
use serde_json::json;
use sqlx::Row;

use crate::AppState;
use crate::audit::{Action, AuditTx, Checkpoint, CheckpointFile, Context, Event, Outcome};
use crate::clock;
use crate::error::ApiError;
use crate::store::Store;
use crate::to_the_end::to_the_end;

/// Rotates the signing key. Runs to its end even if the caller is dropped meanwhile: a
/// recorded announcement is always followed by its key installed and in use.
pub async fn rotate(
    state: &AppState,
    ctx: &Context,
    actor: &str,
) -> Result<KeyAnnouncement, ApiError> {
    let (state, ctx, actor) = (state.clone(), ctx.clone(), actor.to_owned());
    to_the_end(async move { rotate_in_full(&state, &ctx, &actor).await }).await
}

async fn rotate_in_full(
    state: &AppState,
    ctx: &Context,
    actor: &str,
) -> Result<KeyAnnouncement, ApiError> {
    let _one_at_a_time = state.keys.rotating.lock().await;
    let old = state.keys.current();
    let new = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let now = clock::now_ms();
    let announcement = KeyAnnouncement::sign(&old.key, &new.verifying_key(), now);
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query(
        "INSERT INTO key_rotations (prev_key_id, prev_public_key, new_key_id, new_public_key, issued_at_ms, signature) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&announcement.prev_key_id)
    .bind(public_key_base64(&old.key.verifying_key()))
    .bind(&announcement.new_key_id)
    .bind(&announcement.new_public_key)
    .bind(announcement.issued_at_ms)
    .bind(&announcement.signature)
    .execute(tx.conn().await?)
    .await?;
    let event = Event {
        actor: actor.to_owned(),
        action: Action::KeyRotated,
        target: "signing-key".into(),
        outcome: Outcome::Success,
        details: json!({
            "prev_key_id": announcement.prev_key_id,
            "new_key_id": announcement.new_key_id,
            "old_key_retired_after": clock::format_ms(now + portcullis_proto::token::MAX_TOKEN_TTL_MS),
        }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    let data_dir = state.config.data_dir.clone();
    let old_id = announcement.prev_key_id.clone();
    let installed = new.clone();
    tokio::task::spawn_blocking(move || crate::keys::install(&data_dir, &installed, &old_id))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(e.into()))?;
    state.keys.replace(new);
    // A checkpoint under the new key at once, so that the file and the key agree.
    let checkpoint = Checkpoint::sign(state.audit.head(), &state.keys.current().key);
    let file = CheckpointFile::in_dir(&state.config.data_dir);
    tokio::task::spawn_blocking(move || file.write(&checkpoint))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(e.into()))?;
    tracing::info!(new_key_id = %announcement.new_key_id, prev_key_id = %announcement.prev_key_id, "signing key rotated");
    Ok(announcement)
}

/// Every announcement, oldest first.
pub async fn chain(store: &Store) -> Result<Vec<KeyAnnouncement>, ApiError> {
    let rows = sqlx::query(
        "SELECT prev_key_id, new_key_id, new_public_key, issued_at_ms, signature FROM key_rotations ORDER BY seq",
    )
    .fetch_all(store.reader())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(KeyAnnouncement {
                prev_key_id: r.try_get(0)?,
                new_key_id: r.try_get(1)?,
                new_public_key: r.try_get(2)?,
                issued_at_ms: r.try_get(3)?,
                signature: r.try_get(4)?,
            })
        })
        .collect()
}

/// The public key with id `key_id` among every key this server has signed with (for
/// checking an audit checkpoint signed before a rotation).
pub async fn historical_key(
    pool: &sqlx::SqlitePool,
    current: VerifyingKey,
    key_id: &str,
) -> anyhow::Result<Option<VerifyingKey>> {
    if KeyId::of(&current).to_hex() == key_id {
        return Ok(Some(current));
    }
    let row: Option<String> = sqlx::query_scalar(
        "SELECT prev_public_key FROM key_rotations WHERE prev_key_id = ?
         UNION ALL SELECT new_public_key FROM key_rotations WHERE new_key_id = ? LIMIT 1",
    )
    .bind(key_id)
    .bind(key_id)
    .fetch_optional(pool)
    .await?;
    let Some(b64) = row else { return Ok(None) };
    use base64::Engine;
    let raw: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("stored key {key_id} is not 32 bytes of base64"))?;
    let key = VerifyingKey::from_bytes(&raw)?;
    anyhow::ensure!(
        KeyId::of(&key).to_hex() == key_id,
        "stored key {key_id} does not match its id"
    );
    Ok(Some(key))
}
