//! Signing-key rotation (IR-4). The server announces each new key in a statement signed by
//! the key it replaces; an agent accepts the new key only when the announcement verifies
//! under a key it already trusts (pinned in its configuration, or accepted earlier the same
//! way). The chain of announcements is the audit trail an operator can check. The replaced
//! key is retired [`MAX_TOKEN_TTL_MS`] after the announcement: no token it signed can still
//! be valid then, so none is accepted. A key announces one successor only.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{KeyId, MAX_TOKEN_TTL_MS, TokenError, TrustedKeys};

const ROTATION_DOMAIN: &[u8] = b"portcullis/key-rotation/v1\0";

/// "`new_public_key` succeeds `prev_key_id` from `issued_at_ms`", signed by the previous key.
/// Travels as JSON with hex ids and base64 keys and signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyAnnouncement {
    pub prev_key_id: String,
    pub new_key_id: String,
    /// Standard base64 of the 32 raw public-key bytes.
    pub new_public_key: String,
    pub issued_at_ms: i64,
    /// Standard base64 of the Ed25519 signature by the previous key.
    pub signature: String,
}

fn message(prev: &KeyId, new: &VerifyingKey, issued_at_ms: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(ROTATION_DOMAIN.len() + 8 + 32 + 8);
    m.extend_from_slice(ROTATION_DOMAIN);
    m.extend_from_slice(&prev.0);
    m.extend_from_slice(new.as_bytes());
    m.extend_from_slice(&issued_at_ms.to_be_bytes());
    m
}

impl KeyAnnouncement {
    /// Announces `new` as the successor of `prev`, signed by `prev`.
    pub fn sign(prev: &SigningKey, new: &VerifyingKey, issued_at_ms: i64) -> KeyAnnouncement {
        let prev_id = KeyId::of(&prev.verifying_key());
        let signature = prev.sign(&message(&prev_id, new, issued_at_ms));
        KeyAnnouncement {
            prev_key_id: prev_id.to_hex(),
            new_key_id: KeyId::of(new).to_hex(),
            new_public_key: STANDARD.encode(new.as_bytes()),
            issued_at_ms,
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }

    fn parts(&self) -> Result<(KeyId, VerifyingKey, Signature), TokenError> {
        let prev = KeyId::from_hex(&self.prev_key_id)?;
        let raw: [u8; 32] = STANDARD
            .decode(&self.new_public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(TokenError::Malformed(
                "announced key is not 32 bytes of base64",
            ))?;
        let new = VerifyingKey::from_bytes(&raw)
            .map_err(|_| TokenError::Malformed("announced key is not an Ed25519 point"))?;
        if KeyId::of(&new).to_hex() != self.new_key_id {
            return Err(TokenError::KeyIdMismatch);
        }
        let sig: [u8; 64] = STANDARD
            .decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(TokenError::Malformed(
                "announcement signature is not 64 bytes of base64",
            ))?;
        Ok((prev, new, Signature::from_bytes(&sig)))
    }
}

impl TrustedKeys {
    /// Accepts the key `announcement` introduces when a key trusted here signed it, and
    /// retires that key [`MAX_TOKEN_TTL_MS`] after the announcement. Returns the new key's
    /// id. Anything else — an unknown or already retired signer, a bad signature, a weak key
    /// — is refused and changes nothing.
    pub fn accept_rotation(&mut self, announcement: &KeyAnnouncement) -> Result<KeyId, TokenError> {
        let (prev, new, signature) = announcement.parts()?;
        let signer = *self.keys.get(&prev).ok_or(TokenError::UnknownKey(prev))?;
        // A key names one successor, once: whoever holds a replaced key cannot announce a
        // key of their own afterwards, backdated or not.
        if self.retire_after.contains_key(&prev) {
            let id = KeyId::of(&new);
            return match self.keys.get(&id) {
                Some(known) if *known == new => Ok(id),
                _ => Err(TokenError::KeyRetired(prev)),
            };
        }
        signer
            .verify_strict(&message(&prev, &new, announcement.issued_at_ms), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let id = KeyId::of(&new);
        self.pin(id, new)?;
        let retire = announcement.issued_at_ms.saturating_add(MAX_TOKEN_TTL_MS);
        let at = self.retire_after.entry(prev).or_insert(retire);
        *at = (*at).min(retire);
        Ok(id)
    }

    /// Accepts every link of `chain` it can, in order (a chain starts at a key this agent
    /// pins); returns the ids accepted. Links that do not verify are skipped.
    pub fn accept_chain(&mut self, chain: &[KeyAnnouncement]) -> Vec<KeyId> {
        chain
            .iter()
            .filter_map(|a| self.accept_rotation(a).ok())
            .collect()
    }

    /// When `key_id` stops being accepted, if it was rotated out.
    pub fn retired_after(&self, key_id: &KeyId) -> Option<i64> {
        self.retire_after.get(key_id).copied()
    }
}
