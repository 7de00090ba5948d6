//! `portcullis user add|list|invite|suspend|unsuspend|reset-mfa` and `portcullis vault
//! rotate`.

use portcullis_proto::people::{CreateUser, Invite, SuspendUser};

use crate::args::{LockdownArgs, LockdownCommand, UserCommand, VaultCommand};
use crate::exit;
use crate::output;

fn print_invite(invite: &Invite, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(&serde_json::json!({
            "name": invite.name,
            "enrol_token": invite.enrol_token,
            "expires_at": invite.expires_at,
        }));
    }
    println!("{}", invite.enrol_token);
    eprintln!(
        "invitation for {} (until {}), shown once: pass it privately; they run `portcullis enrol --token-file FILE`",
        invite.name, invite.expires_at
    );
    Ok(())
}

pub(crate) async fn run(command: UserCommand) -> anyhow::Result<u8> {
    match command {
        UserCommand::Add { name, role, remote } => {
            let created = super::client(&remote)?
                .add_user(&CreateUser { name, role })
                .await?;
            if remote.json {
                output::json(&serde_json::json!({
                    "info": created.info,
                    "invite": {
                        "name": created.invite.name,
                        "enrol_token": created.invite.enrol_token,
                        "expires_at": created.invite.expires_at,
                    },
                }))?;
            } else {
                eprintln!("user {} ({}) added", created.info.name, created.info.role);
                print_invite(&created.invite, false)?;
            }
        }
        UserCommand::List { remote } => {
            let users = super::client(&remote)?.list_users().await?;
            if remote.json {
                output::json(&users)?;
            } else {
                let rows = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.role.to_string(),
                            serde_json::to_value(u.source)
                                .map(|v| output::cell(&v))
                                .unwrap_or_default(),
                            match (u.mfa_enrolled, u.mfa_required) {
                                (true, _) => "totp".into(),
                                (false, true) => "required, not enrolled".into(),
                                (false, false) => "-".into(),
                            },
                            u.active_sessions.to_string(),
                            u.active_tokens.to_string(),
                            match (&u.suspended_at, u.password_set, &u.invite_expires_at) {
                                (Some(at), _, _) => format!("suspended {at}"),
                                (None, false, Some(until)) => format!("invited until {until}"),
                                (None, false, None) => "no password".into(),
                                (None, true, _) => "active".into(),
                            },
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "NAME", "ROLE", "SOURCE", "MFA", "SESSIONS", "TOKENS", "STATE",
                    ],
                    rows,
                );
            }
        }
        UserCommand::Invite { name, remote } => {
            let invite = super::client(&remote)?.invite_user(&name).await?;
            print_invite(&invite, remote.json)?;
        }
        UserCommand::Suspend {
            name,
            reason,
            remote,
        } => suspend(&name, reason, &remote, "suspended").await?,
        UserCommand::Lock {
            name,
            reason,
            remote,
        } => {
            let reason = Some(reason.map_or_else(
                || "locked (incident response)".to_owned(),
                |r| format!("locked: {r}"),
            ));
            suspend(&name, reason, &remote, "locked").await?;
        }
        UserCommand::Unsuspend { name, remote } => {
            super::client(&remote)?.unsuspend_user(&name).await?;
            if remote.json {
                output::json(&serde_json::json!({ "name": name, "suspended": false }))?;
            } else {
                eprintln!("{name} unsuspended; they sign in again");
            }
        }
        UserCommand::ResetMfa { name, remote } => {
            let invite = super::client(&remote)?.reset_mfa(&name).await?;
            if !remote.json {
                eprintln!(
                    "{name}: authenticator, recovery codes, trusted devices and sessions removed"
                );
            }
            print_invite(&invite, remote.json)?;
        }
    }
    Ok(exit::OK)
}

pub(crate) async fn vault(command: VaultCommand) -> anyhow::Result<u8> {
    match command {
        VaultCommand::Rotate { remote } => {
            let done = super::client(&remote)?.rotate_vault().await?;
            if remote.json {
                output::json(&done)?;
            } else {
                eprintln!(
                    "vault key version {}: {} sealed value(s) re-sealed; the server uses the new key now",
                    done.version, done.resealed
                );
            }
        }
    }
    Ok(exit::OK)
}

pub(crate) async fn lockdown(args: LockdownArgs) -> anyhow::Result<u8> {
    let client = super::client(&args.remote)?;
    match args.command {
        None => {
            let done = client.lockdown().await?;
            if args.remote.json {
                output::json(&done)?;
            } else {
                eprintln!(
                    "LOCKDOWN: {} account(s) locked, {} session(s) and {} token(s) revoked, {} request(s) cancelled; undo the locks with `portcullis lockdown lift`",
                    done.users_locked,
                    done.sessions_revoked,
                    done.tokens_revoked,
                    done.requests_cancelled
                );
            }
        }
        Some(LockdownCommand::Lift) => {
            let done = client.lift_lockdown().await?;
            if args.remote.json {
                output::json(&done)?;
            } else {
                eprintln!(
                    "lockdown lifted: {} account(s) unlocked; they sign in again",
                    done.users_unlocked
                );
            }
        }
    }
    Ok(exit::OK)
}

async fn suspend(
    name: &str,
    reason: Option<String>,
    remote: &crate::args::Remote,
    done_word: &str,
) -> anyhow::Result<()> {
    let done = super::client(remote)?
        .suspend_user(name, &SuspendUser { reason })
        .await?;
    if remote.json {
        output::json(&done)?;
    } else {
        eprintln!(
            "{name} {done_word}: {} session(s) and {} token(s) revoked, {} request(s) cancelled",
            done.sessions_revoked, done.tokens_revoked, done.requests_cancelled
        );
    }
    Ok(())
}
