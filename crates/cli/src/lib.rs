//! The library half of the `portcullis` crate: the in-process development stack (server +
//! agent + demo database) that `portcullis dev`, the integration tests and the benchmarks
//! start. It wires the other crates together and decides nothing itself.

pub mod devstack;
