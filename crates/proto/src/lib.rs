//! Wire types shared by the server, the agent, the typed client and the CLI.
//!
//! Everything that crosses a process boundary is defined here, built from the validated
//! `portcullis-core` types so that deserializing is parsing. The execution-token codec lives
//! in [`token`]. This crate does no I/O.

pub mod agent;
pub mod api;
pub mod error;
pub mod openapi;
pub mod people;
pub mod stream;
pub mod token;

pub use error::{ErrorCode, Problem};
