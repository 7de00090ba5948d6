-- People (AUTH-1, AUTH-2, AUTH-3). A password is stored only as its Argon2id PHC string; the
-- TOTP seed only sealed by the vault (SEC-3), bound to its row and column.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN totp_sealed BLOB;
ALTER TABLE users ADD COLUMN totp_last_step INTEGER;
ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_failed_at_ms INTEGER;
ALTER TABLE users ADD COLUMN password_changed_at_ms INTEGER;

-- Single-use recovery codes, stored as SHA-256 of the normalised code.
CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL REFERENCES users(id),
    code_hash BLOB NOT NULL,
    used_at_ms INTEGER,
    PRIMARY KEY (user_id, code_hash)
);

-- Sessions (AUTH-3, SEC-5): the id is shown once (cookie or CLI token) and stored as SHA-256.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    secret_hash BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_seen_at_ms INTEGER NOT NULL,
    mfa_at_ms INTEGER,
    client_addr TEXT NOT NULL,
    revoked_at_ms INTEGER
);
CREATE INDEX sessions_by_user ON sessions(user_id);

-- Server-wide settings: the vault's current key version, the one-time setup token's hash.
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
