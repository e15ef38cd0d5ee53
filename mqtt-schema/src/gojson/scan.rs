//! Byte-level JSON scanning with the rules of Go's `encoding/json`: a validity check run over the
//! whole input before anything is decoded (as `json.Unmarshal` does), and a cursor that reads the
//! already validated input (string unquoting with Go's U+FFFD replacement, skipping, iteration).

use super::DecodeError;

/// Go's maximum nesting depth (`maxNestingDepth` in encoding/json/scanner.go).
pub(crate) const MAX_DEPTH: usize = 10_000;

/// The kind of the JSON value at the cursor (an implementation detail of [`super::GoDecode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    /// The word Go uses for this kind in an `UnmarshalTypeError`.
    pub(crate) fn go_name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "bool",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn syntax(offset: usize, reason: &'static str) -> DecodeError {
    DecodeError::Syntax { offset, reason }
}

#[derive(Clone, Copy)]
enum Ctx {
    Array,
    Object,
}

/// Checks that `b` is exactly one JSON value (with optional surrounding whitespace), as Go's
/// `checkValid` does. Iterative, so deep nesting cannot overflow the stack.
pub(crate) fn check_valid(b: &[u8]) -> Result<(), DecodeError> {
    let mut stack: Vec<Ctx> = Vec::new();
    let mut i = skip_ws(b, 0);
    'value: loop {
        // A value starts at `i`.
        match b.get(i).copied() {
            Some(b'{') => {
                if stack.len() >= MAX_DEPTH {
                    return Err(syntax(i, "exceeded max depth"));
                }
                stack.push(Ctx::Object);
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    stack.pop();
                    i += 1;
                } else {
                    i = scan_key(b, i)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                if stack.len() >= MAX_DEPTH {
                    return Err(syntax(i, "exceeded max depth"));
                }
                stack.push(Ctx::Array);
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    stack.pop();
                    i += 1;
                } else {
                    continue 'value;
                }
            }
            Some(b'"') => i = scan_string(b, i)?,
            Some(b't') => i = scan_literal(b, i, b"true")?,
            Some(b'f') => i = scan_literal(b, i, b"false")?,
            Some(b'n') => i = scan_literal(b, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => i = scan_number(b, i)?,
            Some(_) => {
                return Err(syntax(
                    i,
                    "invalid character looking for beginning of value",
                ));
            }
            None => return Err(syntax(i, "unexpected end of JSON input")),
        }
        // After a value: close containers or move to the next element.
        loop {
            i = skip_ws(b, i);
            match stack.last() {
                None => {
                    if i == b.len() {
                        return Ok(());
                    }
                    return Err(syntax(i, "invalid character after top-level value"));
                }
                Some(Ctx::Array) => match b.get(i) {
                    Some(b',') => {
                        i = skip_ws(b, i + 1);
                        continue 'value;
                    }
                    Some(b']') => {
                        stack.pop();
                        i += 1;
                    }
                    Some(_) => return Err(syntax(i, "invalid character after array element")),
                    None => return Err(syntax(i, "unexpected end of JSON input")),
                },
                Some(Ctx::Object) => match b.get(i) {
                    Some(b',') => {
                        i = scan_key(b, skip_ws(b, i + 1))?;
                        continue 'value;
                    }
                    Some(b'}') => {
                        stack.pop();
                        i += 1;
                    }
                    Some(_) => {
                        return Err(syntax(i, "invalid character after object key:value pair"));
                    }
                    None => return Err(syntax(i, "unexpected end of JSON input")),
                },
            }
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| is_ws(*c)) {
        i += 1;
    }
    i
}

/// Scans `"key"` `:` and the whitespace after it; returns the index of the value.
fn scan_key(b: &[u8], i: usize) -> Result<usize, DecodeError> {
    if b.get(i) != Some(&b'"') {
        return Err(syntax(
            i,
            "invalid character looking for beginning of object key string",
        ));
    }
    let i = skip_ws(b, scan_string(b, i)?);
    if b.get(i) != Some(&b':') {
        return Err(syntax(i, "invalid character after object key"));
    }
    Ok(skip_ws(b, i + 1))
}

/// Scans a string starting at the opening quote; returns the index after the closing quote.
fn scan_string(b: &[u8], start: usize) -> Result<usize, DecodeError> {
    let mut i = start + 1;
    loop {
        match b.get(i).copied() {
            None => return Err(syntax(i, "unexpected end of JSON input")),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match b.get(i + 1).copied() {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = b.get(i + 2..i + 6).unwrap_or(&[]);
                    if hex.len() != 4 || !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(syntax(
                            i,
                            "invalid character in \\u hexadecimal character escape",
                        ));
                    }
                    i += 6;
                }
                _ => return Err(syntax(i, "invalid character in string escape code")),
            },
            Some(c) if c < 0x20 => return Err(syntax(i, "invalid character in string literal")),
            Some(_) => i += 1,
        }
    }
}

fn scan_literal(b: &[u8], i: usize, lit: &[u8]) -> Result<usize, DecodeError> {
    if b.get(i..i + lit.len()) == Some(lit) {
        Ok(i + lit.len())
    } else {
        Err(syntax(i, "invalid character in literal"))
    }
}

fn scan_digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn scan_number(b: &[u8], mut i: usize) -> Result<usize, DecodeError> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i).copied() {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = scan_digits(b, i),
        _ => return Err(syntax(i, "invalid character in numeric literal")),
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            return Err(syntax(
                i,
                "invalid character after decimal point in numeric literal",
            ));
        }
        i = scan_digits(b, i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            return Err(syntax(
                i,
                "invalid character in exponent of numeric literal",
            ));
        }
        i = scan_digits(b, i);
    }
    Ok(i)
}

/// A cursor over input that [`check_valid`] accepted. Every method is total: on input that is not
/// valid it returns neutral values instead of panicking.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b, i: 0 }
    }

    fn ws(&mut self) {
        self.i = skip_ws(self.b, self.i);
    }

    /// Kind of the value at the cursor (after whitespace).
    pub(crate) fn kind(&mut self) -> Kind {
        self.ws();
        match self.b.get(self.i).copied() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') | None => Kind::Null,
            Some(_) => Kind::Number,
        }
    }

    /// Reads a literal (number, true, false, null) and returns its bytes.
    pub(crate) fn literal(&mut self) -> &'a [u8] {
        self.ws();
        let start = self.i;
        while self
            .b
            .get(self.i)
            .is_some_and(|c| !is_ws(*c) && !matches!(c, b',' | b']' | b'}' | b':'))
        {
            self.i += 1;
        }
        self.b.get(start..self.i).unwrap_or(&[])
    }

    /// Reads a string value and unquotes it as Go does.
    pub(crate) fn string(&mut self) -> String {
        self.ws();
        let start = self.i;
        let end = scan_string(self.b, start).unwrap_or(self.b.len());
        self.i = end;
        let inner = self.b.get(start + 1..end.saturating_sub(1)).unwrap_or(&[]);
        unquote(inner)
    }

    /// Skips one value of any kind.
    pub(crate) fn skip(&mut self) {
        match self.kind() {
            Kind::String => {
                self.i = scan_string(self.b, self.i).unwrap_or(self.b.len());
            }
            Kind::Array | Kind::Object => {
                let mut depth = 0usize;
                while let Some(c) = self.b.get(self.i).copied() {
                    match c {
                        b'"' => {
                            self.i = scan_string(self.b, self.i).unwrap_or(self.b.len());
                            continue;
                        }
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                self.i += 1;
                                return;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                self.literal();
            }
        }
    }

    /// Consumes `{` or `[`.
    pub(crate) fn open(&mut self) {
        self.ws();
        self.i += 1;
    }

    /// Next key of an object opened with [`Reader::open`]; `None` after the closing `}`.
    pub(crate) fn next_key(&mut self) -> Option<String> {
        self.ws();
        match self.b.get(self.i).copied() {
            Some(b',') => {
                self.i += 1;
                self.ws();
            }
            Some(b'"') => {}
            _ => {
                self.i += 1;
                return None;
            }
        }
        if self.b.get(self.i) != Some(&b'"') {
            self.i = self.b.len();
            return None;
        }
        let key = self.string();
        self.ws();
        self.i += 1; // ':'
        Some(key)
    }

    /// Whether an array opened with [`Reader::open`] has another element; consumes `]` at the end.
    pub(crate) fn next_element(&mut self) -> bool {
        self.ws();
        match self.b.get(self.i).copied() {
            Some(b',') => {
                self.i += 1;
                true
            }
            Some(b']') | None => {
                self.i += 1;
                false
            }
            Some(_) => true,
        }
    }
}

/// Go's `unquoteBytes`: resolves escapes, turns lone surrogates and every invalid UTF-8 byte into
/// U+FFFD (one per byte, like `utf8.DecodeRune`).
pub(crate) fn unquote(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        if c == b'\\' {
            match s.get(i + 1).copied() {
                Some(b'b') => out.push('\u{8}'),
                Some(b'f') => out.push('\u{c}'),
                Some(b'n') => out.push('\n'),
                Some(b'r') => out.push('\r'),
                Some(b't') => out.push('\t'),
                Some(b'u') => {
                    let r = hex4(s, i + 2).unwrap_or(0xFFFD);
                    if (0xD800..0xE000).contains(&r) {
                        let low = if s.get(i + 6) == Some(&b'\\') && s.get(i + 7) == Some(&b'u') {
                            hex4(s, i + 8)
                        } else {
                            None
                        };
                        match low {
                            Some(lo)
                                if (0xD800..0xDC00).contains(&r)
                                    && (0xDC00..0xE000).contains(&lo) =>
                            {
                                let cp = 0x10000 + ((r - 0xD800) << 10) + (lo - 0xDC00);
                                out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                                i += 12;
                                continue;
                            }
                            _ => out.push('\u{FFFD}'),
                        }
                    } else {
                        out.push(char::from_u32(r).unwrap_or('\u{FFFD}'));
                    }
                    i += 6;
                    continue;
                }
                Some(other) => out.push(char::from(other)),
                None => {}
            }
            i += 2;
        } else if c < 0x80 {
            out.push(char::from(c));
            i += 1;
        } else {
            let len = match c {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => 1,
            };
            match s
                .get(i..i + len)
                .and_then(|seq| std::str::from_utf8(seq).ok())
            {
                Some(ch) if len > 1 => {
                    out.push_str(ch);
                    i += len;
                }
                _ => {
                    out.push('\u{FFFD}');
                    i += 1;
                }
            }
        }
    }
    out
}

fn hex4(s: &[u8], at: usize) -> Option<u32> {
    let h = s.get(at..at + 4)?;
    let t = std::str::from_utf8(h).ok()?;
    u32::from_str_radix(t, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_follows_go() {
        for ok in [
            &b"{}"[..],
            b" {\"a\":[1,-0,2.5e-3,true,false,null,\"x\"]} \n",
            b"-0",
            b"\"\xff\"",
        ] {
            assert!(check_valid(ok).is_ok(), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"{} x",
            b"\xEF\xBB\xBF{}",
            b"01",
            b"1.",
            b"+1",
            b"{\"a\" 1}",
            b"[1,]",
            b"\"\x01\"",
            b"\"\\x\"",
            b"tru",
        ] {
            assert!(
                check_valid(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn depth_limit_is_go_s() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(check_valid(ok.as_bytes()).is_ok());
        let bad = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(check_valid(bad.as_bytes()).is_err());
    }

    #[test]
    fn unquote_replaces_like_go() {
        assert_eq!(unquote(b"a\\u003cb"), "a<b");
        assert_eq!(unquote(b"\\ud83d\\ude00"), "\u{1F600}");
        assert_eq!(unquote(b"\\ud83dx"), "\u{FFFD}x");
        assert_eq!(unquote(b"\\ude00\\ud83d"), "\u{FFFD}\u{FFFD}");
        // A truncated 3-byte sequence gives one U+FFFD per byte, as utf8.DecodeRune does.
        assert_eq!(unquote(b"\xe2\x82z"), "\u{FFFD}\u{FFFD}z");
        assert_eq!(unquote(b"\xed\xa0\x80"), "\u{FFFD}\u{FFFD}\u{FFFD}");
    }
}
