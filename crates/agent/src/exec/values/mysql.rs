//! MySQL/MariaDB values, decoded from the binary protocol (prepared statements always use it).
//! The column's type name (as sqlx reports it: `BIGINT UNSIGNED`, `VARBINARY`, `DECIMAL`…)
//! says how to read the bytes.
//!
//! Forms: DECIMAL → the server's exact decimal string; FLOAT/DOUBLE → numbers; BIGINT UNSIGNED
//! → numbers up to 2^64-1; BOOLEAN (which is `TINYINT(1)`) → a number, as MySQL stores any
//! value there; DATE → `YYYY-MM-DD`; DATETIME → `YYYY-MM-DDTHH:MM:SS[.ffffff]`; TIMESTAMP → the
//! same in UTC with `Z` (the agent sets the session time zone to UTC); TIME → `[-]HH:MM:SS[.f]`
//! (hours may exceed 23); zero dates → `0000-00-00`; BIT → a number; YEAR → a number; binary
//! strings and blobs → base64; GEOMETRY → base64 of its internal WKB; JSON (MySQL's own type)
//! → the JSON value. MariaDB sends its JSON columns as LONGTEXT, so they arrive as strings.

use serde_json::Value;
use sqlx::mysql::{MySql, MySqlTypeInfo};
use sqlx::{Type, TypeInfo};

use super::{base64, clock, float, float4, json_text, text_or_base64, unsupported};

/// The column's type name. sqlx names string columns by their BINARY flag, which MySQL also
/// sets for `_bin` collations (and MariaDB for JSON and UUID columns): a column holds bytes
/// only when its collation is `binary`, which is what `str`'s compatibility check tests.
pub(crate) fn type_name(info: &MySqlTypeInfo) -> &str {
    let name = info.name();
    if !<str as Type<MySql>>::compatible(info) {
        return name;
    }
    match name {
        "BINARY" => "CHAR",
        "VARBINARY" => "VARCHAR",
        "TINYBLOB" => "TINYTEXT",
        "BLOB" => "TEXT",
        "MEDIUMBLOB" => "MEDIUMTEXT",
        "LONGBLOB" => "LONGTEXT",
        other => other,
    }
}

/// Converts one non-NULL value of a column whose type is named (by [`type_name`]) `type_name`.
pub(crate) fn value(type_name: &str, bytes: &[u8]) -> Value {
    converted(type_name, bytes).unwrap_or_else(|| unsupported(type_name))
}

fn converted(type_name: &str, b: &[u8]) -> Option<Value> {
    Some(match type_name {
        "BOOLEAN" | "TINYINT" => Value::from(i8::from_le_bytes(fixed(b)?)),
        "TINYINT UNSIGNED" => Value::from(u8::from_le_bytes(fixed(b)?)),
        "SMALLINT" => Value::from(i16::from_le_bytes(fixed(b)?)),
        "SMALLINT UNSIGNED" | "YEAR" => Value::from(u16::from_le_bytes(fixed(b)?)),
        "INT" | "MEDIUMINT" => Value::from(i32::from_le_bytes(fixed(b)?)),
        "INT UNSIGNED" | "MEDIUMINT UNSIGNED" => Value::from(u32::from_le_bytes(fixed(b)?)),
        "BIGINT" => Value::from(i64::from_le_bytes(fixed(b)?)),
        "BIGINT UNSIGNED" => Value::from(u64::from_le_bytes(fixed(b)?)),
        "FLOAT" => float4(f32::from_le_bytes(fixed(b)?)),
        "DOUBLE" => float(f64::from_le_bytes(fixed(b)?)),
        // Exact decimal text from the server: kept as written, never parsed into a float.
        "DECIMAL" => Value::String(std::str::from_utf8(b).ok()?.to_owned()),
        "DATE" => Value::String(date_time(b, None)?),
        "DATETIME" => Value::String(date_time(b, Some(""))?),
        "TIMESTAMP" => Value::String(date_time(b, Some("Z"))?),
        "TIME" => Value::String(time(b)?),
        "BIT" => {
            if b.len() > 8 {
                return None;
            }
            Value::from(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
        }
        "JSON" => json_text(b),
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" | "GEOMETRY" => {
            base64(b)
        }
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
            text_or_base64(b)
        }
        "NULL" => Value::Null,
        _ => return None,
    })
}

fn fixed<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// DATE/DATETIME/TIMESTAMP: a length byte (0, 4, 7 or 11), then year (u16), month, day,
/// hour, minute, second and microseconds (u32), all little-endian. `zone` is `None` for a
/// DATE (no time of day), else the suffix after the time.
fn date_time(b: &[u8], zone: Option<&str>) -> Option<String> {
    let (&len, rest) = b.split_first()?;
    if usize::from(len) != rest.len() || !matches!(len, 0 | 4 | 7 | 11) {
        return None;
    }
    let year = rest
        .get(..2)
        .map_or(0, |y| u16::from_le_bytes([y[0], y[1]]));
    let month = rest.get(2).copied().unwrap_or(0);
    let day = rest.get(3).copied().unwrap_or(0);
    let date = format!("{year:04}-{month:02}-{day:02}");
    let Some(zone) = zone else {
        return Some(date);
    };
    let hour = rest.get(4).copied().unwrap_or(0);
    let minute = rest.get(5).copied().unwrap_or(0);
    let second = rest.get(6).copied().unwrap_or(0);
    let micros = rest
        .get(7..11)
        .map_or(0, |m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    Some(format!(
        "{date}T{}{zone}",
        clock(
            u64::from(hour),
            u64::from(minute),
            u64::from(second),
            u64::from(micros)
        )
    ))
}

/// TIME: a length byte (0, 8 or 12), a sign, days (u32), hour, minute, second, microseconds.
fn time(b: &[u8]) -> Option<String> {
    let (&len, rest) = b.split_first()?;
    if usize::from(len) != rest.len() || !matches!(len, 0 | 8 | 12) {
        return None;
    }
    if len == 0 {
        return Some("00:00:00".into());
    }
    let negative = rest[0] != 0;
    let days = u32::from_le_bytes(rest.get(1..5)?.try_into().ok()?);
    let hours = u64::from(days) * 24 + u64::from(rest[5]);
    let micros = rest
        .get(8..12)
        .map_or(0, |m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    let sign = if negative { "-" } else { "" };
    Some(format!(
        "{sign}{}",
        clock(
            hours,
            u64::from(rest[6]),
            u64::from(rest[7]),
            u64::from(micros)
        )
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_convert_by_type_name() {
        for (type_name, bytes, expect) in [
            (
                "BIGINT UNSIGNED",
                &u64::MAX.to_le_bytes()[..],
                serde_json::json!(u64::MAX),
            ),
            ("TINYINT", &[0xff][..], serde_json::json!(-1)),
            ("DECIMAL", b"-12.3400", serde_json::json!("-12.3400")),
            (
                "DATE",
                &[4, 0xe8, 0x07, 2, 29][..],
                serde_json::json!("2024-02-29"),
            ),
            ("DATE", &[0][..], serde_json::json!("0000-00-00")),
            (
                "DATETIME",
                &[11, 0xe8, 0x07, 2, 29, 13, 5, 9, 0x20, 0xa1, 0x07, 0][..],
                serde_json::json!("2024-02-29T13:05:09.5"),
            ),
            (
                "TIMESTAMP",
                &[7, 0xe8, 0x07, 2, 29, 13, 5, 9][..],
                serde_json::json!("2024-02-29T13:05:09Z"),
            ),
            (
                "TIME",
                &[8, 1, 1, 0, 0, 0, 2, 3, 4][..],
                serde_json::json!("-26:03:04"),
            ),
            ("BIT", &[1, 2][..], serde_json::json!(258)),
            ("VARBINARY", &[0xff][..], serde_json::json!("/w==")),
            ("GEOMETRY", &[1][..], serde_json::json!("AQ==")),
            (
                "INT",
                &[1, 2][..],
                serde_json::json!({"unsupported_type": "INT"}),
            ),
            (
                "TIME",
                &[12, 0][..],
                serde_json::json!({"unsupported_type": "TIME"}),
            ),
        ] {
            assert_eq!(value(type_name, bytes), expect, "{type_name} {bytes:?}");
        }
    }
}
