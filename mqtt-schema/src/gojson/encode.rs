//! Encoding with Go's `encoding/json` string escaping, as a `serde_json` formatter.
//!
//! serde_json already writes struct fields in declaration order, `BTreeMap` keys in byte order and
//! integers like Go; only string escaping differs, which [`GoFormatter`] overrides.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};

/// A `serde_json` formatter that escapes strings exactly as Go's `json.Marshal` does:
/// `<` `>` `&` U+2028 U+2029 as `\u003c` `\u003e` `\u0026` `\u2028` `\u2029`, control characters
/// as `\u00xx` (lowercase hex) except `\b \f \n \r \t`; `/` and DEL are written raw.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let bytes = fragment.as_bytes();
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            let escape: &[u8] = match ch {
                '<' => b"\\u003c",
                '>' => b"\\u003e",
                '&' => b"\\u0026",
                '\u{2028}' => b"\\u2028",
                '\u{2029}' => b"\\u2029",
                _ => continue,
            };
            writer.write_all(bytes.get(start..i).unwrap_or(&[]))?;
            writer.write_all(escape)?;
            start = i + ch.len_utf8();
        }
        writer.write_all(bytes.get(start..).unwrap_or(&[]))
    }

    fn write_char_escape<W>(&mut self, writer: &mut W, char_escape: CharEscape) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let short: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(c) => {
                let hi = HEX[usize::from(c >> 4)];
                let lo = HEX[usize::from(c & 0xF)];
                return writer.write_all(&[b'\\', b'u', b'0', b'0', hi, lo]);
            }
        };
        writer.write_all(short)
    }
}

/// Serialises `value` to the exact bytes Go's `json.Marshal` produces for the same logical value
/// (given Go-shaped types: field order, `Option` for pointers, `BTreeMap` for maps).
pub fn to_go_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Serialising our own types into a Vec cannot fail: no I/O errors, no non-string map keys.
    if value.serialize(&mut ser).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go() {
        let s = "<b>&amp;\"'\\/\u{2028}\u{2029}\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f} é 😀 \u{fffd}";
        let got = String::from_utf8(to_go_json(s)).unwrap();
        assert_eq!(
            got,
            "\"\\u003cb\\u003e\\u0026amp;\\\"'\\\\/\\u2028\\u2029\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f} é 😀 \u{fffd}\""
        );
    }
}
