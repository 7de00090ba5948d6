//! Identity and secret-handling building blocks for Portcullis.
//!
//! This crate owns the pure, security-critical pieces the server assembles into login,
//! sessions and secret storage: the master key and its loading rules (SEC-1), the versioned
//! vault key ring (SEC-3), Argon2id password hashing and strength rules (AUTH-1), lockout
//! backoff (AUTH-1), TOTP and recovery codes (AUTH-2), and session ids, expiry and cookies
//! (AUTH-3, SEC-5).
//!
//! It must never depend on a database, an HTTP stack or an async runtime, and it reads no wall
//! clock: callers pass `now` in (only the work limiter measures how long it has waited). The
//! only I/O is reading the master key file. Secret-bearing types zeroize on drop and redact
//! themselves in `Debug`; no error message carries a secret.

pub mod lockout;
pub mod master_key;
pub mod password;
pub mod recovery;
pub mod session;
pub mod totp;
pub mod vault;

pub use lockout::Lockout;
pub use master_key::{LowEntropyReason, MasterKey, MasterKeyError};
pub use password::{Hasher, PasswordError, WeakPassword, WorkLimiter, WorkPermit, check_strength};
pub use recovery::{RECOVERY_CODE_COUNT, find_match, generate_codes, hash_code};
pub use session::{
    CookieError, Expiry, SessionTimes, clear_cookie_header, cookie_header, hash_session_id,
    new_session_id,
};
pub use totp::{TotpError, TotpSecret};
pub use vault::{KeyRing, SealContext, VaultError};
