//! Execution tokens (control EX-1): the server's signed permission for one job, checked by the
//! agent before it touches a target.
//!
//! A token binds one job to one agent, connection, environment, operation class and the SHA-256
//! of the exact statement text, for at most [`MAX_TOKEN_TTL_MS`]. The claims travel in a
//! versioned tag-length-value encoding with a fixed field order, so every token has exactly one
//! byte representation and no field can bleed into its neighbour the way delimiter-joined text
//! can. The Ed25519 signature covers a domain-separation prefix, the version and the claims, so
//! a signature made by the same key for any other purpose never verifies as a token.
//!
//! The agent trusts only keys pinned in its own configuration ([`TrustedKeys`]); nothing the
//! server sends can add one. [`verify`] is the only function that mints a [`VerifiedToken`],
//! and it records the nonce in the [`ReplayCache`] only after every other check has passed, so
//! a rejected token cannot burn a nonce. The agent still enforces its own capability list on a
//! verified token (control AZ-5); a valid signature is necessary, not sufficient.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use portcullis_core::{ConnectionName, Environment, OperationClass};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

mod codec;
mod rotation;

pub use rotation::KeyAnnouncement;

use codec::{assemble, decode, encode_claims, signed_message, token_len};

/// The only token layout this build signs and accepts.
pub const TOKEN_VERSION: u8 = 1;
/// Hard ceiling on `expires_at_ms - issued_at_ms`, enforced both when signing and verifying.
pub const MAX_TOKEN_TTL_MS: i64 = 300_000;
/// How far in the future `issued_at_ms` may lie before the agent calls the token not yet valid;
/// tolerates clock drift between server and agent without accepting post-dated tokens.
pub const MAX_CLOCK_SKEW_MS: i64 = 30_000;
/// Largest token accepted, both as raw bytes and as its base64url text.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Largest agent name (the token's audience), in UTF-8 bytes.
pub const MAX_AGENT_NAME_BYTES: usize = 128;

/// Why a token was refused or could not be produced. Variants carry no secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The bytes are not a well-formed token (framing, tags, lengths, text, size).
    #[error("malformed execution token: {0}")]
    Malformed(&'static str),
    /// The token uses a layout version this build does not know.
    #[error("unsupported execution token version {0}")]
    UnsupportedVersion(u8),
    /// The token names a key that is not pinned in the agent's configuration.
    #[error("execution token signed by unknown key {0}")]
    UnknownKey(KeyId),
    /// The signature does not verify under the pinned key named by the token.
    #[error("execution token signature is invalid")]
    BadSignature,
    /// The token was issued to a different agent.
    #[error("execution token was issued to a different agent")]
    WrongAudience,
    /// The token is for a different job than the one being executed.
    #[error("execution token is for a different job")]
    WrongJob,
    /// The token's expiry has passed.
    #[error("execution token has expired")]
    Expired,
    /// The token's issue time lies further in the future than the allowed clock skew.
    #[error("execution token is not yet valid")]
    NotYetValid,
    /// The token's lifetime is not within (0, `MAX_TOKEN_TTL_MS`].
    #[error("execution token lifetime is not within (0, {MAX_TOKEN_TTL_MS}] ms")]
    TtlTooLong,
    /// The statement about to run is not the statement the token was signed for.
    #[error("statement does not match the execution token")]
    StatementMismatch,
    /// The token's nonce has already been accepted once.
    #[error("execution token has already been used")]
    Replayed,
    /// The replay cache holds only unexpired nonces and has no room; refusing is the
    /// fail-closed answer.
    #[error("replay cache is full")]
    ReplayCacheFull,
    /// A key id does not belong to the key it was presented with.
    #[error("key id does not match the key")]
    KeyIdMismatch,
    /// A public key of small order, under which forgeries are trivial.
    #[error("refusing a weak Ed25519 public key")]
    WeakKey,
    /// The key was rotated out long enough ago that no token it signed can still be valid.
    #[error("execution token signed by retired key {0}")]
    KeyRetired(KeyId),
}

impl TokenError {
    /// Stable snake_case code for logs, audit records and error responses.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnsupportedVersion(_) => "token_unsupported_version",
            TokenError::UnknownKey(_) => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::WrongJob => "token_wrong_job",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::TtlTooLong => "token_ttl_too_long",
            TokenError::StatementMismatch => "token_statement_mismatch",
            TokenError::Replayed => "token_replayed",
            TokenError::ReplayCacheFull => "token_replay_cache_full",
            TokenError::KeyIdMismatch => "token_key_id_mismatch",
            TokenError::WeakKey => "token_weak_key",
            TokenError::KeyRetired(_) => "token_key_retired",
        }
    }
}

/// Names a signing key: the first 8 bytes of SHA-256 over its 32 raw public-key bytes, written
/// as 16 lower-case hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Accepts exactly 16 lower-case hex characters, so every key id has one spelling.
    pub fn from_hex(s: &str) -> Result<KeyId, TokenError> {
        let canonical = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !canonical {
            return Err(TokenError::Malformed(
                "key id is not 16 lower-case hex characters",
            ));
        }
        let mut id = [0u8; 8];
        hex::decode_to_slice(s, &mut id)
            .map_err(|_| TokenError::Malformed("key id is not 16 lower-case hex characters"))?;
        Ok(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for KeyId {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        KeyId::from_hex(s)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyId::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// Everything a token asserts. Every field is signed; none is optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub key_id: KeyId,
    pub job_id: Uuid,
    pub request_id: Uuid,
    /// The audience: the configured name of the one agent allowed to execute the job.
    pub agent: String,
    pub connection: ConnectionName,
    pub environment: Environment,
    pub class: OperationClass,
    /// SHA-256 of the exact statement text bytes; see [`statement_sha256`].
    pub statement_sha256: [u8; 32],
    pub row_cap: u64,
    pub timeout_ms: u64,
    /// Hash of the approval record that authorised the job.
    pub approval_sha256: [u8; 32],
    /// Unix milliseconds.
    pub issued_at_ms: i64,
    /// Unix milliseconds; at most [`MAX_TOKEN_TTL_MS`] after `issued_at_ms`.
    pub expires_at_ms: i64,
    pub nonce: [u8; 16],
    /// A preview for approvers: run inside a transaction that is always rolled back, and
    /// report only how many rows it would change.
    pub dry_run: bool,
}

/// SHA-256 of the statement's exact UTF-8 bytes: no trimming, no normalisation, so that a
/// statement differing by one byte (trailing whitespace included) is a different statement.
pub fn statement_sha256(statement: &str) -> [u8; 32] {
    Sha256::digest(statement.as_bytes()).into()
}

/// The server's signing half. Built once at start from the loaded key; signing parses nothing.
pub struct TokenSigner {
    key: SigningKey,
    key_id: KeyId,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    pub fn new(key: SigningKey) -> TokenSigner {
        let key_id = KeyId::of(&key.verifying_key());
        TokenSigner { key, key_id }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `claims`. Refuses claims naming another key, a lifetime outside
    /// (0, [`MAX_TOKEN_TTL_MS`]] and an agent name that is empty or too long, so the server
    /// cannot mint a token the agent would have to reject.
    pub fn sign(&self, claims: &TokenClaims) -> Result<ExecutionToken, TokenError> {
        let encoded = self.encode(claims)?;
        self.sign_encoded(&encoded)
    }

    /// Every check of [`sign`](Self::sign) and the encoding, without the signature: a
    /// caller holding a lock encodes (and learns of any refusal) under it, and signs after
    /// letting go.
    pub fn encode(&self, claims: &TokenClaims) -> Result<EncodedClaims, TokenError> {
        if claims.key_id != self.key_id {
            return Err(TokenError::KeyIdMismatch);
        }
        check_ttl(claims.issued_at_ms, claims.expires_at_ms)?;
        let bytes = encode_claims(claims)?;
        if token_len(bytes.len()) > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("token too large"));
        }
        Ok(EncodedClaims {
            key_id: self.key_id,
            bytes,
        })
    }

    /// Signs claims [`encode`](Self::encode)d by this signer. Claims encoded for another key
    /// are refused.
    pub fn sign_encoded(&self, claims: &EncodedClaims) -> Result<ExecutionToken, TokenError> {
        if claims.key_id != self.key_id {
            return Err(TokenError::KeyIdMismatch);
        }
        let signature = self.key.sign(&signed_message(TOKEN_VERSION, &claims.bytes));
        assemble(&claims.bytes, &signature)
    }
}

/// Token claims checked and encoded by [`TokenSigner::encode`], waiting for their signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedClaims {
    key_id: KeyId,
    bytes: Vec<u8>,
}

/// An encoded, signed token. Travels as base64url without padding, also in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionToken(Vec<u8>);

impl ExecutionToken {
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Decodes canonical base64url without padding. Checks size only; [`verify`] judges the
    /// contents.
    pub fn from_base64(s: &str) -> Result<ExecutionToken, TokenError> {
        if s.is_empty() {
            return Err(TokenError::Malformed("empty token"));
        }
        if s.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("token too large"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed("token is not unpadded base64url"))?;
        Ok(ExecutionToken(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for ExecutionToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for ExecutionToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ExecutionToken::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// The keys this agent trusts: pinned from its own configuration, or accepted through a
/// rotation announcement signed by a key already trusted ([`TrustedKeys::accept_rotation`]).
/// A key the server merely offers is never a trust decision.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: HashMap<KeyId, VerifyingKey>,
    /// Rotated-out keys and the time after which they sign nothing acceptable.
    retire_after: HashMap<KeyId, i64>,
}

impl TrustedKeys {
    pub fn new() -> Self {
        TrustedKeys::default()
    }

    /// Pins `key` under `key_id`. Refuses an id that is not [`KeyId::of`] the key (a typo in
    /// the configuration must not silently trust something else) and small-order keys.
    pub fn pin(&mut self, key_id: KeyId, key: VerifyingKey) -> Result<(), TokenError> {
        if key_id != KeyId::of(&key) {
            return Err(TokenError::KeyIdMismatch);
        }
        if key.is_weak() {
            return Err(TokenError::WeakKey);
        }
        match self.keys.get(&key_id) {
            // Two different keys sharing a 64-bit id: refuse rather than pick one.
            Some(existing) if existing != &key => Err(TokenError::KeyIdMismatch),
            _ => {
                self.keys.insert(key_id, key);
                Ok(())
            }
        }
    }

    /// Pins a raw 32-byte Ed25519 public key given in standard (padded) base64, as written by
    /// [`public_key_base64`].
    pub fn pin_base64(&mut self, public_key_b64: &str) -> Result<KeyId, TokenError> {
        let bytes = STANDARD
            .decode(public_key_b64)
            .map_err(|_| TokenError::Malformed("public key is not standard base64"))?;
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TokenError::Malformed("public key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|_| TokenError::Malformed("public key is not an Ed25519 point"))?;
        let key_id = KeyId::of(&key);
        self.pin(key_id, key)?;
        Ok(key_id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn get(&self, key_id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }
}

/// Standard base64 of the 32 raw public-key bytes: the form operators copy into agent configs.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// What the verifier expects, taken from its own state and never from the token.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// This agent's configured name.
    pub agent: &'a str,
    /// The job the agent claimed.
    pub job_id: Uuid,
    /// The exact statement text the agent is about to execute.
    pub statement: &'a str,
    /// The agent's clock, unix milliseconds.
    pub now_ms: i64,
}

/// Remembers accepted nonces until their token expires, within a fixed capacity.
///
/// When full after pruning expired entries it refuses new tokens rather than evicting an
/// unexpired nonce, since eviction would reopen that token to replay. It also keeps the latest
/// `now` it has seen and refuses tokens expiring at or before it: if the agent's clock steps
/// back, a pruned nonce cannot come back to life.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: HashMap<[u8; 16], i64>,
    horizon_ms: i64,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            capacity,
            seen: HashMap::new(),
            horizon_ms: i64::MIN,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of nonces currently remembered, expired ones not yet pruned included.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn record(
        &mut self,
        nonce: [u8; 16],
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), TokenError> {
        self.horizon_ms = self.horizon_ms.max(now_ms);
        if expires_at_ms <= self.horizon_ms {
            return Err(TokenError::Expired);
        }
        if self.seen.contains_key(&nonce) {
            return Err(TokenError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            let horizon = self.horizon_ms;
            self.seen.retain(|_, expires| *expires > horizon);
            if self.seen.len() >= self.capacity {
                return Err(TokenError::ReplayCacheFull);
            }
        }
        self.seen.insert(nonce, expires_at_ms);
        Ok(())
    }
}

/// Proof that a token passed every check in [`verify`]; only `verify` can construct one.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    claims: TokenClaims,
}

impl VerifiedToken {
    pub fn claims(&self) -> &TokenClaims {
        &self.claims
    }
}

/// Checks `token` against the pinned `keys` and the agent's own `expected` state, then records
/// its nonce. The order matters: nothing in the claims is believed before the signature has
/// been verified under a pinned key, and the nonce is recorded only once everything else
/// passed.
pub fn verify(
    keys: &TrustedKeys,
    token: &ExecutionToken,
    expected: &Expected<'_>,
    replay: &mut ReplayCache,
) -> Result<VerifiedToken, TokenError> {
    let decoded = decode(token.as_bytes())?;
    let claims = decoded.claims;

    let key = keys
        .get(&claims.key_id)
        .ok_or(TokenError::UnknownKey(claims.key_id))?;
    if keys
        .retired_after(&claims.key_id)
        .is_some_and(|at| expected.now_ms > at)
    {
        return Err(TokenError::KeyRetired(claims.key_id));
    }
    let signature = Signature::from_bytes(&decoded.signature);
    key.verify_strict(
        &signed_message(decoded.version, decoded.claims_bytes),
        &signature,
    )
    .map_err(|_| TokenError::BadSignature)?;

    if !bool::from(claims.agent.as_bytes().ct_eq(expected.agent.as_bytes())) {
        return Err(TokenError::WrongAudience);
    }
    if claims.job_id != expected.job_id {
        return Err(TokenError::WrongJob);
    }
    check_ttl(claims.issued_at_ms, claims.expires_at_ms)?;
    if expected.now_ms >= claims.expires_at_ms {
        return Err(TokenError::Expired);
    }
    if claims.issued_at_ms > expected.now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(TokenError::NotYetValid);
    }
    let statement = statement_sha256(expected.statement);
    if !bool::from(statement[..].ct_eq(&claims.statement_sha256[..])) {
        return Err(TokenError::StatementMismatch);
    }

    replay.record(claims.nonce, claims.expires_at_ms, expected.now_ms)?;
    Ok(VerifiedToken { claims })
}

fn check_ttl(issued_at_ms: i64, expires_at_ms: i64) -> Result<(), TokenError> {
    match expires_at_ms.checked_sub(issued_at_ms) {
        Some(ttl) if ttl > 0 && ttl <= MAX_TOKEN_TTL_MS => Ok(()),
        _ => Err(TokenError::TtlTooLong),
    }
}

#[cfg(test)]
mod tests;
