//! Redis replies (RESP2 and RESP3) as JSON: nil → null, integer → number, bulk string → string
//! when UTF-8 else `{"base64": "…"}`, simple string/status → string, arrays, sets and pushes →
//! arrays (nested), maps → an object when every key is a distinct string, else an array of
//! `[key, value]` pairs, double → number (`"NaN"`/`"Infinity"` strings when JSON cannot hold
//! it), boolean → boolean, big number → string of its digits, verbatim string → its text, an
//! error inside a reply → `{"error": "…"}`. Attributes are dropped; their data is kept.

use redis::Value as Reply;
use serde_json::{Map, Value};

use super::{float, text_or_base64};

/// The RESP type of a reply, as shown in the result's column type.
pub(crate) fn type_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Nil => "nil",
        Reply::Int(_) => "integer",
        Reply::BulkString(_) => "bulk-string",
        Reply::Array(_) => "array",
        Reply::SimpleString(_) | Reply::Okay => "simple-string",
        Reply::Map(_) => "map",
        Reply::Attribute { data, .. } => type_name(data),
        Reply::Set(_) => "set",
        Reply::Double(_) => "double",
        Reply::Boolean(_) => "boolean",
        Reply::VerbatimString { .. } => "verbatim-string",
        Reply::BigNumber(_) => "big-number",
        Reply::Push { .. } => "push",
        Reply::ServerError(_) => "error",
        _ => "unknown",
    }
}

/// Converts a whole reply.
pub(crate) fn value(reply: &Reply) -> Value {
    match reply {
        Reply::Nil => Value::Null,
        Reply::Int(i) => Value::from(*i),
        Reply::BulkString(bytes) => text_or_base64(bytes),
        Reply::SimpleString(s) => Value::String(s.clone()),
        Reply::Okay => Value::String("OK".into()),
        Reply::Array(items) | Reply::Set(items) => Value::Array(items.iter().map(value).collect()),
        Reply::Push { data, .. } => Value::Array(data.iter().map(value).collect()),
        Reply::Map(pairs) => map(pairs),
        Reply::Attribute { data, .. } => value(data),
        Reply::Double(d) => float(*d),
        Reply::Boolean(b) => Value::Bool(*b),
        Reply::VerbatimString { text, .. } => Value::String(text.clone()),
        // Without the driver's `num-bigint` feature a big number arrives as its digits.
        Reply::BigNumber(digits) => text_or_base64(digits),
        Reply::ServerError(e) => {
            let mut object = Map::new();
            object.insert("error".into(), Value::String(e.to_string()));
            Value::Object(object)
        }
        _ => super::unsupported("unknown"),
    }
}

/// The elements of an aggregate reply (array, set, push, map as pairs), for a byte cap that
/// keeps a prefix; `None` for scalars.
pub(crate) fn elements(reply: &Reply) -> Option<Vec<Value>> {
    match reply {
        Reply::Array(items) | Reply::Set(items) => Some(items.iter().map(value).collect()),
        Reply::Push { data, .. } => Some(data.iter().map(value).collect()),
        Reply::Map(pairs) => Some(
            pairs
                .iter()
                .map(|(k, v)| Value::Array(vec![value(k), value(v)]))
                .collect(),
        ),
        Reply::Attribute { data, .. } => elements(data),
        _ => None,
    }
}

fn map(pairs: &[(Reply, Reply)]) -> Value {
    let mut object = Map::new();
    for (k, v) in pairs {
        let key = match k {
            Reply::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
            Reply::SimpleString(s) => Some(s.clone()),
            Reply::VerbatimString { text, .. } => Some(text.clone()),
            _ => None,
        };
        match key {
            Some(key) if !object.contains_key(&key) => {
                object.insert(key, value(v));
            }
            _ => {
                return Value::Array(
                    pairs
                        .iter()
                        .map(|(k, v)| Value::Array(vec![value(k), value(v)]))
                        .collect(),
                );
            }
        }
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_reply_type_converts_faithfully() {
        for (reply, name, expect) in [
            (Reply::Nil, "nil", json!(null)),
            (Reply::Int(-3), "integer", json!(-3)),
            (
                Reply::BulkString(b"hi".to_vec()),
                "bulk-string",
                json!("hi"),
            ),
            (
                Reply::BulkString(vec![0xff]),
                "bulk-string",
                json!({"base64": "/w=="}),
            ),
            (Reply::Okay, "simple-string", json!("OK")),
            (Reply::Double(f64::INFINITY), "double", json!("Infinity")),
            (Reply::Boolean(true), "boolean", json!(true)),
            (
                Reply::BigNumber(b"3492890328409238509324850943850943825024385".to_vec()),
                "big-number",
                json!("3492890328409238509324850943850943825024385"),
            ),
            (
                Reply::Map(vec![(Reply::BulkString(b"a".to_vec()), Reply::Int(1))]),
                "map",
                json!({"a": 1}),
            ),
            (
                Reply::Map(vec![(Reply::Int(1), Reply::Nil)]),
                "map",
                json!([[1, null]]),
            ),
            (
                Reply::Set(vec![Reply::Array(vec![Reply::Int(1)]), Reply::Nil]),
                "set",
                json!([[1], null]),
            ),
        ] {
            assert_eq!(type_name(&reply), name, "{reply:?}");
            assert_eq!(value(&reply), expect, "{reply:?}");
        }
    }
}
