//! The Redis backend (WEB-4), shared by every replica: each key is one hash holding the two
//! counters, read, rolled, admitted and written back by one Lua script, so that concurrent
//! checks from several servers never lose a count. Keys carry the configured prefix and
//! expire once both of their windows have passed.
//!
//! One `ConnectionManager` is kept for the server's life (it reconnects by itself); each check
//! is one `EVALSHA` with a short response timeout, and an error is returned rather than a
//! guess, so that the caller fails closed.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Script};

use super::{Bucket, Counts, Decision, Error, Limit, decision};

/// The same steps as [`super::admit`]: roll the counters to the window holding `now`, admit
/// while the sliding count is under the limit, remember the window of the last refusal, and
/// keep the key until both windows have passed. Integer arithmetic only (exact in Lua's
/// doubles for the limits and windows `ServerConfig::validate` accepts).
const SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local index = (now - now % window) / window
local stored = redis.call('HMGET', KEYS[1], 'w', 'c', 'p', 'r')
local w = tonumber(stored[1])
local c = tonumber(stored[2]) or 0
local p = tonumber(stored[3]) or 0
local r = tonumber(stored[4]) or -1
if w == nil then
  c = 0
  p = 0
elseif w >= index then
  index = w
elseif w + 1 == index then
  p = c
  c = 0
else
  c = 0
  p = 0
end
local elapsed = now - index * window
if elapsed < 0 then elapsed = 0 end
local fading = p * (window - elapsed)
local used = c + (fading - fading % window) / window
local allowed = 0
local first = 0
if used < limit then
  allowed = 1
  c = c + 1
elseif r ~= index then
  first = 1
  r = index
end
redis.call('HSET', KEYS[1], 'w', index, 'c', c, 'p', p, 'r', r)
redis.call('PEXPIRE', KEYS[1], (index + 2) * window - now)
return {allowed, first, index, c, p}
";

/// A Redis that does not answer within this is treated as down (the request gets a 503).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Windows {
    connection: ConnectionManager,
    script: Script,
    prefix: String,
}

impl Windows {
    /// Connects to `url` and loads the script, failing when Redis cannot be reached.
    pub(crate) async fn connect(url: &str, prefix: &str) -> Result<Windows, Error> {
        let client = Client::open(url).map_err(Error::Connect)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(Error::Connect)?;
        let script = Script::new(SCRIPT);
        script
            .prepare_invoke()
            .load_async(&mut connection)
            .await
            .map_err(Error::Connect)?;
        Ok(Windows {
            connection,
            script,
            prefix: prefix.to_owned(),
        })
    }

    /// The Redis key of `key` in `bucket`.
    pub(crate) fn key(&self, bucket: Bucket, key: &str) -> String {
        format!("{}{}:{}", self.prefix, bucket.as_str(), key)
    }

    pub(crate) async fn check(
        &self,
        bucket: Bucket,
        key: &str,
        limit: Limit,
        now: u64,
    ) -> Result<Decision, Error> {
        // `ConnectionManager` is a cheap handle onto one multiplexed connection.
        let mut connection = self.connection.clone();
        let reply: (u8, u8, u64, u64, u64) = self
            .script
            .key(self.key(bucket, key))
            .arg(now)
            .arg(limit.window_ms)
            .arg(limit.max)
            .invoke_async(&mut connection)
            .await
            .map_err(Error::Unavailable)?;
        let (allowed, first, window, current, previous) = reply;
        let counts = Counts {
            window,
            current,
            previous,
        };
        Ok(decision(counts, allowed == 1, first == 1, limit, now))
    }
}
