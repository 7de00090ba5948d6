-- Signing-key rotations (IR-4): each announcement, signed by the key it replaces. Agents
-- follow the chain from a key they pin; operators audit it here and in the audit log.
CREATE TABLE key_rotations (
    seq INTEGER PRIMARY KEY,
    prev_key_id TEXT NOT NULL,
    prev_public_key TEXT NOT NULL,
    new_key_id TEXT NOT NULL UNIQUE,
    new_public_key TEXT NOT NULL,
    issued_at_ms INTEGER NOT NULL,
    signature TEXT NOT NULL
);
