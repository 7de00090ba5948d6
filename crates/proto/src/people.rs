//! People: first-start bootstrap and logins (`/api/v1/bootstrap`, `/api/v1/login`).
//! Secrets in these bodies never print in `Debug`.

use portcullis_core::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::openapi;

/// `POST /api/v1/bootstrap`: the one-time setup token creates the first admin.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRequest {
    pub setup_token: String,
    /// 1-64 letters, digits, `-`, `_`, `.` or `@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
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
#[derive(Clone, Serialize, Deserialize, ToSchema)]
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
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub name: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_code: Option<String>,
    /// After a TOTP code: return a device token that stands in for the code on this device
    /// until it expires (`people.trusted_device_days`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remember_device: bool,
    /// A device token from an earlier login with `remember_device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
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
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub name: String,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
    /// The session ends at this time at the latest.
    pub expires_at: String,
    /// And earlier when unused this long.
    pub idle_timeout_secs: u64,
    /// Set when the login asked to remember the device: keep it private, like a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/enrol`: an invitation's enrolment token sets the password of a new user (or,
/// after `reset-mfa`, is presented with the current one) and enrols TOTP.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    pub enrol_token: String,
    /// The new password of a user who has none yet; otherwise the current password.
    pub password: String,
    /// Enrol TOTP. Roles that require MFA always enrol; others may opt out with `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa: Option<bool>,
}

impl std::fmt::Debug for EnrolRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolRequest")
            .field("mfa", &self.mfa)
            .finish_non_exhaustive()
    }
}

/// The only time an enrolled TOTP secret and its recovery codes are shown.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrolResponse {
    pub name: String,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otpauth_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    #[serde(default)]
    pub recovery_codes: Vec<String>,
}

impl std::fmt::Debug for EnrolResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolResponse")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/step-up`: a fresh TOTP (or recovery) code for the current session, needed
/// before sensitive actions (AUTH-2).
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_code: Option<String>,
}

impl std::fmt::Debug for StepUpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepUpRequest(<redacted>)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepUpResponse {
    /// Sensitive actions are allowed in this session until then.
    pub valid_until: String,
}

/// `POST /api/v1/password` (AUTH-4).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

impl std::fmt::Debug for PasswordChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordChange(<redacted>)")
    }
}

/// What a password change ended: every other session, every API token, every trusted device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasswordChanged {
    pub sessions_revoked: u64,
    pub tokens_revoked: u64,
    pub devices_revoked: u64,
}

/// Where a user comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserSource {
    Bootstrap,
    Api,
    Config,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub name: String,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
    pub source: UserSource,
    pub created_at: String,
    pub password_set: bool,
    pub mfa_enrolled: bool,
    pub mfa_required: bool,
    pub active_sessions: u64,
    pub active_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_reason: Option<String>,
    /// An invitation is open until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_expires_at: Option<String>,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 letters, digits, `-`, `_`, `.` or `@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
}

/// An invitation: the enrolment token is shown once; pass it to the user privately.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Invite {
    pub name: String,
    pub enrol_token: String,
    pub expires_at: String,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("name", &self.name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserCreated {
    pub info: UserView,
    pub invite: Invite,
}

/// `POST /api/v1/users/{name}/suspend`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a suspension ended, all in one transaction (AUTH-7).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Suspended {
    pub sessions_revoked: u64,
    pub tokens_revoked: u64,
    pub requests_cancelled: u64,
}

/// `POST /api/v1/vault/rotate` (SEC-3).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VaultRotated {
    pub version: u32,
    pub resealed: u64,
}

/// `POST /api/v1/lockdown` (IR-3): what the lockdown ended, in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LockdownOutcome {
    pub users_locked: u64,
    pub sessions_revoked: u64,
    pub tokens_revoked: u64,
    pub requests_cancelled: u64,
}

/// `POST /api/v1/lockdown/lift`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LockdownLifted {
    pub users_unlocked: u64,
}
