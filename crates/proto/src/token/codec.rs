//! The execution-token byte format (control EX-1): `version || claims_len (u32 BE) || claims ||
//! signature`, where the claims are tag-length-value records with tags 1..=15 in strictly
//! increasing order. Every reader here faces untrusted bytes and fails as `Malformed`; none
//! panics.

use std::str::FromStr;

use ed25519_dalek::Signature;
use portcullis_core::{ConnectionName, Environment, OperationClass};
use uuid::Uuid;

use super::{
    ExecutionToken, KeyId, MAX_AGENT_NAME_BYTES, MAX_TOKEN_BYTES, TOKEN_VERSION, TokenClaims,
    TokenError,
};

/// Prefixed to every signed message so that no other signature by the same key (an
/// announcement, a future token version) can be replayed as an execution token.
const SIGNATURE_DOMAIN: &[u8] = b"portcullis/execution-token/v1\0";
/// Upper bound on any text claim before it is parsed into its core type.
const MAX_TEXT_CLAIM_BYTES: usize = 128;

/// Claim tags, in the only order the decoder accepts.
pub(super) mod tag {
    pub(in crate::token) const KEY_ID: u8 = 1;
    pub(in crate::token) const JOB_ID: u8 = 2;
    pub(in crate::token) const REQUEST_ID: u8 = 3;
    pub(in crate::token) const AGENT: u8 = 4;
    pub(in crate::token) const CONNECTION: u8 = 5;
    pub(in crate::token) const ENVIRONMENT: u8 = 6;
    pub(in crate::token) const CLASS: u8 = 7;
    pub(in crate::token) const STATEMENT_SHA256: u8 = 8;
    pub(in crate::token) const ROW_CAP: u8 = 9;
    pub(in crate::token) const TIMEOUT_MS: u8 = 10;
    pub(in crate::token) const APPROVAL_SHA256: u8 = 11;
    pub(in crate::token) const ISSUED_AT_MS: u8 = 12;
    pub(in crate::token) const EXPIRES_AT_MS: u8 = 13;
    pub(in crate::token) const NONCE: u8 = 14;
    pub(in crate::token) const DRY_RUN: u8 = 15;
    pub(in crate::token) const LAST: u8 = DRY_RUN;
}

fn check_agent(agent: &str) -> Result<(), TokenError> {
    if agent.is_empty() {
        return Err(TokenError::Malformed("agent name is empty"));
    }
    if agent.len() > MAX_AGENT_NAME_BYTES {
        return Err(TokenError::Malformed("agent name is too long"));
    }
    Ok(())
}

/// The exact bytes the signature covers: domain prefix, version, claims.
pub(super) fn signed_message(version: u8, claims: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 1 + claims.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.push(version);
    message.extend_from_slice(claims);
    message
}

/// The length of a token carrying `claims_len` bytes of claims.
pub(super) fn token_len(claims_len: usize) -> usize {
    1 + 4 + claims_len + Signature::BYTE_SIZE
}

/// `version || claims_len (u32 BE) || claims || signature`.
pub(super) fn assemble(claims: &[u8], signature: &Signature) -> Result<ExecutionToken, TokenError> {
    let claims_len =
        u32::try_from(claims.len()).map_err(|_| TokenError::Malformed("token too large"))?;
    let mut out = Vec::with_capacity(token_len(claims.len()));
    out.push(TOKEN_VERSION);
    out.extend_from_slice(&claims_len.to_be_bytes());
    out.extend_from_slice(claims);
    out.extend_from_slice(&signature.to_bytes());
    if out.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("token too large"));
    }
    Ok(ExecutionToken(out))
}

pub(super) fn encode_claims(claims: &TokenClaims) -> Result<Vec<u8>, TokenError> {
    check_agent(&claims.agent)?;
    let mut out = Vec::with_capacity(512);
    put(&mut out, tag::KEY_ID, &claims.key_id.0)?;
    put(&mut out, tag::JOB_ID, claims.job_id.as_bytes())?;
    put(&mut out, tag::REQUEST_ID, claims.request_id.as_bytes())?;
    put(&mut out, tag::AGENT, claims.agent.as_bytes())?;
    put(
        &mut out,
        tag::CONNECTION,
        claims.connection.as_str().as_bytes(),
    )?;
    put(
        &mut out,
        tag::ENVIRONMENT,
        claims.environment.as_str().as_bytes(),
    )?;
    put(&mut out, tag::CLASS, claims.class.as_str().as_bytes())?;
    put(&mut out, tag::STATEMENT_SHA256, &claims.statement_sha256)?;
    put(&mut out, tag::ROW_CAP, &claims.row_cap.to_be_bytes())?;
    put(&mut out, tag::TIMEOUT_MS, &claims.timeout_ms.to_be_bytes())?;
    put(&mut out, tag::APPROVAL_SHA256, &claims.approval_sha256)?;
    put(
        &mut out,
        tag::ISSUED_AT_MS,
        &claims.issued_at_ms.to_be_bytes(),
    )?;
    put(
        &mut out,
        tag::EXPIRES_AT_MS,
        &claims.expires_at_ms.to_be_bytes(),
    )?;
    put(&mut out, tag::NONCE, &claims.nonce)?;
    put(&mut out, tag::DRY_RUN, &[u8::from(claims.dry_run)])?;
    Ok(out)
}

pub(super) fn put(out: &mut Vec<u8>, tag: u8, value: &[u8]) -> Result<(), TokenError> {
    let len = u32::try_from(value.len()).map_err(|_| TokenError::Malformed("claim too long"))?;
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// A token split into its parts; nothing here has been authenticated yet.
#[derive(Debug)]
pub(super) struct Decoded<'a> {
    pub(super) version: u8,
    pub(super) claims_bytes: &'a [u8],
    pub(super) claims: TokenClaims,
    pub(super) signature: [u8; Signature::BYTE_SIZE],
}

pub(super) fn decode(bytes: &[u8]) -> Result<Decoded<'_>, TokenError> {
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("token too large"));
    }
    let mut reader = Reader(bytes);
    let [version] = reader.array::<1>()?;
    if version != TOKEN_VERSION {
        return Err(TokenError::UnsupportedVersion(version));
    }
    let claims_len = reader.length()?;
    let claims_bytes = reader.take(claims_len)?;
    let signature = reader.array::<{ Signature::BYTE_SIZE }>()?;
    reader.finish("trailing bytes after the signature")?;
    let claims = decode_claims(claims_bytes)?;
    Ok(Decoded {
        version,
        claims_bytes,
        claims,
        signature,
    })
}

pub(super) fn decode_claims(bytes: &[u8]) -> Result<TokenClaims, TokenError> {
    let mut r = Reader(bytes);
    let key_id = KeyId(r.fixed(tag::KEY_ID)?);
    let job_id = Uuid::from_bytes(r.fixed(tag::JOB_ID)?);
    let request_id = Uuid::from_bytes(r.fixed(tag::REQUEST_ID)?);
    let agent = r.text(tag::AGENT)?.to_owned();
    check_agent(&agent)?;
    let connection = ConnectionName::from_str(r.text(tag::CONNECTION)?)
        .map_err(|_| TokenError::Malformed("invalid connection name"))?;
    let environment = Environment::from_str(r.text(tag::ENVIRONMENT)?)
        .map_err(|_| TokenError::Malformed("invalid environment"))?;
    let class = OperationClass::from_str(r.text(tag::CLASS)?)
        .map_err(|_| TokenError::Malformed("invalid operation class"))?;
    let statement_sha256 = r.fixed(tag::STATEMENT_SHA256)?;
    let row_cap = u64::from_be_bytes(r.fixed(tag::ROW_CAP)?);
    let timeout_ms = u64::from_be_bytes(r.fixed(tag::TIMEOUT_MS)?);
    let approval_sha256 = r.fixed(tag::APPROVAL_SHA256)?;
    let issued_at_ms = i64::from_be_bytes(r.fixed(tag::ISSUED_AT_MS)?);
    let expires_at_ms = i64::from_be_bytes(r.fixed(tag::EXPIRES_AT_MS)?);
    let nonce = r.fixed(tag::NONCE)?;
    let dry_run = match r.fixed::<1>(tag::DRY_RUN)? {
        [0] => false,
        [1] => true,
        _ => return Err(TokenError::Malformed("dry-run flag is neither 0 nor 1")),
    };
    r.finish("trailing bytes after the last claim")?;
    Ok(TokenClaims {
        key_id,
        job_id,
        request_id,
        agent,
        connection,
        environment,
        class,
        statement_sha256,
        row_cap,
        timeout_ms,
        approval_sha256,
        issued_at_ms,
        expires_at_ms,
        nonce,
        dry_run,
    })
}

/// A cursor over untrusted bytes; every read is bounds-checked and fails as `Malformed`.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if n > self.0.len() {
            return Err(TokenError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(TokenError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }

    pub(super) fn length(&mut self) -> Result<usize, TokenError> {
        usize::try_from(u32::from_be_bytes(self.array::<4>()?))
            .map_err(|_| TokenError::Malformed("length out of range"))
    }

    /// Reads one claim, which must carry `expected` as its tag.
    pub(super) fn field(&mut self, expected: u8) -> Result<&'a [u8], TokenError> {
        let [found] = self.array::<1>()?;
        if found == 0 || found > tag::LAST {
            return Err(TokenError::Malformed("unknown claim tag"));
        }
        if found < expected {
            return Err(TokenError::Malformed("duplicate or out-of-order claim tag"));
        }
        if found > expected {
            return Err(TokenError::Malformed("missing or out-of-order claim tag"));
        }
        let len = self.length()?;
        self.take(len)
    }

    pub(super) fn fixed<const N: usize>(&mut self, expected: u8) -> Result<[u8; N], TokenError> {
        let value = self.field(expected)?;
        <[u8; N]>::try_from(value).map_err(|_| TokenError::Malformed("claim has the wrong length"))
    }

    pub(super) fn text(&mut self, expected: u8) -> Result<&'a str, TokenError> {
        let value = self.field(expected)?;
        if value.len() > MAX_TEXT_CLAIM_BYTES {
            return Err(TokenError::Malformed("text claim is too long"));
        }
        std::str::from_utf8(value).map_err(|_| TokenError::Malformed("text claim is not UTF-8"))
    }

    pub(super) fn finish(&self, what: &'static str) -> Result<(), TokenError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(TokenError::Malformed(what))
        }
    }
}
