-- Principals. Secrets are stored only as SHA-256 hashes of high-entropy values (SEC-5).
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    suspended_at_ms INTEGER
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id TEXT NOT NULL REFERENCES users(id),
    role TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    environments TEXT,
    created_by TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    last_used_at_ms INTEGER,
    last_used_addr TEXT,
    revoked_at_ms INTEGER
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_hash BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_seen_at_ms INTEGER,
    revoked_at_ms INTEGER
);

CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    requester_user_id TEXT NOT NULL,
    token_id TEXT,
    connection TEXT NOT NULL,
    kind TEXT NOT NULL,
    environment TEXT NOT NULL,
    class TEXT NOT NULL,
    statement TEXT NOT NULL,
    statement_sha256 BLOB NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL,
    decision TEXT NOT NULL,
    policy_rule INTEGER,
    approval_sha256 BLOB,
    agent TEXT,
    error_code TEXT,
    error_message TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    approved_at_ms INTEGER,
    dispatched_at_ms INTEGER,
    started_at_ms INTEGER,
    finished_at_ms INTEGER
);
CREATE INDEX requests_by_state ON requests(state, updated_at_ms);
CREATE INDEX requests_by_user ON requests(requester_user_id, created_at_ms);

-- One job per request, ever: a request that ran or failed never gets a new token.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE REFERENCES requests(id),
    connection TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done')),
    agent TEXT,
    nonce BLOB,
    created_at_ms INTEGER NOT NULL,
    leased_at_ms INTEGER,
    lease_until_ms INTEGER
);
CREATE INDEX jobs_queue ON jobs(state, connection, created_at_ms);

-- The hash chain (AUD-1). seq is dense from 1; hash covers seq, prev_hash and every column.
CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
