//! Approval policy: ordered rules mapping (connection, environment, class) to a decision.
//! Pure: the server evaluates it with the request's facts and stores the outcome.

use serde::{Deserialize, Serialize};

use crate::names::{ConnectionName, Environment, OperationClass, closed_enum};

closed_enum! {
    /// What policy says about an operation.
    Decision, "policy decision" {
        Deny => "deny",
        AutoApprove => "auto_approve",
        RequireApproval => "require_approval",
    }
}

/// A connection pattern: a name, or a glob where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionPattern(String);

impl ConnectionPattern {
    pub fn matches(&self, name: &ConnectionName) -> bool {
        glob_match(self.0.as_bytes(), name.as_str().as_bytes())
    }
}

impl TryFrom<String> for ConnectionPattern {
    type Error = crate::ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_*".contains(&b));
        if ok {
            Ok(ConnectionPattern(s))
        } else {
            Err(crate::ParseError {
                what: "connection pattern",
                value: s.chars().take(64).collect(),
                expected: "a connection name, optionally with '*' wildcards",
            })
        }
    }
}

impl From<ConnectionPattern> for String {
    fn from(p: ConnectionPattern) -> String {
        p.0
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

/// One rule. Every present matcher must match; an absent one matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    #[serde(default)]
    pub connection: Option<ConnectionPattern>,
    #[serde(default)]
    pub environment: Option<Environment>,
    #[serde(default)]
    pub class: Option<OperationClass>,
    pub decision: Decision,
}

impl PolicyRule {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.connection
            .as_ref()
            .is_none_or(|p| p.matches(facts.connection))
            && self.environment.is_none_or(|e| e == facts.environment)
            && self.class.is_none_or(|c| c == facts.class)
    }
}

/// The facts a decision is made from, all computed by the server.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub connection: &'a ConnectionName,
    pub environment: Environment,
    pub class: OperationClass,
}

/// Where a decision came from: a configured rule (by index) or the safe built-in default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Rule(usize),
    Default,
}

/// Ordered rules; the first match wins, and when none matches the safe default applies:
/// reads are auto-approved, writes and DDL need approval, admin operations are denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<PolicyRule>,
}

impl Policy {
    pub fn new(rules: Vec<PolicyRule>) -> Policy {
        Policy { rules }
    }

    /// Dev mode: everything but admin operations is auto-approved.
    pub fn permissive_dev() -> Policy {
        Policy::new(vec![
            PolicyRule {
                connection: None,
                environment: None,
                class: Some(OperationClass::Admin),
                decision: Decision::Deny,
            },
            PolicyRule {
                connection: None,
                environment: None,
                class: None,
                decision: Decision::AutoApprove,
            },
        ])
    }

    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    pub fn evaluate(&self, facts: &Facts<'_>) -> (Decision, Source) {
        if let Some((i, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(facts))
        {
            // Admin operations are never auto-approved, whatever a rule says.
            if facts.class == OperationClass::Admin && rule.decision == Decision::AutoApprove {
                return (Decision::Deny, Source::Rule(i));
            }
            return (rule.decision, Source::Rule(i));
        }
        let decision = match facts.class {
            OperationClass::Read => Decision::AutoApprove,
            OperationClass::Write | OperationClass::Ddl => Decision::RequireApproval,
            OperationClass::Admin => Decision::Deny,
        };
        (decision, Source::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use OperationClass::*;

    fn rule(
        connection: Option<&str>,
        environment: Option<Environment>,
        class: Option<OperationClass>,
        decision: Decision,
    ) -> PolicyRule {
        PolicyRule {
            connection: connection.map(|c| ConnectionPattern::try_from(c.to_owned()).unwrap()),
            environment,
            class,
            decision,
        }
    }

    fn check(
        policy: &Policy,
        connection: &str,
        environment: Environment,
        class: OperationClass,
        expect: (Decision, Source),
    ) {
        let connection: ConnectionName = connection.parse().unwrap();
        let facts = Facts {
            connection: &connection,
            environment,
            class,
        };
        assert_eq!(
            policy.evaluate(&facts),
            expect,
            "{connection} {environment} {class}"
        );
    }

    #[test]
    fn defaults_are_safe() {
        let p = Policy::default();
        check(
            &p,
            "primary",
            Environment::Production,
            Read,
            (AutoApprove, Source::Default),
        );
        check(
            &p,
            "primary",
            Environment::Production,
            Write,
            (RequireApproval, Source::Default),
        );
        check(
            &p,
            "primary",
            Environment::Development,
            Ddl,
            (RequireApproval, Source::Default),
        );
        check(
            &p,
            "primary",
            Environment::Development,
            Admin,
            (Deny, Source::Default),
        );
    }

    #[test]
    fn first_matching_rule_wins_and_globs_match() {
        let p = Policy::new(vec![
            rule(Some("billing-*"), None, None, Deny),
            rule(None, Some(Environment::Staging), Some(Write), AutoApprove),
            rule(Some("*"), None, None, RequireApproval),
        ]);
        check(
            &p,
            "billing-eu",
            Environment::Staging,
            Read,
            (Deny, Source::Rule(0)),
        );
        check(
            &p,
            "primary",
            Environment::Staging,
            Write,
            (AutoApprove, Source::Rule(1)),
        );
        check(
            &p,
            "primary",
            Environment::Production,
            Read,
            (RequireApproval, Source::Rule(2)),
        );
    }

    #[test]
    fn admin_operations_are_never_auto_approved() {
        let p = Policy::new(vec![rule(None, None, None, AutoApprove)]);
        check(
            &p,
            "x",
            Environment::Development,
            Admin,
            (Deny, Source::Rule(0)),
        );
        check(
            &Policy::permissive_dev(),
            "x",
            Environment::Development,
            Admin,
            (Deny, Source::Rule(0)),
        );
    }

    #[test]
    fn patterns_reject_bad_input() {
        assert!(ConnectionPattern::try_from("a b".to_owned()).is_err());
        assert!(ConnectionPattern::try_from(String::new()).is_err());
    }
}
