//! OpenAPI schemas for the `portcullis-core` vocabulary as it travels on the wire. The closed
//! enums serialize as strings; their allowed values are read from the enums themselves, so the
//! document cannot list a value the server would refuse or leave out one it sends. `core`
//! stays free of any documentation dependency: wire types name these stand-ins with
//! `#[schema(value_type = …)]`.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// A string schema whose allowed values are the spellings of a closed enum.
fn closed_enum(description: &str, values: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

macro_rules! closed_enum_schema {
    ($($name:ident => $core:ty, $description:literal;)+) => {$(
        #[doc = $description]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                closed_enum($description, <$core>::ALL.iter().map(|v| v.as_str()))
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    )+};
}

closed_enum_schema! {
    Role => portcullis_core::Role, "A built-in role.";
    Permission => portcullis_core::Permission, "One `resource:action` capability of a role.";
    OperationClass => portcullis_core::OperationClass,
        "What an operation does, computed from the statement by the server (never taken from a client).";
    ConnectionKind => portcullis_core::ConnectionKind, "The kind of data store behind a connection.";
    Environment => portcullis_core::Environment, "The environment a connection belongs to.";
    RequestState => portcullis_core::RequestState, "Where a request is in its life.";
    Decision => portcullis_core::Decision, "What policy says about an operation.";
}

/// The name of a connection: 1–63 characters of `a-z`, `0-9`, `-` and `_`, starting with a
/// letter or digit.
pub struct ConnectionName;

impl PartialSchema for ConnectionName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A connection's name: 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit.",
            ))
            .pattern(Some("^[a-z0-9][a-z0-9_-]{0,62}$"))
            .examples(["demo"])
            .into()
    }
}

impl ToSchema for ConnectionName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ConnectionName")
    }
}

/// One approval step of a policy rule (`portcullis_core::policy::Step`): this many approvals
/// from holders of these roles.
#[derive(ToSchema)]
#[allow(dead_code)] // A description only: never built, never read.
pub struct Step {
    approvals: u32,
    /// Roles whose holders may approve this step.
    roles: Vec<Role>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(schema: RefOr<Schema>) -> Vec<String> {
        serde_json::to_value(schema).expect("json")["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect()
    }

    #[test]
    fn closed_enums_list_every_spelling_the_core_accepts() {
        let roles = values(Role::schema());
        assert_eq!(roles.len(), portcullis_core::Role::ALL.len());
        for r in &roles {
            assert!(r.parse::<portcullis_core::Role>().is_ok(), "{r}");
        }
        assert!(values(Permission::schema()).contains(&"metrics:view".to_owned()));
    }

    #[test]
    fn the_step_schema_has_the_fields_of_a_serialized_step() {
        let step = serde_json::to_value(portcullis_core::policy::Step::default()).expect("json");
        let mut fields: Vec<&String> = step.as_object().expect("object").keys().collect();
        fields.sort();
        let schema = serde_json::to_value(<Step as PartialSchema>::schema()).expect("json");
        let mut documented: Vec<&String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        documented.sort();
        assert_eq!(fields, documented);
    }
}
