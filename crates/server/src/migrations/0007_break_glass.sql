-- Break-glass (AZ-4): time-boxed grants, and the requests that ran under one, each awaiting
-- an after-the-fact review by another admin.
CREATE TABLE break_glass (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    user_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX break_glass_by_user ON break_glass(user_id, expires_at_ms);
ALTER TABLE requests ADD COLUMN break_glass_id TEXT;
ALTER TABLE requests ADD COLUMN reviewed_by TEXT;
ALTER TABLE requests ADD COLUMN reviewed_at_ms INTEGER;
ALTER TABLE requests ADD COLUMN review_comment TEXT;
CREATE INDEX requests_unreviewed ON requests(created_at_ms)
    WHERE break_glass_id IS NOT NULL AND reviewed_at_ms IS NULL;
