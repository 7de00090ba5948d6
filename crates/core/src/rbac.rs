//! Roles and permissions: closed enums parsed at config load. No stringly-typed checks.

use crate::names::{ConnectionKind, OperationClass, closed_enum};

closed_enum! {
    /// One `resource:action` capability of a principal.
    Permission, "permission" {
        SqlRead => "sql:read",
        SqlWrite => "sql:write",
        SqlDdl => "sql:ddl",
        RedisRead => "redis:read",
        RedisWrite => "redis:write",
        HttpRead => "http:read",
        HttpWrite => "http:write",
        RequestsViewAll => "requests:view_all",
        RequestsApprove => "requests:approve",
        RequestsBreakGlass => "requests:break_glass",
        AuditRead => "audit:read",
        TokensManage => "tokens:manage",
        UsersManage => "users:manage",
        AgentsManage => "agents:manage",
        PoliciesManage => "policies:manage",
        MetricsView => "metrics:view",
    }
}

closed_enum! {
    /// A built-in role. Each is the least privilege for its job (AZ-1).
    Role, "role" {
        Viewer => "viewer",
        Developer => "developer",
        Ops => "ops",
        Ci => "ci",
        Admin => "admin",
    }
}

impl Role {
    /// The permissions this role grants.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Viewer => &[SqlRead, RedisRead, HttpRead],
            Role::Developer => &[
                SqlRead, SqlWrite, RedisRead, RedisWrite, HttpRead, HttpWrite,
            ],
            Role::Ops => &[
                SqlRead,
                SqlWrite,
                SqlDdl,
                RedisRead,
                RedisWrite,
                HttpRead,
                HttpWrite,
                RequestsViewAll,
                RequestsApprove,
                AuditRead,
                MetricsView,
            ],
            // Pipelines run migrations and read checks; nothing else.
            Role::Ci => &[SqlRead, SqlWrite, SqlDdl, RedisRead],
            Role::Admin => Permission::ALL,
        }
    }

    pub fn has(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }

    /// True when every permission of `other` is also granted by `self`: a principal may only
    /// mint tokens whose role is covered by its own.
    pub fn covers(self, other: Role) -> bool {
        other.permissions().iter().all(|p| self.has(*p))
    }
}

/// The permission needed to run an operation of `class` on a connection of `kind`, or `None`
/// when no permission allows it at all (admin-class operations go through break-glass, and
/// HTTP DDL does not exist).
pub fn permission_for(kind: ConnectionKind, class: OperationClass) -> Option<Permission> {
    use ConnectionKind::*;
    use OperationClass::*;
    match (kind, class) {
        (Postgres | Mysql | Sqlite, Read) => Some(Permission::SqlRead),
        (Postgres | Mysql | Sqlite, Write) => Some(Permission::SqlWrite),
        (Postgres | Mysql | Sqlite, Ddl) => Some(Permission::SqlDdl),
        (Redis, Read) => Some(Permission::RedisRead),
        (Redis, Write) => Some(Permission::RedisWrite),
        (Http, Read) => Some(Permission::HttpRead),
        (Http, Write) => Some(Permission::HttpWrite),
        (_, Admin) | (Redis | Http, Ddl) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_covers_every_role_and_viewer_covers_only_itself() {
        for role in Role::ALL {
            assert!(Role::Admin.covers(*role), "{role}");
            assert_eq!(Role::Viewer.covers(*role), *role == Role::Viewer, "{role}");
        }
        assert!(
            !Role::Developer.covers(Role::Ci),
            "developer cannot mint DDL-capable ci tokens"
        );
        assert!(!Role::Ci.covers(Role::Developer));
    }

    #[test]
    fn ci_role_is_narrow() {
        for p in [
            Permission::TokensManage,
            Permission::RequestsApprove,
            Permission::RequestsBreakGlass,
            Permission::AuditRead,
        ] {
            assert!(!Role::Ci.has(p), "{p}");
        }
    }

    #[test]
    fn admin_class_needs_no_ordinary_permission() {
        for kind in ConnectionKind::ALL {
            assert_eq!(permission_for(*kind, OperationClass::Admin), None);
        }
        assert_eq!(
            permission_for(ConnectionKind::Sqlite, OperationClass::Read),
            Some(Permission::SqlRead)
        );
    }
}
