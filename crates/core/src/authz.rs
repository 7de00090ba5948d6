//! Authorization of one operation: permission for the class on that kind of connection, and
//! the principal's environment scope. Returns a proof value only this function can mint.

use crate::names::{ConnectionKind, Environment, OperationClass};
use crate::rbac::{Permission, Role, permission_for};

/// Proof that a principal may run an operation of `class` on a connection of `kind` in
/// `environment`. Fields are private: only [`authorize`] creates one, and the server requires
/// it to create a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorized {
    kind: ConnectionKind,
    environment: Environment,
    class: OperationClass,
}

impl Authorized {
    pub fn class(&self) -> OperationClass {
        self.class
    }
    pub fn environment(&self) -> Environment {
        self.environment
    }
    pub fn kind(&self) -> ConnectionKind {
        self.kind
    }
}

/// Why an operation is not authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("role {role} lacks permission {permission}")]
    MissingPermission { role: Role, permission: Permission },
    #[error("operations of class {class} on {kind} connections need break-glass")]
    ClassNotGrantable {
        kind: ConnectionKind,
        class: OperationClass,
    },
    #[error("the credential is not scoped to environment {environment}")]
    EnvironmentOutOfScope { environment: Environment },
}

/// Decides whether `role`, optionally limited to `scope` environments, may run an operation of
/// `class` on a `kind` connection in `environment`.
pub fn authorize(
    role: Role,
    scope: Option<&[Environment]>,
    kind: ConnectionKind,
    environment: Environment,
    class: OperationClass,
) -> Result<Authorized, Denied> {
    if let Some(scope) = scope
        && !scope.contains(&environment)
    {
        return Err(Denied::EnvironmentOutOfScope { environment });
    }
    let permission =
        permission_for(kind, class).ok_or(Denied::ClassNotGrantable { kind, class })?;
    if !role.has(permission) {
        return Err(Denied::MissingPermission { role, permission });
    }
    Ok(Authorized {
        kind,
        environment,
        class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionKind::*;
    use Environment::*;
    use OperationClass::*;

    fn check(
        role: Role,
        scope: Option<&[Environment]>,
        kind: ConnectionKind,
        class: OperationClass,
        allowed: bool,
    ) {
        let got = authorize(role, scope, kind, Production, class);
        assert_eq!(
            got.is_ok(),
            allowed,
            "{role} {kind} {class} scope={scope:?}: {got:?}"
        );
    }

    #[test]
    fn roles_get_exactly_their_classes() {
        check(Role::Viewer, None, Postgres, Read, true);
        check(Role::Viewer, None, Postgres, Write, false);
        check(Role::Developer, None, Sqlite, Write, true);
        check(Role::Developer, None, Sqlite, Ddl, false);
        check(Role::Ci, None, Mysql, Ddl, true);
        check(Role::Ci, None, Redis, Write, false);
        check(Role::Ops, None, Redis, Write, true);
        // Admin-class operations are never granted by a role, not even admin's (AZ-4).
        check(Role::Admin, None, Postgres, Admin, false);
        check(Role::Admin, None, Redis, Ddl, false);
    }

    #[test]
    fn environment_scope_limits_a_credential() {
        check(Role::Admin, Some(&[Staging]), Postgres, Read, false);
        check(
            Role::Admin,
            Some(&[Staging, Production]),
            Postgres,
            Read,
            true,
        );
        check(Role::Admin, Some(&[]), Postgres, Read, false);
    }
}
