//! EX-1: forged, tampered and non-canonical tokens never verify.

use std::collections::HashSet;

use ed25519_dalek::{Signature, Signer};
use portcullis_core::{Environment, OperationClass};
use proptest::prelude::{ProptestConfig, any, prop, prop_assume, proptest};
use uuid::Uuid;

use super::super::codec::{assemble, decode, decode_claims, encode_claims, tag};
use super::super::{
    ExecutionToken, KeyId, MAX_AGENT_NAME_BYTES, MAX_TOKEN_BYTES, MAX_TOKEN_TTL_MS, TOKEN_VERSION,
    TokenClaims, TokenError, TokenSigner, statement_sha256,
};
use super::{
    Records, claims_for, expected, fixture, fresh_key, join, records, sign_claim_bytes, sign_raw,
    verify_once,
};

/// Alters one claim; may capture, unlike [`ClaimsEdit`].
type ClaimsTamper = Box<dyn Fn(&mut TokenClaims)>;
/// Rewrites the claim records before they are signed.
type RecordsEdit = Box<dyn Fn(&mut Records)>;

/// EX-1: the signature covers the domain prefix, so a signature by the pinned key over the
/// same claims under any other prefix, or none, does not verify.
#[test]
fn ex1_signature_is_domain_separated() {
    let f = fixture();
    let encoded = encode_claims(&f.claims).expect("encode");
    let mut other_domain = b"portcullis/announcement/v1\0".to_vec();
    other_domain.push(TOKEN_VERSION);
    other_domain.extend_from_slice(&encoded);
    let mut no_domain = vec![TOKEN_VERSION];
    no_domain.extend_from_slice(&encoded);
    for message in [other_domain, no_domain, encoded.clone()] {
        let token = assemble(&encoded, &f.raw_key.sign(&message)).expect("assemble");
        assert_eq!(
            verify_once(&f, &token, &expected(&f.claims)),
            Err(TokenError::BadSignature)
        );
    }
}

/// EX-1: every one of the 15 signed fields, altered in turn to another valid value and spliced
/// under the original signature, is refused: the key id as unknown (or as a bad signature when
/// it names another pinned key), every other field as a bad signature.
#[test]
fn ex1_every_signed_field_tampered_is_refused() {
    let mut f = fixture();
    let other_pinned = TokenSigner::new(fresh_key());
    f.keys
        .pin(other_pinned.key_id(), other_pinned.verifying_key())
        .expect("pin");
    let unknown = KeyId::of(&fresh_key().verifying_key());
    let other_id = other_pinned.key_id();
    let token = f.signer.sign(&f.claims).expect("sign");
    let signature = Signature::from_bytes(&decode(token.as_bytes()).expect("decode").signature);
    let exp = expected(&f.claims);

    let tampers: Vec<(u8, ClaimsTamper, TokenError)> = vec![
        (
            tag::KEY_ID,
            Box::new(move |c| c.key_id = unknown),
            TokenError::UnknownKey(unknown),
        ),
        (
            tag::KEY_ID,
            Box::new(move |c| c.key_id = other_id),
            TokenError::BadSignature,
        ),
        (
            tag::JOB_ID,
            Box::new(|c| c.job_id = Uuid::new_v4()),
            TokenError::BadSignature,
        ),
        (
            tag::REQUEST_ID,
            Box::new(|c| c.request_id = Uuid::new_v4()),
            TokenError::BadSignature,
        ),
        (
            tag::AGENT,
            Box::new(|c| c.agent = "agent-eu-2".to_owned()),
            TokenError::BadSignature,
        ),
        (
            tag::CONNECTION,
            Box::new(|c| c.connection = "billing-replica".parse().expect("name")),
            TokenError::BadSignature,
        ),
        (
            tag::ENVIRONMENT,
            Box::new(|c| c.environment = Environment::Development),
            TokenError::BadSignature,
        ),
        (
            tag::CLASS,
            Box::new(|c| c.class = OperationClass::Admin),
            TokenError::BadSignature,
        ),
        (
            tag::STATEMENT_SHA256,
            Box::new(|c| c.statement_sha256 = statement_sha256("DROP TABLE accounts")),
            TokenError::BadSignature,
        ),
        (
            tag::ROW_CAP,
            Box::new(|c| c.row_cap = u64::MAX),
            TokenError::BadSignature,
        ),
        (
            tag::TIMEOUT_MS,
            Box::new(|c| c.timeout_ms += 1),
            TokenError::BadSignature,
        ),
        (
            tag::APPROVAL_SHA256,
            Box::new(|c| c.approval_sha256[31] ^= 1),
            TokenError::BadSignature,
        ),
        (
            tag::ISSUED_AT_MS,
            Box::new(|c| c.issued_at_ms -= 1),
            TokenError::BadSignature,
        ),
        (
            tag::EXPIRES_AT_MS,
            Box::new(|c| c.expires_at_ms += 1),
            TokenError::BadSignature,
        ),
        (
            tag::NONCE,
            Box::new(|c| c.nonce[0] ^= 0x80),
            TokenError::BadSignature,
        ),
        (
            tag::DRY_RUN,
            Box::new(|c| c.dry_run = !c.dry_run),
            TokenError::BadSignature,
        ),
    ];

    let original = records(&f.claims);
    let mut covered = HashSet::new();
    for (tag, tamper, expect) in &tampers {
        let mut claims = f.claims.clone();
        tamper(&mut claims);
        let changed: Vec<u8> = records(&claims)
            .iter()
            .zip(&original)
            .filter(|(new, old)| new != old)
            .map(|(new, _)| new.0)
            .collect();
        assert_eq!(changed, vec![*tag], "tamper must alter exactly claim {tag}");
        covered.insert(*tag);

        let forged =
            assemble(&encode_claims(&claims).expect("encode"), &signature).expect("assemble");
        let mut exp = exp;
        // Point the verifier's own expectations at the forged values, so that only the
        // signature can stand in the way.
        exp.job_id = claims.job_id;
        let got = verify_once(&f, &forged, &exp);
        assert_eq!(got, Err(expect.clone()), "tampered claim {tag}");
    }
    assert_eq!(covered, (1..=tag::LAST).collect::<HashSet<u8>>());
}

/// EX-1: a flipped bit in every byte of a token (header, claims or signature) never yields an
/// accepted token. Two bit positions per byte, rotating so that every position is hit across
/// the token; the proptest below covers arbitrary byte values.
#[test]
fn ex1_flipped_bit_in_any_byte_is_refused() {
    let f = fixture();
    let token = f.signer.sign(&f.claims).expect("sign");
    let exp = expected(&f.claims);
    for index in 0..token.0.len() {
        for bit in [index % 8, 7 - index % 8] {
            let mut bytes = token.0.clone();
            bytes[index] ^= 1 << bit;
            let got = verify_once(&f, &ExecutionToken(bytes), &exp);
            assert!(
                got.is_err(),
                "bit {bit} of byte {index} flipped yet accepted"
            );
        }
    }
}

/// EX-1: a flipped signature bit is reported as a bad signature, not as anything later.
#[test]
fn ex1_flipped_signature_bit_is_bad_signature() {
    let f = fixture();
    let token = f.signer.sign(&f.claims).expect("sign");
    let signature_start = token.0.len() - Signature::BYTE_SIZE;
    for index in [
        signature_start,
        signature_start + 17,
        signature_start + 32,
        token.0.len() - 1,
    ] {
        let mut bytes = token.0.clone();
        bytes[index] ^= 0x04;
        assert_eq!(
            verify_once(&f, &ExecutionToken(bytes), &expected(&f.claims)),
            Err(TokenError::BadSignature)
        );
    }
}

/// EX-1: the signature is checked before any claim is believed: a forged token that is also
/// expired, post-dated and for another statement reports only the bad signature.
#[test]
fn ex1_signature_is_checked_before_claims() {
    let f = fixture();
    let mut claims = f.claims.clone();
    claims.agent = "someone-else".to_owned();
    claims.expires_at_ms = claims.issued_at_ms + MAX_TOKEN_TTL_MS * 10;
    let token = sign_raw(&fresh_key(), &claims);
    assert_eq!(
        verify_once(&f, &token, &expected(&f.claims)),
        Err(TokenError::BadSignature)
    );
}

/// EX-1: every truncation of a valid token is malformed, and so is one trailing byte.
#[test]
fn ex1_truncated_or_extended_token_is_malformed() {
    let f = fixture();
    let token = f.signer.sign(&f.claims).expect("sign");
    for len in 0..token.0.len() {
        let got = verify_once(
            &f,
            &ExecutionToken(token.0[..len].to_vec()),
            &expected(&f.claims),
        );
        assert!(
            matches!(got, Err(TokenError::Malformed(_))),
            "truncated to {len}: {got:?}"
        );
    }
    for extra in [&[0u8][..], &[0xff], &[0; 64]] {
        let mut bytes = token.0.clone();
        bytes.extend_from_slice(extra);
        let got = verify_once(&f, &ExecutionToken(bytes), &expected(&f.claims));
        assert_eq!(
            got,
            Err(TokenError::Malformed("trailing bytes after the signature"))
        );
    }
}

/// EX-1: an unknown layout version is refused before anything else is read.
#[test]
fn ex1_unknown_version_is_refused() {
    let f = fixture();
    let token = f.signer.sign(&f.claims).expect("sign");
    for version in [0u8, 2, 0xff] {
        let mut bytes = token.0.clone();
        bytes[0] = version;
        assert_eq!(
            verify_once(&f, &ExecutionToken(bytes), &expected(&f.claims)),
            Err(TokenError::UnsupportedVersion(version))
        );
        let resigned = sign_claim_bytes(
            &f.raw_key,
            version,
            &encode_claims(&f.claims).expect("encode"),
        );
        assert_eq!(
            verify_once(&f, &resigned, &expected(&f.claims)),
            Err(TokenError::UnsupportedVersion(version))
        );
    }
}

/// EX-1: non-canonical claim encodings are refused by the decoder even when the pinned key
/// signed them: swapped, duplicate, missing and unknown tags, wrong fixed lengths, trailing
/// bytes, invalid UTF-8 and values that do not parse as the core types.
#[test]
fn ex1_non_canonical_claims_are_malformed_even_when_signed() {
    let f = fixture();
    let base = records(&f.claims);
    let edits: Vec<(&str, RecordsEdit, &str)> = vec![
        (
            "swap job and request",
            Box::new(|r| r.swap(1, 2)),
            "missing or out-of-order claim tag",
        ),
        (
            "swap first two",
            Box::new(|r| r.swap(0, 1)),
            "missing or out-of-order claim tag",
        ),
        (
            "swap last two",
            Box::new(|r| r.swap(12, 13)),
            "missing or out-of-order claim tag",
        ),
        (
            "duplicate key id",
            Box::new(|r| r.insert(1, r[0].clone())),
            "duplicate or out-of-order claim tag",
        ),
        (
            "duplicate nonce",
            Box::new(|r| r.push(r[13].clone())),
            "trailing bytes after the last claim",
        ),
        (
            "missing timeout",
            Box::new(|r| {
                r.remove(9);
            }),
            "missing or out-of-order claim tag",
        ),
        (
            "missing nonce",
            Box::new(|r| {
                r.pop();
            }),
            "truncated",
        ),
        (
            "unknown tag 15 at end",
            Box::new(|r| r.push((15, vec![0; 4]))),
            "trailing bytes after the last claim",
        ),
        (
            "unknown tag 0 at start",
            Box::new(|r| r.insert(0, (0, vec![]))),
            "unknown claim tag",
        ),
        (
            "unknown tag 200 in middle",
            Box::new(|r| r.insert(5, (200, vec![1]))),
            "unknown claim tag",
        ),
        (
            "short key id",
            Box::new(|r| {
                r[0].1.pop();
            }),
            "claim has the wrong length",
        ),
        (
            "long job id",
            Box::new(|r| r[1].1.push(0)),
            "claim has the wrong length",
        ),
        (
            "short statement hash",
            Box::new(|r| r[7].1.truncate(31)),
            "claim has the wrong length",
        ),
        (
            "long row cap",
            Box::new(|r| r[8].1.insert(0, 0)),
            "claim has the wrong length",
        ),
        (
            "short nonce",
            Box::new(|r| r[13].1.truncate(8)),
            "claim has the wrong length",
        ),
        (
            "agent not utf-8",
            Box::new(|r| r[3].1 = vec![0x61, 0xff, 0xfe]),
            "text claim is not UTF-8",
        ),
        (
            "agent empty",
            Box::new(|r| r[3].1.clear()),
            "agent name is empty",
        ),
        (
            "agent too long",
            Box::new(|r| r[3].1 = vec![b'a'; MAX_AGENT_NAME_BYTES + 1]),
            "text claim is too long",
        ),
        (
            "connection wildcard",
            Box::new(|r| r[4].1 = b"*".to_vec()),
            "invalid connection name",
        ),
        (
            "connection upper case",
            Box::new(|r| r[4].1 = b"Billing-primary".to_vec()),
            "invalid connection name",
        ),
        (
            "environment unknown",
            Box::new(|r| r[5].1 = b"prod".to_vec()),
            "invalid environment",
        ),
        (
            "environment padded",
            Box::new(|r| r[5].1 = b"production ".to_vec()),
            "invalid environment",
        ),
        (
            "class unknown",
            Box::new(|r| r[6].1 = b"READ".to_vec()),
            "invalid operation class",
        ),
    ];
    for (name, edit, reason) in &edits {
        let mut recs = base.clone();
        edit(&mut recs);
        let token = sign_claim_bytes(&f.raw_key, TOKEN_VERSION, &join(&recs));
        let got = verify_once(&f, &token, &expected(&f.claims));
        assert_eq!(got, Err(TokenError::Malformed(reason)), "{name}");
    }

    let mut trailing = join(&base);
    trailing.push(0);
    let token = sign_claim_bytes(&f.raw_key, TOKEN_VERSION, &trailing);
    assert_eq!(
        verify_once(&f, &token, &expected(&f.claims)),
        Err(TokenError::Malformed("trailing bytes after the last claim"))
    );

    let mut huge_len = join(&base);
    huge_len.extend_from_slice(&[15, 0xff, 0xff, 0xff, 0xff]);
    let token = sign_claim_bytes(&f.raw_key, TOKEN_VERSION, &huge_len);
    assert_eq!(
        verify_once(&f, &token, &expected(&f.claims)),
        Err(TokenError::Malformed("trailing bytes after the last claim"))
    );
}

/// EX-1: a claims length that points past the end, and a token above 4 KiB, are malformed.
#[test]
fn ex1_oversized_and_lying_lengths_are_malformed() {
    let f = fixture();
    let token = f.signer.sign(&f.claims).expect("sign");
    let mut lying = token.0.clone();
    lying[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        verify_once(&f, &ExecutionToken(lying), &expected(&f.claims)),
        Err(TokenError::Malformed("truncated"))
    );

    let mut big = token.0.clone();
    big.resize(MAX_TOKEN_BYTES + 1, 0);
    assert_eq!(
        verify_once(&f, &ExecutionToken(big), &expected(&f.claims)),
        Err(TokenError::Malformed("token too large"))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// EX-1: decoding arbitrary bytes never panics.
    #[test]
    fn ex1_decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        let _ = decode(&bytes);
        let _ = decode_claims(&bytes);
    }

    /// EX-1: arbitrary token text never panics and never verifies.
    #[test]
    fn ex1_arbitrary_text_never_verifies(text in ".{0,600}") {
        let f = fixture();
        if let Ok(token) = ExecutionToken::from_base64(&text) {
            assert!(verify_once(&f, &token, &expected(&f.claims)).is_err());
        }
    }

    /// EX-1: overwriting any byte of a valid token with a different value is never accepted.
    #[test]
    fn ex1_mutated_token_never_verifies(index in any::<prop::sample::Index>(), value in any::<u8>()) {
        let f = fixture();
        let token = f.signer.sign(&f.claims).expect("sign");
        let mut bytes = token.0.clone();
        let i = index.index(bytes.len());
        prop_assume!(bytes[i] != value);
        bytes[i] = value;
        assert!(verify_once(&f, &ExecutionToken(bytes), &expected(&f.claims)).is_err());
    }

    /// EX-1: encoding is canonical: any claims survive encode then decode unchanged.
    #[test]
    fn ex1_claims_round_trip(
        agent in "[a-z0-9][a-z0-9-]{0,127}",
        connection in "[a-z0-9][a-z0-9_-]{0,62}",
        row_cap in any::<u64>(),
        timeout_ms in any::<u64>(),
        issued_at_ms in any::<i64>(),
        nonce in any::<[u8; 16]>(),
    ) {
        let mut claims = claims_for(KeyId(nonce[..8].try_into().expect("8 bytes")), 0);
        claims.agent = agent;
        claims.connection = connection.parse().expect("generated name is valid");
        claims.row_cap = row_cap;
        claims.timeout_ms = timeout_ms;
        claims.issued_at_ms = issued_at_ms;
        claims.expires_at_ms = issued_at_ms.wrapping_add(1);
        claims.nonce = nonce;
        let encoded = encode_claims(&claims).expect("encode");
        assert_eq!(decode_claims(&encoded), Ok(claims));
    }
}
