-- Approvers see the plan of what they are asked to approve: besides the one job that executes
-- a request, a request may have one read-only job that explains it. Execution stays once per
-- request, ever (unique per request and purpose).
CREATE TABLE jobs_v2 (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests(id),
    purpose TEXT NOT NULL DEFAULT 'execute' CHECK (purpose IN ('execute', 'explain')),
    -- The statement an explain job runs; execute jobs run the request's own statement.
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
INSERT INTO jobs_v2 (id, request_id, purpose, connection, state, agent, nonce, created_at_ms, leased_at_ms, lease_until_ms)
    SELECT id, request_id, 'execute', connection, state, agent, nonce, created_at_ms, leased_at_ms, lease_until_ms FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
CREATE INDEX jobs_queue ON jobs(state, connection, created_at_ms);

-- The plan (JSON: columns and rows, or an error) obtained for approvers. Never ANALYZE.
ALTER TABLE requests ADD COLUMN explain TEXT;
