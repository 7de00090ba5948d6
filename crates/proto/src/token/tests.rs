//! Security tests for execution tokens, control EX-1. Keys are generated at test time; no
//! private key is written down anywhere in these files.

use ed25519_dalek::{Signer, SigningKey};
use portcullis_core::{Environment, OperationClass};
use rand::Rng;
use uuid::Uuid;

use super::codec::{Reader, assemble, encode_claims, put, signed_message};
use super::{
    ExecutionToken, Expected, KeyId, ReplayCache, TOKEN_VERSION, TokenClaims, TokenError,
    TokenSigner, TrustedKeys, statement_sha256, verify,
};

mod keys;
mod rotation;
mod tamper;
mod verify;

const AGENT: &str = "agent-eu-1";
const STATEMENT: &str = "SELECT id, email FROM accounts WHERE id = 42";
const NOW: i64 = 1_700_000_000_000;
const TTL: i64 = 60_000;

fn fresh_key() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}

fn fresh_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

/// A signer whose key is pinned, plus claims that verify against [`expected`].
struct Fixture {
    signer: TokenSigner,
    raw_key: SigningKey,
    keys: TrustedKeys,
    claims: TokenClaims,
}

fn fixture() -> Fixture {
    let raw_key = fresh_key();
    let signer = TokenSigner::new(raw_key.clone());
    let mut keys = TrustedKeys::new();
    keys.pin(signer.key_id(), signer.verifying_key())
        .expect("pin own key");
    let claims = claims_for(signer.key_id(), NOW);
    Fixture {
        signer,
        raw_key,
        keys,
        claims,
    }
}

fn claims_for(key_id: KeyId, issued_at_ms: i64) -> TokenClaims {
    TokenClaims {
        key_id,
        job_id: Uuid::new_v4(),
        request_id: Uuid::new_v4(),
        agent: AGENT.to_owned(),
        connection: "billing-primary".parse().expect("valid connection name"),
        environment: Environment::Production,
        class: OperationClass::Read,
        statement_sha256: statement_sha256(STATEMENT),
        row_cap: 1_000,
        timeout_ms: 30_000,
        approval_sha256: statement_sha256("approval record 7"),
        issued_at_ms,
        expires_at_ms: issued_at_ms + TTL,
        nonce: fresh_nonce(),
        dry_run: false,
    }
}

fn expected(claims: &TokenClaims) -> Expected<'static> {
    Expected {
        agent: AGENT,
        job_id: claims.job_id,
        statement: STATEMENT,
        now_ms: NOW,
    }
}

/// Signs with a bare key, skipping every check `TokenSigner::sign` makes, as an attacker or a
/// buggy server could.
fn sign_raw(key: &SigningKey, claims: &TokenClaims) -> ExecutionToken {
    let encoded = encode_claims(claims).expect("encodable claims");
    let signature = key.sign(&signed_message(TOKEN_VERSION, &encoded));
    assemble(&encoded, &signature).expect("assemble")
}

/// Builds a token from raw claim bytes with a valid signature over them, so that only the
/// decoder stands between the bytes and acceptance.
fn sign_claim_bytes(key: &SigningKey, version: u8, claims: &[u8]) -> ExecutionToken {
    let signature = key.sign(&signed_message(version, claims));
    let mut out = vec![version];
    out.extend_from_slice(&u32::try_from(claims.len()).expect("small").to_be_bytes());
    out.extend_from_slice(claims);
    out.extend_from_slice(&signature.to_bytes());
    ExecutionToken(out)
}

/// Splits encoded claims into `(tag, value)` records.
fn records(claims: &TokenClaims) -> Records {
    let bytes = encode_claims(claims).expect("encodable claims");
    let mut reader = Reader(&bytes);
    let mut out = Vec::new();
    while !reader.0.is_empty() {
        let [tag] = reader.array::<1>().expect("tag");
        let len = reader.length().expect("len");
        out.push((tag, reader.take(len).expect("value").to_vec()));
    }
    out
}

fn join(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, value) in records {
        put(&mut out, *tag, value).expect("put");
    }
    out
}

fn verify_once(
    f: &Fixture,
    token: &ExecutionToken,
    expected: &Expected<'_>,
) -> Result<TokenClaims, TokenError> {
    verify(&f.keys, token, expected, &mut ReplayCache::new(8)).map(|v| v.claims().clone())
}

/// Signs the fixture's claims after `edit_claims` (bypassing the signer's own checks), verifies
/// after `edit_expected`, and compares with `expect`.
fn check(edit_claims: ClaimsEdit, edit_expected: ExpectedEdit, expect: Result<(), TokenError>) {
    let mut f = fixture();
    edit_claims(&mut f.claims);
    let token = sign_raw(&f.raw_key, &f.claims);
    let mut exp = expected(&f.claims);
    edit_expected(&mut exp);
    let got = verify_once(&f, &token, &exp);
    match expect {
        Ok(()) => assert_eq!(got, Ok(f.claims.clone())),
        Err(e) => assert_eq!(got, Err(e)),
    }
}

/// Edits claims before signing; a plain `fn` so case tables stay data.
type ClaimsEdit = fn(&mut TokenClaims);
/// Edits the verifier's expectations.
type ExpectedEdit = fn(&mut Expected<'static>);
/// Claims as `(tag, value)` records, for building non-canonical encodings.
type Records = Vec<(u8, Vec<u8>)>;

fn keep_claims(_: &mut TokenClaims) {}
fn keep_expected(_: &mut Expected<'static>) {}
