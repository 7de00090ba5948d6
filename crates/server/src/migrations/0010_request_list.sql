-- The request list walks an index from its newest end and stops at the page's limit instead
-- of reading and sorting the whole table: everyone's requests by creation time, and those in
-- one state by creation time (which the reaper's and lockdown's look-ups by state use too).
CREATE INDEX requests_by_time ON requests(created_at_ms);
DROP INDEX requests_by_state;
CREATE INDEX requests_by_state ON requests(state, created_at_ms);
