//! `portcullis token …`, `agents`, `connections`, `whoami`.

use portcullis_proto::api::CreateToken;

use crate::args::{AgentsArgs, AgentsCommand, Remote, TokenCommand};
use crate::exit::{self, Exit};
use crate::output;

/// Parses `90d`, `12h`, `30m`, `45s` or plain seconds.
pub(crate) fn parse_ttl(s: &str) -> Result<u64, Exit> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| {
        Exit::new(
            exit::USAGE,
            format!("invalid --ttl {s:?}: expected e.g. 90d, 12h, 30m or seconds"),
        )
    })?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(Exit::new(
                exit::USAGE,
                format!("invalid --ttl unit {unit:?}: use s, m, h or d"),
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| Exit::new(exit::USAGE, "--ttl must be positive"))
}

pub(crate) async fn token(command: TokenCommand) -> anyhow::Result<u8> {
    match command {
        TokenCommand::Create {
            name,
            role,
            ttl,
            environments,
            remote,
        } => {
            let client = super::client(&remote)?;
            let body = CreateToken {
                name,
                role,
                ttl_seconds: parse_ttl(&ttl)?,
                environments: (!environments.is_empty()).then_some(environments),
            };
            let created = client.create_token(&body).await?;
            if remote.json {
                output::json(&created)?;
            } else {
                println!("{}", created.token);
                eprintln!(
                    "token {} ({}, expires {}): shown once, store it now",
                    created.info.id, created.info.role, created.info.expires_at
                );
            }
        }
        TokenCommand::List { unused, remote } => {
            let list = super::client(&remote)?.list_tokens(unused).await?;
            if remote.json {
                output::json(&list)?;
            } else {
                let rows = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.role.to_string(),
                            t.owner.clone(),
                            t.expires_at.clone(),
                            output::opt(&t.last_used_at),
                            output::opt(&t.last_used_addr),
                            if t.revoked_at.is_some() {
                                "revoked".into()
                            } else {
                                "active".into()
                            },
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "id",
                        "name",
                        "role",
                        "owner",
                        "expires",
                        "last used",
                        "from",
                        "status",
                    ],
                    rows,
                );
            }
        }
        TokenCommand::Revoke { id, remote } => {
            super::client(&remote)?.revoke_token(&id).await?;
            if !remote.json {
                eprintln!("token {id} revoked");
            }
        }
    }
    Ok(exit::OK)
}

pub(crate) async fn agents(args: AgentsArgs) -> anyhow::Result<u8> {
    let client = super::client(&args.remote)?;
    match args.command.unwrap_or(AgentsCommand::List) {
        AgentsCommand::List => {
            let list = client.list_agents().await?;
            if args.remote.json {
                output::json(&list)?;
            } else {
                let rows = list
                    .iter()
                    .map(|a| {
                        let status = if a.revoked_at.is_some() {
                            "revoked"
                        } else if a.connected {
                            "connected"
                        } else {
                            "offline"
                        };
                        let conns = a
                            .connections
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ");
                        vec![
                            a.name.clone(),
                            status.into(),
                            conns,
                            output::opt(&a.last_seen_at),
                            a.created_at.clone(),
                        ]
                    })
                    .collect();
                output::table(
                    &["name", "status", "connections", "last seen", "created"],
                    rows,
                );
            }
        }
        AgentsCommand::Create { name } => {
            let created = client.create_agent(&name).await?;
            if args.remote.json {
                output::json(&created)?;
            } else {
                println!("{}", created.token);
                eprintln!(
                    "agent {name} registered: give it this token (PORTCULLIS_AGENT_TOKEN or token_file); shown once"
                );
            }
        }
        AgentsCommand::Revoke { name } => {
            client.revoke_agent(&name).await?;
            if !args.remote.json {
                eprintln!("agent {name} revoked");
            }
        }
    }
    Ok(exit::OK)
}

pub(crate) async fn connections(remote: &Remote) -> anyhow::Result<u8> {
    let list = super::client(remote)?.connections().await?;
    if remote.json {
        output::json(&list)?;
    } else {
        let rows = list
            .iter()
            .map(|c| {
                vec![
                    c.name.to_string(),
                    c.kind.to_string(),
                    c.environment.to_string(),
                    c.classes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                ]
            })
            .collect();
        output::table(&["name", "kind", "environment", "you may run"], rows);
    }
    Ok(exit::OK)
}

pub(crate) async fn whoami(remote: &Remote) -> anyhow::Result<u8> {
    let me = super::client(remote)?.whoami().await?;
    if remote.json {
        output::json(&me)?;
    } else {
        println!("{} · role {}", me.principal, me.role);
        println!(
            "permissions: {}",
            me.permissions
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(exit::OK)
}

pub(crate) async fn break_glass(args: crate::args::BreakGlassArgs) -> anyhow::Result<u8> {
    let duration = args.duration.as_deref().map(parse_ttl).transpose()?;
    let grant = super::client(&args.remote)?
        .break_glass(&args.reason, duration)
        .await?;
    if args.remote.json {
        output::json(&grant)?;
    } else {
        eprintln!(
            "BREAK-GLASS open until {}: your requests skip approval steps; each one is alerted and reviewed afterwards",
            grant["expires_at"].as_str().unwrap_or("?")
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90d").unwrap(), 90 * 86_400);
        assert_eq!(parse_ttl("12h").unwrap(), 43_200);
        assert_eq!(parse_ttl("30m").unwrap(), 1_800);
        assert_eq!(parse_ttl("45").unwrap(), 45);
        for bad in ["", "0", "d", "5y", "-1d", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
