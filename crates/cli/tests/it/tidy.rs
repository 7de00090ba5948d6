//! House rules enforced as tests (STYLE.md): the architecture map names every crate, every
//! crate root documents itself, no test is skipped, no debug macro or oversized file is left
//! behind, and the server cannot hold a target address or credential (its invariant).

use std::path::{Path, PathBuf};

use portcullis_server::ServerConfig;
use portcullis_server::config::ConnectionDecl;
use serde_json::json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `members` of the root Cargo.toml's `[workspace]`.
fn workspace_members() -> Vec<String> {
    let manifest = read(&root().join("Cargo.toml"));
    let start = manifest
        .find("members")
        .expect("the root Cargo.toml lists workspace members");
    let list = &manifest[start..];
    let list =
        &list[list.find('[').expect("members = [") + 1..list.find(']').expect("members = [ … ]")];
    let members: Vec<String> = list
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    assert!(
        !members.is_empty(),
        "no workspace members parsed from {list:?}"
    );
    members
}

/// The `name` of a member's `[package]`.
fn package_name(member: &str) -> String {
    let manifest = read(&root().join(member).join("Cargo.toml"));
    let package = &manifest[manifest
        .find("[package]")
        .unwrap_or_else(|| panic!("{member} has a [package]"))..];
    package
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("name").map(|rest| {
                rest.trim()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"')
                    .to_owned()
            })
        })
        .unwrap_or_else(|| panic!("{member} has a package name"))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()))
        {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// STYLE.md: ARCHITECTURE.md's code map names every workspace member (by path or by package
/// name), so the map cannot drift from the territory.
#[test]
fn tidy_architecture_md_names_every_workspace_member() {
    let path = root().join("ARCHITECTURE.md");
    assert!(
        path.exists(),
        "ARCHITECTURE.md is missing at the repository root ({})",
        path.display()
    );
    let doc = read(&path);
    let missing: Vec<String> = workspace_members()
        .into_iter()
        .filter(|m| {
            let name = package_name(m);
            !doc.contains(m.as_str()) && !doc.contains(&name)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not mention these workspace members: {missing:?}"
    );
}

/// STYLE.md: every crate root (`lib.rs`, `main.rs`) opens with a `//!` paragraph.
#[test]
fn tidy_every_crate_root_opens_with_module_docs() {
    let mut roots = Vec::new();
    for member in workspace_members() {
        for file in ["lib.rs", "main.rs"] {
            let path = root().join(&member).join("src").join(file);
            if path.exists() {
                roots.push(path);
            }
        }
    }
    assert!(
        roots.len() >= workspace_members().len(),
        "every member has a crate root: {roots:?}"
    );
    let undocumented: Vec<String> = roots
        .iter()
        .filter(|p| !read(p).trim_start().starts_with("//!"))
        .map(|p| relative(p))
        .collect();
    assert!(
        undocumented.is_empty(),
        "crate roots without a leading //! paragraph: {undocumented:?}"
    );
}

/// STYLE.md: no skipped tests and no leftover debug macros anywhere under crates/.
#[test]
fn tidy_no_ignored_tests_or_debug_macros() {
    // Built from pieces so that this file does not match itself.
    let needles = [concat!("#[", "ignore"), concat!("dbg", "!(")];
    let mut hits = Vec::new();
    for path in rust_files(&root().join("crates")) {
        if path.ends_with("tests/it/tidy.rs") {
            continue;
        }
        for (n, line) in read(&path).lines().enumerate() {
            for needle in needles {
                if line.contains(needle) {
                    hits.push(format!("{}:{}: {}", relative(&path), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "forbidden in committed code:\n{}",
        hits.join("\n")
    );
}

/// STYLE.md: no source file over 800 lines; test files (`*_tests.rs` or under a `tests/`
/// directory) may reach 1200.
#[test]
fn tidy_no_oversized_files() {
    let mut oversized = Vec::new();
    let files = rust_files(&root().join("crates"));
    assert!(
        files.len() > 20,
        "the walk found the sources: {}",
        files.len()
    );
    for path in files {
        let rel = path
            .strip_prefix(root().join("crates"))
            .unwrap_or(&path)
            .to_owned();
        let is_test = rel
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("_tests.rs"))
            || rel.components().any(|c| c.as_os_str() == "tests");
        let limit = if is_test { 1200 } else { 800 };
        let lines = read(&path).lines().count();
        if lines > limit {
            oversized.push(format!(
                "{} has {lines} lines (limit {limit})",
                relative(&path)
            ));
        }
    }
    assert!(oversized.is_empty(), "{}", oversized.join("\n"));
}

/// Invariant (ARCHITECTURE): the server never holds target credentials or addresses. It does
/// not depend on the agent crate (which holds the drivers and credentials).
#[test]
fn invariant_server_does_not_depend_on_the_agent() {
    let manifest = read(&root().join("crates/server/Cargo.toml"));
    assert!(
        !manifest.contains("portcullis-agent"),
        "crates/server/Cargo.toml depends on portcullis-agent"
    );
    let uses: Vec<String> = rust_files(&root().join("crates/server"))
        .into_iter()
        .filter(|p| read(p).contains("portcullis_agent"))
        .map(|p| relative(&p))
        .collect();
    assert!(
        uses.is_empty(),
        "server sources use the agent crate: {uses:?}"
    );
}

fn keys_of(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = format!("{prefix}{k}");
                out.push(path.clone());
                keys_of(v, &format!("{path}."), out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys_of(v, prefix, out)),
        _ => {}
    }
}

/// Invariant (ARCHITECTURE): the server's configuration has no field that could hold a
/// target address or credential. A connection declaration is exactly name, kind and
/// environment, and anything else (`url`, `password`, `host`, …) is refused at parse time
/// rather than silently ignored.
#[test]
fn invariant_server_config_cannot_hold_target_addresses_or_credentials() {
    let decl = json!({ "name": "pg", "kind": "postgres", "environment": "production" });
    let parsed: ConnectionDecl =
        serde_json::from_value(decl.clone()).expect("a bare declaration parses");
    let serialized = serde_json::to_value(&parsed).expect("serialize");
    let mut keys: Vec<&str> = serialized
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["environment", "kind", "name"],
        "a connection declaration is exactly these fields"
    );

    for (field, value) in [
        ("url", "postgres://u:p@h/db"),
        ("password", "hunter2"),
        ("host", "db.internal"),
        ("dsn", "host=db user=u password=p"),
        ("path", "/var/lib/app.db"),
    ] {
        let mut with = decl.clone();
        with[field] = json!(value);
        let err = serde_json::from_value::<ConnectionDecl>(with.clone())
            .expect_err(field)
            .to_string();
        assert!(err.contains("unknown field"), "{field}: {err}");
        let config = json!({ "connections": [with] });
        assert!(
            serde_json::from_value::<ServerConfig>(config).is_err(),
            "ServerConfig accepts a connection with {field}"
        );
    }
    for top in ["database_url", "targets", "credentials"] {
        let config = json!({ top: "postgres://u:p@h/db" });
        assert!(
            serde_json::from_value::<ServerConfig>(config).is_err(),
            "ServerConfig accepts top-level {top}"
        );
    }

    let mut config = ServerConfig::default();
    config.connections.push(parsed);
    let mut all = Vec::new();
    keys_of(
        &serde_json::to_value(&config).expect("serialize config"),
        "",
        &mut all,
    );
    let suspicious = [
        "url",
        "host",
        "password",
        "secret",
        "dsn",
        "credential",
        "user",
    ];
    // `[[users]]` declares the people who sign in to Portcullis itself (name, role,
    // suspended), never a data-store user.
    let bad: Vec<&String> = all
        .iter()
        .filter(|k| *k != "users" && !k.starts_with("users."))
        // The server's own rate-limit store (WEB-4), shared by its replicas; never a target.
        .filter(|k| *k != "rate_limit.redis_url")
        .filter(|k| {
            suspicious
                .iter()
                .any(|s| k.to_ascii_lowercase().contains(s))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "server configuration fields that look like target addresses or credentials: {bad:?}"
    );
}
