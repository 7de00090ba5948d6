//! Token-level checks run before parsing.
//!
//! They use sqlparser's own tokenizer for the dialect, so they see exactly the tokens the parser
//! will see. Two kinds of input are refused here:
//!
//! - input the server could tokenize differently from sqlparser (see [`DeniedReason`]), because
//!   the classification of a statement is only as good as the agreement on what its tokens are;
//! - input whose syntax tree would be deep enough to overflow the stack while it is walked or
//!   dropped. sqlparser bounds the recursion of its parser, but left-associative chains
//!   (`a + b + c …`) are parsed in a loop into a tree as deep as the chain is long.

use sqlparser::dialect::Dialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Whitespace};

use super::{DeniedReason, MAX_EXPRESSION_DEPTH, MAX_NESTING, SqlDialect, SqlError};

/// The largest estimated depth of an expression that uses an operator sqlparser parses by
/// copying its whole left operand (MySQL `DIV`; SQLite `GLOB`, `REGEXP`, `MATCH`). The copy
/// recurses through the operand with large stack frames: in a debug build a 2 MiB stack holds
/// about 330 levels.
const MAX_COPYING_DEPTH: usize = 64;

/// Runs every token-level check on `text`.
pub(super) fn check(
    dialect: SqlDialect,
    parser_dialect: &dyn Dialect,
    text: &str,
) -> Result<(), SqlError> {
    // Raw mode keeps string contents as written, so escapes can be inspected.
    let tokens = Tokenizer::new(parser_dialect, text)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(|_| SqlError::Unparsable {
            reason: "invalid token",
        })?;
    let mut source = SourceCursor::new(text);
    let mut depth = DepthEstimate::new(dialect);
    for (index, token) in tokens.iter().enumerate() {
        check_position(dialect, &mut source, token)?;
        check_token(dialect, &token.token)?;
        if dialect == SqlDialect::Postgres && is_unicode_identifier_escape(&tokens[index..]) {
            return Err(SqlError::Denied {
                reason: DeniedReason::UnicodeEscapedIdentifier,
            });
        }
        depth.push(&token.token)?;
    }
    depth.finish()
}

/// Checks that need the source text under a token.
fn check_position(
    dialect: SqlDialect,
    source: &mut SourceCursor<'_>,
    token: &TokenWithSpan,
) -> Result<(), SqlError> {
    let Some(rest) = source.seek(token.span.start) else {
        return Err(SqlError::Unparsable {
            reason: "invalid token",
        });
    };
    match &token.token {
        // sqlparser re-tokenizes the content of a MySQL `/*!` comment in place of the comment
        // and positions the first resulting token on the comment's opening `/*`. No other token
        // starts there.
        Token::Whitespace(Whitespace::MultiLineComment(_)) => Ok(()),
        _ if dialect == SqlDialect::Mysql && rest.starts_with("/*") => Err(SqlError::Denied {
            reason: DeniedReason::ExecutableComment,
        }),
        Token::Whitespace(Whitespace::Space) if !rest.starts_with([' ', '\x0c']) => {
            Err(SqlError::Denied {
                reason: DeniedReason::UnusualWhitespace,
            })
        }
        _ => Ok(()),
    }
}

/// Checks on a token's own content.
fn check_token(dialect: SqlDialect, token: &Token) -> Result<(), SqlError> {
    let ambiguous_escape = match (dialect, token) {
        // Under `NO_BACKSLASH_ESCAPES` a backslash is an ordinary character.
        (
            SqlDialect::Mysql,
            Token::SingleQuotedString(content)
            | Token::NationalStringLiteral(content)
            | Token::SingleQuotedByteStringLiteral(content),
        ) => escapes_quote(content, '\''),
        (
            SqlDialect::Mysql,
            Token::DoubleQuotedString(content) | Token::DoubleQuotedByteStringLiteral(content),
        ) => escapes_quote(content, '"'),
        // Under `standard_conforming_strings = off` (a legacy server setting) a backslash
        // escapes in standard strings too. `E'…'` strings are read alike by both.
        (
            SqlDialect::Postgres,
            Token::SingleQuotedString(content) | Token::NationalStringLiteral(content),
        ) => escapes_quote(content, '\''),
        _ => false,
    };
    if ambiguous_escape {
        return Err(SqlError::Denied {
            reason: DeniedReason::BackslashQuoteEscape,
        });
    }
    // PostgreSQL dollar-quote tags follow identifier rules: `$1$` is a parameter followed by
    // `$`, not the start of a string, so sqlparser and the server would see different text.
    if let Token::DollarQuotedString(quoted) = token
        && quoted
            .tag
            .as_deref()
            .is_some_and(|tag| tag.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Err(SqlError::Denied {
            reason: DeniedReason::AmbiguousDollarQuote,
        });
    }
    match (dialect, token) {
        (SqlDialect::Mysql, Token::Whitespace(Whitespace::MultiLineComment(comment)))
            if comment.starts_with('!')
                || comment.starts_with("M!")
                || comment.starts_with("m!") =>
        {
            Err(SqlError::Denied {
                reason: DeniedReason::ExecutableComment,
            })
        }
        // MySQL needs white space or a control character after `--`; sqlparser accepts any
        // Unicode white space.
        (
            SqlDialect::Mysql,
            Token::Whitespace(Whitespace::SingleLineComment { prefix, comment }),
        ) if prefix == "--"
            && !comment.starts_with(|c: char| c.is_ascii_whitespace() || c == '\x0b') =>
        {
            Err(SqlError::Denied {
                reason: DeniedReason::AmbiguousComment,
            })
        }
        _ => Ok(()),
    }
}

/// Whether a backslash that is not itself escaped comes before `quote` in a string's raw
/// content, or before the closing quote (at the end of the content).
fn escapes_quote(content: &str, quote: char) -> bool {
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next) if next == quote => return true,
                Some(_) => {}
                None => return true,
            }
        }
    }
    false
}

fn is_string_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// `U&"…"` with nothing between the three tokens.
fn is_unicode_identifier_escape(tokens: &[TokenWithSpan]) -> bool {
    match tokens {
        [first, second, third, ..] => {
            matches!(&first.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("u"))
                && matches!(second.token, Token::Ampersand)
                && matches!(&third.token, Token::Word(w) if w.quote_style == Some('"'))
        }
        _ => false,
    }
}

/// Walks the source text forward to token positions. sqlparser reports positions as a line and
/// a column counted in characters, advancing exactly as here; tokens come in order, so the
/// whole walk is linear in the length of the text.
struct SourceCursor<'a> {
    text: &'a str,
    offset: usize,
    line: u64,
    column: u64,
}

impl<'a> SourceCursor<'a> {
    fn new(text: &'a str) -> Self {
        SourceCursor {
            text,
            offset: 0,
            line: 1,
            column: 1,
        }
    }

    /// The text from `location` on, or `None` if `location` is behind the cursor or past the end.
    fn seek(&mut self, location: Location) -> Option<&'a str> {
        let target = (location.line, location.column);
        while (self.line, self.column) < target {
            let c = self.text.get(self.offset..)?.chars().next()?;
            self.offset += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        if (self.line, self.column) == target {
            self.text.get(self.offset..)
        } else {
            None
        }
    }
}

/// An upper bound on the depth of the syntax tree, computed from tokens.
///
/// Within one bracket level, a tree node that is not a bracketed sub-tree comes from an operator
/// or keyword token, and a comma or semicolon ends the expression (list elements are siblings,
/// not nested). Set operations are the exception: `SELECT a, b UNION SELECT c, d` chains across
/// commas, so their keywords are counted for the whole level. Counting every operator token as
/// a level over-estimates: `a = 1 OR a = 2` counts 3 for a depth of 2.
struct DepthEstimate {
    dialect: SqlDialect,
    levels: Vec<Level>,
    deepest: usize,
}

#[derive(Default)]
struct Level {
    /// Set operations at this level; they chain across commas.
    set_operations: usize,
    /// Operator tokens in the current comma-separated element.
    operators: usize,
    /// The deepest bracketed sub-tree in the current element.
    child: usize,
    /// Whether the current element uses an operator that copies its left operand.
    copying: bool,
    /// The deepest finished element.
    best: usize,
}

impl Level {
    fn end_element(&mut self) -> Result<(), SqlError> {
        let depth = self.operators + self.child;
        if self.copying && depth > MAX_COPYING_DEPTH {
            return Err(SqlError::TooDeep {
                depth,
                max: MAX_COPYING_DEPTH,
            });
        }
        self.best = self.best.max(depth);
        self.operators = 0;
        self.child = 0;
        self.copying = false;
        Ok(())
    }

    fn depth(mut self) -> Result<usize, SqlError> {
        self.end_element()?;
        Ok(self.set_operations + self.best)
    }
}

impl DepthEstimate {
    fn new(dialect: SqlDialect) -> Self {
        DepthEstimate {
            dialect,
            levels: vec![Level::default()],
            deepest: 0,
        }
    }

    fn push(&mut self, token: &Token) -> Result<(), SqlError> {
        match token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                // A subscript `a[1]` is itself a level of the tree.
                if !matches!(token, Token::LParen) {
                    self.current().operators += 1;
                }
                self.levels.push(Level::default());
                let nesting = self.levels.len() - 1;
                if nesting > MAX_NESTING {
                    return Err(SqlError::TooDeep {
                        depth: nesting,
                        max: MAX_NESTING,
                    });
                }
            }
            // An unbalanced closing bracket is left for the parser to reject.
            Token::RParen | Token::RBracket | Token::RBrace if self.levels.len() > 1 => {
                self.close_level()?;
            }
            Token::Comma | Token::SemiColon => self.current().end_element()?,
            Token::Word(word) if is_set_operation(word.keyword) => {
                self.current().set_operations += 1
            }
            Token::Word(word) if copies_left_operand(self.dialect, word.keyword) => {
                let level = self.current();
                level.operators += 1;
                level.copying = true;
            }
            token if counts_as_operator(token) => self.current().operators += 1,
            _ => {}
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), SqlError> {
        while self.levels.len() > 1 {
            self.close_level()?;
        }
        if let Some(level) = self.levels.pop() {
            self.record(level.depth()?)?;
        }
        Ok(())
    }

    fn close_level(&mut self) -> Result<(), SqlError> {
        if let Some(level) = self.levels.pop() {
            let depth = level.depth()? + 1;
            self.record(depth)?;
            let parent = self.current();
            parent.child = parent.child.max(depth);
        }
        Ok(())
    }

    fn record(&mut self, depth: usize) -> Result<(), SqlError> {
        self.deepest = self.deepest.max(depth);
        if self.deepest > MAX_EXPRESSION_DEPTH {
            return Err(SqlError::TooDeep {
                depth: self.deepest,
                max: MAX_EXPRESSION_DEPTH,
            });
        }
        Ok(())
    }

    fn current(&mut self) -> &mut Level {
        if self.levels.is_empty() {
            self.levels.push(Level::default());
        }
        let last = self.levels.len() - 1;
        &mut self.levels[last]
    }
}

fn copies_left_operand(dialect: SqlDialect, keyword: Keyword) -> bool {
    match dialect {
        SqlDialect::Mysql => keyword == Keyword::DIV,
        SqlDialect::Sqlite => matches!(keyword, Keyword::GLOB | Keyword::REGEXP | Keyword::MATCH),
        SqlDialect::Postgres => false,
    }
}

fn is_set_operation(keyword: Keyword) -> bool {
    matches!(
        keyword,
        Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT | Keyword::MINUS
    )
}

/// Whether a token may add a level to an expression chain: any operator or other punctuation
/// that is not a list separator, a bracket or `.` (compound names and field accesses are flat
/// lists), and the keywords sqlparser parses as infix or postfix operators. Other keywords and
/// identifiers are operands or clause markers.
fn counts_as_operator(token: &Token) -> bool {
    match token {
        Token::Word(word) => matches!(
            word.keyword,
            Keyword::OR
                | Keyword::AND
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::NOTNULL
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::RLIKE
                | Keyword::REGEXP
                | Keyword::MATCH
                | Keyword::GLOB
                | Keyword::SIMILAR
                | Keyword::MEMBER
                | Keyword::ESCAPE
                | Keyword::OVERLAPS
                | Keyword::OPERATOR
                | Keyword::DIV
                | Keyword::MOD
                | Keyword::AT
                | Keyword::COLLATE
        ),
        Token::Whitespace(_)
        | Token::Number(..)
        | Token::Period
        | Token::Placeholder(_)
        | Token::Comma
        | Token::SemiColon
        | Token::RParen
        | Token::RBracket
        | Token::RBrace
        | Token::EOF => false,
        token => !is_string_literal(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslash_quote_detection_skips_escaped_backslashes() {
        // EX-2: only an unescaped backslash before the string's own quote is ambiguous.
        for (content, quote, expect) in [
            (r"plain", '\'', false),
            (r"a\'b", '\'', true),
            (r#"a\"b"#, '"', true),
            (r#"{"a": "x\"y"}"#, '\'', false),
            (r"a\\'", '\'', false),
            (r"a\\\'", '\'', true),
            (r"a\nb", '\'', false),
            (r"trailing\", '\'', true),
            (r"trailing\\", '\'', false),
        ] {
            assert_eq!(escapes_quote(content, quote), expect, "{content}");
        }
    }

    #[test]
    fn source_cursor_follows_sqlparser_positions() {
        // EX-2: positions count characters, not bytes, and restart on each line.
        let text = "é\nab\r\ncd";
        let mut cursor = SourceCursor::new(text);
        assert_eq!(
            cursor.seek(Location { line: 1, column: 2 }),
            Some("\nab\r\ncd")
        );
        assert_eq!(
            cursor.seek(Location { line: 2, column: 2 }),
            Some("b\r\ncd")
        );
        assert_eq!(cursor.seek(Location { line: 3, column: 1 }), Some("cd"));
        assert_eq!(cursor.seek(Location { line: 2, column: 1 }), None);
        assert_eq!(cursor.seek(Location { line: 9, column: 1 }), None);
    }
}
