//! The auth-param grammar of the `Payment` scheme as mppx reads and writes it.
//!
//! Reading (mppx `findSchemeStarts` / `parseAuthParams`):
//! * a scheme starts at the token `Payment` (any case) followed by whitespace, at the start of
//!   the value or after a comma, outside quoted-strings;
//! * parameter names are `[A-Za-z0-9_-]+`, lower-cased; a name not followed by `=` ends the
//!   parameter list (it is the next scheme);
//! * values are quoted-strings (`\` escapes the next character; `\uXXXX` is a UTF-16 code unit)
//!   or bare tokens up to the next comma, trimmed.
//!
//! Writing (mppx `authParam`): `name="value"` with `\` and `"` backslash-escaped and characters
//! outside printable ASCII written as `\uXXXX` UTF-16 code units. mppx escapes only code points
//! above U+00FF and throws on CR/LF; escaping Latin-1 and control characters too keeps every
//! value a legal, ASCII-only header value, and mppx's reader decodes both spellings alike.

use std::fmt::Write as _;

use super::ProtocolError;

/// The auth scheme name.
pub(crate) const SCHEME: &str = "Payment";

/// JavaScript's `\s` (ECMAScript WhiteSpace and LineTerminator).
pub(crate) const fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// Whether `value[index..]` starts with `Payment` (any case) followed by whitespace.
fn starts_with_scheme(value: &str, index: usize) -> bool {
    let Some(candidate) = value.get(index..index + SCHEME.len()) else {
        return false;
    };
    candidate.eq_ignore_ascii_case(SCHEME)
        && value[index + SCHEME.len()..]
            .chars()
            .next()
            .is_some_and(is_js_space)
}

/// Byte offsets where a `Payment` scheme starts in a `WWW-Authenticate` value.
pub(crate) fn find_scheme_starts(value: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    // The last non-whitespace character before the current position, outside quotes.
    let mut previous: Option<char> = None;
    for (i, c) in value.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
                previous = Some(c);
            }
            continue;
        }
        if c == '"' {
            in_quotes = true;
            continue;
        }
        if matches!(previous, None | Some(',')) && starts_with_scheme(value, i) {
            starts.push(i);
        }
        if !is_js_space(c) {
            previous = Some(c);
        }
    }
    starts
}

/// Parses the auth-params of one challenge; `input` starts right after `Payment` and its
/// whitespace, `base` is its offset in the whole header value (for error positions).
///
/// Returns lower-cased names with unescaped values in order of appearance. Duplicates are an
/// error; parsing stops at a name without `=` (the start of another scheme).
pub(crate) fn parse_auth_params(
    input: &str,
    base: usize,
) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params: Vec<(String, String)> = Vec::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    loop {
        i = skip(input, i, |c| is_js_space(c) || c == ',');
        if i >= input.len() {
            break;
        }
        let key_start = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'-'))
        {
            i += 1;
        }
        if i == key_start {
            return Err(ProtocolError::MalformedAuthParam {
                position: base + key_start,
            });
        }
        let key = input[key_start..i].to_ascii_lowercase();
        i = skip(input, i, is_js_space);
        if bytes.get(i) != Some(&b'=') {
            break;
        }
        i = skip(input, i + 1, is_js_space);
        let (value, next) = if bytes.get(i) == Some(&b'"') {
            read_quoted(input, i + 1, base)?
        } else {
            let end = input[i..].find(',').map_or(input.len(), |off| i + off);
            (input[i..end].trim_matches(is_js_space).to_owned(), end)
        };
        i = next;
        if params.iter().any(|(name, _)| *name == key) {
            return Err(ProtocolError::DuplicateParam { name: key });
        }
        params.push((key, value));
    }
    Ok(params)
}

fn skip(input: &str, from: usize, pred: impl Fn(char) -> bool) -> usize {
    input[from..]
        .char_indices()
        .find(|&(_, c)| !pred(c))
        .map_or(input.len(), |(off, _)| from + off)
}

/// Reads a quoted-string whose content starts at `start` (just after the opening quote).
/// Returns the unescaped value and the index just after the closing quote.
fn read_quoted(input: &str, start: usize, base: usize) -> Result<(String, usize), ProtocolError> {
    let mut value = String::new();
    let mut chars = input[start..]
        .char_indices()
        .map(|(off, c)| (start + off, c));
    // A high surrogate from a `\uD8xx` escape, waiting for its low half.
    let mut pending_high: Option<(usize, u16)> = None;
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                flush_high(&mut pending_high, base)?;
                return Ok((value, at + 1));
            }
            '\\' => {
                let Some((_, escaped)) = chars.next() else {
                    break;
                };
                match if escaped == 'u' {
                    hex4(input, at + 2)
                } else {
                    None
                } {
                    Some(unit) => {
                        // The four hex digits are ASCII: one char each.
                        for _ in 0..4 {
                            chars.next();
                        }
                        push_code_unit(&mut value, &mut pending_high, (at, unit), base)?;
                    }
                    None => {
                        flush_high(&mut pending_high, base)?;
                        value.push(escaped);
                    }
                }
            }
            _ => {
                flush_high(&mut pending_high, base)?;
                value.push(c);
            }
        }
    }
    Err(ProtocolError::UnterminatedQuotedString {
        position: base + start - 1,
    })
}

/// Appends one `\uXXXX` code unit, pairing surrogates.
fn push_code_unit(
    value: &mut String,
    pending_high: &mut Option<(usize, u16)>,
    (at, unit): (usize, u16),
    base: usize,
) -> Result<(), ProtocolError> {
    match (pending_high.take(), unit) {
        (None, 0xd800..=0xdbff) => *pending_high = Some((at, unit)),
        (Some((_, high)), 0xdc00..=0xdfff) => {
            let code = 0x10000 + ((u32::from(high) - 0xd800) << 10) + (u32::from(unit) - 0xdc00);
            // Always in U+10000..=U+10FFFF, so always a char.
            value.extend(char::from_u32(code));
        }
        (Some((high_at, high)), _) => {
            return Err(ProtocolError::UnpairedSurrogate {
                position: base + high_at,
                code_unit: high,
            });
        }
        (None, 0xdc00..=0xdfff) => {
            return Err(ProtocolError::UnpairedSurrogate {
                position: base + at,
                code_unit: unit,
            });
        }
        // Not a surrogate, so always a char.
        (None, _) => value.extend(char::from_u32(u32::from(unit))),
    }
    Ok(())
}

fn flush_high(pending: &mut Option<(usize, u16)>, base: usize) -> Result<(), ProtocolError> {
    match pending.take() {
        Some((at, code_unit)) => Err(ProtocolError::UnpairedSurrogate {
            position: base + at,
            code_unit,
        }),
        None => Ok(()),
    }
}

/// Four hex digits at `at`, as a UTF-16 code unit.
fn hex4(input: &str, at: usize) -> Option<u16> {
    let digits = input.get(at..at + 4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

/// Appends `name="value"` with mppx's quoting (see the module docs for the escaping rules).
pub(crate) fn write_param(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0_u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> Result<Vec<(String, String)>, ProtocolError> {
        parse_auth_params(s, 0)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn reads_quoted_and_token_values_and_lowercases_names() {
        let got = params(r#"ID="a", Realm=api.example.com ,method = "tempo",x_y-z="""#).unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("id", "a"),
                ("realm", "api.example.com"),
                ("method", "tempo"),
                ("x_y-z", "")
            ])
        );
    }

    #[test]
    fn unescapes_backslashes_quotes_and_utf16_escapes() {
        let got = params(r#"d="a \\ b \"q\" \u2014 \ud83d\ude00 \x \u12""#).unwrap();
        assert_eq!(
            got,
            pairs(&[("d", "a \\ b \"q\" \u{2014} \u{1f600} x u12")])
        );
    }

    #[test]
    fn stops_at_the_next_scheme() {
        let got = params(r#"id="a", Basic realm="x""#).unwrap();
        assert_eq!(got, pairs(&[("id", "a")]));
    }

    #[test]
    fn rejects_bad_grammar() {
        assert_eq!(
            params(r#"id="a"#),
            Err(ProtocolError::UnterminatedQuotedString { position: 3 })
        );
        assert_eq!(
            params(r#"id="a\"#),
            Err(ProtocolError::UnterminatedQuotedString { position: 3 })
        );
        assert_eq!(
            params(r#"id="a", ID="b""#),
            Err(ProtocolError::DuplicateParam { name: "id".into() })
        );
        assert_eq!(
            params(r#"="a""#),
            Err(ProtocolError::MalformedAuthParam { position: 0 })
        );
        assert_eq!(
            params(r#"id="a", ü="b""#),
            Err(ProtocolError::MalformedAuthParam { position: 8 })
        );
        assert!(matches!(
            params(r#"d="\ud83d""#),
            Err(ProtocolError::UnpairedSurrogate { .. })
        ));
        assert!(matches!(
            params(r#"d="\ude00""#),
            Err(ProtocolError::UnpairedSurrogate { .. })
        ));
        assert!(matches!(
            params(r#"d="\ud83dx""#),
            Err(ProtocolError::UnpairedSurrogate { .. })
        ));
        assert!(matches!(
            params(r#"d="\ud83d\u0041""#),
            Err(ProtocolError::UnpairedSurrogate {
                code_unit: 0xd83d,
                ..
            })
        ));
    }

    #[test]
    fn finds_scheme_starts_outside_quotes_after_commas() {
        let v = r#"Payment a="x, Payment b", Basic realm="r", payment c="d",Payment e=f"#;
        let starts = find_scheme_starts(v);
        let names: Vec<&str> = starts.iter().map(|&s| &v[s..s + 9]).collect();
        assert_eq!(names, ["Payment a", "payment c", "Payment e"]);
        assert!(find_scheme_starts("xPayment a=b").is_empty());
        assert!(find_scheme_starts("Paymenta=b").is_empty());
        assert!(find_scheme_starts("Basic Payment a=b").is_empty());
    }

    #[test]
    fn writes_mppx_quoting() {
        let mut out = String::new();
        write_param(
            &mut out,
            "description",
            "LLM tokens \u{2014} \"quoted\" \\ backslash",
        );
        assert_eq!(
            out,
            r#"description="LLM tokens \u2014 \"quoted\" \\ backslash""#
        );
        let mut out = String::new();
        write_param(&mut out, "d", "é\r\n\u{1f600}");
        assert_eq!(out, r#"d="\u00e9\u000d\u000a\ud83d\ude00""#);
    }
}
