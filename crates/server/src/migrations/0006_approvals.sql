-- Approvals (AZ-3): the steps a request needs (JSON [{"approvals": n, "roles": [...]}]) and
-- the step it is at; one decision per person per request, so nobody counts twice.
ALTER TABLE requests ADD COLUMN steps TEXT;
ALTER TABLE requests ADD COLUMN current_step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN policy_rule_name TEXT;
CREATE TABLE approvals (
    request_id TEXT NOT NULL REFERENCES requests(id),
    approver_user_id TEXT NOT NULL REFERENCES users(id),
    approver TEXT NOT NULL,
    role TEXT NOT NULL,
    step INTEGER NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment TEXT,
    -- The plan the approver had in front of them when deciding.
    explain_shown TEXT,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver_user_id)
);

-- Alerts (AUD-5): an append-only table written in the same transaction as the audit event
-- that raised the alert.
CREATE TABLE alerts (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    severity TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL
);

-- Lockdown (IR-3): which suspensions the lockdown made, so that lifting it lifts only those.
ALTER TABLE users ADD COLUMN lockdown_suspended INTEGER NOT NULL DEFAULT 0;
