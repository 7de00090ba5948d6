//! One entry point that classifies an operation for any connection kind. The server uses it
//! to decide, and the agent uses it again to refuse anything above the signed class.

use crate::names::{ConnectionKind, OperationClass};
use crate::redis::RedisCommand;
use crate::sql::{SqlDialect, SqlStatement};

/// The analyses of recent statements, per process: bounded in count and in statement size,
/// and emptied whole when full (a workload of more distinct statements than it holds parses
/// as if it were not there). Only statements that classify are kept; a refusal is parsed
/// again each time.
pub mod memo {
    use std::collections::HashMap;
    use std::sync::{Mutex, PoisonError};

    use super::Operation;
    use crate::names::ConnectionKind;

    /// The most statements kept.
    pub const CAPACITY: usize = 1_024;
    /// Longer statements are not kept (nor is their text held in memory).
    pub const MAX_TEXT: usize = 4 * 1024;

    /// Per connection kind, statement text → its analysis; `total` counts them all.
    struct Known {
        kinds: HashMap<ConnectionKind, HashMap<Box<str>, Operation>>,
        total: usize,
    }

    static KNOWN: Mutex<Option<Known>> = Mutex::new(None);

    pub(super) fn get(kind: ConnectionKind, text: &str) -> Option<Operation> {
        if text.len() > MAX_TEXT {
            return None;
        }
        let known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        known.as_ref()?.kinds.get(&kind)?.get(text).cloned()
    }

    pub(super) fn put(kind: ConnectionKind, text: &str, operation: &Operation) {
        if text.len() > MAX_TEXT {
            return;
        }
        let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        let known = known.get_or_insert_with(|| Known {
            kinds: HashMap::new(),
            total: 0,
        });
        if known.total >= CAPACITY {
            known.kinds.clear();
            known.total = 0;
        }
        let texts = known.kinds.entry(kind).or_default();
        if texts.insert(Box::from(text), operation.clone()).is_none() {
            known.total += 1;
        }
    }

    /// How many statements are kept.
    pub fn len() -> usize {
        KNOWN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |k| k.total)
    }
}

/// Why an operation cannot be classified (and so is denied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    #[error(transparent)]
    Redis(#[from] crate::redis::RedisError),
    #[error("operations on {0} connections are not supported yet")]
    UnsupportedKind(ConnectionKind),
}

impl ClassifyError {
    /// A stable snake_case reason code.
    pub fn code(&self) -> &'static str {
        match self {
            ClassifyError::Sql(e) => e.code(),
            ClassifyError::Redis(e) => e.code(),
            ClassifyError::UnsupportedKind(_) => "unsupported_kind",
        }
    }
}

/// What the server decides on: the class and, for SQL, the tables touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub class: OperationClass,
    /// Lower-cased, deduplicated and sorted; empty for Redis.
    pub tables: Vec<String>,
}

/// Classifies `text` as an operation on a `kind` connection.
pub fn classify(kind: ConnectionKind, text: &str) -> Result<OperationClass, ClassifyError> {
    analyse(kind, text).map(|op| op.class)
}

/// Classifies `text` and lists the tables it touches.
///
/// The analysis of a statement that classifies is kept, keyed by its exact text and the
/// connection kind, so a statement sent again (the common case: applications and agents
/// repeat their queries) is not parsed again: [`memo`]. The analysis is a pure function of
/// those two, so the answer is the same either way.
pub fn analyse(kind: ConnectionKind, text: &str) -> Result<Operation, ClassifyError> {
    if let Some(known) = memo::get(kind, text) {
        return Ok(known);
    }
    let operation = analyse_text(kind, text)?;
    memo::put(kind, text, &operation);
    Ok(operation)
}

/// [`analyse`] without the memo: parses `text`.
pub fn analyse_text(kind: ConnectionKind, text: &str) -> Result<Operation, ClassifyError> {
    if let Some(dialect) = SqlDialect::for_kind(kind) {
        let statement = SqlStatement::parse(dialect, text)?;
        return Ok(Operation {
            class: statement.class(),
            tables: statement.tables().to_vec(),
        });
    }
    match kind {
        ConnectionKind::Redis => Ok(Operation {
            class: RedisCommand::parse(text)?.class(),
            tables: Vec::new(),
        }),
        other => Err(ClassifyError::UnsupportedKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement's memoized analysis is the one its parse gives, for the kind it was sent
    /// on: the same text on another kind is analysed for that kind, and a refusal is never
    /// remembered as an answer.
    #[test]
    fn the_memo_answers_what_the_parse_answers_per_kind() {
        let cases = [
            (
                ConnectionKind::Postgres,
                "SELECT * FROM memo_a JOIN memo_b USING (id)",
            ),
            (
                ConnectionKind::Mysql,
                "SELECT * FROM memo_a JOIN memo_b USING (id)",
            ),
            (ConnectionKind::Postgres, "DELETE FROM memo_c WHERE id = 1"),
            (ConnectionKind::Sqlite, "UPDATE memo_d SET x = 1"),
            (ConnectionKind::Redis, "GET memo:key"),
            (ConnectionKind::Redis, "FLUSHALL"),
            (ConnectionKind::Postgres, "SELECT 1; DROP TABLE memo_e"),
            (
                ConnectionKind::Redis,
                "SELECT * FROM memo_a JOIN memo_b USING (id)",
            ),
        ];
        for _ in 0..2 {
            for (kind, text) in cases {
                let parsed = analyse_text(kind, text);
                assert_eq!(analyse(kind, text), parsed, "{kind} {text}");
                match &parsed {
                    Ok(op) => assert_eq!(memo::get(kind, text).as_ref(), Some(op)),
                    Err(_) => assert_eq!(memo::get(kind, text), None, "a refusal was kept"),
                }
            }
        }
    }

    /// The memo holds at most its capacity, and no statement longer than its limit.
    #[test]
    fn the_memo_is_bounded() {
        for i in 0..memo::CAPACITY + 50 {
            let text = format!("SELECT {i} FROM memo_bounded");
            analyse(ConnectionKind::Postgres, &text).unwrap();
            assert!(memo::len() <= memo::CAPACITY);
        }
        let long = format!(
            "SELECT 1 FROM memo_long WHERE x = '{}'",
            "y".repeat(memo::MAX_TEXT)
        );
        analyse(ConnectionKind::Postgres, &long).unwrap();
        assert_eq!(memo::get(ConnectionKind::Postgres, &long), None);
    }
}
