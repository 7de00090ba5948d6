//! The executors against the real PostgreSQL, MariaDB and Redis on 127.0.0.1 (EX-3, SEC-4).
//!
//! Normal paths go through the agent's public gate: a `JobAssignment` signed by a
//! `TokenSigner` whose key the agent pins, run by `Agent::process`. The store-side guards are
//! proven on their own through the executors' test-only `run_unchecked` (feature
//! `test-hooks`), with statements the gate would refuse, because that is the point: a write
//! that slipped past classification must still be blocked by the read-only transaction.
//!
//! Tests run in parallel: each makes its own PostgreSQL schema, MariaDB database or Redis key
//! prefix with a random suffix, and drops it when it ends (also when it fails).

#![allow(unreachable_pub)]

mod common;
mod mysql;
mod postgres;
mod preview;
mod redis;
mod secrets;
mod session;
mod tls;
