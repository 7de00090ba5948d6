-- Everyone's requests, newest first, without reading the whole table: the request list
-- walks this index from its end and stops at the page's limit.
CREATE INDEX requests_by_time ON requests(created_at_ms);
