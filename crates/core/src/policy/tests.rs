//! Table-driven policy tests: ordering, globs, roles, tables, multi-step, defaults.

use super::*;
use Decision::*;
use OperationClass::*;

fn conn(s: &str) -> Option<ConnectionPattern> {
    Some(ConnectionPattern::try_from(s.to_owned()).expect("pattern"))
}

fn tables(list: &[&str]) -> Option<Vec<TablePattern>> {
    Some(
        list.iter()
            .map(|t| TablePattern::try_from((*t).to_owned()).expect("table"))
            .collect(),
    )
}

struct Case {
    connection: &'static str,
    environment: Environment,
    class: OperationClass,
    role: Role,
    tables: &'static [&'static str],
    decision: Decision,
    source: Source,
}

fn run(policy: &Policy, cases: &[Case]) {
    for c in cases {
        let connection: ConnectionName = c.connection.parse().expect("name");
        let tables: Vec<String> = c.tables.iter().map(|t| (*t).to_owned()).collect();
        let facts = Facts {
            connection: &connection,
            environment: c.environment,
            class: c.class,
            role: c.role,
            tables: &tables,
        };
        let got = policy.evaluate(&facts);
        assert_eq!(
            (got.decision, got.source),
            (c.decision, c.source),
            "{} {} {} as {} on {:?}",
            c.connection,
            c.environment,
            c.class,
            c.role,
            c.tables
        );
        assert_eq!(
            got.steps.is_empty(),
            got.decision != RequireApproval,
            "steps exist exactly when approval is required"
        );
    }
}

fn case(
    connection: &'static str,
    environment: Environment,
    class: OperationClass,
    role: Role,
    tables: &'static [&'static str],
    decision: Decision,
    source: Source,
) -> Case {
    Case {
        connection,
        environment,
        class,
        role,
        tables,
        decision,
        source,
    }
}

#[test]
fn defaults_are_safe() {
    use Environment::*;
    let p = Policy::default();
    run(
        &p,
        &[
            case(
                "primary",
                Production,
                Read,
                Role::Developer,
                &[],
                AutoApprove,
                Source::Default,
            ),
            case(
                "primary",
                Production,
                Write,
                Role::Developer,
                &[],
                RequireApproval,
                Source::Default,
            ),
            case(
                "primary",
                Production,
                Ddl,
                Role::Admin,
                &[],
                RequireApproval,
                Source::Default,
            ),
            case(
                "primary",
                Development,
                Ddl,
                Role::Ci,
                &[],
                RequireApproval,
                Source::Default,
            ),
            case(
                "primary",
                Development,
                Admin,
                Role::Admin,
                &[],
                Deny,
                Source::Default,
            ),
        ],
    );
    let connection: ConnectionName = "primary".parse().expect("name");
    let facts = Facts {
        connection: &connection,
        environment: Production,
        class: Write,
        role: Role::Developer,
        tables: &[],
    };
    assert_eq!(
        p.evaluate(&facts).steps,
        vec![Step {
            approvals: 1,
            roles: vec![Role::Ops, Role::Admin]
        }],
        "one approval from any role that can approve"
    );
}

#[test]
fn first_matching_rule_wins_with_globs_roles_and_tables() {
    use Environment::*;
    let p = Policy::new(vec![
        PolicyRule {
            connection: conn("billing-*"),
            ..PolicyRule::any(Deny)
        },
        PolicyRule {
            tables: tables(&["users", "auth.*"]),
            class: Some(Read),
            ..PolicyRule::any(RequireApproval)
        },
        PolicyRule {
            roles: Some(vec![Role::Ci]),
            environment: Some(Staging),
            ..PolicyRule::any(AutoApprove)
        },
        PolicyRule {
            environment: Some(Staging),
            class: Some(Write),
            ..PolicyRule::any(AutoApprove)
        },
        PolicyRule {
            connection: conn("*"),
            ..PolicyRule::any(RequireApproval)
        },
    ])
    .expect("valid");
    run(
        &p,
        &[
            case(
                "billing-eu",
                Staging,
                Read,
                Role::Admin,
                &[],
                Deny,
                Source::Rule(0),
            ),
            case(
                "billing",
                Staging,
                Read,
                Role::Admin,
                &[],
                RequireApproval,
                Source::Rule(4),
            ),
            case(
                "primary",
                Production,
                Read,
                Role::Viewer,
                &["users"],
                RequireApproval,
                Source::Rule(1),
            ),
            case(
                "primary",
                Production,
                Read,
                Role::Viewer,
                &["auth.tokens", "orders"],
                RequireApproval,
                Source::Rule(1),
            ),
            case(
                "primary",
                Production,
                Read,
                Role::Viewer,
                &["authx"],
                RequireApproval,
                Source::Rule(4),
            ),
            case(
                "primary",
                Staging,
                Ddl,
                Role::Ci,
                &[],
                AutoApprove,
                Source::Rule(2),
            ),
            case(
                "primary",
                Staging,
                Ddl,
                Role::Developer,
                &[],
                RequireApproval,
                Source::Rule(4),
            ),
            case(
                "primary",
                Staging,
                Write,
                Role::Developer,
                &[],
                AutoApprove,
                Source::Rule(3),
            ),
            case(
                "primary",
                Production,
                Read,
                Role::Viewer,
                &[],
                RequireApproval,
                Source::Rule(4),
            ),
        ],
    );
}

#[test]
fn multi_step_rules_keep_their_steps_in_order() {
    let p = Policy::new(vec![PolicyRule {
        class: Some(Ddl),
        steps: vec![
            Step {
                approvals: 1,
                roles: vec![Role::Ops],
            },
            Step {
                approvals: 2,
                roles: vec![Role::Admin],
            },
        ],
        ..PolicyRule::any(RequireApproval)
    }])
    .expect("valid");
    let connection: ConnectionName = "db".parse().expect("name");
    let facts = Facts {
        connection: &connection,
        environment: Environment::Production,
        class: Ddl,
        role: Role::Developer,
        tables: &[],
    };
    let e = p.evaluate(&facts);
    assert_eq!(e.decision, RequireApproval);
    assert_eq!(e.steps.len(), 2);
    assert_eq!(e.steps[1].approvals, 2);
    let explained = p.explain(&facts);
    assert_eq!(explained.checked, vec![(0, None)]);
    let read = Facts {
        class: Read,
        ..facts
    };
    assert_eq!(
        p.explain(&read).checked,
        vec![(0, Some(Mismatch::Class))],
        "the explanation names the failing matcher"
    );
}

#[test]
fn admin_operations_are_never_auto_approved() {
    let p = Policy::new(vec![PolicyRule::any(AutoApprove)]).expect("valid");
    run(
        &p,
        &[case(
            "x",
            Environment::Development,
            Admin,
            Role::Admin,
            &[],
            Deny,
            Source::Rule(0),
        )],
    );
    run(
        &Policy::permissive_dev(),
        &[case(
            "x",
            Environment::Development,
            Admin,
            Role::Admin,
            &[],
            Deny,
            Source::Rule(0),
        )],
    );
}

#[test]
fn unsatisfiable_or_malformed_rules_are_refused() {
    let bad = [
        PolicyRule {
            steps: vec![Step::default()],
            ..PolicyRule::any(AutoApprove)
        },
        PolicyRule {
            steps: vec![Step {
                approvals: 0,
                roles: vec![Role::Ops],
            }],
            ..PolicyRule::any(RequireApproval)
        },
        PolicyRule {
            steps: vec![Step {
                approvals: 1,
                roles: vec![Role::Developer],
            }],
            ..PolicyRule::any(RequireApproval)
        },
        PolicyRule {
            roles: Some(Vec::new()),
            ..PolicyRule::any(Deny)
        },
    ];
    for rule in bad {
        assert!(Policy::new(vec![rule.clone()]).is_err(), "{rule:?}");
    }
}

#[test]
fn patterns_reject_bad_input() {
    assert!(ConnectionPattern::try_from("a b".to_owned()).is_err());
    assert!(ConnectionPattern::try_from(String::new()).is_err());
    assert!(TablePattern::try_from("Users".to_owned()).is_err());
    assert!(TablePattern::try_from("public.users".to_owned()).is_ok());
}
