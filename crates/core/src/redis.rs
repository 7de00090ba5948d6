//! Redis command classification (EX-2).
//!
//! A [`RedisCommand`] is one command line split into words the way `redis-cli` splits it, with
//! an [`OperationClass`] looked up in a closed command table. Commands not in the table are
//! refused, and so are commands that can never run through the gateway: those that block,
//! subscribe, change the connection's state or enumerate the whole keyspace.

use crate::names::OperationClass;

/// The longest command line accepted, in bytes.
pub const MAX_REDIS_LEN: usize = 64 * 1024;

/// The longest command name echoed back in [`RedisError::UnknownCommand`].
const MAX_ECHOED_NAME: usize = 64;

/// One parsed and classified Redis command. Only [`RedisCommand::parse`] builds one.
#[derive(Debug, Clone)]
pub struct RedisCommand {
    name: String,
    args: Vec<Vec<u8>>,
    class: OperationClass,
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("command is empty")]
    Empty,
    #[error("command is too long ({len} bytes, at most {max})")]
    TooLong { len: usize, max: usize },
    #[error("command could not be parsed ({reason})")]
    Unparsable { reason: &'static str },
    /// `name` is upper-cased and cut to 64 characters.
    #[error("unknown command {name:?}")]
    UnknownCommand { name: String },
    #[error("command {name} is not allowed through the gateway")]
    DeniedCommand { name: &'static str },
}

impl RedisError {
    /// A stable snake_case code, for wire errors and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            RedisError::Empty => "redis_empty",
            RedisError::TooLong { .. } => "redis_too_long",
            RedisError::Unparsable { .. } => "redis_unparsable",
            RedisError::UnknownCommand { .. } => "redis_unknown_command",
            RedisError::DeniedCommand { .. } => "redis_denied_command",
        }
    }
}

impl RedisCommand {
    /// Splits and classifies one command line (EX-2).
    pub fn parse(text: &str) -> Result<RedisCommand, RedisError> {
        if text.len() > MAX_REDIS_LEN {
            return Err(RedisError::TooLong {
                len: text.len(),
                max: MAX_REDIS_LEN,
            });
        }
        let args = split_args(text)?;
        let Some(first) = args.first() else {
            return Err(RedisError::Empty);
        };
        let name = String::from_utf8_lossy(first).to_ascii_uppercase();
        let class = classify(&name, &args)?;
        Ok(RedisCommand { name, args, class })
    }

    /// The upper-cased command name; for two-word commands (`CLIENT KILL`) the first word.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every word, the command name included, as the bytes to send.
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    pub fn class(&self) -> OperationClass {
        self.class
    }
}

/// How the command table treats a command.
enum Rule {
    Class(OperationClass),
    /// Never executable through the gateway, not even with break-glass.
    Denied(&'static str),
    /// A read for the listed subcommands, admin for any other.
    ReadSubcommands(&'static [&'static str]),
    /// Refused with a `BLOCK` option, otherwise the given class.
    UnlessBlocking(&'static str, OperationClass),
    /// Refused for the listed subcommands (each written with its command, `CLIENT REPLY`),
    /// otherwise the class.
    DeniedSubcommands(&'static [&'static str], OperationClass),
}

/// The largest `COUNT` a scan or random-member read may ask for in one call: beyond it one
/// command walks (or materialises) a whole keyspace or collection, which is what the `KEYS`
/// ban prevents. Page with the cursor instead.
pub const MAX_COUNT: u64 = 1_000;

/// Refuses an oversized count: `COUNT n` anywhere for the scan family, the count argument for
/// the random-member family (negative counts allow repeats, so the magnitude matters).
fn check_count(name: &str, args: &[Vec<u8>]) -> Result<(), RedisError> {
    let parse = |a: &[u8]| {
        std::str::from_utf8(a)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
    };
    let too_big = |n: Option<i64>| n.is_none_or(|n| n.unsigned_abs() > MAX_COUNT);
    match name {
        "SCAN" | "HSCAN" | "SSCAN" | "ZSCAN" => {
            let mut words = args.iter().skip(1);
            while let Some(w) = words.next() {
                if w.eq_ignore_ascii_case(b"COUNT") && too_big(words.next().and_then(|n| parse(n)))
                {
                    return Err(RedisError::DeniedCommand {
                        name: "SCAN-family COUNT above 1000",
                    });
                }
            }
            Ok(())
        }
        "SRANDMEMBER" | "HRANDFIELD" | "ZRANDMEMBER" => match args.get(2) {
            Some(n) if too_big(parse(n)) => Err(RedisError::DeniedCommand {
                name: "random-member count above 1000",
            }),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn classify(name: &str, args: &[Vec<u8>]) -> Result<OperationClass, RedisError> {
    check_count(name, args)?;
    let Some(rule) = rule(name) else {
        let name = name.chars().take(MAX_ECHOED_NAME).collect();
        return Err(RedisError::UnknownCommand { name });
    };
    match rule {
        Rule::Class(class) => Ok(class),
        Rule::Denied(name) => Err(RedisError::DeniedCommand { name }),
        Rule::ReadSubcommands(reads) => {
            let read = args
                .get(1)
                .is_some_and(|sub| reads.iter().any(|r| sub.eq_ignore_ascii_case(r.as_bytes())));
            Ok(if read {
                OperationClass::Read
            } else {
                OperationClass::Admin
            })
        }
        Rule::DeniedSubcommands(denied, class) => {
            let refused = args.get(1).and_then(|sub| {
                denied.iter().find(|full| {
                    full.split_once(' ')
                        .is_some_and(|(_, d)| sub.eq_ignore_ascii_case(d.as_bytes()))
                })
            });
            match refused {
                Some(name) => Err(RedisError::DeniedCommand { name }),
                None => Ok(class),
            }
        }
        Rule::UnlessBlocking(name, class) => {
            // Options come before `STREAMS`; after it are key names, which may be anything.
            let mut options = args
                .iter()
                .skip(1)
                .take_while(|arg| !arg.eq_ignore_ascii_case(b"STREAMS"));
            if options.any(|arg| arg.eq_ignore_ascii_case(b"BLOCK")) {
                return Err(RedisError::DeniedCommand { name });
            }
            Ok(class)
        }
    }
}

/// The command table. Anything not listed is unknown and refused.
fn rule(name: &str) -> Option<Rule> {
    use OperationClass::{Admin, Read, Write};
    let rule = match name {
        // Strings, keys and server information.
        "GET" | "MGET" | "STRLEN" | "GETRANGE" | "SUBSTR" | "LCS" | "EXISTS" | "TYPE" | "TTL"
        | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" | "SCAN" | "RANDOMKEY" | "DBSIZE" | "INFO"
        | "PING" | "ECHO" | "TIME" | "GETBIT" | "BITCOUNT" | "BITPOS" => {
            Rule::Class(Read)
        }
        // Hashes, lists, sets, sorted sets, streams, geo.
        "HGET" | "HMGET" | "HGETALL" | "HKEYS" | "HVALS" | "HLEN" | "HEXISTS" | "HSTRLEN"
        | "HSCAN" | "HRANDFIELD" | "LRANGE" | "LLEN" | "LINDEX" | "LPOS" | "SMEMBERS"
        | "SISMEMBER" | "SMISMEMBER" | "SCARD" | "SRANDMEMBER" | "SINTER" | "SINTERCARD"
        | "SUNION" | "SDIFF" | "SSCAN" | "ZRANGE" | "ZRANGEBYSCORE" | "ZREVRANGE"
        | "ZREVRANGEBYSCORE" | "ZRANGEBYLEX" | "ZREVRANGEBYLEX" | "ZCARD" | "ZSCORE"
        | "ZMSCORE" | "ZRANK" | "ZREVRANK" | "ZCOUNT" | "ZLEXCOUNT" | "ZSCAN" | "ZRANDMEMBER"
        | "XRANGE" | "XREVRANGE" | "XLEN" | "XINFO" | "XPENDING" | "GEOPOS" | "GEODIST"
        | "GEOHASH" | "GEOSEARCH" => Rule::Class(Read),
        "OBJECT" => Rule::ReadSubcommands(&["ENCODING", "FREQ", "IDLETIME", "REFCOUNT"]),
        "MEMORY" => Rule::ReadSubcommands(&["USAGE"]),
        "XREAD" => Rule::UnlessBlocking("XREAD", Read),
        "XREADGROUP" => Rule::UnlessBlocking("XREADGROUP", Write),

        "SET" | "SETEX" | "PSETEX" | "SETNX" | "MSET" | "MSETNX" | "GETSET" | "GETDEL"
        | "GETEX" | "APPEND" | "INCR" | "INCRBY" | "INCRBYFLOAT" | "DECR" | "DECRBY"
        | "SETRANGE" | "DEL" | "UNLINK" | "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT"
        | "PERSIST" | "RENAME" | "RENAMENX" | "COPY" | "SETBIT" | "BITOP" | "PFADD" | "PFMERGE"
        // PFCOUNT stores its cached cardinality in the key and replicates as a write.
        | "PFCOUNT"
        | "PUBLISH" => Rule::Class(Write),
        "HSET" | "HSETNX" | "HMSET" | "HDEL" | "HINCRBY" | "HINCRBYFLOAT" | "LPUSH" | "RPUSH"
        | "LPUSHX" | "RPUSHX" | "LPOP" | "RPOP" | "LSET" | "LREM" | "LTRIM" | "LINSERT"
        | "LMOVE" | "RPOPLPUSH" | "SADD" | "SREM" | "SPOP" | "SMOVE" | "SINTERSTORE"
        | "SUNIONSTORE" | "SDIFFSTORE" | "ZADD" | "ZREM" | "ZINCRBY" | "ZPOPMIN" | "ZPOPMAX"
        | "ZREMRANGEBYSCORE" | "ZREMRANGEBYRANK" | "ZREMRANGEBYLEX" | "ZUNIONSTORE"
        | "ZINTERSTORE" | "ZDIFFSTORE" | "ZRANGESTORE" | "XADD" | "XDEL" | "XTRIM" | "XACK"
        | "XCLAIM" | "XAUTOCLAIM" | "XGROUP" | "XSETID" | "GEOADD" => Rule::Class(Write),

        // Server, persistence, replication, scripting and connection management: break-glass.
        "FLUSHALL" | "FLUSHDB" | "CONFIG" | "SHUTDOWN" | "DEBUG" | "MODULE" | "SCRIPT" | "EVAL"
        | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" | "FUNCTION" | "MIGRATE"
        | "REPLICAOF" | "SLAVEOF" | "ACL" | "BGSAVE" | "BGREWRITEAOF" | "SAVE" | "LASTSAVE"
        | "SWAPDB" | "FAILOVER" | "CLUSTER" | "SLOWLOG" | "LATENCY" | "SYNC" | "PSYNC"
        | "RESTORE" | "DUMP" | "MOVE" => Rule::Class(Admin),
        // The agent sends every command of a class over one shared connection: a subcommand
        // that changes that connection (its replies, its name, key tracking, eviction) would
        // reach every later command on it, another requester's (EX-3).
        "CLIENT" => Rule::DeniedSubcommands(
            &[
                "CLIENT REPLY",
                "CLIENT TRACKING",
                "CLIENT CACHING",
                "CLIENT SETNAME",
                "CLIENT SETINFO",
                "CLIENT NO-EVICT",
                "CLIENT NO-TOUCH",
            ],
            Admin,
        ),

        // Never through the gateway: whole-keyspace enumeration, transactions and connection
        // state that a single dispatched command cannot hold, subscriptions and blocking calls.
        "KEYS" => Rule::Denied("KEYS"),
        // `SELECT` moves the shared connection to another database for every later command;
        // the connection's URL names its database. `MONITOR` turns it into a stream of every
        // command the server runs.
        "SELECT" => Rule::Denied("SELECT"),
        "MONITOR" => Rule::Denied("MONITOR"),
        "MULTI" => Rule::Denied("MULTI"),
        "EXEC" => Rule::Denied("EXEC"),
        "DISCARD" => Rule::Denied("DISCARD"),
        "WATCH" => Rule::Denied("WATCH"),
        "UNWATCH" => Rule::Denied("UNWATCH"),
        "SUBSCRIBE" => Rule::Denied("SUBSCRIBE"),
        "PSUBSCRIBE" => Rule::Denied("PSUBSCRIBE"),
        "SSUBSCRIBE" => Rule::Denied("SSUBSCRIBE"),
        "UNSUBSCRIBE" => Rule::Denied("UNSUBSCRIBE"),
        "PUNSUBSCRIBE" => Rule::Denied("PUNSUBSCRIBE"),
        "SUNSUBSCRIBE" => Rule::Denied("SUNSUBSCRIBE"),
        "AUTH" => Rule::Denied("AUTH"),
        "HELLO" => Rule::Denied("HELLO"),
        "QUIT" => Rule::Denied("QUIT"),
        "RESET" => Rule::Denied("RESET"),
        "WAIT" => Rule::Denied("WAIT"),
        "WAITAOF" => Rule::Denied("WAITAOF"),
        "BLPOP" => Rule::Denied("BLPOP"),
        "BRPOP" => Rule::Denied("BRPOP"),
        "BLMOVE" => Rule::Denied("BLMOVE"),
        "BRPOPLPUSH" => Rule::Denied("BRPOPLPUSH"),
        "BLMPOP" => Rule::Denied("BLMPOP"),
        "BZPOPMIN" => Rule::Denied("BZPOPMIN"),
        "BZPOPMAX" => Rule::Denied("BZPOPMAX"),
        "BZMPOP" => Rule::Denied("BZMPOP"),
        _ => return None,
    };
    Some(rule)
}

/// Splits a command line like `redis-cli` (`sdssplitargs`): words separated by white space;
/// `"…"` with `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\a` and `\xHH` escapes; `'…'` with `\'`;
/// quoted parts may be glued to unquoted ones (`a"b c"` is one word); a closing quote must be
/// followed by white space or the end.
fn split_args(text: &str) -> Result<Vec<Vec<u8>>, RedisError> {
    let bytes = text.as_bytes();
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            return Ok(args);
        }
        let mut word = Vec::new();
        while i < bytes.len() && !is_space(bytes[i]) {
            match bytes[i] {
                b'"' => i = double_quoted(bytes, i + 1, &mut word)?,
                b'\'' => i = single_quoted(bytes, i + 1, &mut word)?,
                byte => {
                    word.push(byte);
                    i += 1;
                }
            }
        }
        args.push(word);
    }
}

/// Reads a `"…"` part starting after the opening quote; returns the index after the closing one.
fn double_quoted(bytes: &[u8], mut i: usize, word: &mut Vec<u8>) -> Result<usize, RedisError> {
    loop {
        match bytes.get(i) {
            None => {
                return Err(RedisError::Unparsable {
                    reason: "unbalanced double quote",
                });
            }
            Some(b'"') => return after_closing_quote(bytes, i + 1),
            Some(b'\\') => {
                let hex = (
                    bytes.get(i + 2).copied().and_then(hex_value),
                    bytes.get(i + 3).copied().and_then(hex_value),
                );
                match (bytes.get(i + 1), hex) {
                    (Some(b'x'), (Some(high), Some(low))) => {
                        word.push(high * 16 + low);
                        i += 4;
                    }
                    (Some(&escaped), _) => {
                        word.push(match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        i += 2;
                    }
                    (None, _) => {
                        return Err(RedisError::Unparsable {
                            reason: "unbalanced double quote",
                        });
                    }
                }
            }
            Some(&byte) => {
                word.push(byte);
                i += 1;
            }
        }
    }
}

/// Reads a `'…'` part starting after the opening quote; returns the index after the closing one.
fn single_quoted(bytes: &[u8], mut i: usize, word: &mut Vec<u8>) -> Result<usize, RedisError> {
    loop {
        match (bytes.get(i), bytes.get(i + 1)) {
            (None, _) => {
                return Err(RedisError::Unparsable {
                    reason: "unbalanced single quote",
                });
            }
            (Some(b'\\'), Some(b'\'')) => {
                word.push(b'\'');
                i += 2;
            }
            (Some(b'\''), _) => return after_closing_quote(bytes, i + 1),
            (Some(&byte), _) => {
                word.push(byte);
                i += 1;
            }
        }
    }
}

fn after_closing_quote(bytes: &[u8], i: usize) -> Result<usize, RedisError> {
    match bytes.get(i) {
        Some(&byte) if !is_space(byte) => Err(RedisError::Unparsable {
            reason: "closing quote must be followed by white space",
        }),
        _ => Ok(i),
    }
}

/// White space as C `isspace` sees it in the "C" locale.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! EX-2: Redis commands are classified from a closed table and split like `redis-cli`.

    use proptest::prelude::*;

    use super::{MAX_REDIS_LEN, RedisCommand, RedisError};
    use crate::names::OperationClass::{self, Admin, Read, Write};

    /// An expected outcome: a class, or the stable code of the error.
    type Expect = Result<OperationClass, &'static str>;

    fn check_redis(input: &str, expect: Expect) -> Result<(), String> {
        let got = RedisCommand::parse(input)
            .map(|c| c.class())
            .map_err(|e| e.code());
        if got == expect {
            Ok(())
        } else {
            Err(format!("{input:?}: expected {expect:?}, got {got:?}"))
        }
    }

    #[test]
    fn ex2_redis_commands_are_classified_from_a_closed_table() {
        let cases: &[(&str, Expect)] = &[
            ("GET k", Ok(Read)),
            ("get k", Ok(Read)),
            ("MGET a b", Ok(Read)),
            ("HGETALL h", Ok(Read)),
            ("SCAN 0 MATCH user:* COUNT 100", Ok(Read)),
            ("SCAN 0 COUNT 1000", Ok(Read)),
            // Found by the attack suite: one call must not walk a whole keyspace.
            ("SCAN 0 COUNT 1001", Err("redis_denied_command")),
            ("SCAN 0 COUNT 1000000000", Err("redis_denied_command")),
            ("scan 0 count notanumber", Err("redis_denied_command")),
            ("HSCAN h 0 COUNT 99999999", Err("redis_denied_command")),
            ("SRANDMEMBER s -100000000", Err("redis_denied_command")),
            ("SRANDMEMBER s 10", Ok(Read)),
            ("ZRANDMEMBER z", Ok(Read)),
            // PFCOUNT writes its cached cardinality into the key.
            ("PFCOUNT hll", Ok(Write)),
            ("ZRANGE z 0 -1 WITHSCORES", Ok(Read)),
            ("XINFO STREAM s", Ok(Read)),
            ("XREAD COUNT 10 STREAMS s 0", Ok(Read)),
            ("XREAD STREAMS block 0", Ok(Read)),
            ("OBJECT ENCODING k", Ok(Read)),
            ("object freq k", Ok(Read)),
            ("MEMORY USAGE k", Ok(Read)),
            ("TTL k", Ok(Read)),
            ("PING", Ok(Read)),
            ("INFO memory", Ok(Read)),
            ("DBSIZE", Ok(Read)),
            ("GEOSEARCH g FROMLONLAT 0 0 BYRADIUS 1 km", Ok(Read)),
            ("SET k v EX 10 NX", Ok(Write)),
            ("DEL a b", Ok(Write)),
            ("HSET h f v", Ok(Write)),
            ("LPUSH l x", Ok(Write)),
            ("ZADD z 1 m", Ok(Write)),
            ("XADD s * f v", Ok(Write)),
            ("EXPIRE k 10", Ok(Write)),
            ("PUBLISH ch msg", Ok(Write)),
            ("RENAME a b", Ok(Write)),
            ("GETDEL k", Ok(Write)),
            ("BITOP AND d a b", Ok(Write)),
            ("XREADGROUP GROUP g c STREAMS s >", Ok(Write)),
            ("FLUSHALL", Ok(Admin)),
            ("flushdb async", Ok(Admin)),
            ("CONFIG SET dir /tmp", Ok(Admin)),
            ("CONFIG GET *", Ok(Admin)),
            ("CLIENT KILL ID 5", Ok(Admin)),
            ("CLIENT LIST", Ok(Admin)),
            ("EVAL \"return 1\" 0", Ok(Admin)),
            ("FCALL f 0", Ok(Admin)),
            ("SCRIPT FLUSH", Ok(Admin)),
            ("DEBUG SLEEP 0", Ok(Admin)),
            ("SHUTDOWN NOSAVE", Ok(Admin)),
            ("OBJECT HELP", Ok(Admin)),
            ("OBJECT", Ok(Admin)),
            ("MEMORY DOCTOR", Ok(Admin)),
            ("SELECT 1", Err("redis_denied_command")),
            ("CLIENT REPLY SKIP", Err("redis_denied_command")),
            ("client reply off", Err("redis_denied_command")),
            ("CLIENT TRACKING ON", Err("redis_denied_command")),
            ("CLIENT SETNAME x", Err("redis_denied_command")),
            ("CLIENT NO-EVICT on", Err("redis_denied_command")),
            ("CLIENT INFO", Ok(Admin)),
            ("CLIENT", Ok(Admin)),
            ("MOVE k 1", Ok(Admin)),
            ("DUMP k", Ok(Admin)),
            ("RESTORE k 0 x", Ok(Admin)),
            ("REPLICAOF host 6379", Ok(Admin)),
            ("ACL SETUSER x on", Ok(Admin)),
            ("MODULE LOAD /tmp/x.so", Ok(Admin)),
            ("MONITOR", Err("redis_denied_command")),
            ("SWAPDB 0 1", Ok(Admin)),
            ("KEYS *", Err("redis_denied_command")),
            ("MULTI", Err("redis_denied_command")),
            ("EXEC", Err("redis_denied_command")),
            ("WATCH k", Err("redis_denied_command")),
            ("SUBSCRIBE ch", Err("redis_denied_command")),
            ("PSUBSCRIBE *", Err("redis_denied_command")),
            ("AUTH secret", Err("redis_denied_command")),
            ("HELLO 3", Err("redis_denied_command")),
            ("QUIT", Err("redis_denied_command")),
            ("RESET", Err("redis_denied_command")),
            ("WAIT 1 0", Err("redis_denied_command")),
            ("BLPOP l 0", Err("redis_denied_command")),
            ("BRPOP l 0", Err("redis_denied_command")),
            ("BLMOVE a b LEFT RIGHT 0", Err("redis_denied_command")),
            ("BZPOPMIN z 0", Err("redis_denied_command")),
            ("BLMPOP 0 1 l LEFT", Err("redis_denied_command")),
            ("XREAD BLOCK 0 STREAMS s $", Err("redis_denied_command")),
            (
                "xread count 1 block 100 streams s 0",
                Err("redis_denied_command"),
            ),
            (
                "XREADGROUP GROUP g c BLOCK 0 STREAMS s >",
                Err("redis_denied_command"),
            ),
            ("JSON.GET k", Err("redis_unknown_command")),
            ("GETT k", Err("redis_unknown_command")),
            ("\"\"", Err("redis_unknown_command")),
            ("ſet k v", Err("redis_unknown_command")),
            ("", Err("redis_empty")),
            ("  \t\r\n ", Err("redis_empty")),
            ("GET \"k", Err("redis_unparsable")),
            ("GET 'k", Err("redis_unparsable")),
            ("GET \"k\"x", Err("redis_unparsable")),
            ("GET 'k'x", Err("redis_unparsable")),
            ("GET \"k\\", Err("redis_unparsable")),
        ];
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(input, expect)| check_redis(input, *expect).err())
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn ex2_redis_command_lines_are_split_like_redis_cli() {
        let cases: &[(&str, &[&[u8]])] = &[
            ("  GET   k  ", &[b"GET", b"k"]),
            ("get k", &[b"get", b"k"]),
            ("SET k \"hello world\"", &[b"SET", b"k", b"hello world"]),
            (
                "SET k \"a\\\"b\\\\c\\n\\t\"",
                &[b"SET", b"k", b"a\"b\\c\n\t"],
            ),
            (
                "SET k \"\\x41\\x4a\\xff\"",
                &[b"SET", b"k", b"\x41\x4a\xff"],
            ),
            ("SET k \"\\xZZ\"", &[b"SET", b"k", b"xZZ"]),
            ("SET k 'it\\'s'", &[b"SET", b"k", b"it's"]),
            ("SET k 'a\\nb'", &[b"SET", b"k", b"a\\nb"]),
            ("SET k \"\"", &[b"SET", b"k", b""]),
            ("SET k a\"b c\"", &[b"SET", b"k", b"ab c"]),
            ("SET 'k;DEL' x", &[b"SET", b"k;DEL", b"x"]),
        ];
        for (input, expect) in cases {
            let command = match RedisCommand::parse(input) {
                Ok(command) => command,
                Err(error) => panic!("{input:?}: {error}"),
            };
            let expect: Vec<Vec<u8>> = expect.iter().map(|a| a.to_vec()).collect();
            assert_eq!(command.args(), expect.as_slice(), "{input:?}");
        }
        let client = RedisCommand::parse("client kill id 5").map(|c| c.name().to_owned());
        assert_eq!(client, Ok("CLIENT".to_owned()));
        let long = format!("GET {}", "k".repeat(MAX_REDIS_LEN));
        assert_eq!(
            RedisCommand::parse(&long).err(),
            Some(RedisError::TooLong {
                len: long.len(),
                max: MAX_REDIS_LEN
            })
        );
        assert_eq!(
            RedisCommand::parse("BLPOP l 0").err(),
            Some(RedisError::DeniedCommand { name: "BLPOP" })
        );
        assert_eq!(
            RedisCommand::parse(&format!("{} x", "Z".repeat(100))).err(),
            Some(RedisError::UnknownCommand {
                name: "Z".repeat(64)
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn ex2_redis_parsing_never_panics(text in prop_oneof![any::<String>(), "[a-zA-Z \"'\\\\x0-9]{0,40}"]) {
            if let Ok(command) = RedisCommand::parse(&text) {
                prop_assert!(!command.args().is_empty());
                prop_assert_eq!(command.name().to_owned(), command.name().to_ascii_uppercase());
            }
        }
    }
}
