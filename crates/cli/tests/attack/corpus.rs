//! The corpus: cases, their format, escapes and repetitions.

use super::*;

// ------------------------------------------------------------------------------------------
// The corpus

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Store {
    Sqlite,
    Postgres,
    Mysql,
    Redis,
}

impl Store {
    pub(crate) const ALL: [Store; 4] = [Store::Sqlite, Store::Postgres, Store::Mysql, Store::Redis];

    pub(crate) fn parse(s: &str) -> Option<Store> {
        Some(match s {
            "sqlite" => Store::Sqlite,
            "postgres" => Store::Postgres,
            "mysql" => Store::Mysql,
            "redis" => Store::Redis,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
            Store::Mysql => "mysql",
            Store::Redis => "redis",
        }
    }

    /// The connection name the server declares for this store.
    pub(crate) fn connection(self) -> &'static str {
        match self {
            Store::Sqlite => "demo",
            Store::Postgres => "attack-pg",
            Store::Mysql => "attack-mysql",
            Store::Redis => "attack-redis",
        }
    }

    pub(crate) fn kind(self) -> ConnectionKind {
        match self {
            Store::Sqlite => ConnectionKind::Sqlite,
            Store::Postgres => ConnectionKind::Postgres,
            Store::Mysql => ConnectionKind::Mysql,
            Store::Redis => ConnectionKind::Redis,
        }
    }
}

/// What a benign case must return.
#[derive(Debug, Clone, Default)]
pub(crate) struct Answer {
    pub(crate) rows: Option<u64>,
    pub(crate) min_rows: Option<u64>,
    pub(crate) result: Option<Value>,
    pub(crate) first: Option<Value>,
    pub(crate) value: Option<Value>,
    pub(crate) sorted: bool,
    pub(crate) scan_prefix: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) id: String,
    pub(crate) targets: Vec<Store>,
    pub(crate) class: String,
    pub(crate) hostile: bool,
    /// Escapes and repetitions applied; `{prefix}` and `{db}` are substituted per store.
    pub(crate) input: String,
    pub(crate) answer: Answer,
}

pub(crate) fn attack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../attack")
}

/// Reads one `.cases` file (format: `attack/README.md`). Any mistake in the file is an error:
/// a corpus that silently drops a case proves nothing.
pub(crate) fn load_cases(file: &str, hostile: Option<bool>) -> Result<Vec<Case>, String> {
    let path = attack_dir().join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records: Vec<(usize, String, BTreeMap<String, String>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{file}:{}", n + 1);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(id) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            records.push((n + 1, id.to_owned(), BTreeMap::new()));
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            return Err(format!("{}: expected `key = value`", at()));
        };
        let Some((_, _, fields)) = records.last_mut() else {
            return Err(format!("{}: a field before the first [id]", at()));
        };
        if fields
            .insert(key.trim().to_owned(), value.trim().to_owned())
            .is_some()
        {
            return Err(format!("{}: {key} given twice", at()));
        }
    }
    let mut cases = Vec::new();
    let mut ids = BTreeSet::new();
    for (line, id, mut fields) in records {
        let at = format!("{file}:{line} [{id}]");
        if !ids.insert(id.clone()) {
            return Err(format!("{at}: duplicate id"));
        }
        let mut take = |key: &str| fields.remove(key);
        let input = take("input").ok_or_else(|| format!("{at}: no input"))?;
        let input = expand(&unescape(&input).map_err(|e| format!("{at}: {e}"))?)
            .map_err(|e| format!("{at}: {e}"))?;
        if hostile.is_none() {
            // The Redis seed: only commands.
            cases.push(Case {
                id,
                targets: vec![Store::Redis],
                class: "seed".into(),
                hostile: false,
                input,
                answer: Answer::default(),
            });
            continue;
        }
        let hostile = hostile.unwrap_or(false);
        let targets = take("targets").ok_or_else(|| format!("{at}: no targets"))?;
        let targets = targets
            .split_whitespace()
            .map(|t| Store::parse(t).ok_or_else(|| format!("{at}: unknown target {t:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let redis_file = file.starts_with("redis");
        if targets.is_empty() || targets.iter().any(|t| (*t == Store::Redis) != redis_file) {
            return Err(format!("{at}: targets do not fit this file"));
        }
        let class = take("class").ok_or_else(|| format!("{at}: no class"))?;
        take("what").ok_or_else(|| format!("{at}: no what"))?;
        let expect = take("expect").ok_or_else(|| format!("{at}: no expect"))?;
        if expect != if hostile { "blocked" } else { "allowed" } {
            return Err(format!("{at}: expect = {expect} in this file"));
        }
        let json = |v: Option<String>| -> Result<Option<Value>, String> {
            v.map(|v| serde_json::from_str(&v).map_err(|e| format!("{at}: {e}")))
                .transpose()
        };
        let number = |v: Option<String>| -> Result<Option<u64>, String> {
            v.map(|v| v.parse().map_err(|e| format!("{at}: {e}")))
                .transpose()
        };
        let answer = Answer {
            rows: number(take("rows"))?,
            min_rows: number(take("min_rows"))?,
            result: json(take("result"))?,
            first: json(take("first"))?,
            value: json(take("value"))?,
            sorted: take("sorted").is_some_and(|v| v == "true"),
            scan_prefix: take("scan_prefix").is_some_and(|v| v == "true"),
        };
        let answered = answer.rows.is_some()
            || answer.min_rows.is_some()
            || answer.result.is_some()
            || answer.first.is_some()
            || answer.value.is_some()
            || answer.scan_prefix;
        if hostile == answered {
            return Err(format!(
                "{at}: hostile cases state no answer, benign ones must"
            ));
        }
        if let Some(key) = fields.keys().next() {
            return Err(format!("{at}: unknown key {key}"));
        }
        cases.push(Case {
            id,
            targets,
            class,
            hostile,
            input,
            answer,
        });
    }
    Ok(cases)
}

/// `\\ \n \r \t \v \f \0 \u{HEX}`; any other backslash sequence is an error.
pub(crate) fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('v') => out.push('\x0b'),
            Some('f') => out.push('\x0c'),
            Some('0') => out.push('\0'),
            Some('u') => {
                if chars.next() != Some('{') {
                    return Err("\\u must be followed by {HEX}".into());
                }
                let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let c = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad \\u{{{hex}}}"))?;
                out.push(c);
            }
            other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// `{{N*TEXT}}` → TEXT repeated N times.
pub(crate) fn expand(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let (count, text) = after[..end].split_once('*').ok_or("{{N*TEXT}} needs a *")?;
        let count: usize = count.parse().map_err(|_| format!("bad count {count:?}"))?;
        out.push_str(&text.repeat(count));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
