//! Validated domain types and pure policy for Portcullis.
//!
//! This crate owns the vocabulary every other crate speaks: roles and permissions, operation
//! classes, connection names and kinds, environments, the request state machine, statement
//! classification and the authorization and policy decisions. It does no I/O, has no async
//! code and never depends on a network, database or clock: callers pass `now` in.

pub mod authz;
pub mod names;
pub mod operation;
pub mod policy;
pub mod rbac;
pub mod redis;
pub mod request;
pub mod sql;

pub use authz::{Authorized, Denied, authorize};
pub use names::{ConnectionKind, ConnectionName, Environment, OperationClass, ParseError};
pub use operation::{ClassifyError, Operation, analyse, classify};
pub use policy::{Decision, Policy, PolicyRule};
pub use rbac::{Permission, Role};
pub use request::RequestState;
