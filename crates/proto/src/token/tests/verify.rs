//! EX-1: verification outcomes, the signer's own refusals and the replay cache.

use uuid::Uuid;

use super::super::codec::{decode_claims, encode_claims};
use super::super::{
    ExecutionToken, Expected, KeyId, MAX_AGENT_NAME_BYTES, MAX_CLOCK_SKEW_MS, MAX_TOKEN_TTL_MS,
    ReplayCache, TokenClaims, TokenError, TokenSigner, TrustedKeys, verify,
};
use super::{
    ClaimsEdit, ExpectedEdit, NOW, TTL, check, claims_for, expected, fixture, fresh_key,
    keep_claims, keep_expected, sign_raw, verify_once,
};

/// EX-1: a token signed by the pinned key verifies, survives base64 and JSON, and yields
/// exactly the signed claims.
#[test]
fn ex1_round_trip_through_base64_and_json() {
    let f = fixture();
    let token = f.signer.sign(&f.claims).expect("sign");
    let text = token.to_base64();
    assert!(
        !text.contains(['=', '+', '/']),
        "base64url without padding: {text}"
    );
    let parsed = ExecutionToken::from_base64(&text).expect("parse");
    assert_eq!(parsed, token);

    let json = serde_json::to_string(&token).expect("serialize");
    assert_eq!(json, format!("\"{text}\""));
    let from_json: ExecutionToken = serde_json::from_str(&json).expect("deserialize");

    let verified = verify(
        &f.keys,
        &from_json,
        &expected(&f.claims),
        &mut ReplayCache::new(4),
    )
    .expect("verify");
    assert_eq!(verified.claims(), &f.claims);
    assert_eq!(
        decode_claims(&encode_claims(&f.claims).expect("encode")),
        Ok(f.claims.clone())
    );
}

/// EX-1: table of verification outcomes, each check exercised on both sides of its boundary.
#[test]
fn ex1_verification_checks_table() {
    let cases: &[(&str, ClaimsEdit, ExpectedEdit, Result<(), TokenError>)] = &[
        ("valid", keep_claims, keep_expected, Ok(())),
        (
            "wrong audience",
            keep_claims,
            |e| e.agent = "agent-eu-2",
            Err(TokenError::WrongAudience),
        ),
        (
            "audience case",
            keep_claims,
            |e| e.agent = "AGENT-EU-1",
            Err(TokenError::WrongAudience),
        ),
        (
            "audience prefix",
            keep_claims,
            |e| e.agent = "agent-eu-",
            Err(TokenError::WrongAudience),
        ),
        (
            "audience suffix",
            keep_claims,
            |e| e.agent = "agent-eu-1 ",
            Err(TokenError::WrongAudience),
        ),
        (
            "audience empty",
            keep_claims,
            |e| e.agent = "",
            Err(TokenError::WrongAudience),
        ),
        (
            "wrong job",
            keep_claims,
            |e| e.job_id = Uuid::new_v4(),
            Err(TokenError::WrongJob),
        ),
        (
            "nil job",
            keep_claims,
            |e| e.job_id = Uuid::nil(),
            Err(TokenError::WrongJob),
        ),
        (
            "expired at expiry",
            keep_claims,
            |e| e.now_ms = NOW + TTL,
            Err(TokenError::Expired),
        ),
        (
            "expired after expiry",
            keep_claims,
            |e| e.now_ms = NOW + TTL + 1,
            Err(TokenError::Expired),
        ),
        (
            "last valid millisecond",
            keep_claims,
            |e| e.now_ms = NOW + TTL - 1,
            Ok(()),
        ),
        (
            "issued within skew",
            |c| shift(c, MAX_CLOCK_SKEW_MS),
            keep_expected,
            Ok(()),
        ),
        (
            "issued beyond skew",
            |c| shift(c, MAX_CLOCK_SKEW_MS + 1),
            keep_expected,
            Err(TokenError::NotYetValid),
        ),
        (
            "ttl at ceiling",
            |c| c.expires_at_ms = c.issued_at_ms + MAX_TOKEN_TTL_MS,
            keep_expected,
            Ok(()),
        ),
        (
            "ttl above ceiling",
            |c| c.expires_at_ms = c.issued_at_ms + MAX_TOKEN_TTL_MS + 1,
            keep_expected,
            Err(TokenError::TtlTooLong),
        ),
        (
            "ttl one year",
            |c| c.expires_at_ms = c.issued_at_ms + 31_536_000_000,
            keep_expected,
            Err(TokenError::TtlTooLong),
        ),
        (
            "ttl zero",
            |c| c.expires_at_ms = c.issued_at_ms,
            keep_expected,
            Err(TokenError::TtlTooLong),
        ),
        (
            "ttl negative",
            |c| c.expires_at_ms = c.issued_at_ms - 1,
            keep_expected,
            Err(TokenError::TtlTooLong),
        ),
        (
            "ttl overflowing",
            |c| {
                c.issued_at_ms = i64::MIN;
                c.expires_at_ms = i64::MAX;
            },
            keep_expected,
            Err(TokenError::TtlTooLong),
        ),
        (
            "statement one byte",
            keep_claims,
            |e| e.statement = "SELECT id, email FROM accounts WHERE id = 43",
            Err(TokenError::StatementMismatch),
        ),
        (
            "statement trailing space",
            keep_claims,
            |e| e.statement = "SELECT id, email FROM accounts WHERE id = 42 ",
            Err(TokenError::StatementMismatch),
        ),
        (
            "statement trailing newline",
            keep_claims,
            |e| e.statement = "SELECT id, email FROM accounts WHERE id = 42\n",
            Err(TokenError::StatementMismatch),
        ),
        (
            "statement appended",
            keep_claims,
            |e| e.statement = "SELECT id, email FROM accounts WHERE id = 42; DROP TABLE accounts",
            Err(TokenError::StatementMismatch),
        ),
        (
            "statement empty",
            keep_claims,
            |e| e.statement = "",
            Err(TokenError::StatementMismatch),
        ),
    ];
    for (name, edit_claims, edit_expected, expect) in cases {
        eprintln!("case: {name}");
        check(*edit_claims, *edit_expected, expect.clone());
    }
}

/// Moves the whole validity window by `by` milliseconds.
fn shift(claims: &mut TokenClaims, by: i64) {
    claims.issued_at_ms += by;
    claims.expires_at_ms += by;
}

/// EX-1: the signer never mints a token the agent would have to reject for its lifetime, its
/// key id or its audience.
#[test]
fn ex1_signer_refuses_bad_claims() {
    let f = fixture();
    let cases: &[(ClaimsEdit, TokenError)] = &[
        (
            |c| c.expires_at_ms = c.issued_at_ms + MAX_TOKEN_TTL_MS + 1,
            TokenError::TtlTooLong,
        ),
        (|c| c.expires_at_ms = c.issued_at_ms, TokenError::TtlTooLong),
        (
            |c| c.expires_at_ms = c.issued_at_ms - TTL,
            TokenError::TtlTooLong,
        ),
        (|c| c.key_id = KeyId([0; 8]), TokenError::KeyIdMismatch),
        (
            |c| c.agent = String::new(),
            TokenError::Malformed("agent name is empty"),
        ),
        (
            |c| c.agent = "a".repeat(MAX_AGENT_NAME_BYTES + 1),
            TokenError::Malformed("agent name is too long"),
        ),
    ];
    for (edit, expect) in cases {
        let mut claims = f.claims.clone();
        edit(&mut claims);
        assert_eq!(f.signer.sign(&claims), Err(expect.clone()));
        // The checks come with the encoding, before any signature.
        assert_eq!(f.signer.encode(&claims), Err(expect.clone()));
    }
    let mut longest = f.claims.clone();
    longest.agent = "a".repeat(MAX_AGENT_NAME_BYTES);
    longest.expires_at_ms = longest.issued_at_ms + MAX_TOKEN_TTL_MS;
    assert!(f.signer.sign(&longest).is_ok());
    assert!(f.signer.encode(&longest).is_ok());
}

/// EX-1: claims encoded first and signed later make the very token signed at once, which
/// verifies; claims encoded for one key are never signed by another.
#[test]
fn ex1_claims_encoded_then_signed_are_the_same_token() {
    let f = fixture();
    let encoded = f.signer.encode(&f.claims).expect("encode");
    let later = f.signer.sign_encoded(&encoded).expect("sign encoded");
    assert_eq!(later, f.signer.sign(&f.claims).expect("sign"));
    let verified = verify_once(&f, &later, &expected(&f.claims)).expect("verifies");
    assert_eq!(verified, f.claims);
    let other = TokenSigner::new(fresh_key());
    assert_eq!(other.sign_encoded(&encoded), Err(TokenError::KeyIdMismatch));
}

/// EX-1: a token signed by a key that is not pinned is refused as unknown, whatever key the
/// server might offer alongside it.
#[test]
fn ex1_token_from_unpinned_key_is_unknown() {
    let f = fixture();
    let rogue = TokenSigner::new(fresh_key());
    let claims = TokenClaims {
        key_id: rogue.key_id(),
        ..f.claims.clone()
    };
    let token = rogue.sign(&claims).expect("sign");
    assert_eq!(
        verify_once(&f, &token, &expected(&claims)),
        Err(TokenError::UnknownKey(rogue.key_id()))
    );
    assert_eq!(
        verify(
            &TrustedKeys::new(),
            &token,
            &expected(&claims),
            &mut ReplayCache::new(1)
        )
        .map(|_| ()),
        Err(TokenError::UnknownKey(rogue.key_id()))
    );
}

/// EX-1: a token signed by an unpinned key that claims a pinned key's id fails the signature.
#[test]
fn ex1_unpinned_key_claiming_pinned_id_is_bad_signature() {
    let f = fixture();
    let rogue = fresh_key();
    let token = sign_raw(&rogue, &f.claims);
    assert_eq!(
        verify_once(&f, &token, &expected(&f.claims)),
        Err(TokenError::BadSignature)
    );
}

/// EX-1: a nonce is accepted once; the second presentation of the same token is a replay.
#[test]
fn ex1_replayed_nonce_is_refused() {
    let f = fixture();
    let token = f.signer.sign(&f.claims).expect("sign");
    let mut cache = ReplayCache::new(8);
    let exp = expected(&f.claims);
    assert!(verify(&f.keys, &token, &exp, &mut cache).is_ok());
    assert_eq!(
        verify(&f.keys, &token, &exp, &mut cache).map(|_| ()),
        Err(TokenError::Replayed)
    );
    let later = Expected {
        now_ms: NOW + TTL - 1,
        ..exp
    };
    assert_eq!(
        verify(&f.keys, &token, &later, &mut cache).map(|_| ()),
        Err(TokenError::Replayed)
    );

    // A second token reusing the nonce for another job is a replay too.
    let mut reuse = claims_for(f.signer.key_id(), NOW);
    reuse.nonce = f.claims.nonce;
    let token = f.signer.sign(&reuse).expect("sign");
    assert_eq!(
        verify(&f.keys, &token, &expected(&reuse), &mut cache).map(|_| ()),
        Err(TokenError::Replayed)
    );
}

/// EX-1: a token that fails any other check does not burn its nonce.
#[test]
fn ex1_rejected_token_does_not_record_nonce() {
    let f = fixture();
    let token = f.signer.sign(&f.claims).expect("sign");
    let mut cache = ReplayCache::new(8);
    let exp = expected(&f.claims);
    let wrong = Expected {
        statement: "DELETE FROM accounts",
        ..exp
    };
    assert_eq!(
        verify(&f.keys, &token, &wrong, &mut cache).map(|_| ()),
        Err(TokenError::StatementMismatch)
    );
    assert!(cache.is_empty());
    assert!(verify(&f.keys, &token, &exp, &mut cache).is_ok());
    assert_eq!(cache.len(), 1);
}

/// EX-1: a full cache of unexpired nonces refuses new tokens instead of evicting one.
#[test]
fn ex1_full_replay_cache_fails_closed() {
    let f = fixture();
    let mut cache = ReplayCache::new(2);
    let tokens: Vec<(TokenClaims, ExecutionToken)> = (0..3)
        .map(|_| {
            let claims = claims_for(f.signer.key_id(), NOW);
            let token = f.signer.sign(&claims).expect("sign");
            (claims, token)
        })
        .collect();
    for (claims, token) in &tokens[..2] {
        assert!(verify(&f.keys, token, &expected(claims), &mut cache).is_ok());
    }
    let (claims, token) = &tokens[2];
    assert_eq!(
        verify(&f.keys, token, &expected(claims), &mut cache).map(|_| ()),
        Err(TokenError::ReplayCacheFull)
    );
    let (claims, token) = &tokens[0];
    assert_eq!(
        verify(&f.keys, token, &expected(claims), &mut cache).map(|_| ()),
        Err(TokenError::Replayed)
    );
    assert_eq!(cache.len(), 2);

    let mut zero = ReplayCache::new(0);
    assert_eq!(
        verify(&f.keys, token, &expected(claims), &mut zero).map(|_| ()),
        Err(TokenError::ReplayCacheFull)
    );
}

/// EX-1: once a remembered token has expired its nonce is pruned to make room.
#[test]
fn ex1_replay_cache_prunes_expired_nonces() {
    let f = fixture();
    let mut cache = ReplayCache::new(1);
    let first = f.signer.sign(&f.claims).expect("sign");
    assert!(verify(&f.keys, &first, &expected(&f.claims), &mut cache).is_ok());

    let later = NOW + TTL;
    let claims = claims_for(f.signer.key_id(), later);
    let second = f.signer.sign(&claims).expect("sign");
    let exp = Expected {
        now_ms: later,
        ..expected(&claims)
    };
    assert!(verify(&f.keys, &second, &exp, &mut cache).is_ok());
    assert_eq!(cache.len(), 1);
}

/// EX-1: after the agent's clock steps back, a token whose nonce may already have been pruned
/// is refused as expired instead of becoming replayable.
#[test]
fn ex1_replay_cache_survives_clock_stepping_back() {
    let f = fixture();
    let mut cache = ReplayCache::new(1);
    let token = f.signer.sign(&f.claims).expect("sign");
    assert!(verify(&f.keys, &token, &expected(&f.claims), &mut cache).is_ok());

    let later = NOW + TTL;
    let claims = claims_for(f.signer.key_id(), later);
    let other = f.signer.sign(&claims).expect("sign");
    assert!(
        verify(
            &f.keys,
            &other,
            &Expected {
                now_ms: later,
                ..expected(&claims)
            },
            &mut cache
        )
        .is_ok()
    );

    // The clock jumps back into the first token's window; its nonce was pruned.
    let rewound = Expected {
        now_ms: NOW + 1,
        ..expected(&f.claims)
    };
    assert_eq!(
        verify(&f.keys, &token, &rewound, &mut cache).map(|_| ()),
        Err(TokenError::Expired)
    );
}
