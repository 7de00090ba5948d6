//! SQL statement classification (EX-2).
//!
//! A [`SqlStatement`] is exactly one statement, parsed by sqlparser's real parser for the
//! connection's dialect, with an [`OperationClass`] computed from the syntax tree and the list of
//! tables it references. Nothing here looks at SQL with regular expressions; the token-level
//! checks in [`lexical`] exist only to refuse inputs on which sqlparser and the database server
//! could disagree about where a comment, string or identifier ends.
//!
//! Classification fails closed: input that is too long, too deep, ambiguous, unparsable, made of
//! several statements or calling a denylisted function is an error, and any statement kind not
//! explicitly recognised is [`OperationClass::Admin`].

mod classify;
mod denylist;
mod lexical;

use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::{Parser, ParserError};

use crate::names::{ConnectionKind, OperationClass};

/// The longest statement accepted, in bytes.
pub const MAX_SQL_LEN: usize = 64 * 1024;

/// The deepest nesting of `(`, `[` and `{` accepted before parsing.
pub const MAX_NESTING: usize = 200;

/// The largest estimated syntax-tree depth accepted before parsing. Long operator chains
/// (`a OR b OR c …`, `x::t::t …`, `s1 UNION s2 UNION …`) parse into trees as deep as the chain
/// is long, and walking or dropping such a tree recurses once per level; this bound keeps that
/// well inside a 2 MiB thread stack.
pub const MAX_EXPRESSION_DEPTH: usize = 1000;

/// The SQL dialect a statement is parsed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    Postgres,
    Mysql,
    Sqlite,
}

impl SqlDialect {
    pub fn for_kind(kind: ConnectionKind) -> Option<SqlDialect> {
        match kind {
            ConnectionKind::Postgres => Some(SqlDialect::Postgres),
            ConnectionKind::Mysql => Some(SqlDialect::Mysql),
            ConnectionKind::Sqlite => Some(SqlDialect::Sqlite),
            _ => None,
        }
    }

    fn parser_dialect(self) -> &'static dyn Dialect {
        match self {
            SqlDialect::Postgres => &PostgreSqlDialect {},
            SqlDialect::Mysql => &MySqlDialect {},
            SqlDialect::Sqlite => &SQLiteDialect {},
        }
    }
}

/// Exactly one parsed SQL statement with its class. Only [`SqlStatement::parse`] builds one.
#[derive(Debug, Clone)]
pub struct SqlStatement {
    text: String,
    class: OperationClass,
    tables: Vec<String>,
}

/// Why a statement was refused. No variant carries parser messages or SQL text: parser
/// messages quote the input, and these errors reach clients and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("statement is empty")]
    Empty,
    #[error("statement is too long ({len} bytes, at most {max})")]
    TooLong { len: usize, max: usize },
    #[error("statement is nested too deeply (depth {depth}, at most {max})")]
    TooDeep { depth: usize, max: usize },
    #[error("statement could not be parsed ({reason})")]
    Unparsable { reason: &'static str },
    #[error("only one statement is allowed, found {count}")]
    MultipleStatements { count: usize },
    #[error("statement denied: {reason}")]
    Denied { reason: DeniedReason },
    #[error("function {name} is not allowed")]
    DeniedFunction { name: String },
}

impl SqlError {
    /// A stable snake_case code, for wire errors and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            SqlError::Empty => "sql_empty",
            SqlError::TooLong { .. } => "sql_too_long",
            SqlError::TooDeep { .. } => "sql_too_deep",
            SqlError::Unparsable { .. } => "sql_unparsable",
            SqlError::MultipleStatements { .. } => "sql_multiple_statements",
            SqlError::Denied { .. } => "sql_denied_statement",
            SqlError::DeniedFunction { .. } => "sql_denied_function",
        }
    }
}

/// Syntax refused because the database server could read it differently from sqlparser, which
/// would let a statement execute something its classification did not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedReason {
    /// MySQL `/*! … */` or MariaDB `/*M! … */`: the server executes the comment's content,
    /// conditionally on its version.
    ExecutableComment,
    /// `\'` or `\"` inside a MySQL string, or `\'` inside a PostgreSQL standard string: under
    /// `NO_BACKSLASH_ESCAPES` or `standard_conforming_strings = off` the string ends elsewhere.
    BackslashQuoteEscape,
    /// PostgreSQL `U&"…"`: sqlparser reads it as `U & "…"`, the server as an escaped identifier.
    UnicodeEscapedIdentifier,
    /// White space other than space, tab, line feed, carriage return and form feed between
    /// tokens (in practice a vertical tab): sqlparser separates tokens with any Unicode white
    /// space that cannot start an identifier, servers do not all agree.
    UnusualWhitespace,
    /// MySQL `--` followed by non-ASCII white space: a comment to sqlparser, not to the server.
    AmbiguousComment,
    /// A user-variable assignment (`@v := …`) or `LAST_INSERT_ID(expr)`: session state that
    /// survives the request on a pooled connection and leaks to the next principal.
    SessionState,
    /// A PostgreSQL dollar-quote tag starting with a digit (`$1$`): sqlparser reads a string,
    /// PostgreSQL does not.
    AmbiguousDollarQuote,
}

impl DeniedReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeniedReason::ExecutableComment => "executable comment",
            DeniedReason::BackslashQuoteEscape => "backslash-escaped quote in a string",
            DeniedReason::UnicodeEscapedIdentifier => "unicode-escaped identifier",
            DeniedReason::UnusualWhitespace => "unusual white space",
            DeniedReason::AmbiguousComment => "ambiguous comment",
            DeniedReason::SessionState => "session state assignment",
            DeniedReason::AmbiguousDollarQuote => "dollar-quote tag starting with a digit",
        }
    }
}

impl std::fmt::Display for DeniedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SqlStatement {
    /// Parses and classifies exactly one statement (EX-2).
    pub fn parse(dialect: SqlDialect, text: &str) -> Result<SqlStatement, SqlError> {
        if text.len() > MAX_SQL_LEN {
            return Err(SqlError::TooLong {
                len: text.len(),
                max: MAX_SQL_LEN,
            });
        }
        if text.trim().is_empty() {
            return Err(SqlError::Empty);
        }
        let parser_dialect = dialect.parser_dialect();
        lexical::check(dialect, parser_dialect, text)?;
        let mut statements = Parser::parse_sql(parser_dialect, text).map_err(unparsable)?;
        let statement = match statements.len() {
            0 => return Err(SqlError::Empty),
            1 => statements.remove(0),
            count => return Err(SqlError::MultipleStatements { count }),
        };
        let analysis = classify::analyse(dialect, &statement)?;
        Ok(SqlStatement {
            text: text.to_owned(),
            class: analysis.class,
            tables: analysis.tables,
        })
    }

    /// The exact input text, unchanged: this is what the agent executes.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn class(&self) -> OperationClass {
        self.class
    }

    /// Every relation the statement names, lower-cased, deduplicated and sorted.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }
}

fn unparsable(error: ParserError) -> SqlError {
    let reason = match error {
        ParserError::TokenizerError(_) => "invalid token",
        ParserError::ParserError(_) => "syntax error",
        ParserError::RecursionLimitExceeded => "nested too deeply",
    };
    SqlError::Unparsable { reason }
}

/// Whether a write can be previewed in a transaction that is rolled back (the approvers'
/// dry run): it must start with `UPDATE` or `DELETE` (after comments) and name no sequence
/// function, whose effects survive a rollback. Callers also require the write class, which
/// rules out writable CTEs hiding other statements behind these keywords.
pub fn previewable(statement: &str) -> bool {
    let mut rest = statement.trim_start();
    loop {
        if let Some(line) = rest.strip_prefix("--") {
            rest = line.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(block) = rest.strip_prefix("/*") {
            match block.split_once("*/") {
                Some((_, r)) => rest = r.trim_start(),
                None => return false,
            }
        } else {
            break;
        }
    }
    let first: String = rest
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_lowercase();
    let lower = statement.to_ascii_lowercase();
    matches!(first.as_str(), "update" | "delete")
        && ![
            "nextval",
            "setval",
            "sequence",
            "last_insert_id",
            "auto_increment",
        ]
        .iter()
        .any(|f| lower.contains(f))
}

#[cfg(test)]
mod preview_tests {
    use super::previewable;

    #[test]
    fn only_plain_updates_and_deletes_without_sequences_are_previewable() {
        for yes in [
            "UPDATE t SET a = 1",
            "  -- why\n delete FROM t WHERE id = 2",
            "/* note */ UPDATE t SET a = 2",
        ] {
            assert!(previewable(yes), "{yes}");
        }
        for no in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET id = nextval('s')",
            "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
            "/* unterminated UPDATE t SET a = 1",
            "DROP TABLE t",
            "SELECT setval('s', 1)",
        ] {
            assert!(!previewable(no), "{no}");
        }
    }
}
