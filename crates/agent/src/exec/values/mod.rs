//! Faithful conversion of data-store values to JSON. Integers stay numbers, exact decimals
//! become strings (never floats), floats that JSON cannot hold (NaN, ±infinity) become strings,
//! bytes become base64, dates and times ISO 8601 text. Conversions never panic and never fail a
//! whole result: a value that cannot be shown becomes `{"unsupported_type": "<name>"}`.
//!
//! The per-store decoders read the drivers' binary wire formats directly, so nothing is lost to
//! an intermediate Rust type (NUMERIC keeps every digit, `infinity` dates stay `infinity`).

pub(crate) mod mysql;
pub(crate) mod postgres;
pub(crate) mod resp;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// `{"unsupported_type": name}`: what a value becomes when it cannot be shown faithfully.
pub(crate) fn unsupported(type_name: &str) -> Value {
    json!({ "unsupported_type": type_name })
}

/// Text as a string; bytes that are not UTF-8 as `{"base64": "…"}`, so nothing is lost.
pub(crate) fn text_or_base64(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => {
            let mut object = Map::new();
            object.insert("base64".into(), Value::String(STANDARD.encode(bytes)));
            Value::Object(object)
        }
    }
}

/// Binary data as a plain base64 string (the column type already says it is bytes).
pub(crate) fn base64(bytes: &[u8]) -> Value {
    Value::String(STANDARD.encode(bytes))
}

/// A double as a JSON number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub(crate) fn float(f: f64) -> Value {
    match serde_json::Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// A single-precision float through its shortest decimal form, so `1.1f32` shows as `1.1`
/// and not as the nearest double `1.100000023841858`.
pub(crate) fn float4(f: f32) -> Value {
    if !f.is_finite() {
        return float(f64::from(f));
    }
    match f.to_string().parse::<f64>() {
        Ok(d) => float(d),
        Err(_) => float(f64::from(f)),
    }
}

/// JSON text parsed into a value; text that does not parse stays a string.
pub(crate) fn json_text(bytes: &[u8]) -> Value {
    match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => text_or_base64(bytes),
    }
}

/// A proleptic Gregorian calendar date (astronomical years: year 0 is 1 BC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CivilDate {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
}

impl CivilDate {
    /// The date `days` after 1970-01-01 (H. Hinnant's `civil_from_days`; exact for any i64
    /// that does not overflow the intermediate arithmetic, checked here).
    pub(crate) fn from_unix_days(days: i64) -> Option<CivilDate> {
        let z = days.checked_add(719_468)?;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe.checked_add(era.checked_mul(400)?)? + i64::from(month <= 2);
        Some(CivilDate { year, month, day })
    }

    /// `YYYY-MM-DD`; years outside 0..=9999 carry a sign (`-0044-03-15`, `+10000-01-01`).
    pub(crate) fn iso(&self) -> String {
        if (0..=9_999).contains(&self.year) {
            format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
        } else {
            format!("{:+05}-{:02}-{:02}", self.year, self.month, self.day)
        }
    }
}

/// `HH:MM:SS` plus `.ffffff` without trailing zeros when there is a fraction. `hours` may
/// exceed 23 (PostgreSQL `24:00:00`, MySQL `TIME` spans).
pub(crate) fn clock(hours: u64, minutes: u64, seconds: u64, micros: u64) -> String {
    format!("{hours:02}:{minutes:02}:{seconds:02}{}", fraction(micros))
}

/// `.ffffff` trimmed of trailing zeros, or nothing for a whole second.
pub(crate) fn fraction(micros: u64) -> String {
    if micros == 0 {
        return String::new();
    }
    let digits = format!("{micros:06}");
    format!(".{}", digits.trim_end_matches('0'))
}

/// Microseconds since midnight as a clock reading.
pub(crate) fn clock_from_micros(micros: u64) -> String {
    let secs = micros / 1_000_000;
    clock(
        secs / 3_600,
        (secs / 60) % 60,
        secs % 60,
        micros % 1_000_000,
    )
}

/// The exact length of a value serialized as JSON, without allocating the text.
pub(crate) fn json_len(value: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a `serde_json::Value` into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        for (days, expect) in [
            (0, "1970-01-01"),
            (10_957, "2000-01-01"),
            (-719_528, "0000-01-01"),
            (-719_529, "-0001-12-31"),
            (2_932_897, "+10000-01-01"),
            (19_782, "2024-02-29"),
        ] {
            let date = CivilDate::from_unix_days(days).expect("in range");
            assert_eq!(date.iso(), expect, "{days}");
        }
        assert!(CivilDate::from_unix_days(i64::MAX).is_none());
    }

    #[test]
    fn floats_and_fractions_are_shown_exactly() {
        assert_eq!(float4(1.1), json!(1.1));
        assert_eq!(float(f64::NAN), json!("NaN"));
        assert_eq!(float(f64::NEG_INFINITY), json!("-Infinity"));
        assert_eq!(fraction(500_000), ".5");
        assert_eq!(fraction(123), ".000123");
        assert_eq!(clock_from_micros(86_400_000_000), "24:00:00");
        assert_eq!(json_len(&json!(["ab", 1, null])), 13);
    }

    #[test]
    fn bytes_that_are_not_text_become_base64_objects() {
        assert_eq!(text_or_base64(b"hi"), json!("hi"));
        assert_eq!(text_or_base64(&[0xff, 0x00]), json!({"base64": "/wA="}));
    }
}
