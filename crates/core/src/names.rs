//! Closed vocabularies and validated names. Deserializing one of these *is* parsing it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A value that is not one of the accepted spellings of a closed vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct ParseError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Declares a closed enum with `as_str`, `FromStr`, `Display` and string-based serde.
#[macro_export]
#[doc(hidden)]
macro_rules! closed_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::names::ParseError;
            fn from_str(s: &str) -> Result<Self, $crate::names::ParseError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::names::ParseError {
                        what: $what,
                        value: s.chars().take(64).collect(),
                        expected: concat!("one of: ", $($text, " "),+),
                    }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::names::ParseError;
            fn try_from(s: String) -> Result<Self, $crate::names::ParseError> { s.parse() }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String { v.as_str().to_owned() }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
#[doc(hidden)]
pub use closed_enum;

closed_enum! {
    /// What an operation does, computed from the statement itself and never taken from a
    /// client. Ordered by risk: `Read < Write < Ddl < Admin`, so "a class above the signed
    /// class" is a plain comparison.
    OperationClass, "operation class" {
        Read => "read",
        Write => "write",
        Ddl => "ddl",
        Admin => "admin",
    }
}

closed_enum! {
    /// The kind of data store or API behind a connection.
    ConnectionKind, "connection kind" {
        Postgres => "postgres",
        Mysql => "mysql",
        Sqlite => "sqlite",
        Redis => "redis",
        Http => "http",
    }
}

closed_enum! {
    /// The environment a connection belongs to; policy keys on it.
    Environment, "environment" {
        Development => "development",
        Test => "test",
        Staging => "staging",
        Production => "production",
    }
}

/// The name of a connection (`primary`, `cache`, `billing-api`): 1–63 characters of lower-case
/// ASCII letters, digits, `-` and `_`, starting with a letter or digit. Never a wildcard, so a
/// `ConnectionName` can always be an execution target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionName(String);

impl ConnectionName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ConnectionName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let valid = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(ConnectionName(s.to_owned()))
        } else {
            Err(ParseError {
                what: "connection name",
                value: s.chars().take(64).collect(),
                expected: "1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
            })
        }
    }
}

impl TryFrom<String> for ConnectionName {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<ConnectionName> for String {
    fn from(v: ConnectionName) -> String {
        v.0
    }
}

impl fmt::Display for ConnectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(input: &str, ok: bool) {
        assert_eq!(input.parse::<ConnectionName>().is_ok(), ok, "{input:?}");
    }

    #[test]
    fn connection_names_are_parsed_strictly() {
        for (input, ok) in [
            ("demo", true),
            ("billing-api", true),
            ("pg_1", true),
            ("0db", true),
            ("", false),
            ("*", false),
            ("Demo", false),
            ("-x", false),
            ("a b", false),
            ("a/b", false),
            ("démo", false),
        ] {
            check_name(input, ok);
        }
        check_name(&"a".repeat(63), true);
        check_name(&"a".repeat(64), false);
    }

    #[test]
    fn classes_are_ordered_by_risk() {
        assert!(OperationClass::Read < OperationClass::Write);
        assert!(OperationClass::Write < OperationClass::Ddl);
        assert!(OperationClass::Ddl < OperationClass::Admin);
    }

    #[test]
    fn closed_enums_round_trip_and_reject_unknown_spellings() {
        for class in OperationClass::ALL {
            assert_eq!(class.as_str().parse::<OperationClass>(), Ok(*class));
        }
        assert!("READ".parse::<OperationClass>().is_err());
        assert!("prod".parse::<Environment>().is_err());
        let err = "mongo".parse::<ConnectionKind>().unwrap_err();
        assert!(err.to_string().contains("postgres"), "{err}");
    }
}
