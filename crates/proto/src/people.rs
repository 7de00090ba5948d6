//! People: first-start bootstrap and logins (`/api/v1/bootstrap`, `/api/v1/login`).
//! Secrets in these bodies never print in `Debug`.

use portcullis_core::Role;
use serde::{Deserialize, Serialize};

/// `POST /api/v1/bootstrap`: the one-time setup token creates the first admin.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRequest {
    pub setup_token: String,
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for BootstrapRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapRequest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The only time the TOTP secret and the recovery codes are shown.
#[derive(Clone, Serialize, Deserialize)]
pub struct BootstrapResponse {
    pub name: String,
    /// Enrol an authenticator app from this (it holds the secret).
    pub otpauth_uri: String,
    /// The same secret in base32, for manual entry.
    pub totp_secret: String,
    /// Single-use codes for when the authenticator is lost. Keep them offline.
    pub recovery_codes: Vec<String>,
}

impl std::fmt::Debug for BootstrapResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapResponse")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/login`: a password and, for accounts with MFA, a TOTP code or a recovery
/// code.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub name: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_code: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A new session. The browser gets it as an `HttpOnly` cookie; the CLI keeps `token` (a
/// session-bound bearer) in its config directory with mode 0600.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    pub name: String,
    pub role: Role,
    /// The session ends at this time at the latest.
    pub expires_at: String,
    /// And earlier when unused this long.
    pub idle_timeout_secs: u64,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}
