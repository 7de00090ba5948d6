-- Previews for approvers: a write awaiting approval may be dry-run by an agent inside a
-- transaction that is always rolled back; the number of rows it would change is stored.
CREATE TABLE jobs_v3 (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests(id),
    purpose TEXT NOT NULL DEFAULT 'execute' CHECK (purpose IN ('execute', 'explain', 'preview')),
    statement TEXT,
    connection TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done')),
    agent TEXT,
    nonce BLOB,
    created_at_ms INTEGER NOT NULL,
    leased_at_ms INTEGER,
    lease_until_ms INTEGER,
    UNIQUE (request_id, purpose)
);
INSERT INTO jobs_v3 (id, request_id, purpose, statement, connection, state, agent, nonce, created_at_ms, leased_at_ms, lease_until_ms)
    SELECT id, request_id, purpose, statement, connection, state, agent, nonce, created_at_ms, leased_at_ms, lease_until_ms FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v3 RENAME TO jobs;
CREATE INDEX jobs_queue ON jobs(state, connection, created_at_ms);

ALTER TABLE requests ADD COLUMN preview TEXT;
