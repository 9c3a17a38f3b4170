//! RFC 8785 JSON Canonicalization Scheme over `serde_json::Value`, as ox `Json.canonicalize`
//! (and so mppx) produces it for `request` and `opaque`.
//!
//! * Object members are sorted by their names' UTF-16 code units (not by UTF-8 bytes; the two
//!   orders differ once names mix supplementary-plane and U+E000..U+FFFF characters).
//! * No insignificant whitespace.
//! * Strings are escaped as `JSON.stringify` escapes them.
//! * Numbers: MPP requests carry amounts as strings and only small integers as numbers, so this
//!   implementation supports integers within ±(2^53 − 1) (printed plainly) and refuses anything
//!   else with [`ProtocolError::UnsupportedNumber`] rather than risk printing a float differently
//!   from ECMAScript.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

use super::ProtocolError;

/// Largest integer ECMAScript represents exactly (2^53 − 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Canonical JSON text of `value`.
pub fn canonicalize(value: &Value) -> Result<String, ProtocolError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

/// Canonical JSON text of an object (saves wrapping a map in a `Value`).
pub(crate) fn canonicalize_object(map: &Map<String, Value>) -> Result<String, ProtocolError> {
    let mut out = String::new();
    write_object(&mut out, map)?;
    Ok(out)
}

fn write_object(out: &mut String, map: &Map<String, Value>) -> Result<(), ProtocolError> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|(a, _), (b, _)| utf16_cmp(a, b));
    out.push('{');
    for (i, (name, item)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, name);
        out.push(':');
        write_value(out, item)?;
    }
    out.push('}');
    Ok(())
}

fn write_value(out: &mut String, value: &Value) -> Result<(), ProtocolError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_json_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map)?,
    }
    Ok(())
}

fn utf16_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_number(out: &mut String, n: &Number) -> Result<(), ProtocolError> {
    if let Some(u) = n.as_u64() {
        if u <= MAX_SAFE_INTEGER {
            let _ = write!(out, "{u}");
            return Ok(());
        }
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() <= MAX_SAFE_INTEGER {
            let _ = write!(out, "{i}");
            return Ok(());
        }
    } else if let Some(f) = n.as_f64() {
        // `1.0` and `1e3` parse as floats but are integers to ECMAScript; -0 prints as 0.
        if f.is_finite() && f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64 {
            #[allow(clippy::cast_possible_truncation)]
            let i = f as i64;
            let _ = write!(out, "{i}");
            return Ok(());
        }
    }
    Err(ProtocolError::UnsupportedNumber {
        number: n.to_string(),
    })
}

/// Appends `s` as a JSON string literal, escaped exactly as `JSON.stringify` escapes it.
pub(crate) fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut run_start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[run_start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escape);
        }
        run_start = i + c.len_utf8();
    }
    out.push_str(&s[run_start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sorts_nested_keys_and_drops_whitespace() {
        let v = json!({"b": 1, "a": {"d": [3, {"z": null, "y": true}], "c": "x"}});
        assert_eq!(
            canonicalize(&v).unwrap(),
            r#"{"a":{"c":"x","d":[3,{"y":true,"z":null}]},"b":1}"#
        );
    }

    #[test]
    fn sorts_by_utf16_code_units() {
        // U+1F600 is the surrogate pair D83D DE00, which sorts before U+FF21 in UTF-16
        // but after it in UTF-8 / code point order.
        let v = json!({"\u{ff21}": 1, "\u{1f600}": 2});
        assert_eq!(
            canonicalize(&v).unwrap(),
            "{\"\u{1f600}\":2,\"\u{ff21}\":1}"
        );
    }

    #[test]
    fn escapes_strings_like_json_stringify() {
        let v = json!("q\" b\\ \u{8}\u{c}\n\r\t \u{0}\u{1f} \u{7f} \u{2028} é");
        assert_eq!(
            canonicalize(&v).unwrap(),
            "\"q\\\" b\\\\ \\b\\f\\n\\r\\t \\u0000\\u001f \u{7f} \u{2028} é\""
        );
    }

    #[test]
    fn numbers_safe_integers_only() {
        assert_eq!(canonicalize(&json!(31337)).unwrap(), "31337");
        assert_eq!(canonicalize(&json!(-5)).unwrap(), "-5");
        assert_eq!(
            canonicalize(&json!(9007199254740991_u64)).unwrap(),
            "9007199254740991"
        );
        let parsed: Value = serde_json::from_str("[1.0, 1e3, -0.0]").unwrap();
        assert_eq!(canonicalize(&parsed).unwrap(), "[1,1000,0]");
        for bad in ["9007199254740992", "-9007199254740992", "1.5", "1e300"] {
            let parsed: Value = serde_json::from_str(bad).unwrap();
            assert!(
                matches!(
                    canonicalize(&parsed),
                    Err(ProtocolError::UnsupportedNumber { .. })
                ),
                "{bad}"
            );
        }
    }
}
