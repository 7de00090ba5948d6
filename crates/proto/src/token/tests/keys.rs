//! EX-1: key pinning, key ids, base64 forms and error codes.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use super::super::{
    ExecutionToken, KeyId, MAX_TOKEN_BYTES, TokenError, TrustedKeys, public_key_base64,
    statement_sha256,
};
use super::{fixture, fresh_key};

/// EX-1: pinning checks the key id against the key and refuses small-order keys.
#[test]
fn ex1_pin_refuses_mismatched_id_and_weak_keys() {
    let key = fresh_key().verifying_key();
    let other = fresh_key().verifying_key();
    let mut keys = TrustedKeys::new();
    assert_eq!(
        keys.pin(KeyId::of(&other), key),
        Err(TokenError::KeyIdMismatch)
    );
    assert_eq!(keys.pin(KeyId([0; 8]), key), Err(TokenError::KeyIdMismatch));
    assert!(keys.is_empty());

    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = VerifyingKey::from_bytes(&identity).expect("identity point decodes");
    assert_eq!(keys.pin(KeyId::of(&weak), weak), Err(TokenError::WeakKey));
    assert_eq!(
        keys.pin_base64(&STANDARD.encode(identity)),
        Err(TokenError::WeakKey)
    );

    assert_eq!(keys.pin(KeyId::of(&key), key), Ok(()));
    assert_eq!(keys.pin(KeyId::of(&key), key), Ok(()));
    assert_eq!(keys.len(), 1);
}

/// EX-1: the base64 public-key form round-trips through `pin_base64`; garbage is refused.
#[test]
fn ex1_pin_base64_accepts_only_raw_32_byte_keys() {
    let key = fresh_key().verifying_key();
    let text = public_key_base64(&key);
    let mut keys = TrustedKeys::new();
    assert_eq!(keys.pin_base64(&text), Ok(KeyId::of(&key)));
    assert_eq!(keys.len(), 1);

    let garbage = [
        String::new(),
        "not base64!".to_owned(),
        format!(" {text}"),
        format!("{text}\n"),
        text.trim_end_matches('=').to_owned(),
        URL_SAFE_NO_PAD.encode(key.as_bytes()),
        STANDARD.encode([7u8; 31]),
        STANDARD.encode([7u8; 33]),
        STANDARD.encode([0u8; 64]),
    ];
    for input in &garbage {
        let got = keys.pin_base64(input);
        assert!(
            matches!(got, Err(TokenError::Malformed(_))),
            "{input:?}: {got:?}"
        );
    }
    assert_eq!(keys.len(), 1);
}

/// EX-1: token text that is not canonical unpadded base64url, empty or above 4 KiB is refused.
#[test]
fn ex1_base64_garbage_token_is_refused() {
    let f = fixture();
    let text = f.signer.sign(&f.claims).expect("sign").to_base64();
    let garbage = [
        String::new(),
        "!!!!".to_owned(),
        format!("{text}="),
        format!("{text} "),
        format!(" {text}"),
        text.replace('-', "+").replace('_', "/") + "+/",
        "A".to_owned(),
        "AB".to_owned(), // non-zero trailing bits
        "A".repeat(MAX_TOKEN_BYTES + 4),
    ];
    for input in &garbage {
        let got = ExecutionToken::from_base64(input);
        assert!(
            matches!(got, Err(TokenError::Malformed(_))),
            "{input:?}: {got:?}"
        );
    }
    assert!(serde_json::from_str::<ExecutionToken>("\"@@@\"").is_err());
    assert!(serde_json::from_str::<ExecutionToken>("42").is_err());
}

/// EX-1: key ids are the SHA-256 prefix of the public key with one hex spelling.
#[test]
fn ex1_key_id_is_canonical_hex() {
    let key = fresh_key().verifying_key();
    let id = KeyId::of(&key);
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    assert_eq!(id.to_hex(), hex::encode(&digest[..8]));
    assert_eq!(id.to_string(), id.to_hex());
    assert_eq!(KeyId::from_hex(&id.to_hex()), Ok(id));
    assert_eq!(id.to_hex().parse::<KeyId>(), Ok(id));
    let json = serde_json::to_string(&id).expect("serialize");
    assert_eq!(json, format!("\"{id}\""));
    assert_eq!(
        serde_json::from_str::<KeyId>(&json).expect("deserialize"),
        id
    );

    for bad in [
        "",
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789ABCDEF",
        "0123456789abcdeg",
        "+123456789abcdef",
    ] {
        assert!(
            matches!(KeyId::from_hex(bad), Err(TokenError::Malformed(_))),
            "{bad:?}"
        );
    }
    assert!(serde_json::from_str::<KeyId>("\"0123456789ABCDEF\"").is_err());
}

/// EX-1: error codes are stable, unique and snake_case; clients match on them.
#[test]
fn ex1_error_codes_are_stable() {
    let cases = [
        (TokenError::Malformed("x"), "token_malformed"),
        (
            TokenError::UnsupportedVersion(2),
            "token_unsupported_version",
        ),
        (TokenError::UnknownKey(KeyId([1; 8])), "token_unknown_key"),
        (TokenError::BadSignature, "token_bad_signature"),
        (TokenError::WrongAudience, "token_wrong_audience"),
        (TokenError::WrongJob, "token_wrong_job"),
        (TokenError::Expired, "token_expired"),
        (TokenError::NotYetValid, "token_not_yet_valid"),
        (TokenError::TtlTooLong, "token_ttl_too_long"),
        (TokenError::StatementMismatch, "token_statement_mismatch"),
        (TokenError::Replayed, "token_replayed"),
        (TokenError::ReplayCacheFull, "token_replay_cache_full"),
        (TokenError::KeyIdMismatch, "token_key_id_mismatch"),
        (TokenError::WeakKey, "token_weak_key"),
    ];
    let mut seen = HashSet::new();
    for (error, code) in &cases {
        assert_eq!(error.code(), *code);
        assert!(seen.insert(*code), "duplicate code {code}");
        assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    }
}

/// EX-1: statement hashing is SHA-256 over the exact bytes.
#[test]
fn ex1_statement_hash_is_exact_sha256() {
    assert_eq!(
        hex::encode(statement_sha256("")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_ne!(statement_sha256("SELECT 1"), statement_sha256("SELECT 1 "));
}
