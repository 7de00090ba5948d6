//! Submitting cases through the full path and judging their outcomes.

use super::*;

// ------------------------------------------------------------------------------------------
// Running cases

/// What happened to one request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The server refused it.
    Refused {
        status: u16,
        code: String,
        reason: Option<String>,
    },
    /// The server accepted it and it finished.
    Finished(Box<RequestOutcome>),
    /// Accepted by the server, but no agent executes this store yet: cancelled unrun.
    Unrun,
    /// Anything else (transport errors, 5xx, malformed answers).
    Broken(String),
}

pub(crate) async fn submit(
    viewer: &Client,
    store: Store,
    statement: String,
    end_to_end: bool,
) -> Outcome {
    let body = CreateRequest {
        connection: store.connection().parse().expect("connection name"),
        statement,
        reason: "attack suite".into(),
        stream: false,
    };
    let wait = if end_to_end {
        CASE_WAIT
    } else {
        Duration::ZERO
    };
    let mut attempt = 0;
    let outcome = loop {
        match viewer.create_request(&body, wait).await {
            Ok(outcome) => break outcome,
            // A rate limit is not a verdict on the statement: back off and ask again.
            Err(e) if e.status() == Some(429) && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(ClientError::Api { status, problem }) if (400..500).contains(&status) => {
                return Outcome::Refused {
                    status,
                    code: problem.code.as_str().to_owned(),
                    reason: problem.reason.clone(),
                };
            }
            Err(e) => return Outcome::Broken(e.to_string()),
        }
    };
    if !end_to_end && !outcome.request.state.is_terminal() {
        let state = outcome.request.state;
        return match viewer.cancel_request(outcome.request.id).await {
            Ok(_) => Outcome::Unrun,
            Err(e) => Outcome::Broken(format!("accepted ({state:?}) and not cancellable: {e}")),
        };
    }
    Outcome::Finished(Box::new(outcome))
}

/// One run of one case on one store.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) store: Store,
    pub(crate) id: String,
    pub(crate) class: String,
    pub(crate) hostile: bool,
    pub(crate) statement_hash: String,
    pub(crate) outcome: Outcome,
    /// Set when the run failed the oracle.
    pub(crate) failure: Option<String>,
    /// The layer that stopped a hostile run, or `unrun`.
    pub(crate) layer: String,
}

impl Run {
    pub(crate) fn passed(&self) -> bool {
        self.failure.is_none() && self.layer != "unrun"
    }
}

pub(crate) fn short(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { '·' } else { c })
        .take(100)
        .collect();
    if s.chars().count() > 100 {
        format!("{flat}…")
    } else {
        flat
    }
}

/// Judges a hostile run: it must not have succeeded, or be in any state but refused/failed.
pub(crate) fn judge_hostile(outcome: &Outcome) -> (String, Option<String>) {
    match outcome {
        Outcome::Refused {
            status,
            code,
            reason,
        } => (
            format!(
                "server {status} {}",
                reason.as_deref().unwrap_or(code.as_str())
            ),
            None,
        ),
        Outcome::Finished(o) => match o.request.state {
            RequestState::Failed => {
                let code = o
                    .request
                    .error
                    .as_ref()
                    .map_or("failed", |e| e.code.as_str());
                (
                    format!("agent/store {code} (accepted as {})", o.request.class),
                    None,
                )
            }
            RequestState::Succeeded => (
                "none".into(),
                Some(format!(
                    "ATTACK GOT THROUGH: accepted as {} and succeeded ({} rows)",
                    o.request.class,
                    o.result.as_ref().map_or(0, |r| r.row_count)
                )),
            ),
            state => (
                "none".into(),
                Some(format!(
                    "accepted as {} and left {state:?} (error {:?})",
                    o.request.class, o.request.error
                )),
            ),
        },
        Outcome::Unrun => ("unrun".into(), None),
        Outcome::Broken(e) => ("none".into(), Some(format!("no verdict: {e}"))),
    }
}

/// The reply of a Redis request as one JSON value: a single cell, or a column of cells.
pub(crate) fn reply_value(result: &ExecResult) -> Value {
    match (result.columns.len(), result.rows.as_slice()) {
        (1, [row]) => row.first().cloned().unwrap_or(Value::Null),
        (1, rows) => Value::Array(rows.iter().map(|r| r[0].clone()).collect()),
        _ => Value::Array(
            result
                .rows
                .iter()
                .map(|r| Value::Array(r.clone()))
                .collect(),
        ),
    }
}

/// Compares by value, not type: numbers and numeric strings, JSON and JSON-in-strings.
pub(crate) fn same(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Null, Value::Null) => true,
        (Value::Object(_), Value::String(s)) | (Value::Array(_), Value::String(s)) => {
            serde_json::from_str::<Value>(s).is_ok_and(|parsed| same(expected, &parsed))
        }
        (Value::Object(_), _) => {
            let pairs = |v: &Value| -> Option<Vec<(String, String)>> {
                let mut out: Vec<(String, String)> = match v {
                    Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
                    Value::Array(a) => {
                        let flat = flatten(a);
                        if !flat.len().is_multiple_of(2) {
                            return None;
                        }
                        flat.chunks(2)
                            .map(|p| (scalar(&p[0]), scalar(&p[1])))
                            .collect()
                    }
                    _ => return None,
                };
                out.sort();
                Some(out)
            };
            let want = pairs(expected);
            want.is_some() && want == pairs(actual)
        }
        (Value::Array(e), Value::Array(a)) => {
            let (e, a) = (flatten(e), flatten(a));
            e.len() == a.len() && e.iter().zip(&a).all(|(e, a)| same(e, a))
        }
        (Value::Array(_), _) | (_, Value::Array(_)) | (_, Value::Object(_)) => false,
        (e, a) => {
            let (e, a) = (scalar(e), scalar(a));
            e == a
                || matches!((e.parse::<f64>(), a.parse::<f64>()), (Ok(x), Ok(y)) if (x - y).abs() < 1e-9)
        }
    }
}

pub(crate) fn flatten(values: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for v in values {
        match v {
            Value::Array(inner) => out.extend(flatten(inner)),
            other => out.push(other.clone()),
        }
    }
    out
}

pub(crate) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "1".into(),
        Value::Bool(false) => "0".into(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Judges a benign run: `None` when it was allowed and answered right.
pub(crate) fn judge_benign(case: &Case, outcome: &Outcome, prefix: Option<&str>) -> Option<String> {
    let o = match outcome {
        Outcome::Finished(o) => o,
        Outcome::Unrun => return None,
        Outcome::Refused {
            status,
            code,
            reason,
        } => {
            return Some(format!(
                "FALSE ALARM: refused with {status} {code} ({})",
                reason.as_deref().unwrap_or("-")
            ));
        }
        Outcome::Broken(e) => return Some(format!("no verdict: {e}")),
    };
    if o.request.state != RequestState::Succeeded {
        return Some(format!(
            "FALSE ALARM: accepted as {} but {:?}: {:?}",
            o.request.class, o.request.state, o.request.error
        ));
    }
    let Some(result) = &o.result else {
        return Some("succeeded without a result".into());
    };
    let a = &case.answer;
    let got = || short(&serde_json::to_string(&result.rows).unwrap_or_default());
    if let Some(rows) = a.rows
        && result.rows.len() as u64 != rows
    {
        return Some(format!(
            "wrong answer: {} rows, expected {rows}: {}",
            result.rows.len(),
            got()
        ));
    }
    if let Some(min) = a.min_rows
        && (result.rows.len() as u64) < min
    {
        return Some(format!(
            "wrong answer: {} rows, expected at least {min}",
            result.rows.len()
        ));
    }
    if let Some(Value::Array(expected)) = &a.result {
        let ok = expected.len() == result.rows.len()
            && expected.iter().zip(&result.rows).all(|(e, r)| match e {
                Value::Array(e) => e.len() == r.len() && e.iter().zip(r).all(|(e, a)| same(e, a)),
                _ => false,
            });
        if !ok {
            return Some(format!(
                "wrong answer: expected {expected:?}, got {}",
                got()
            ));
        }
    }
    if let Some(Value::Array(expected)) = &a.first {
        let ok = result.rows.first().is_some_and(|r| {
            expected.len() == r.len() && expected.iter().zip(r).all(|(e, a)| same(e, a))
        });
        if !ok {
            return Some(format!(
                "wrong answer: expected first row {expected:?}, got {}",
                got()
            ));
        }
    }
    if a.value.is_some() || a.scan_prefix {
        let mut value = reply_value(result);
        if a.scan_prefix {
            let flat = match &value {
                Value::Array(v) => flatten(v),
                _ => Vec::new(),
            };
            let prefix = prefix.unwrap_or_default();
            let keys_ok = !flat.is_empty()
                && flat[1..]
                    .iter()
                    .all(|k| k.as_str().is_some_and(|k| k.starts_with(prefix)));
            if !keys_ok {
                return Some(format!(
                    "wrong answer: expected a cursor and keys under {prefix}, got {}",
                    short(&value.to_string())
                ));
            }
        }
        if let Some(expected) = &a.value {
            if a.sorted
                && let Value::Array(items) = &mut value
            {
                items.sort_by_key(scalar);
            }
            if !same(expected, &value) {
                return Some(format!(
                    "wrong answer: expected {expected}, got {}",
                    short(&value.to_string())
                ));
            }
        }
    }
    None
}

/// Runs every case of `store`, one at a time (each run is checksummed on its own).
pub(crate) async fn run_store(
    store: Store,
    handle: &Handle,
    (viewer, admin): (&Client, &Client),
    cases: &[Case],
    end_to_end: bool,
) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut baseline = match handle.checksum().await {
        Ok(sum) => sum,
        Err(e) => {
            return vec![Run {
                store,
                id: "(checksum)".into(),
                class: "setup".into(),
                hostile: true,
                statement_hash: String::new(),
                outcome: Outcome::Broken(e.clone()),
                failure: Some(format!("cannot checksum the target: {e}")),
                layer: "none".into(),
            }];
        }
    };
    let prefix = match handle {
        Handle::Redis { prefix, .. } => Some(prefix.as_str()),
        _ => None,
    };
    for case in cases.iter().filter(|c| c.targets.contains(&store)) {
        let statement = handle.substitute(&case.input);
        let statement_hash = hex::encode(portcullis_proto::token::statement_sha256(&statement));
        let outcome = submit(viewer, store, statement, end_to_end).await;
        let (layer, mut failure) = if case.hostile {
            judge_hostile(&outcome)
        } else {
            let failure = judge_benign(case, &outcome, prefix);
            let layer = if matches!(outcome, Outcome::Unrun) {
                "unrun"
            } else {
                "allowed"
            };
            (layer.to_owned(), failure)
        };
        match handle.checksum().await {
            Ok(after) if after == baseline => {}
            Ok(after) => {
                failure = Some(format!(
                    "THE TARGET CHANGED{}",
                    failure.map(|f| format!(" ({f})")).unwrap_or_default()
                ));
                baseline = after;
            }
            Err(e) => failure = Some(format!("cannot checksum the target: {e}")),
        }
        runs.push(Run {
            store,
            id: case.id.clone(),
            class: case.class.clone(),
            hostile: case.hostile,
            statement_hash,
            outcome,
            failure,
            layer,
        });
    }
    if end_to_end && let Err(e) = canary(store, handle, admin, &baseline).await {
        runs.push(Run {
            store,
            id: "(oracle canary)".into(),
            class: "canary".into(),
            hostile: false,
            statement_hash: String::new(),
            outcome: Outcome::Broken(e.clone()),
            failure: Some(e),
            layer: "none".into(),
        });
    }
    runs
}

/// Proves the oracle can see a change: an admin's write through the same path must succeed
/// and change the checksum. Without it a checksum that never moves would pass every attack.
pub(crate) async fn canary(
    store: Store,
    handle: &Handle,
    admin: &Client,
    before: &str,
) -> Result<(), String> {
    let statement = match store {
        Store::Redis => handle.substitute("SET {prefix}canary 1"),
        _ => "INSERT INTO customers (id, name, email, country, created_at) \
              VALUES (1000, 'Canary', 'canary@example.com', 'XX', '2025-01-01')"
            .to_owned(),
    };
    match submit(admin, store, statement, true).await {
        Outcome::Finished(o) if o.request.state == RequestState::Succeeded => {}
        other => {
            return Err(format!(
                "oracle canary: the admin's write did not run: {other:?}"
            ));
        }
    }
    match handle.checksum().await {
        Ok(after) if after != before => Ok(()),
        Ok(_) => Err("oracle canary: an admin's write did not change the checksum".into()),
        Err(e) => Err(format!("oracle canary: {e}")),
    }
}

/// AUD-1: each refusal left a `request.denied` or `access.denied` event on its connection (in
/// order; a classification refusal also names the statement's hash), and each request the
/// agent or store failed left a failed `request.finished` event.
pub(crate) fn check_audit(runs: &mut [Run], events: &[Value]) {
    let mut cursors: BTreeMap<&str, usize> = BTreeMap::new();
    let denials: BTreeMap<&str, Vec<&Value>> = Store::ALL
        .iter()
        .map(|s| {
            let list = events
                .iter()
                .filter(|e| {
                    e["target"] == s.connection()
                        && (e["action"] == "request.denied" || e["action"] == "access.denied")
                })
                .collect();
            (s.connection(), list)
        })
        .collect();
    for run in runs.iter_mut().filter(|r| r.failure.is_none()) {
        let connection = run.store.connection();
        match &run.outcome {
            Outcome::Refused { code, .. } => {
                let list = &denials[connection];
                let cursor = cursors.entry(connection).or_insert(0);
                let matches = |e: &Value| match code.as_str() {
                    "statement_denied" => {
                        e["action"] == "request.denied"
                            && e["details"]["statement_sha256"] == run.statement_hash.as_str()
                    }
                    "forbidden" => e["action"] == "access.denied",
                    _ => e["action"] == "request.denied",
                };
                match list[*cursor..].iter().position(|e| matches(e)) {
                    Some(i) => *cursor += i + 1,
                    None => {
                        run.failure = Some(format!(
                            "refused ({code}), data unchanged, but the denial is not in the audit chain"
                        ));
                    }
                }
            }
            Outcome::Finished(o) if run.hostile => {
                let target = format!("request:{}", o.request.id);
                let audited = events.iter().any(|e| {
                    e["target"] == target.as_str()
                        && e["action"] == "request.finished"
                        && e["outcome"] == "failure"
                });
                if !audited {
                    run.failure = Some(
                        "failed at the agent or store, but no failed request.finished event".into(),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Files and directories an attack would have created under /tmp.
pub(crate) fn evil_files() -> BTreeSet<String> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("pcx_evil"))
                .collect()
        })
        .unwrap_or_default()
}
