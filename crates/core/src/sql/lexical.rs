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
pub(super) fn check(dialect: SqlDialect, parser_dialect: &dyn Dialect, text: &str) -> Result<(), SqlError> {
    // Raw mode keeps string contents as written, so escapes can be inspected.
    let tokens = Tokenizer::new(parser_dialect, text)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(|_| SqlError::Unparsable { reason: "invalid token" })?;
    let mut source = SourceCursor::new(text);
    let mut depth = DepthEstimate::new(dialect);
    for (index, token) in tokens.iter().enumerate() {
        check_position(dialect, &mut source, token)?;
        check_token(dialect, &token.token)?;
        if dialect == SqlDialect::Postgres && is_unicode_identifier_escape(&tokens[index..]) {
            return Err(SqlError::Denied { reason: DeniedReason::UnicodeEscapedIdentifier });
        }
        depth.push(&token.token)?;
    }
    depth.finish()
}

/// Checks that need the source text under a token.
fn check_position(dialect: SqlDialect, source: &mut SourceCursor<'_>, token: &TokenWithSpan) -> Result<(), SqlError> {
    let Some(rest) = source.seek(token.span.start) else {
        return Err(SqlError::Unparsable { reason: "invalid token" });
    };
    match &token.token {
        // sqlparser re-tokenizes the content of a MySQL `/*!` comment in place of the comment
        // and positions the first resulting token on the comment's opening `/*`. No other token
        // starts there.
        Token::Whitespace(Whitespace::MultiLineComment(_)) => Ok(()),
        _ if dialect == SqlDialect::Mysql && rest.starts_with("/*") => {
            Err(SqlError::Denied { reason: DeniedReason::ExecutableComment })
        }
        Token::Whitespace(Whitespace::Space) if !rest.starts_with([' ', '\x0c']) => {
            Err(SqlError::Denied { reason: DeniedReason::UnusualWhitespace })
        }
        _ => Ok(()),
    }
}

/// Checks on a token's own content.
fn check_token(dialect: SqlDialect, token: &Token) -> Result<(), SqlError> {
    if dialect != SqlDialect::Mysql {
        return Ok(());
    }
    match token {
        Token::Whitespace(Whitespace::MultiLineComment(comment))
            if comment.starts_with('!') || comment.starts_with("M!") || comment.starts_with("m!") =>
        {
            Err(SqlError::Denied { reason: DeniedReason::ExecutableComment })
        }
        Token::Whitespace(Whitespace::SingleLineComment { prefix, comment })
            if prefix == "--" && !comment.starts_with(|c: char| c.is_ascii_whitespace() || c == '\x0b') =>
        {
            Err(SqlError::Denied { reason: DeniedReason::AmbiguousComment })
        }
        _ => match raw_string_content(token) {
            Some(content) if has_backslash_escaped_quote(content) => {
                Err(SqlError::Denied { reason: DeniedReason::BackslashQuoteEscape })
            }
            _ => Ok(()),
        },
    }
}

/// The raw content of a quoted string token.
fn raw_string_content(token: &Token) -> Option<&str> {
    match token {
        Token::SingleQuotedString(s)
        | Token::DoubleQuotedString(s)
        | Token::TripleSingleQuotedString(s)
        | Token::TripleDoubleQuotedString(s)
        | Token::SingleQuotedByteStringLiteral(s)
        | Token::DoubleQuotedByteStringLiteral(s)
        | Token::TripleSingleQuotedByteStringLiteral(s)
        | Token::TripleDoubleQuotedByteStringLiteral(s)
        | Token::SingleQuotedRawStringLiteral(s)
        | Token::DoubleQuotedRawStringLiteral(s)
        | Token::TripleSingleQuotedRawStringLiteral(s)
        | Token::TripleDoubleQuotedRawStringLiteral(s)
        | Token::NationalStringLiteral(s)
        | Token::EscapedStringLiteral(s)
        | Token::UnicodeStringLiteral(s) => Some(s),
        _ => None,
    }
}

/// Whether `\'` or `\"` occurs with the backslash not itself escaped.
fn has_backslash_escaped_quote(content: &str) -> bool {
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\'' | '"') => return true,
                Some(_) => {}
                None => return false,
            }
        }
    }
    false
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
        SourceCursor { text, offset: 0, line: 1, column: 1 }
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
        if (self.line, self.column) == target { self.text.get(self.offset..) } else { None }
    }
}

/// An upper bound on the depth of the syntax tree, computed from tokens.
///
/// Within one bracket level, a tree node that is not a bracketed sub-tree comes from an operator
/// or keyword token, and a comma or semicolon ends the expression (list elements are siblings,
/// not nested). Set operations are the exception: `SELECT a, b UNION SELECT c, d` chains across
/// commas, so their keywords are counted for the whole level. Every other token that is not a
/// literal, an identifier or punctuation is counted as one level, which over-estimates.
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
            return Err(SqlError::TooDeep { depth, max: MAX_COPYING_DEPTH });
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
        DepthEstimate { dialect, levels: vec![Level::default()], deepest: 0 }
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
                    return Err(SqlError::TooDeep { depth: nesting, max: MAX_NESTING });
                }
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                // An unbalanced closing bracket is left for the parser to reject.
                if self.levels.len() > 1 {
                    self.close_level()?;
                }
            }
            Token::Comma | Token::SemiColon => self.current().end_element()?,
            Token::Word(word) if is_set_operation(word.keyword) => self.current().set_operations += 1,
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
            return Err(SqlError::TooDeep { depth: self.deepest, max: MAX_EXPRESSION_DEPTH });
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
    matches!(keyword, Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT | Keyword::MINUS)
}

/// Whether a token may add a level to an expression chain. Literals, identifiers, white space,
/// `.` (compound names are flat lists) and a few keywords that never chain do not.
fn counts_as_operator(token: &Token) -> bool {
    match token {
        Token::Word(word) => !matches!(
            word.keyword,
            Keyword::NoKeyword
                | Keyword::NULL
                | Keyword::TRUE
                | Keyword::FALSE
                | Keyword::DEFAULT
                | Keyword::CASE
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::END
                | Keyword::AS
                | Keyword::ASC
                | Keyword::DESC
                | Keyword::SELECT
                | Keyword::FROM
                | Keyword::WHERE
                | Keyword::VALUES
        ),
        Token::Whitespace(_) | Token::Number(..) | Token::Period | Token::Placeholder(_) | Token::EOF => false,
        token => raw_string_content(token).is_none() && !matches!(token, Token::DollarQuotedString(_) | Token::HexStringLiteral(_)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslash_quote_detection_skips_escaped_backslashes() {
        // EX-2: only an unescaped backslash before a quote is ambiguous.
        for (content, expect) in [
            (r"plain", false),
            (r"a\'b", true),
            (r#"a\"b"#, true),
            (r"a\\'", false),
            (r"a\\\'", true),
            (r"a\nb", false),
            (r"trailing\", false),
        ] {
            assert_eq!(has_backslash_escaped_quote(content), expect, "{content}");
        }
    }

    #[test]
    fn source_cursor_follows_sqlparser_positions() {
        // EX-2: positions count characters, not bytes, and restart on each line.
        let text = "é\nab\r\ncd";
        let mut cursor = SourceCursor::new(text);
        assert_eq!(cursor.seek(Location { line: 1, column: 2 }), Some("\nab\r\ncd"));
        assert_eq!(cursor.seek(Location { line: 2, column: 2 }), Some("b\r\ncd"));
        assert_eq!(cursor.seek(Location { line: 3, column: 1 }), Some("cd"));
        assert_eq!(cursor.seek(Location { line: 2, column: 1 }), None);
        assert_eq!(cursor.seek(Location { line: 9, column: 1 }), None);
    }
}
