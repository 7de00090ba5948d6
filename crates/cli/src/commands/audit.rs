//! `portcullis audit verify|export` and `portcullis key show`.

use std::io::Write;

use portcullis_proto::api::AuditVerifyView;
use portcullis_proto::token::{KeyId, public_key_base64};

use crate::args::{AuditCommand, KeyCommand};
use crate::exit::{self, Exit};
use crate::output;

pub(crate) async fn run(command: AuditCommand) -> anyhow::Result<u8> {
    match command {
        AuditCommand::Verify { data, remote } => {
            let view = match data {
                Some(dir) => {
                    let r = portcullis_server::audit::verify_data_dir(&dir)
                        .await
                        .map_err(|e| Exit::new(exit::ERROR, format!("{e:#}")))?;
                    AuditVerifyView {
                        ok: r.ok(),
                        events: r.events,
                        head_seq: r.head_seq,
                        first_bad_seq: r.first_bad_seq,
                        problem: r.problem,
                    }
                }
                None => super::client(&remote)?.audit_verify().await?,
            };
            if remote.json {
                output::json(&view)?;
            } else if view.ok {
                println!(
                    "audit chain intact: {} events, head at sequence {}",
                    view.events, view.head_seq
                );
            }
            if view.ok {
                return Ok(exit::OK);
            }
            let at = view
                .first_bad_seq
                .map(|s| format!("first bad sequence number: {s}"))
                .unwrap_or_default();
            let what = view
                .problem
                .clone()
                .unwrap_or_else(|| "the chain does not verify".into());
            if remote.json {
                return Ok(exit::AUDIT_BROKEN);
            }
            Err(Exit::new(
                exit::AUDIT_BROKEN,
                format!("audit chain BROKEN: {what}. {at}"),
            )
            .into())
        }
        AuditCommand::Export {
            data,
            output: path,
            remote,
        } => {
            let mut out: Box<dyn Write> = match &path {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let n = match data {
                Some(dir) => {
                    let state = portcullis_server::store::Store::state_file(&dir);
                    let options = sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(&state)
                        .read_only(true);
                    let pool = sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(options)
                        .await?;
                    let n = portcullis_server::audit::export(&pool, &mut out).await?;
                    pool.close().await;
                    n
                }
                None => {
                    let bytes = super::client(&remote)?.audit_export().await?;
                    out.write_all(&bytes)?;
                    bytes.iter().filter(|b| **b == b'\n').count() as u64
                }
            };
            out.flush()?;
            if path.is_some() {
                eprintln!("exported {n} events");
            }
            Ok(exit::OK)
        }
    }
}

pub(crate) async fn key(command: KeyCommand) -> anyhow::Result<u8> {
    match command {
        KeyCommand::Show { data } => {
            let key = portcullis_server::keys::load_verifying_key(&data)
                .map_err(|e| Exit::new(exit::ERROR, e.to_string()))?;
            let id = KeyId::of(&key);
            let public = public_key_base64(&key);
            println!("[[trusted_keys]]\nkey_id = \"{id}\"\npublic_key = \"{public}\"");
            Ok(exit::OK)
        }
        KeyCommand::Rotate { remote } => {
            let announcement = super::client(&remote)?.rotate_key().await?;
            if remote.json {
                output::json(&announcement)?;
            } else {
                eprintln!(
                    "signing key {} replaces {}; agents that trust the old key accept the new one through its signed announcement; tokens of the old key stop being accepted within 5 minutes",
                    announcement.new_key_id, announcement.prev_key_id
                );
            }
            Ok(exit::OK)
        }
    }
}

pub(crate) async fn alerts(args: crate::args::AlertsArgs) -> anyhow::Result<u8> {
    let list = super::client(&args.remote)?
        .alerts(args.after, args.limit.clamp(1, 1000))
        .await?;
    if args.remote.json {
        output::json(&list)?;
    } else {
        let rows = list
            .iter()
            .map(|a| {
                vec![
                    a.seq.to_string(),
                    a.at.clone(),
                    a.severity.clone(),
                    a.kind.clone(),
                    a.actor.clone(),
                    a.target.clone(),
                ]
            })
            .collect();
        output::table(&["SEQ", "AT", "SEVERITY", "KIND", "ACTOR", "TARGET"], rows);
    }
    Ok(exit::OK)
}
