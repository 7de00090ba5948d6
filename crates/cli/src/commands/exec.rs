//! `portcullis exec` and `portcullis request …`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use portcullis_client::Client;
use portcullis_proto::api::{CreateRequest, RequestOutcome, RequestView};
use serde_json::json;

use crate::args::{ExecArgs, RequestCommand};
use crate::exit::{self, Exit};
use crate::output;

/// The longest single HTTP wait; longer waits are several calls.
const WAIT_SLICE: u64 = 60;

pub(crate) async fn run(args: ExecArgs) -> anyhow::Result<u8> {
    let client = super::client(&args.remote)?;
    let body = CreateRequest {
        connection: args.connection.clone(),
        statement: args.statement.clone(),
        reason: args.reason.clone(),
        stream: args.stream,
    };
    let first_wait = if args.no_wait || args.stream {
        0
    } else {
        args.wait.min(WAIT_SLICE)
    };
    let outcome = client
        .create_request(&body, Duration::from_secs(first_wait))
        .await?;
    if args.stream {
        return super::stream::print(&client, outcome.request.id, args.wait).await;
    }
    if args.no_wait {
        if args.remote.json {
            output::json(
                &json!({ "request_id": outcome.request.id, "state": outcome.request.state }),
            )?;
        } else {
            println!("{}", outcome.request.id);
        }
        return Ok(exit::OK);
    }
    let outcome = wait_until_done(&client, outcome, args.wait, args.remote.json).await?;
    print_outcome(&outcome, args.remote.json)
}

/// Keeps waiting (each call is a server-side push wait, not a poll) until the request ends
/// or `wait_secs` pass, with a live status line on a terminal.
async fn wait_until_done(
    client: &Client,
    mut outcome: RequestOutcome,
    wait_secs: u64,
    quiet: bool,
) -> anyhow::Result<RequestOutcome> {
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let spinner = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let s = ProgressBar::new_spinner();
        s.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        s.enable_steady_tick(Duration::from_millis(120));
        s
    });
    while !outcome.request.state.is_terminal() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(s) = &spinner {
            s.set_message(format!(
                "request {} is {}",
                outcome.request.id, outcome.request.state
            ));
        }
        let slice = Duration::from_secs(left.as_secs().clamp(1, WAIT_SLICE));
        outcome = client.wait_request(outcome.request.id, slice).await?;
    }
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    Ok(outcome)
}

fn print_outcome(outcome: &RequestOutcome, as_json: bool) -> anyhow::Result<u8> {
    let r = &outcome.request;
    let code = exit::for_state(r.state);
    if as_json {
        let mut obj = json!({ "request_id": r.id, "state": r.state, "class": r.class, "connection": r.connection });
        if let Some(result) = &outcome.result {
            obj["columns"] = json!(
                result
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
            );
            obj["column_types"] = json!(
                result
                    .columns
                    .iter()
                    .map(|c| c.type_name.as_str())
                    .collect::<Vec<_>>()
            );
            obj["rows"] = json!(result.rows);
            obj["row_count"] = json!(result.row_count);
            obj["truncated"] = json!(result.truncated);
            if let Some(n) = result.affected_rows {
                obj["affected_rows"] = json!(n);
            }
        }
        if let Some(e) = &r.error {
            obj["error"] = json!({ "code": e.code, "message": e.message });
        }
        output::json(&obj)?;
        return Ok(code);
    }
    match (&outcome.result, code) {
        (Some(result), exit::OK) => {
            if !result.columns.is_empty() {
                let header: Vec<&str> = result.columns.iter().map(|c| c.name.as_str()).collect();
                output::table(
                    &header,
                    result
                        .rows
                        .iter()
                        .map(|row| row.iter().map(output::cell).collect())
                        .collect(),
                );
            }
            let mut note = match result.affected_rows {
                Some(n) => format!("{n} row(s) affected"),
                None => format!("{} row(s)", result.row_count),
            };
            if result.truncated {
                note.push_str(" (truncated at the row cap)");
            }
            eprintln!("{note} · request {}", r.id);
            Ok(code)
        }
        (None, exit::OK) => {
            eprintln!(
                "request {} succeeded; its result is no longer held by the server",
                r.id
            );
            Ok(code)
        }
        (_, exit::TIMED_OUT) => Err(Exit::new(
            code,
            format!(
                "request {} is still {} (resume with `portcullis request wait {}`)",
                r.id, r.state, r.id
            ),
        )
        .into()),
        _ => {
            let why = r
                .error
                .as_ref()
                .map(|e| format!(": {} ({})", e.message, e.code))
                .unwrap_or_default();
            Err(Exit::new(code, format!("request {} ended {}{why}", r.id, r.state)).into())
        }
    }
}

pub(crate) async fn request(command: RequestCommand) -> anyhow::Result<u8> {
    match command {
        RequestCommand::List {
            all,
            state,
            limit,
            remote,
        } => {
            let client = super::client(&remote)?;
            let list = client.list_requests(all, state.as_deref(), limit).await?;
            if remote.json {
                output::json(&list)?;
            } else {
                output::table(
                    &[
                        "id",
                        "state",
                        "connection",
                        "class",
                        "requester",
                        "created",
                        "reason",
                    ],
                    list.iter().map(request_row).collect(),
                );
            }
            Ok(exit::OK)
        }
        RequestCommand::Show { id, remote } => {
            let view = super::client(&remote)?.request_view(id).await?;
            if remote.json {
                output::json(&view)?;
            } else {
                print_request(&view);
            }
            Ok(exit::OK)
        }
        RequestCommand::Wait { id, wait, remote } => {
            let client = super::client(&remote)?;
            let outcome = client
                .wait_request(id, Duration::from_secs(wait.clamp(1, WAIT_SLICE)))
                .await?;
            let outcome = wait_until_done(&client, outcome, wait, remote.json).await?;
            print_outcome(&outcome, remote.json)
        }
        RequestCommand::Cancel { id, remote } => {
            let view = super::client(&remote)?.cancel_request(id).await?;
            if remote.json {
                output::json(&view)?;
            } else {
                println!("request {} is {}", view.id, view.state);
            }
            Ok(exit::OK)
        }
    }
}

fn request_row(r: &RequestView) -> Vec<String> {
    vec![
        r.id.to_string(),
        r.state.to_string(),
        r.connection.to_string(),
        r.class.to_string(),
        r.requester.clone(),
        r.created_at.clone(),
        r.reason.chars().take(40).collect(),
    ]
}

fn print_request(r: &RequestView) {
    let rows = vec![
        vec!["id".into(), r.id.to_string()],
        vec!["state".into(), r.state.to_string()],
        vec![
            "connection".into(),
            format!("{} ({}, {})", r.connection, r.kind, r.environment),
        ],
        vec!["class".into(), r.class.to_string()],
        vec!["decision".into(), r.decision.to_string()],
        vec!["requester".into(), r.requester.clone()],
        vec!["reason".into(), r.reason.clone()],
        vec!["statement".into(), r.statement.clone()],
        vec!["created".into(), r.created_at.clone()],
        vec!["approved".into(), output::opt(&r.approved_at)],
        vec!["dispatched".into(), output::opt(&r.dispatched_at)],
        vec!["finished".into(), output::opt(&r.finished_at)],
        vec!["agent".into(), output::opt(&r.agent)],
        vec![
            "error".into(),
            r.error
                .as_ref()
                .map_or("-".into(), |e| format!("{}: {}", e.code, e.message)),
        ],
        vec![
            "explain".into(),
            r.explain.as_ref().map_or("-".into(), explain_text),
        ],
    ];
    output::table(&["field", "value"], rows);
}

/// A plan as lines of text: each row's cells joined, or the error that prevented it.
fn explain_text(plan: &serde_json::Value) -> String {
    if let Some(e) = plan.get("error") {
        return format!(
            "unavailable: {}",
            e.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("unknown")
        );
    }
    plan.get("rows")
        .and_then(|r| r.as_array())
        .map(|rows| {
            rows.iter()
                .map(|row| match row.as_array() {
                    Some(cells) => cells
                        .iter()
                        .map(output::cell)
                        .collect::<Vec<_>>()
                        .join(" | "),
                    None => output::cell(row),
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
