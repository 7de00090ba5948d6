//! Redis targets: one multiplexed, self-reconnecting connection per allowed class. The command
//! is the gate-checked `RedisCommand`'s words sent as one raw command, with a client-side
//! timeout (Redis has no server-side one). Redis has no read-only transaction: the read
//! credential should be an ACL user allowed only read commands (for example
//! `ACL SETUSER reader on >… ~* &* -@all +@read -@dangerous`), so a write that slipped past
//! classification fails with `NOPERM`, reported as `read_only_violation`. TLS: `rediss://`.
//!
//! The connection speaks RESP3 unless the URL says `?protocol=resp2`, so maps, sets, doubles
//! and booleans arrive as themselves. A reply is one row in one column named `reply` whose type
//! is the RESP type; the byte cap keeps a prefix of an aggregate reply and drops a scalar that
//! does not fit, with `truncated` either way.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_core::redis::RedisCommand;
use portcullis_core::{ConnectionName, OperationClass};
use portcullis_proto::api::{Column, ExecError, ExecResult};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion};
use serde_json::Value;

use super::sink::{RowSink, Summary};
use super::url::ConnectionUrl;
use super::values::{json_len, resp};
use super::{FailureCode, Limits, failure, no_answer};
use crate::config::TargetConfig;
use crate::permit::Permit;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Credential {
    url: ConnectionUrl,
    manager: ConnectionManager,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A Redis connection with one connection manager per allowed class.
#[derive(Debug)]
pub struct RedisTarget {
    name: ConnectionName,
    credentials: BTreeMap<OperationClass, Credential>,
}

impl RedisTarget {
    /// Builds the connections; nothing connects until the first job.
    pub fn open(target: &TargetConfig) -> anyhow::Result<RedisTarget> {
        let mut credentials = BTreeMap::new();
        for class in &target.allow {
            let url = target.url(*class)?;
            let context = |e: redis::RedisError| {
                anyhow::anyhow!(
                    "connection {} ({class} credential): {}",
                    target.name,
                    url.redact(&e.to_string())
                )
            };
            let mut info = url.expose().into_connection_info().map_err(context)?;
            let mut settings = info
                .redis_settings()
                .clone()
                .set_lib_name("portcullis-agent", env!("CARGO_PKG_VERSION"));
            if !url.expose().contains("protocol=") {
                settings = settings.set_protocol(ProtocolVersion::RESP3);
            }
            info = info.set_redis_settings(settings);
            let client = redis::Client::open(info).map_err(context)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                // Each job has its own (signed) timeout; the driver's default would cut it.
                .set_response_timeout(None)
                .set_number_of_retries(1);
            let manager =
                ConnectionManager::new_lazy_with_config(client, config).map_err(context)?;
            credentials.insert(*class, Credential { url, manager });
        }
        Ok(RedisTarget {
            name: target.name.clone(),
            credentials,
        })
    }

    pub async fn execute(
        &self,
        permit: &Permit<'_>,
        sink: &mut RowSink,
    ) -> Result<Summary, ExecError> {
        let result = self
            .run(permit.class(), permit.statement(), Limits::of(permit))
            .await?;
        Ok(sink.result(result).await)
    }

    /// Runs `command` with the `class` credential without a permit. Test-only: it exists so
    /// tests can prove the store-side guards hold on their own. The agent never calls it.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn run_unchecked(
        &self,
        class: OperationClass,
        command: &str,
        limits: Limits,
    ) -> Result<ExecResult, ExecError> {
        self.run(class, command, limits).await
    }

    async fn run(
        &self,
        class: OperationClass,
        command: &str,
        limits: Limits,
    ) -> Result<ExecResult, ExecError> {
        let credential = self.credentials.get(&class).ok_or_else(|| {
            failure(
                FailureCode::StoreUnavailable,
                format!("connection {} has no {class} credential", self.name),
            )
        })?;
        let parsed = RedisCommand::parse(command).map_err(|e| {
            failure(
                FailureCode::StatementDenied,
                format!("command refused: {e}"),
            )
        })?;
        let mut cmd = redis::Cmd::new();
        for word in parsed.args() {
            cmd.arg(word.as_slice());
        }
        let mut manager = credential.manager.clone();
        let reply = tokio::time::timeout(
            limits.timeout,
            cmd.query_async::<redis::Value>(&mut manager),
        )
        .await;
        match reply {
            Ok(Ok(reply)) => Ok(result(&reply, limits)),
            Ok(Err(e)) => Err(self.error(credential, class, &e)),
            Err(_) => Err(no_answer(class, limits)),
        }
    }

    fn error(
        &self,
        credential: &Credential,
        class: OperationClass,
        e: &redis::RedisError,
    ) -> ExecError {
        let message = credential.url.redact(&e.to_string());
        let code = if e.code() == Some("NOPERM") && class == OperationClass::Read {
            FailureCode::ReadOnlyViolation
        } else if class != OperationClass::Read
            && !e.is_connection_refusal()
            && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout())
        {
            // The command may have reached the server before the connection failed.
            FailureCode::OutcomeUnknown
        } else if matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
            || e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_timeout()
            || matches!(
                e.kind(),
                redis::ErrorKind::AuthenticationFailed
                    | redis::ErrorKind::InvalidClientConfig
                    | redis::ErrorKind::RESP3NotSupported
            )
        {
            tracing::warn!(connection = %self.name, %class, url = %credential.url, error = %message, "data store unavailable");
            return failure(
                FailureCode::StoreUnavailable,
                format!(
                    "connection {} ({class} credential) is unavailable: {message}",
                    self.name
                ),
            );
        } else {
            FailureCode::StoreError
        };
        failure(code, message)
    }
}

/// One row holding the whole reply, within the byte cap.
fn result(reply: &redis::Value, limits: Limits) -> ExecResult {
    let mut result = ExecResult {
        columns: vec![Column {
            name: "reply".into(),
            type_name: resp::type_name(reply).into(),
        }],
        ..ExecResult::default()
    };
    let whole = resp::value(reply);
    // `[[…]]`: the row list and the row around the value.
    let budget = limits.max_bytes.saturating_sub(4);
    let value = if json_len(&whole) <= budget {
        Some(whole)
    } else {
        result.truncated = true;
        match (resp::elements(reply), whole) {
            (Some(items), Value::Object(_) | Value::Array(_)) => {
                let mut kept = Vec::new();
                let mut used = 2;
                for item in items {
                    let size = json_len(&item) + u64::from(!kept.is_empty());
                    if used + size > budget {
                        break;
                    }
                    used += size;
                    kept.push(item);
                }
                Some(Value::Array(kept))
            }
            _ => None,
        }
    };
    if limits.row_cap == 0 {
        result.truncated = true;
    } else if let Some(value) = value {
        result.rows.push(vec![value]);
        result.row_count = 1;
    }
    result
}
