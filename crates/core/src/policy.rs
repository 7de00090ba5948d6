//! Approval policy: ordered rules over the facts of a request — connection (name or glob),
//! environment, operation class, the requester's role and, for SQL, the tables the statement
//! touches — to a decision: deny, auto-approve, or require one or more approval steps, each
//! "N approvals from roles {…}" (AZ-3). Pure: `evaluate(facts)` depends on nothing else, and
//! `explain(facts)` says which rule matched and why the others did not.

use serde::{Deserialize, Serialize};

use crate::names::{ConnectionName, Environment, OperationClass, closed_enum};
use crate::rbac::{Permission, Role};

closed_enum! {
    /// What policy says about an operation.
    Decision, "policy decision" {
        Deny => "deny",
        AutoApprove => "auto_approve",
        RequireApproval => "require_approval",
    }
}

/// A name pattern: a name, or a glob where `*` matches any run of characters.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
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

/// A table pattern, matched against the lower-cased names the SQL parser found
/// (`schema.table` when qualified): `users`, `billing.*`, `*.audit_*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TablePattern(String);

impl TablePattern {
    pub fn matches(&self, table: &str) -> bool {
        glob_match(self.0.as_bytes(), table.as_bytes())
    }
}

impl TryFrom<String> for TablePattern {
    type Error = crate::ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.*$-".contains(&b));
        if ok {
            Ok(TablePattern(s))
        } else {
            Err(crate::ParseError {
                what: "table pattern",
                value: s.chars().take(64).collect(),
                expected: "a lower-case table name (schema.table), optionally with '*' wildcards",
            })
        }
    }
}

impl From<TablePattern> for String {
    fn from(p: TablePattern) -> String {
        p.0
    }
}

/// One approval step: `approvals` distinct people holding one of `roles` (AZ-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default = "one")]
    pub approvals: u32,
    /// Roles whose holders may approve this step; by default every role that can approve.
    #[serde(default = "approver_roles")]
    pub roles: Vec<Role>,
}

fn one() -> u32 {
    1
}

/// The roles holding `requests:approve`.
pub fn approver_roles() -> Vec<Role> {
    Role::ALL
        .iter()
        .copied()
        .filter(|r| r.has(Permission::RequestsApprove))
        .collect()
}

impl Default for Step {
    fn default() -> Self {
        Step {
            approvals: 1,
            roles: approver_roles(),
        }
    }
}

/// The most approvals one step may ask for.
pub const MAX_APPROVALS: u32 = 10;
/// The most steps a rule may have.
pub const MAX_STEPS: usize = 5;

/// One rule. Every present matcher must match; an absent one matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// A label shown by `policy check` and in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<OperationClass>,
    /// The requester's role is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    /// The statement touches at least one table matching one of these (SQL only: a rule with
    /// `tables` never matches a Redis command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<TablePattern>>,
    pub decision: Decision,
    /// For `require_approval`: the steps, in order. Empty means one approval from any role
    /// that can approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

impl PolicyRule {
    /// A rule deciding `decision` for everything; narrow it with the builder fields.
    pub fn any(decision: Decision) -> PolicyRule {
        PolicyRule {
            name: None,
            connection: None,
            environment: None,
            class: None,
            roles: None,
            tables: None,
            decision,
            steps: Vec::new(),
        }
    }

    /// The first matcher that does not match, or `None` when the rule matches.
    fn mismatch(&self, facts: &Facts<'_>) -> Option<Mismatch> {
        if self
            .connection
            .as_ref()
            .is_some_and(|p| !p.matches(facts.connection))
        {
            return Some(Mismatch::Connection);
        }
        if self.environment.is_some_and(|e| e != facts.environment) {
            return Some(Mismatch::Environment);
        }
        if self.class.is_some_and(|c| c != facts.class) {
            return Some(Mismatch::Class);
        }
        if self
            .roles
            .as_ref()
            .is_some_and(|r| !r.contains(&facts.role))
        {
            return Some(Mismatch::Role);
        }
        if self.tables.as_ref().is_some_and(|patterns| {
            !facts
                .tables
                .iter()
                .any(|t| patterns.iter().any(|p| p.matches(t)))
        }) {
            return Some(Mismatch::Tables);
        }
        None
    }

    fn validate(&self, index: usize) -> Result<(), String> {
        let label = self.name.as_deref().map_or_else(
            || format!("policy rule {}", index + 1),
            |n| format!("policy rule {n:?}"),
        );
        if let Some(name) = &self.name
            && (name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control))
        {
            return Err(format!("{label}: name must be 1-64 printable characters"));
        }
        if self.decision != Decision::RequireApproval && !self.steps.is_empty() {
            return Err(format!(
                "{label}: steps are for decision = \"require_approval\" only"
            ));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(format!("{label}: at most {MAX_STEPS} steps"));
        }
        if self.roles.as_ref().is_some_and(Vec::is_empty)
            || self.tables.as_ref().is_some_and(Vec::is_empty)
        {
            return Err(format!(
                "{label}: roles and tables, when given, must name at least one"
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            if step.approvals == 0 || step.approvals > MAX_APPROVALS {
                return Err(format!(
                    "{label}, step {}: approvals must be between 1 and {MAX_APPROVALS}",
                    i + 1
                ));
            }
            if step.roles.is_empty() {
                return Err(format!("{label}, step {}: name at least one role", i + 1));
            }
            if let Some(role) = step
                .roles
                .iter()
                .find(|r| !r.has(Permission::RequestsApprove))
            {
                return Err(format!(
                    "{label}, step {}: the {role} role cannot approve (it lacks requests:approve)",
                    i + 1
                ));
            }
        }
        Ok(())
    }
}

/// Which matcher a rule failed on, for `policy check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mismatch {
    Connection,
    Environment,
    Class,
    Role,
    Tables,
}

/// The facts a decision is made from, all computed by the server.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub connection: &'a ConnectionName,
    pub environment: Environment,
    pub class: OperationClass,
    /// The requester's role.
    pub role: Role,
    /// Tables the statement touches (SQL), lower-cased; empty for Redis.
    pub tables: &'a [String],
}

/// Where a decision came from: a configured rule (by index) or the safe built-in default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Rule(usize),
    Default,
}

/// A decision with the approval steps it requires (empty unless `RequireApproval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    pub source: Source,
    pub steps: Vec<Step>,
    /// Set when a rule's `auto_approve` was overridden because admin operations never are.
    pub admin_override: bool,
}

/// How each rule fared against the facts, in order, up to the one that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub evaluation: Evaluation,
    /// `(rule index, None when it matched or the matcher that failed)`.
    pub checked: Vec<(usize, Option<Mismatch>)>,
}

/// Ordered rules; the first match wins, and when none matches the safe default applies:
/// reads are auto-approved, writes and DDL need one approval, admin operations are denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<PolicyRule>,
}

impl Policy {
    /// Builds a policy, refusing rules that could never be satisfied or are malformed.
    pub fn new(rules: Vec<PolicyRule>) -> Result<Policy, String> {
        for (i, rule) in rules.iter().enumerate() {
            rule.validate(i)?;
        }
        Ok(Policy { rules })
    }

    /// Dev mode: everything but admin operations is auto-approved.
    pub fn permissive_dev() -> Policy {
        Policy {
            rules: vec![
                PolicyRule {
                    class: Some(OperationClass::Admin),
                    ..PolicyRule::any(Decision::Deny)
                },
                PolicyRule::any(Decision::AutoApprove),
            ],
        }
    }

    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    pub fn evaluate(&self, facts: &Facts<'_>) -> Evaluation {
        self.explain(facts).evaluation
    }

    pub fn explain(&self, facts: &Facts<'_>) -> Explanation {
        let mut checked = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let mismatch = rule.mismatch(facts);
            checked.push((i, mismatch));
            if mismatch.is_none() {
                return Explanation {
                    evaluation: decide(rule.decision, &rule.steps, Source::Rule(i), facts.class),
                    checked,
                };
            }
        }
        let decision = match facts.class {
            OperationClass::Read => Decision::AutoApprove,
            OperationClass::Write | OperationClass::Ddl => Decision::RequireApproval,
            OperationClass::Admin => Decision::Deny,
        };
        Explanation {
            evaluation: decide(decision, &[], Source::Default, facts.class),
            checked,
        }
    }
}

fn decide(decision: Decision, steps: &[Step], source: Source, class: OperationClass) -> Evaluation {
    // Admin operations are never auto-approved, whatever a rule says.
    if class == OperationClass::Admin && decision == Decision::AutoApprove {
        return Evaluation {
            decision: Decision::Deny,
            source,
            steps: Vec::new(),
            admin_override: true,
        };
    }
    let steps = match decision {
        Decision::RequireApproval if steps.is_empty() => vec![Step::default()],
        Decision::RequireApproval => steps.to_vec(),
        _ => Vec::new(),
    };
    Evaluation {
        decision,
        source,
        steps,
        admin_override: false,
    }
}

#[cfg(test)]
mod tests;
