//! Integration tests: real server, real agents, real SQLite state and targets, over real
//! HTTP on 127.0.0.1, driven through the project's own typed client and binary. Modules are
//! named by behaviour or attack class; each test names the control it proves.

#![allow(unreachable_pub)]

mod harness;

mod agent_config;
mod agent_tokens;
mod approvals;
mod audit_tamper;
mod authz_matrix;
mod config_check;
mod connections;
mod dev_mode;
mod dispatch;
mod events;
mod explain;
mod faults;
mod idle;
mod key_rotation;
mod openapi;
mod people;
mod rate_limits;
mod requests;
mod secrets_at_rest;
mod streaming;
mod tidy;
mod tls;
mod tokens;
mod two_process;
mod users;
mod web_surface;
