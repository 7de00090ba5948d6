//! `portcullis keygen`, `bootstrap`, `login` and `logout`.
//!
//! A login's session token is stored per server in
//! `$PORTCULLIS_CONFIG_DIR` (default `$XDG_CONFIG_HOME/portcullis`, then
//! `~/.config/portcullis`) as `sessions.json`, mode 0600 in a 0700 directory (AUTH-3).

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use portcullis_client::Client;
use portcullis_identity::MasterKey;
use portcullis_proto::ErrorCode;
use portcullis_proto::people::{
    BootstrapRequest, EnrolRequest, LoginRequest, PasswordChange, StepUpRequest,
};
use zeroize::Zeroizing;

use crate::args::{BootstrapArgs, EnrolArgs, LoginArgs, PasswordArgs, Remote, StepUpArgs};
use crate::exit::{self, Exit};
use crate::output;

pub(crate) fn keygen() -> anyhow::Result<u8> {
    println!("{}", MasterKey::generate());
    eprintln!(
        "keep it secret and backed up: sealed secrets cannot be opened without it; pass it as PORTCULLIS_MASTER_KEY or in a 0600 file named by master_key_file"
    );
    Ok(exit::OK)
}

fn read_password(stdin: bool, prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    if stdin || !std::io::stdin().is_terminal() {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin().lock().read_line(&mut line)?;
        let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
        return Ok(trimmed);
    }
    Ok(Zeroizing::new(rpassword::prompt_password(prompt)?))
}

pub(crate) async fn bootstrap(args: BootstrapArgs) -> anyhow::Result<u8> {
    let setup_token = std::fs::read_to_string(&args.setup_token_file).map_err(|e| {
        Exit::new(
            exit::USAGE,
            format!("cannot read {}: {e}", args.setup_token_file.display()),
        )
    })?;
    let password = read_password(args.password_stdin, "new admin password: ")?;
    if !args.password_stdin && std::io::stdin().is_terminal() {
        let again = read_password(false, "again: ")?;
        if *again != *password {
            return Err(Exit::new(exit::USAGE, "the passwords differ").into());
        }
    }
    let client = Client::new(&args.remote.server, None)?;
    let created = client
        .bootstrap(&BootstrapRequest {
            setup_token: setup_token.trim().to_owned(),
            name: args.name,
            password: password.to_string(),
        })
        .await?;
    if args.remote.json {
        output::json(&serde_json::json!({
            "name": created.name,
            "otpauth_uri": created.otpauth_uri,
            "totp_secret": created.totp_secret,
            "recovery_codes": created.recovery_codes,
        }))?;
    } else {
        println!(
            "admin {} created. Shown once — store them now:",
            created.name
        );
        println!();
        println!("authenticator (otpauth URI): {}", created.otpauth_uri);
        println!("authenticator (manual key):  {}", created.totp_secret);
        println!();
        println!("recovery codes (each works once):");
        for code in &created.recovery_codes {
            println!("  {code}");
        }
        println!();
        println!("next: portcullis login --name {}", created.name);
    }
    Ok(exit::OK)
}

pub(crate) async fn login(args: LoginArgs) -> anyhow::Result<u8> {
    let password = read_password(args.password_stdin, "password: ")?;
    let client = Client::new(&args.remote.server, None)?;
    let device_key = format!("{} {}", key(&args.remote.server), args.name);
    let device_token = if args.code.is_none() && args.recovery_code.is_none() {
        load_map(DEVICES)?.remove(&device_key)
    } else {
        None
    };
    let mut body = LoginRequest {
        name: args.name.clone(),
        password: password.to_string(),
        code: args.code.clone(),
        recovery_code: args.recovery_code.clone(),
        remember_device: args.remember_device,
        device_token,
    };
    let session = match client.login(&body).await {
        Err(e)
            if e.code() == Some(ErrorCode::Unauthenticated)
                && is_mfa_required(&e)
                && std::io::stdin().is_terminal() =>
        {
            body.code = Some(rpassword::prompt_password("authenticator code: ")?);
            client.login(&body).await?
        }
        other => other?,
    };
    store_session(&args.remote.server, &session.token)?;
    if let Some(device) = &session.device_token {
        let mut devices = load_map(DEVICES)?;
        devices.insert(device_key, device.clone());
        save_map(DEVICES, &devices)?;
    }
    if args.remote.json {
        output::json(&serde_json::json!({
            "name": session.name,
            "role": session.role,
            "expires_at": session.expires_at,
            "idle_timeout_secs": session.idle_timeout_secs,
        }))?;
    } else {
        eprintln!(
            "signed in as {} ({}) until {} at the latest; the session ends after {} min unused",
            session.name,
            session.role,
            session.expires_at,
            session.idle_timeout_secs / 60
        );
    }
    Ok(exit::OK)
}

fn is_mfa_required(e: &portcullis_client::ClientError) -> bool {
    matches!(e, portcullis_client::ClientError::Api { problem, .. } if problem.reason.as_deref() == Some("mfa_required"))
}

pub(crate) async fn logout(remote: &Remote) -> anyhow::Result<u8> {
    let Some(token) = stored_session(&remote.server)? else {
        eprintln!("not signed in to {}", remote.server);
        return Ok(exit::OK);
    };
    let client = Client::new(&remote.server, Some(&token))?;
    // The stored token goes whatever the server says: it may have expired already.
    let outcome = client.logout().await;
    forget_session(&remote.server)?;
    match outcome {
        Ok(()) => eprintln!("signed out"),
        Err(e) => eprintln!("signed out locally ({e})"),
    }
    Ok(exit::OK)
}

fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PORTCULLIS_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("portcullis"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow::anyhow!("set HOME or PORTCULLIS_CONFIG_DIR"))?;
    Ok(PathBuf::from(home).join(".config").join("portcullis"))
}

type Sessions = BTreeMap<String, String>;

const SESSIONS: &str = "sessions.json";
/// Trusted-device tokens, per server and user name.
const DEVICES: &str = "devices.json";

fn load_sessions() -> anyhow::Result<Sessions> {
    load_map(SESSIONS)
}

fn save_sessions(sessions: &Sessions) -> anyhow::Result<()> {
    save_map(SESSIONS, sessions)
}

fn load_map(file: &str) -> anyhow::Result<Sessions> {
    let path = config_dir()?.join(file);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is corrupt ({e}); delete it and log in again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sessions::new()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn save_map(file: &str, sessions: &Sessions) -> anyhow::Result<()> {
    let dir = config_dir()?;
    portcullis_server::create_private_dir(&dir)?;
    let path = dir.join(file);
    let tmp = dir.join(format!("{file}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(sessions)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn key(server: &str) -> String {
    server.trim_end_matches('/').to_owned()
}

fn store_session(server: &str, token: &str) -> anyhow::Result<()> {
    let mut sessions = load_sessions()?;
    sessions.insert(key(server), token.to_owned());
    save_sessions(&sessions)
}

fn forget_session(server: &str) -> anyhow::Result<()> {
    let mut sessions = load_sessions()?;
    if sessions.remove(&key(server)).is_some() {
        save_sessions(&sessions)?;
    }
    Ok(())
}

/// The session token `portcullis login` stored for `server`, if any.
pub(crate) fn stored_session(server: &str) -> anyhow::Result<Option<String>> {
    Ok(load_sessions()?.remove(&key(server)))
}

fn print_enrolment(name: &str, otpauth_uri: Option<&str>, secret: Option<&str>, codes: &[String]) {
    if let (Some(uri), Some(secret)) = (otpauth_uri, secret) {
        println!("Shown once — store them now:");
        println!();
        println!("authenticator (otpauth URI): {uri}");
        println!("authenticator (manual key):  {secret}");
        println!();
        println!("recovery codes (each works once):");
        for code in codes {
            println!("  {code}");
        }
        println!();
    }
    println!("next: portcullis login --name {name}");
}

pub(crate) async fn enrol(args: EnrolArgs) -> anyhow::Result<u8> {
    let token =
        match (&args.token_file, &args.token_env) {
            (Some(file), _) => Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
                Exit::new(exit::USAGE, format!("cannot read {}: {e}", file.display()))
            })?),
            (None, Some(token)) => Zeroizing::new(token.clone()),
            (None, None) => {
                if !std::io::stdin().is_terminal() {
                    return Err(Exit::new(
                        exit::USAGE,
                        "give the enrolment token with --token-file or PORTCULLIS_ENROL_TOKEN",
                    )
                    .into());
                }
                Zeroizing::new(rpassword::prompt_password("enrolment token: ")?)
            }
        };
    let password = read_password(args.password_stdin, "password: ")?;
    let client = Client::new(&args.remote.server, None)?;
    let done = client
        .enrol(&EnrolRequest {
            enrol_token: token.trim().to_owned(),
            password: password.to_string(),
            mfa: args.no_mfa.then_some(false),
        })
        .await?;
    if args.remote.json {
        output::json(&serde_json::json!({
            "name": done.name,
            "role": done.role,
            "otpauth_uri": done.otpauth_uri,
            "totp_secret": done.totp_secret,
            "recovery_codes": done.recovery_codes,
        }))?;
    } else {
        eprintln!("enrolled {} ({})", done.name, done.role);
        print_enrolment(
            &done.name,
            done.otpauth_uri.as_deref(),
            done.totp_secret.as_deref(),
            &done.recovery_codes,
        );
    }
    Ok(exit::OK)
}

pub(crate) async fn password(args: PasswordArgs) -> anyhow::Result<u8> {
    let client = super::client(&args.remote)?;
    let current = read_password(args.password_stdin, "current password: ")?;
    let new = read_password(args.password_stdin, "new password: ")?;
    if !args.password_stdin && std::io::stdin().is_terminal() {
        let again = read_password(false, "again: ")?;
        if *again != *new {
            return Err(Exit::new(exit::USAGE, "the passwords differ").into());
        }
    }
    let changed = client
        .change_password(&PasswordChange {
            current_password: current.to_string(),
            new_password: new.to_string(),
        })
        .await?;
    if args.remote.json {
        output::json(&changed)?;
    } else {
        eprintln!(
            "password changed; ended {} other session(s), {} API token(s) and {} trusted device(s)",
            changed.sessions_revoked, changed.tokens_revoked, changed.devices_revoked
        );
    }
    Ok(exit::OK)
}

pub(crate) async fn step_up(args: StepUpArgs) -> anyhow::Result<u8> {
    let client = super::client(&args.remote)?;
    let code = match (&args.code, &args.recovery_code) {
        (None, None) => {
            if !std::io::stdin().is_terminal() {
                return Err(Exit::new(exit::USAGE, "give --code or --recovery-code").into());
            }
            Some(rpassword::prompt_password("authenticator code: ")?)
        }
        (code, _) => code.clone(),
    };
    let done = client
        .step_up(&StepUpRequest {
            code,
            recovery_code: args.recovery_code.clone(),
        })
        .await?;
    if args.remote.json {
        output::json(&done)?;
    } else {
        eprintln!(
            "confirmed; sensitive actions allowed until {}",
            done.valid_until
        );
    }
    Ok(exit::OK)
}
