//! PostgreSQL values, decoded from the binary wire format (which the extended protocol always
//! uses for results). Built-in types are recognised by OID; arrays, enums, domains and
//! composites by the type description sqlx resolves for the column.
//!
//! Forms: NUMERIC → exact decimal string (`"NaN"`, `"Infinity"` too); date → `YYYY-MM-DD`;
//! time → `HH:MM:SS[.ffffff]`; timetz → time plus `±HH:MM`; timestamp →
//! `YYYY-MM-DDTHH:MM:SS[.ffffff]`; timestamptz → the same in UTC with `Z`; `±infinity` dates and
//! timestamps → `"infinity"`/`"-infinity"`; interval → ISO 8601 as PostgreSQL's
//! `intervalstyle = iso_8601` prints it (`P1Y2M3DT4H5M6.5S`, `PT0S`); arrays of any dimension →
//! nested JSON arrays (lower bounds are dropped); composites → objects; anonymous records →
//! arrays; jsonb/json → the JSON value itself.

use serde_json::{Map, Value};
use sqlx::TypeInfo;
use sqlx::postgres::{PgTypeInfo, PgTypeKind};

use super::{
    CivilDate, base64, clock_from_micros, float, float4, fraction, json_text, text_or_base64,
    unsupported,
};

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// OIDs below this are built into PostgreSQL; above it, types made by users or extensions.
const FIRST_NORMAL_OID: u32 = 16_384;
/// Arrays larger than this many elements are not expanded (a defence against a hostile
/// header claiming billions of elements).
const MAX_ARRAY_ELEMENTS: usize = 10_000_000;

/// Converts one non-NULL value of a column of type `info`.
pub(crate) fn value(info: &PgTypeInfo, bytes: &[u8]) -> Value {
    converted(info, bytes).unwrap_or_else(|| unsupported(info.name()))
}

fn converted(info: &PgTypeInfo, bytes: &[u8]) -> Option<Value> {
    match info.kind() {
        PgTypeKind::Array(element) => return array(Some(element), bytes),
        PgTypeKind::Enum(_) => return Some(text_or_base64(bytes)),
        PgTypeKind::Domain(base) => return converted(base, bytes),
        PgTypeKind::Composite(fields) => return record(Some(fields), bytes),
        PgTypeKind::Simple | PgTypeKind::Pseudo | PgTypeKind::Range(_) => {}
    }
    let oid = info.oid()?.0;
    if let Some(v) = builtin(oid, bytes) {
        return v;
    }
    (oid >= FIRST_NORMAL_OID)
        .then(|| printable_text(bytes))
        .flatten()
}

/// A value of a built-in type: `None` when `oid` is not one this module knows, `Some(None)`
/// when it is but the bytes are malformed.
fn builtin(oid: u32, b: &[u8]) -> Option<Option<Value>> {
    Some(match oid {
        16 => fixed::<1>(b).map(|[x]| Value::Bool(x != 0)),
        17 => Some(base64(b)),
        // "char", name, text, unknown, xml, bpchar, varchar: text on the wire.
        18 | 19 | 25 | 142 | 705 | 1042 | 1043 => Some(text_or_base64(b)),
        20 => fixed(b).map(|x| Value::from(i64::from_be_bytes(x))),
        21 => fixed(b).map(|x| Value::from(i16::from_be_bytes(x))),
        23 => fixed(b).map(|x| Value::from(i32::from_be_bytes(x))),
        // oid, xid, cid, regproc and friends are unsigned 32-bit.
        26 | 28 | 29 => fixed(b).map(|x| Value::from(u32::from_be_bytes(x))),
        5069 => fixed(b).map(|x| Value::from(u64::from_be_bytes(x))),
        114 => Some(json_text(b)),
        3802 => b
            .split_first()
            .filter(|(v, _)| **v == 1)
            .map(|(_, j)| json_text(j)),
        4072 => b
            .split_first()
            .filter(|(v, _)| **v == 1)
            .map(|(_, p)| text_or_base64(p)),
        700 => fixed(b).map(|x| float4(f32::from_be_bytes(x))),
        701 => fixed(b).map(|x| float(f64::from_be_bytes(x))),
        1082 => fixed(b).map(|x| date(i32::from_be_bytes(x))),
        1083 => fixed(b).map(|x| time(i64::from_be_bytes(x))),
        1114 => fixed(b).map(|x| timestamp(i64::from_be_bytes(x), "")),
        1184 => fixed(b).map(|x| timestamp(i64::from_be_bytes(x), "Z")),
        1186 => interval(b),
        1266 => timetz(b),
        1700 => numeric(b).map(Value::String),
        2950 => fixed::<16>(b).map(|x| Value::String(uuid::Uuid::from_bytes(x).to_string())),
        650 | 869 => inet(b),
        829 | 774 => Some(Value::String(
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        )),
        1560 | 1562 => bits(b),
        3220 => fixed(b).map(|x| {
            let lsn = u64::from_be_bytes(x);
            Value::String(format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff))
        }),
        2249 => record(None, b),
        2278 => Some(Value::Null),
        _ => return None,
    })
}

/// A value inside an array or record, known by the OID on the wire and, for types that are
/// not built in, by the description sqlx resolved for the enclosing column.
fn element(oid: u32, hint: Option<&PgTypeInfo>, bytes: &[u8]) -> Value {
    if let Some(v) = builtin(oid, bytes) {
        return v.unwrap_or_else(|| unsupported(&format!("oid {oid}")));
    }
    match hint {
        Some(info) => value(info, bytes),
        None => unsupported(&format!("oid {oid}")),
    }
}

/// Custom scalar types whose binary form is their text (citext, most extension types).
fn printable_text(bytes: &[u8]) -> Option<Value> {
    let s = std::str::from_utf8(bytes).ok()?;
    s.chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .then(|| Value::String(s.to_owned()))
}

fn fixed<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// A cursor over a binary value that refuses to read past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)?.try_into().ok().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2)?.try_into().ok().map(i16::from_be_bytes)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_be_bytes)
    }
    /// A length-prefixed field: `Some(None)` for NULL (length -1).
    fn field(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.i32()?;
        if len == -1 {
            return Some(None);
        }
        self.take(usize::try_from(len).ok()?).map(Some)
    }
}

fn date(days: i32) -> Value {
    match days {
        i32::MAX => Value::String("infinity".into()),
        i32::MIN => Value::String("-infinity".into()),
        d => CivilDate::from_unix_days(i64::from(d) + PG_EPOCH_DAYS)
            .map_or_else(|| unsupported("DATE"), |c| Value::String(c.iso())),
    }
}

fn time(micros: i64) -> Value {
    match u64::try_from(micros) {
        Ok(us) => Value::String(clock_from_micros(us)),
        Err(_) => unsupported("TIME"),
    }
}

fn timestamp(micros: i64, zone: &str) -> Value {
    match micros {
        i64::MAX => return Value::String("infinity".into()),
        i64::MIN => return Value::String("-infinity".into()),
        _ => {}
    }
    let days = micros.div_euclid(MICROS_PER_DAY);
    let rest = micros.rem_euclid(MICROS_PER_DAY) as u64;
    match CivilDate::from_unix_days(days + PG_EPOCH_DAYS) {
        Some(date) => Value::String(format!("{}T{}{zone}", date.iso(), clock_from_micros(rest))),
        None => unsupported("TIMESTAMP"),
    }
}

fn timetz(bytes: &[u8]) -> Option<Value> {
    let mut r = Reader(bytes);
    let micros = u64::try_from(r.i64()?).ok()?;
    // PostgreSQL stores the zone as seconds *west* of UTC.
    let east = -i64::from(r.i32()?);
    let sign = if east < 0 { '-' } else { '+' };
    let east = east.unsigned_abs();
    let zone = if east % 60 == 0 {
        format!("{sign}{:02}:{:02}", east / 3_600, (east / 60) % 60)
    } else {
        format!(
            "{sign}{:02}:{:02}:{:02}",
            east / 3_600,
            (east / 60) % 60,
            east % 60
        )
    };
    Some(Value::String(format!(
        "{}{zone}",
        clock_from_micros(micros)
    )))
}

/// ISO 8601 duration as PostgreSQL prints it with `intervalstyle = iso_8601`: each field
/// keeps its own sign (`P-1M2D`), seconds carry the fraction (`PT-1.5S`).
fn interval(bytes: &[u8]) -> Option<Value> {
    let mut r = Reader(bytes);
    let micros = r.i64()?;
    let days = r.i32()?;
    let months = r.i32()?;
    if r.0.is_empty() && micros == i64::MAX && days == i32::MAX && months == i32::MAX {
        return Some(Value::String("infinity".into()));
    }
    if micros == i64::MIN && days == i32::MIN && months == i32::MIN {
        return Some(Value::String("-infinity".into()));
    }
    if !r.0.is_empty() {
        return None;
    }
    if micros == 0 && days == 0 && months == 0 {
        return Some(Value::String("PT0S".into()));
    }
    let mut out = String::from("P");
    let (years, months) = (months / 12, months % 12);
    for (n, unit) in [
        (i64::from(years), 'Y'),
        (i64::from(months), 'M'),
        (i64::from(days), 'D'),
    ] {
        if n != 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if micros != 0 {
        out.push('T');
        let hours = micros / 3_600_000_000;
        let minutes = (micros % 3_600_000_000) / 60_000_000;
        let sub_minute = micros % 60_000_000;
        if hours != 0 {
            out.push_str(&format!("{hours}H"));
        }
        if minutes != 0 {
            out.push_str(&format!("{minutes}M"));
        }
        if sub_minute != 0 {
            let sign = if sub_minute < 0 { "-" } else { "" };
            let abs = sub_minute.unsigned_abs();
            out.push_str(&format!(
                "{sign}{}{}S",
                abs / 1_000_000,
                fraction(abs % 1_000_000)
            ));
        }
    }
    Some(Value::String(out))
}

/// NUMERIC's binary form (base-10000 digits, a weight, a sign and a display scale) printed
/// exactly as PostgreSQL prints it, trailing zeros of the scale included.
fn numeric(bytes: &[u8]) -> Option<String> {
    let mut r = Reader(bytes);
    let ndigits = usize::try_from(r.i16()?).ok()?;
    let weight = i64::from(r.i16()?);
    let sign = r.u16()?;
    let scale = usize::from(r.u16()?);
    let mut digits = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        let d = r.i16()?;
        if !(0..10_000).contains(&d) {
            return None;
        }
        digits.push(d);
    }
    if !r.0.is_empty() {
        return None;
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let group = |i: i64| -> i16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                out.push_str(&group(i).to_string());
            } else {
                out.push_str(&format!("{:04}", group(i)));
            }
        }
    }
    if scale > 0 {
        let mut frac = String::with_capacity(scale + 4);
        let mut i = weight + 1;
        while frac.len() < scale {
            frac.push_str(&format!("{:04}", group(i)));
            i += 1;
        }
        frac.truncate(scale);
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

/// inet/cidr: family, prefix bits, is-cidr flag, address length, address.
fn inet(bytes: &[u8]) -> Option<Value> {
    let (&[family, bits, is_cidr, len], addr) = bytes.split_first_chunk::<4>()?;
    if usize::from(len) != addr.len() {
        return None;
    }
    let (ip, full): (std::net::IpAddr, u8) = match family {
        2 => (<[u8; 4]>::try_from(addr).ok()?.into(), 32),
        3 => (<[u8; 16]>::try_from(addr).ok()?.into(), 128),
        _ => return None,
    };
    Some(Value::String(if bits == full && is_cidr == 0 {
        ip.to_string()
    } else {
        format!("{ip}/{bits}")
    }))
}

/// bit/varbit: a length in bits and the bits, shown as `0`/`1` text.
fn bits(bytes: &[u8]) -> Option<Value> {
    let mut r = Reader(bytes);
    let n = usize::try_from(r.i32()?).ok()?;
    let data = r.0;
    if data.len() != n.div_ceil(8) {
        return None;
    }
    Some(Value::String(
        (0..n)
            .map(|i| {
                if data[i / 8] & (0x80 >> (i % 8)) != 0 {
                    '1'
                } else {
                    '0'
                }
            })
            .collect(),
    ))
}

/// An array of any dimension as nested JSON arrays.
fn array(hint: Option<&PgTypeInfo>, bytes: &[u8]) -> Option<Value> {
    let mut r = Reader(bytes);
    let ndim = usize::try_from(r.i32()?).ok()?;
    let _has_nulls = r.i32()?;
    let element_oid = r.u32()?;
    if ndim == 0 {
        return Some(Value::Array(Vec::new()));
    }
    let mut dims = Vec::with_capacity(ndim.min(6));
    for _ in 0..ndim {
        let len = usize::try_from(r.i32()?).ok()?;
        let _lower_bound = r.i32()?;
        dims.push(len);
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|t| *t <= MAX_ARRAY_ELEMENTS && *t <= r.0.len() / 4)?;
    let mut flat = Vec::with_capacity(total);
    for _ in 0..total {
        flat.push(match r.field()? {
            None => Value::Null,
            Some(b) => element(element_oid, hint, b),
        });
    }
    if !r.0.is_empty() {
        return None;
    }
    // Fold the innermost dimension first: [2][3] → two arrays of three.
    for &len in dims.iter().skip(1).rev() {
        let mut grouped = Vec::with_capacity(flat.len() / len.max(1));
        let mut items = flat.into_iter();
        loop {
            let chunk: Vec<Value> = items.by_ref().take(len).collect();
            if chunk.is_empty() {
                break;
            }
            grouped.push(Value::Array(chunk));
        }
        flat = grouped;
    }
    Some(Value::Array(flat))
}

/// A composite value as an object (named fields) or an anonymous record as an array.
fn record(fields: Option<&[(String, PgTypeInfo)]>, bytes: &[u8]) -> Option<Value> {
    let mut r = Reader(bytes);
    let n = usize::try_from(r.i32()?).ok()?;
    if n > r.0.len() / 8 + 1 {
        return None;
    }
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        let oid = r.u32()?;
        let hint = fields.and_then(|f| f.get(i)).map(|(_, info)| info);
        values.push(match r.field()? {
            None => Value::Null,
            Some(b) => element(oid, hint, b),
        });
    }
    match fields {
        Some(fields) if fields.len() == values.len() => Some(Value::Object(
            fields
                .iter()
                .map(|(name, _)| name.clone())
                .zip(values)
                .collect::<Map<_, _>>(),
        )),
        _ => Some(Value::Array(values)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(weight: i16, sign: u16, scale: u16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((digits.len() as i16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(scale.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_print_exactly() {
        for (weight, sign, scale, digits, expect) in [
            (0, 0, 0, &[][..], "0"),
            (0, 0, 2, &[][..], "0.00"),
            (0, 0, 4, &[12, 3_400][..], "12.3400"),
            (1, 0x4000, 1, &[1, 2_345, 6_000][..], "-12345.6"),
            (-2, 0, 10, &[12][..], "0.0000001200"),
            (-3, 0, 12, &[12][..], "0.000000000012"),
            (4, 0, 0, &[1][..], "10000000000000000"),
            (
                4,
                0,
                20,
                &[
                    1_234, 5_678, 9_012, 3_456, 7_890, 1_234, 5_678, 9_012, 3_456, 7_890,
                ][..],
                "12345678901234567890.12345678901234567890",
            ),
            (0, 0xC000, 0, &[][..], "NaN"),
            (0, 0xF000, 0, &[][..], "-Infinity"),
        ] {
            let got = numeric(&numeric_bytes(weight, sign, scale, digits));
            assert_eq!(got.as_deref(), Some(expect), "{digits:?}");
        }
        assert_eq!(numeric(&numeric_bytes(0, 0, 0, &[10_000])), None);
        assert_eq!(numeric(&[0, 1]), None);
    }

    fn interval_bytes(micros: i64, days: i32, months: i32) -> Vec<u8> {
        [
            &micros.to_be_bytes()[..],
            &days.to_be_bytes(),
            &months.to_be_bytes(),
        ]
        .concat()
    }

    #[test]
    fn intervals_print_as_postgres_iso_8601() {
        for (micros, days, months, expect) in [
            (0, 0, 0, "PT0S"),
            (14_706_500_000, 3, 14, "P1Y2M3DT4H5M6.5S"),
            (0, 2, -1, "P-1M2D"),
            (-1_500_000, 0, 0, "PT-1.5S"),
            (3_600_000_000, 0, 0, "PT1H"),
        ] {
            assert_eq!(
                interval(&interval_bytes(micros, days, months)),
                Some(Value::String(expect.into())),
                "{expect}"
            );
        }
    }

    #[test]
    fn dates_and_timestamps_keep_infinity_and_extreme_years() {
        assert_eq!(date(0), Value::String("2000-01-01".into()));
        assert_eq!(date(i32::MAX), Value::String("infinity".into()));
        assert_eq!(timestamp(i64::MIN, "Z"), Value::String("-infinity".into()));
        assert_eq!(
            timestamp(-1, "Z"),
            Value::String("1999-12-31T23:59:59.999999Z".into())
        );
        assert_eq!(
            timestamp(MICROS_PER_DAY * 2_000_000, ""),
            Value::String("7475-10-25T00:00:00".into())
        );
    }

    #[test]
    fn malformed_bytes_never_panic() {
        for oid in [
            16, 20, 21, 23, 700, 701, 1082, 1083, 1114, 1184, 1186, 1266, 1700, 2950, 869, 1560,
            3220, 2249, 3802,
        ] {
            for bytes in [&[][..], &[1][..], &[0xff; 3][..], &[0x7f; 17][..]] {
                let _ = builtin(oid, bytes);
            }
        }
        assert_eq!(
            array(
                None,
                &[
                    0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1
                ]
            ),
            None
        );
    }
}
