//! `portcullis config check` through the binary: the effective configuration with secrets
//! redacted, the findings of the same pre-flight checks `portcullis server` runs at start, and
//! exit codes scripts can rely on (0 with warnings only, 2 with an error).

use std::path::Path;

use crate::harness::bin;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `portcullis config check --config FILE [args]` with a master key unless `key` is `None`.
fn config_check(config: &Path, args: &[&str], envs: &[(&str, &str)], key: Option<&str>) -> Run {
    let mut cmd = bin();
    cmd.args(["config", "check", "--config"])
        .arg(config)
        .args(args)
        .env_remove("PORTCULLIS_MASTER_KEY")
        .envs(envs.iter().copied());
    if let Some(k) = key {
        cmd.env("PORTCULLIS_MASTER_KEY", k);
    }
    let out = cmd.output().expect("run portcullis");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        format!("data_dir = \"{}\"\n{body}", dir.join("data").display()),
    )
    .expect("write config");
    path
}

/// Issue 14 / SEC-4: a Redis password, from the file or from the environment, and the master
/// key never appear in either output form; the rest of the URL and the key's status do.
#[test]
fn config_check_prints_the_effective_configuration_without_any_secret() {
    let dir = tempfile::tempdir().expect("temp");
    let key = portcullis_identity::MasterKey::generate();
    let config = write_config(
        dir.path(),
        "[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://default:file-pw-4f2a@cache.internal:6379/0\"\n\n[execution]\nrow_cap = 500\n",
    );
    let human = config_check(&config, &[], &[], Some(&key));
    assert_eq!(human.code, 0, "{}{}", human.stdout, human.stderr);
    let all = format!("{}{}", human.stdout, human.stderr);
    assert!(!all.contains("file-pw-4f2a"), "{all}");
    assert!(!all.contains(&key), "the master key is never printed");
    assert!(
        human
            .stdout
            .contains("redis_url = \"redis://default:<redacted>@cache.internal:6379/0\""),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("row_cap = 500"), "{}", human.stdout);
    assert!(
        human
            .stdout
            .contains("# Master key: PORTCULLIS_MASTER_KEY is set and valid."),
        "{}",
        human.stdout
    );
    assert!(
        human
            .stdout
            .trim_end()
            .ends_with("0 warnings, 0 errors: `portcullis server` would start"),
        "{}",
        human.stdout
    );

    // The environment wins over the file, as when the server loads it.
    let json = config_check(
        &config,
        &["--json"],
        &[(
            "PORTCULLIS_RATE_LIMIT__REDIS_URL",
            "rediss://:env-pw-91c3@cache.prod:6380",
        )],
        Some(&key),
    );
    assert_eq!(json.code, 0, "{}{}", json.stdout, json.stderr);
    let all = format!("{}{}", json.stdout, json.stderr);
    assert!(!all.contains("env-pw-91c3") && !all.contains(&key), "{all}");
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!(
        v["config"]["rate_limit"]["redis_url"],
        "rediss://:<redacted>@cache.prod:6380"
    );
    assert_eq!(v["config"]["execution"]["row_cap"], 500);
    assert_eq!(
        v["master_key"],
        serde_json::json!({ "source": "environment", "valid": true })
    );
    assert_eq!(v["findings"], serde_json::json!([]));
}

/// Issue 14: a warning is reported and the exit code stays 0 (the server would start).
#[test]
fn config_check_exits_0_when_there_are_only_warnings() {
    let dir = tempfile::tempdir().expect("temp");
    let key = portcullis_identity::MasterKey::generate();
    let config = write_config(
        dir.path(),
        "trusted_proxies = [\"0.0.0.0/0\"]\n\n[rate_limit]\nenabled = false\n",
    );
    let human = config_check(&config, &[], &[], Some(&key));
    assert_eq!(human.code, 0, "{}{}", human.stdout, human.stderr);
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warning: rate_limit_off: rate_limit.enabled = false")),
        "{}",
        human.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with("warning: proxy_trusts_everyone: trusted_proxies contains 0.0.0.0/0")),
        "{}",
        human.stdout
    );
    assert_eq!(
        lines.last().copied(),
        Some("2 warnings, 0 errors: `portcullis server` would start")
    );
    let json = config_check(&config, &["--json"], &[], Some(&key));
    assert_eq!(json.code, 0);
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("json");
    let levels: Vec<&str> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["level"].as_str().expect("level"))
        .collect();
    assert_eq!(levels, ["warning", "warning"]);
}

/// Issue 14: each error is named with its code, the exit code is 2, and `portcullis server`
/// refuses the same configuration for the same reason.
#[test]
fn config_check_exits_2_on_an_error_the_server_would_refuse_to_start_on() {
    let dir = tempfile::tempdir().expect("temp");
    let key = portcullis_identity::MasterKey::generate();
    for (body, key, code, says) in [
        (
            "listen = \"0.0.0.0:7070\"\n",
            Some(key.as_str()),
            "plain_http_public",
            "refusing to serve plain HTTP on 0.0.0.0:7070 (NET-1)",
        ),
        (
            "http_redirect_listen = \"127.0.0.1:8080\"\n",
            Some(key.as_str()),
            "redirect_without_tls",
            "needs native TLS",
        ),
        ("", None, "master_key", "no master key configured"),
        ("", Some("c2hvcnQ"), "master_key", "at least 32"),
        (
            "[people]\nmax_admins = 1\n\n[[users]]\nname = \"a\"\nrole = \"admin\"\n\n[[users]]\nname = \"b\"\nrole = \"admin\"\n",
            Some(key.as_str()),
            "admin_cap",
            "2 active admins, over people.max_admins = 1",
        ),
        (
            "[web]\ncors_origins = [\"*\"]\n",
            Some(key.as_str()),
            "config_invalid",
            "wildcards are refused",
        ),
        (
            "tls_cert_file = \"/nonexistent/cert.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n",
            Some(key.as_str()),
            "tls_files",
            "/nonexistent/cert.pem does not exist",
        ),
    ] {
        let config = write_config(dir.path(), body);
        let run = config_check(&config, &[], &[], key);
        assert_eq!(run.code, 2, "{body}: {}{}", run.stdout, run.stderr);
        let line = format!("error: {code}: ");
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&line) && l.contains(says)),
            "{body}: {}",
            run.stdout
        );
        assert!(
            run.stdout
                .contains("`portcullis server` would refuse to start"),
            "{}",
            run.stdout
        );
        let json = config_check(&config, &["--json"], &[], key);
        assert_eq!(json.code, 2);
        let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("json");
        assert!(
            v["findings"]
                .as_array()
                .expect("findings")
                .iter()
                .any(|f| f["level"] == "error" && f["code"] == code),
            "{v}"
        );
    }

    // The server's own start runs the same checks: same configuration, same refusal.
    let config = write_config(dir.path(), "http_redirect_listen = \"127.0.0.1:8080\"\n");
    let out = bin()
        .args(["server", "--config"])
        .arg(&config)
        .env("PORTCULLIS_MASTER_KEY", &key)
        .output()
        .expect("run server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs native TLS"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was written");
}
