-- How a request's result reaches its requester: held by the server until fetched
-- ('buffered', bounded by the caps), or relayed row by row to one reader as it is produced
-- ('stream').
ALTER TABLE requests ADD COLUMN result_mode TEXT NOT NULL DEFAULT 'buffered'
    CHECK (result_mode IN ('buffered', 'stream'));
