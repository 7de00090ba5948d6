//! Time-based one-time passwords for MFA (AUTH-2).
//!
//! Codes follow RFC 6238 as every authenticator app implements it: HMAC-SHA-1, 6 digits,
//! 30-second steps, and one step of clock skew either way. The algorithm is `totp-rs`'s; this
//! module adds what the RFC leaves to the server:
//!
//! - **Replay refusal.** [`TotpSecret::verify`] takes the last step the user had accepted and
//!   refuses any code whose step is not later (RFC 6238 §5.2). The caller stores the returned
//!   step atomically with the login, so a code works once even within its own 90-second window.
//! - **Strict input.** Exactly six ASCII digits; anything else is [`TotpError::Malformed`]
//!   (strip spaces in the UI layer if you want to be forgiving).
//! - **Constant time.** Every candidate step in the window is compared, with `totp-rs`'s
//!   constant-time token comparison, whatever matched first.

use std::fmt;

use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

/// Digits per code.
pub const TOTP_DIGITS: u8 = 6;
/// Seconds per time step.
pub const TOTP_STEP_SECONDS: u64 = 30;
/// Steps of clock skew tolerated on either side of the current one.
pub const TOTP_SKEW_STEPS: u64 = 1;
/// The issuer shown in authenticator apps.
pub const TOTP_ISSUER: &str = "Portcullis";
/// Bytes in a generated secret (160 bits, RFC 4226's recommendation).
pub const TOTP_SECRET_BYTES: usize = 20;
/// The fewest secret bytes accepted (128 bits, RFC 4226's minimum).
const MIN_SECRET_BYTES: usize = 16;
/// The most secret bytes accepted; HMAC-SHA-1 gains nothing past its block size.
const MAX_SECRET_BYTES: usize = 64;

/// Why a code or secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// The code is not exactly six ASCII digits.
    #[error("enter the 6-digit code from your authenticator app")]
    Malformed,
    /// The code matches no step within the allowed skew.
    #[error("the code is incorrect or has expired")]
    Invalid,
    /// The code matches only steps at or before the last accepted one.
    #[error("this code has already been used; wait for the next one")]
    Replayed,
    /// A stored secret has an unsupported length.
    #[error("TOTP secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, got {bytes}")]
    SecretLength {
        /// The length supplied.
        bytes: usize,
    },
    /// The issuer or account name cannot appear in an otpauth URI (empty, or contains `:`).
    #[error("the account name or issuer is not usable in an authenticator label: {0}")]
    InvalidLabel(String),
}

/// A shared TOTP secret. Zeroized on drop; `Debug` prints `TotpSecret(<redacted>)`.
#[derive(Clone)]
pub struct TotpSecret {
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// A fresh random 160-bit secret.
    pub fn generate() -> TotpSecret {
        let secret = totp_rs::Secret::generate();
        TotpSecret {
            bytes: Zeroizing::new(secret.as_bytes().to_vec()),
        }
    }

    /// A secret from stored bytes (after [`crate::vault::KeyRing::open`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<TotpSecret, TotpError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(TotpError::SecretLength { bytes: bytes.len() });
        }
        Ok(TotpSecret {
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// The secret as unpadded base32, the form authenticator apps accept for manual entry.
    /// It is the secret itself: show it once and never log it.
    pub fn to_base32(&self) -> String {
        totp_rs::Secret::new(self.bytes.to_vec().into_boxed_slice()).to_base32()
    }

    /// A secret from its base32 form (as [`to_base32`](Self::to_base32) prints it).
    pub fn from_base32(text: &str) -> Result<TotpSecret, TotpError> {
        let secret = totp_rs::Secret::try_from_base32(text.trim().to_ascii_uppercase())
            .map_err(|_| TotpError::Malformed)?;
        TotpSecret::from_bytes(secret.as_bytes())
    }

    /// The raw secret, for sealing with the vault. Never log or display it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The `otpauth://totp/…` URI an authenticator app enrols from (usually shown as a QR
    /// code). It contains the secret: show it once, over the authenticated session, and never
    /// log it.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Result<String, TotpError> {
        self.builder()
            .with_issuer(Some(issuer))
            .with_account_name(account)
            .build()
            .and_then(|totp| totp.to_url())
            .map_err(|e| TotpError::InvalidLabel(e.to_string()))
    }

    /// The code for the step containing `now_unix` (seconds), for tests and the CLI.
    pub fn current_code(&self, now_unix: u64) -> String {
        self.totp().generate(now_unix).to_string()
    }

    /// Checks `code` at time `now_unix` (seconds). `last_step` is the step of the last code this
    /// user had accepted, if any. Returns the accepted step, which the caller must store as the
    /// new `last_step` in the same transaction that completes the login.
    pub fn verify(
        &self,
        code: &str,
        now_unix: u64,
        last_step: Option<u64>,
    ) -> Result<u64, TotpError> {
        if code.len() != usize::from(TOTP_DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TotpError::Malformed);
        }
        let totp = self.totp();
        let current = now_unix / TOTP_STEP_SECONDS;
        let first = current.saturating_sub(TOTP_SKEW_STEPS);
        let last = current.saturating_add(TOTP_SKEW_STEPS);
        let mut accepted: Option<u64> = None;
        let mut replayed = false;
        // Every step in the window is checked, so timing does not reveal which one matched.
        for step in first..=last {
            let time = step.saturating_mul(TOTP_STEP_SECONDS);
            let matches = totp.check(code, time) == Some(step);
            let fresh = last_step.is_none_or(|last| step > last);
            if matches && fresh {
                accepted = Some(accepted.map_or(step, |a| a.min(step)));
            }
            replayed |= matches && !fresh;
        }
        match accepted {
            Some(step) => Ok(step),
            None if replayed => Err(TotpError::Replayed),
            None => Err(TotpError::Invalid),
        }
    }

    fn builder(&self) -> Builder {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(TOTP_DIGITS)
            .with_step_duration(TOTP_STEP_SECONDS)
            .with_secret(self.bytes.to_vec())
    }

    /// A zero-skew generator: the skew window is applied by [`TotpSecret::verify`] itself so it
    /// can tell each step apart.
    fn totp(&self) -> Totp {
        self.builder().with_skew(0).build_noncompliant()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips() {
        let secret = TotpSecret::generate();
        let text = secret.to_base32();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        let back = TotpSecret::from_base32(&text.to_ascii_lowercase()).expect("parse");
        assert_eq!(back.as_bytes(), secret.as_bytes());
        assert!(TotpSecret::from_base32("not base32!").is_err());
    }

    /// A time in the middle of a step, so ±1 step is unambiguous.
    const NOW: u64 = 1_800_000_015;
    const STEP: u64 = NOW / TOTP_STEP_SECONDS;

    /// A fixed secret keeps the tests deterministic: with a random one, two steps in the window
    /// share a code about once in 300 000 runs.
    fn secret() -> TotpSecret {
        TotpSecret::from_bytes(b"portcullis-test-seed").expect("20 bytes")
    }

    #[test]
    fn matches_the_rfc_6238_sha1_test_vectors() {
        // RFC 6238 appendix B, truncated to 6 digits.
        let secret = TotpSecret::from_bytes(b"12345678901234567890").expect("20 bytes");
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(secret.current_code(time), code, "t = {time}");
            assert_eq!(secret.verify(code, time, None), Ok(time / 30));
        }
    }

    #[test]
    fn a_valid_code_is_accepted_and_returns_its_step() {
        let secret = secret();
        let code = secret.current_code(NOW);
        assert_eq!(secret.verify(&code, NOW, None), Ok(STEP));
        assert_eq!(secret.verify(&code, NOW, Some(STEP - 1)), Ok(STEP));
    }

    #[test]
    fn the_same_code_cannot_be_replayed() {
        let secret = secret();
        let code = secret.current_code(NOW);
        let accepted = secret.verify(&code, NOW, None).expect("first use");
        assert_eq!(
            secret.verify(&code, NOW, Some(accepted)),
            Err(TotpError::Replayed)
        );
        assert_eq!(
            secret.verify(&code, NOW + 10, Some(accepted)),
            Err(TotpError::Replayed)
        );
    }

    #[test]
    fn previous_step_code_is_accepted_once_within_skew() {
        let secret = secret();
        let previous = secret.current_code(NOW - TOTP_STEP_SECONDS);
        let next = secret.current_code(NOW + TOTP_STEP_SECONDS);
        // Once the code for a later step was accepted, an earlier one is refused.
        let later = secret
            .verify(&next, NOW, None)
            .expect("next step within skew");
        assert_eq!(later, STEP + 1);
        assert_eq!(
            secret.verify(&previous, NOW, Some(later)),
            Err(TotpError::Replayed)
        );
        // Without that, the previous step's code is fine exactly once.
        let accepted = secret
            .verify(&previous, NOW, None)
            .expect("previous step within skew");
        assert_eq!(accepted, STEP - 1);
        assert_eq!(
            secret.verify(&previous, NOW, Some(accepted)),
            Err(TotpError::Replayed)
        );
        // And the current code is still usable after it.
        let current = secret.current_code(NOW);
        assert_eq!(secret.verify(&current, NOW, Some(accepted)), Ok(STEP));
    }

    #[test]
    fn codes_outside_the_skew_window_are_invalid() {
        let secret = secret();
        let codes: Vec<String> = (0..5)
            .map(|i| secret.current_code(NOW - 2 * TOTP_STEP_SECONDS + i * TOTP_STEP_SECONDS))
            .collect();
        let distinct: std::collections::HashSet<&String> = codes.iter().collect();
        assert_eq!(
            distinct.len(),
            5,
            "the fixed secret gives five distinct codes"
        );
        let (stale, early) = (&codes[0], &codes[4]);
        assert_eq!(secret.verify(stale, NOW, None), Err(TotpError::Invalid));
        assert_eq!(secret.verify(early, NOW, None), Err(TotpError::Invalid));
        assert!(secret.verify(stale, NOW - TOTP_STEP_SECONDS, None).is_ok());
        assert!(secret.verify(early, NOW + TOTP_STEP_SECONDS, None).is_ok());
    }

    #[test]
    fn a_wrong_code_is_refused() {
        let secret = secret();
        let window: Vec<String> = (0..3)
            .map(|i| secret.current_code(NOW - TOTP_STEP_SECONDS + i * TOTP_STEP_SECONDS))
            .collect();
        let wrong = (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|code| !window.contains(code))
            .expect("some code is wrong");
        assert_eq!(secret.verify(&wrong, NOW, None), Err(TotpError::Invalid));
        // Another user's secret does not produce valid codes for this one.
        let other = TotpSecret::from_bytes(&[7u8; 20]).expect("secret");
        let theirs = other.current_code(NOW);
        assert!(!window.contains(&theirs));
        assert_eq!(secret.verify(&theirs, NOW, None), Err(TotpError::Invalid));
    }

    #[test]
    fn malformed_codes_are_refused_before_any_check() {
        let secret = secret();
        let code = secret.current_code(NOW);
        for bad in [
            String::new(),
            "12345".to_owned(),
            "1234567".to_owned(),
            "12a456".to_owned(),
            "+12345".to_owned(),
            " 123456".to_owned(),
            format!("{code} "),
            format!("{}-{}", &code[..3], &code[3..]),
            "١٢٣٤٥٦".to_owned(),
        ] {
            assert_eq!(
                secret.verify(&bad, NOW, None),
                Err(TotpError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_round_trip_and_are_redacted() {
        let secret = TotpSecret::generate();
        assert_eq!(secret.as_bytes().len(), TOTP_SECRET_BYTES);
        let restored = TotpSecret::from_bytes(secret.as_bytes()).expect("round trip");
        assert_eq!(restored.current_code(NOW), secret.current_code(NOW));
        assert_eq!(format!("{secret:?}"), "TotpSecret(<redacted>)");
        assert_ne!(TotpSecret::generate().as_bytes(), secret.as_bytes());
        assert_eq!(
            TotpSecret::from_bytes(&[1u8; 15]).expect_err("short"),
            TotpError::SecretLength { bytes: 15 }
        );
        assert!(TotpSecret::from_bytes(&[1u8; 65]).is_err());
    }

    #[test]
    fn otpauth_uri_names_issuer_and_account_and_uses_defaults() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890").expect("secret");
        let uri = secret
            .otpauth_uri(TOTP_ISSUER, "alice@example.com")
            .expect("uri");
        assert_eq!(
            uri,
            "otpauth://totp/Portcullis:alice%40example.com?\
             secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Portcullis"
        );
        assert!(matches!(
            secret.otpauth_uri(TOTP_ISSUER, "a:b"),
            Err(TotpError::InvalidLabel(_))
        ));
        assert!(matches!(
            secret.otpauth_uri(TOTP_ISSUER, ""),
            Err(TotpError::InvalidLabel(_))
        ));
    }
}
