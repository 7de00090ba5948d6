-- Users as config and API (AUTH-7, AZ-1), invitations, trusted devices (AUTH-2).
-- Where a user comes from: 'bootstrap', 'api' or 'config' ([[users]] in the TOML file).
ALTER TABLE users ADD COLUMN source TEXT NOT NULL DEFAULT 'api';
ALTER TABLE users ADD COLUMN suspended_reason TEXT;

-- One open invitation per user: the enrolment token sets a password and enrols TOTP. Stored
-- as SHA-256 of the token, like every other credential (SEC-5).
CREATE TABLE enrolments (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE REFERENCES users(id),
    secret_hash BLOB NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

-- Devices on which a TOTP code was entered with "remember this device": the device token
-- stands in for the code at login until it expires (never for step-up).
CREATE TABLE trusted_devices (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    secret_hash BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
CREATE INDEX trusted_devices_by_user ON trusted_devices(user_id);
CREATE INDEX api_tokens_by_owner ON api_tokens(owner_id);
