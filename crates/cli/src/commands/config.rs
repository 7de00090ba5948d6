//! `portcullis config check`: the configuration `portcullis server` would run with (the file
//! and `PORTCULLIS_*` variables over the defaults, exactly as the server loads it) with
//! secrets redacted, then every finding of the pre-flight checks the server itself runs at
//! start. Exit 0 with warnings only, 2 when the server would refuse to start.

use portcullis_identity::master_key::MASTER_KEY_ENV;
use portcullis_server::ServerConfig;
use portcullis_server::preflight::{self, Code, Finding, Level, MasterKeySource, MasterKeyStatus};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::args::{ConfigCheckArgs, ConfigCommand};
use crate::exit;

pub(crate) fn run(command: ConfigCommand) -> anyhow::Result<u8> {
    match command {
        ConfigCommand::Check(args) => check(args),
    }
}

/// What `--json` prints; the human form prints the same, as TOML and lines.
#[derive(Serialize)]
struct Checked {
    /// `None` when the configuration does not load at all.
    config: Option<ServerConfig>,
    master_key: Option<MasterKeyStatus>,
    findings: Vec<Finding>,
}

fn check(args: ConfigCheckArgs) -> anyhow::Result<u8> {
    let master_key_env = std::env::var(MASTER_KEY_ENV).ok().map(Zeroizing::new);
    let checked = match ServerConfig::load(args.config.as_deref()) {
        Ok(config) => {
            let report = preflight::check(&config, master_key_env.as_deref().map(String::as_str));
            Checked {
                config: Some(preflight::redacted(&config)),
                master_key: Some(report.master_key),
                findings: report.findings,
            }
        }
        // A load error may quote the value it could not parse; URLs in it lose their
        // credentials.
        Err(e) => Checked {
            config: None,
            master_key: None,
            findings: vec![Finding {
                level: Level::Error,
                code: Code::ConfigInvalid,
                message: preflight::redact_text(&e.to_string()),
            }],
        },
    };
    drop(master_key_env);
    let errors = count(&checked.findings, Level::Error);
    if args.json {
        crate::output::json(&checked)?;
    } else {
        print_human(&checked)?;
    }
    Ok(if errors > 0 { exit::USAGE } else { exit::OK })
}

fn count(findings: &[Finding], level: Level) -> usize {
    findings.iter().filter(|f| f.level == level).count()
}

fn print_human(checked: &Checked) -> anyhow::Result<()> {
    if let Some(config) = &checked.config {
        println!(
            "# The effective configuration: defaults, then the file, then PORTCULLIS_* variables. Secrets are redacted."
        );
        if let Some(status) = &checked.master_key {
            println!("# Master key: {}.", describe(status));
        }
        println!("{}", toml::to_string(config)?);
    }
    for f in &checked.findings {
        println!("{f}");
    }
    let warnings = count(&checked.findings, Level::Warning);
    let errors = count(&checked.findings, Level::Error);
    let verdict = if errors > 0 {
        "`portcullis server` would refuse to start"
    } else {
        "`portcullis server` would start"
    };
    println!(
        "{} {}, {} {}: {verdict}",
        warnings,
        plural(warnings, "warning"),
        errors,
        plural(errors, "error"),
    );
    Ok(())
}

fn describe(status: &MasterKeyStatus) -> &'static str {
    match (status.source, status.valid) {
        (MasterKeySource::Environment, true) => "PORTCULLIS_MASTER_KEY is set and valid",
        (MasterKeySource::Environment, false) => "PORTCULLIS_MASTER_KEY is set but refused",
        (MasterKeySource::File, true) => "master_key_file is set and valid",
        (MasterKeySource::File, false) => "master_key_file is set but refused",
        (MasterKeySource::None, _) => "not configured",
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}
