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
    as_json: bool,
) -> anyhow::Result<RequestOutcome> {
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let spinner = (!as_json && std::io::stderr().is_terminal()).then(|| {
        let s = ProgressBar::new_spinner();
        s.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        s.enable_steady_tick(Duration::from_millis(120));
        s
    });
    let mut last_line: Option<String> = None;
    let mut broke_off = None;
    while !outcome.request.state.is_terminal() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let line = status_line(&outcome.request);
        match &spinner {
            Some(s) => s.set_message(line),
            None if !as_json && last_line.as_deref() != Some(line.as_str()) => {
                eprintln!("{line}");
                last_line = Some(line);
            }
            None => {}
        }
        let slice = Duration::from_secs(left.as_secs().clamp(1, WAIT_SLICE));
        match client
            .wait_request_progress(outcome.request.id, slice)
            .await
        {
            Ok(next) => outcome = next,
            Err(e) => {
                broke_off = Some(e);
                break;
            }
        }
    }
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    match broke_off {
        Some(e) => Err(interrupted(&outcome.request, &e, as_json)),
        None => Ok(outcome),
    }
}

/// A wait that broke off after its request was created (a server restarting answers its
/// waits first, then stops): the request goes on without it, so the error says which one it
/// was, where it stood and how to pick it up (also on stdout under `--json`).
fn interrupted(
    r: &RequestView,
    e: &portcullis_client::ClientError,
    as_json: bool,
) -> anyhow::Error {
    if as_json
        && let Err(out) = output::json(&json!({
            "request_id": r.id,
            "state": r.state,
            "error": { "code": "wait_interrupted", "message": e.to_string() },
        }))
    {
        return out;
    }
    Exit::new(
        exit::for_client_error(e),
        format!(
            "request {} was {} when the wait for it broke off: {e} (resume with `portcullis request wait {}`)",
            r.id, r.state, r.id
        ),
    )
    .into()
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
            unreviewed,
            state,
            limit,
            remote,
        } => {
            let client = super::client(&remote)?;
            let list = if unreviewed {
                client.list_unreviewed(limit).await?
            } else {
                client.list_requests(all, state.as_deref(), limit).await?
            };
            if remote.json {
                output::json(&list)?;
            } else {
                output::table(
                    &[
                        "id",
                        "state",
                        "approval",
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
        RequestCommand::Review {
            id,
            comment,
            remote,
        } => {
            let view = super::client(&remote)?.review_request(id, comment).await?;
            if remote.json {
                output::json(&view)?;
            } else {
                eprintln!(
                    "request {} reviewed by {}",
                    view.id,
                    output::opt(&view.reviewed_by)
                );
            }
            Ok(exit::OK)
        }
        RequestCommand::Approve {
            id,
            comment,
            remote,
        } => {
            let view = super::client(&remote)?.approve_request(id, comment).await?;
            if remote.json {
                output::json(&view)?;
            } else {
                eprintln!("{}", status_line(&view));
            }
            Ok(exit::OK)
        }
        RequestCommand::Reject {
            id,
            comment,
            remote,
        } => {
            let view = super::client(&remote)?.reject_request(id, comment).await?;
            if remote.json {
                output::json(&view)?;
            } else {
                eprintln!("request {} is {}", view.id, view.state);
            }
            Ok(exit::OK)
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

/// Where a request stands, in one line: for one awaiting approval, the step, the count and
/// who decided.
fn status_line(r: &RequestView) -> String {
    if r.state != portcullis_core::RequestState::PendingApproval || r.steps.is_empty() {
        return format!("request {} is {}", r.id, r.state);
    }
    let step = r.current_step as usize;
    let needed = r.steps.get(step).map_or(0, |s| s.approvals);
    let given: Vec<&str> = r
        .approvals
        .iter()
        .filter(|a| a.step as usize == step && a.decision == "approve")
        .map(|a| a.approver.as_str())
        .collect();
    let mut line = format!(
        "request {} pending: step {} of {}, {} of {} approval(s)",
        r.id,
        step + 1,
        r.steps.len(),
        given.len(),
        needed
    );
    if !given.is_empty() {
        line.push_str(&format!(" ({} approved)", given.join(", ")));
    }
    line
}

fn progress(r: &RequestView) -> String {
    if r.state != portcullis_core::RequestState::PendingApproval || r.steps.is_empty() {
        return "-".into();
    }
    format!("step {}/{}", r.current_step + 1, r.steps.len())
}

fn request_row(r: &RequestView) -> Vec<String> {
    vec![
        r.id.to_string(),
        r.state.to_string(),
        progress(r),
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
        vec![
            "decision".into(),
            match &r.policy_rule {
                Some(rule) => format!("{} (rule {rule})", r.decision),
                None => format!("{} (default)", r.decision),
            },
        ],
        vec![
            "steps".into(),
            if r.steps.is_empty() {
                "-".into()
            } else {
                r.steps
                    .iter()
                    .map(|s| {
                        let roles: Vec<&str> = s.roles.iter().map(|r| r.as_str()).collect();
                        format!("{} from {}", s.approvals, roles.join("/"))
                    })
                    .collect::<Vec<_>>()
                    .join(", then ")
            },
        ],
        vec![
            "approvals".into(),
            if r.approvals.is_empty() {
                "-".into()
            } else {
                r.approvals
                    .iter()
                    .map(|a| {
                        format!(
                            "{} ({}) {}d step {} at {}{}",
                            a.approver,
                            a.role,
                            a.decision,
                            a.step + 1,
                            a.at,
                            a.comment
                                .as_deref()
                                .map(|c| format!(": {c}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ],
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
        vec![
            "preview".into(),
            match &r.preview {
                None => "-".into(),
                Some(p) => match p.get("rows_affected").and_then(|n| n.as_u64()) {
                    Some(n) => format!("would change {n} row(s) (dry run, rolled back)"),
                    None => format!(
                        "unavailable: {}",
                        p["error"]["message"].as_str().unwrap_or("unknown")
                    ),
                },
            },
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

pub(crate) async fn policy(command: crate::args::PolicyCommand) -> anyhow::Result<u8> {
    let crate::args::PolicyCommand::Check {
        role,
        connection,
        statement,
        remote,
    } = command;
    let verdict = super::client(&remote)?
        .policy_check(&portcullis_proto::api::PolicyCheck {
            connection,
            statement,
            role,
        })
        .await?;
    if remote.json {
        output::json(&verdict)?;
    } else {
        println!("{}", verdict.because);
        println!(
            "  {} on {} ({}) as {}; tables: {}",
            verdict.class,
            verdict.connection,
            verdict.environment,
            verdict.role,
            if verdict.tables.is_empty() {
                "-".to_owned()
            } else {
                verdict.tables.join(", ")
            }
        );
        for skipped in &verdict.skipped {
            println!(
                "  rule {} did not match on {}",
                skipped.rule, skipped.failed_on
            );
        }
    }
    // Scripts can branch on the answer: 3 when policy denies.
    Ok(if verdict.decision == portcullis_core::Decision::Deny {
        exit::DENIED
    } else {
        exit::OK
    })
}
