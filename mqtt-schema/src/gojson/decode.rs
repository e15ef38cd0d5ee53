//! Decoding into Go-shaped types with the semantics of Go's `json.Unmarshal`: decode INTO the
//! existing value (so duplicate keys merge objects), keys matched case-insensitively with Unicode
//! simple folding, `null` ignored for non-pointers, first type error kept while decoding goes on.

use std::collections::BTreeMap;

use super::DecodeError;
use super::scan::{Kind, Reader, check_valid};

/// The decoding state passed to [`GoDecode`] implementations. Only this crate can create one.
pub struct Decoder<'a> {
    r: Reader<'a>,
    err: Option<DecodeError>,
    field: &'static str,
}

impl<'a> Decoder<'a> {
    pub(crate) fn kind(&mut self) -> Kind {
        self.r.kind()
    }

    pub(crate) fn skip(&mut self) {
        self.r.skip();
    }

    /// Records Go's `UnmarshalTypeError` (only the first one is kept) and skips the value.
    pub(crate) fn type_error(&mut self, expected: &'static str) {
        let kind = self.r.kind();
        let found = if kind == Kind::Number {
            let lit = self.r.literal();
            format!("number {}", String::from_utf8_lossy(lit))
        } else {
            self.r.skip();
            kind.go_name().to_owned()
        };
        if self.err.is_none() {
            self.err = Some(DecodeError::Type {
                found,
                field: self.field,
                expected,
            });
        }
    }

    pub(crate) fn string(&mut self) -> String {
        self.r.string()
    }

    pub(crate) fn literal(&mut self) -> &'a [u8] {
        self.r.literal()
    }

    pub(crate) fn open(&mut self) {
        self.r.open();
    }

    pub(crate) fn next_key(&mut self) -> Option<String> {
        self.r.next_key()
    }

    pub(crate) fn next_element(&mut self) -> bool {
        self.r.next_element()
    }

    /// Decodes the value at the cursor into `target` with `field` as the error context.
    pub(crate) fn field<T: GoDecode>(&mut self, field: &'static str, target: &mut T) {
        let outer = std::mem::replace(&mut self.field, field);
        target.go_decode(self);
        self.field = outer;
    }
}

/// A type that decodes like the Go type it mirrors. Implemented for every message of this crate.
pub trait GoDecode: Default {
    /// The Go type name used in type errors.
    const GO_TYPE: &'static str;

    /// Whether a Go pointer to this type is allocated for a JSON value of `kind` before decoding.
    /// Go's `indirect` allocates for every non-null value; maps and slices are not pointers and
    /// are only created for an object or array.
    #[doc(hidden)]
    fn allocates_for(kind: Kind) -> bool {
        let _ = kind;
        true
    }

    /// Decodes the value at the decoder's cursor into `self` (merging, as Go does).
    #[doc(hidden)]
    fn go_decode(&mut self, d: &mut Decoder<'_>);
}

/// Decodes `bytes` as Go would, returning the value in the state Go leaves it in and the error Go
/// returns, if any (a syntax error leaves the value untouched, a type error does not stop decoding).
pub fn decode_partial<T: GoDecode>(bytes: &[u8]) -> (T, Option<DecodeError>) {
    let mut value = T::default();
    if let Err(e) = check_valid(bytes) {
        return (value, Some(e));
    }
    let mut d = Decoder {
        r: Reader::new(bytes),
        err: None,
        field: "",
    };
    value.go_decode(&mut d);
    (value, d.err)
}

/// Decodes `bytes` as Go's `json.Unmarshal` would; any error Go reports is an error here.
pub fn decode<T: GoDecode>(bytes: &[u8]) -> Result<T, DecodeError> {
    match decode_partial(bytes) {
        (value, None) => Ok(value),
        (_, Some(e)) => Err(e),
    }
}

/// Go's field-name matching: exact match first, then Unicode simple case folding (`foldName`).
/// Field names are ASCII; the only non-ASCII runes folding onto ASCII letters are U+017F (ſ, to
/// `s`) and U+212A (Kelvin sign, to `k`).
pub(crate) fn match_field(names: &[&'static str], key: &str) -> Option<&'static str> {
    if let Some(exact) = names.iter().find(|n| **n == key) {
        return Some(exact);
    }
    names.iter().copied().find(|n| folds_equal(n, key))
}

fn folds_equal(name: &str, key: &str) -> bool {
    let mut k = key.chars();
    for nb in name.bytes() {
        let Some(kc) = k.next() else { return false };
        let kc = match kc {
            '\u{17F}' => 's',
            '\u{212A}' => 'k',
            c if c.is_ascii() => c.to_ascii_lowercase(),
            _ => return false,
        };
        if kc != char::from(nb.to_ascii_lowercase()) {
            return false;
        }
    }
    k.next().is_none()
}

impl GoDecode for String {
    const GO_TYPE: &'static str = "string";
    fn go_decode(&mut self, d: &mut Decoder<'_>) {
        match d.kind() {
            Kind::String => *self = d.string(),
            Kind::Null => d.skip(),
            _ => d.type_error(Self::GO_TYPE),
        }
    }
}

impl GoDecode for i64 {
    const GO_TYPE: &'static str = "int64";
    fn go_decode(&mut self, d: &mut Decoder<'_>) {
        match d.kind() {
            Kind::Number => {
                let lit = d.r.literal();
                // strconv.ParseInt(s, 10, 64): accepts "-0", rejects fractions, exponents, overflow.
                match std::str::from_utf8(lit)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(n) => *self = n,
                    None => {
                        if d.err.is_none() {
                            d.err = Some(DecodeError::Type {
                                found: format!("number {}", String::from_utf8_lossy(lit)),
                                field: d.field,
                                expected: Self::GO_TYPE,
                            });
                        }
                    }
                }
            }
            Kind::Null => d.skip(),
            _ => d.type_error(Self::GO_TYPE),
        }
    }
}

impl GoDecode for bool {
    const GO_TYPE: &'static str = "bool";
    fn go_decode(&mut self, d: &mut Decoder<'_>) {
        match d.kind() {
            Kind::Bool => *self = d.literal() == b"true",
            Kind::Null => d.skip(),
            _ => d.type_error(Self::GO_TYPE),
        }
    }
}

/// A Go pointer: `null` sets it to nil, anything else allocates (if needed) and decodes into it.
impl<T: GoDecode> GoDecode for Option<T> {
    const GO_TYPE: &'static str = T::GO_TYPE;
    fn go_decode(&mut self, d: &mut Decoder<'_>) {
        let kind = d.kind();
        if kind == Kind::Null {
            d.skip();
            *self = None;
        } else if T::allocates_for(kind) || self.is_some() {
            self.get_or_insert_with(T::default).go_decode(d);
        } else {
            d.type_error(T::GO_TYPE);
        }
    }
}

/// A Go map: `null` empties it (nil), an object adds entries to it, each decoded into a fresh zero
/// value (entries do not merge; the last duplicate wins).
impl<V: GoDecode> GoDecode for BTreeMap<String, V> {
    const GO_TYPE: &'static str = "map";
    fn allocates_for(kind: Kind) -> bool {
        kind == Kind::Object
    }
    fn go_decode(&mut self, d: &mut Decoder<'_>) {
        match d.kind() {
            Kind::Object => {
                d.open();
                while let Some(key) = d.next_key() {
                    let mut v = V::default();
                    v.go_decode(d);
                    self.insert(key, v);
                }
            }
            Kind::Null => {
                d.skip();
                self.clear();
            }
            _ => d.type_error(Self::GO_TYPE),
        }
    }
}

/// A Go slice: an array decodes into the existing elements first, then appends, then truncates.
impl<T: GoDecode> GoDecode for Vec<T> {
    const GO_TYPE: &'static str = "slice";
    fn allocates_for(kind: Kind) -> bool {
        kind == Kind::Array
    }
    fn go_decode(&mut self, d: &mut Decoder<'_>) {
        match d.kind() {
            Kind::Array => {
                d.open();
                let mut i = 0;
                while d.next_element() {
                    if i >= self.len() {
                        self.push(T::default());
                    }
                    if let Some(slot) = self.get_mut(i) {
                        slot.go_decode(d);
                    }
                    i += 1;
                }
                self.truncate(i);
            }
            Kind::Null => {
                d.skip();
                self.clear();
            }
            _ => d.type_error(Self::GO_TYPE),
        }
    }
}

/// Implements [`GoDecode`] for a struct from its JSON field names (in Go declaration order) and
/// the Rust places they decode into.
macro_rules! go_struct {
    ($ty:ty { $($name:literal => $($place:ident).+),* $(,)? }) => {
        impl $crate::gojson::GoDecode for $ty {
            const GO_TYPE: &'static str = stringify!($ty);
            fn go_decode(&mut self, d: &mut $crate::gojson::Decoder<'_>) {
                use $crate::gojson::Kind;
                const NAMES: &[&str] = &[$($name),*];
                match d.kind() {
                    Kind::Object => {
                        d.open();
                        while let Some(key) = d.next_key() {
                            match $crate::gojson::match_field(NAMES, &key) {
                                $(Some($name) => d.field($name, &mut self.$($place).+),)*
                                _ => d.skip(),
                            }
                        }
                    }
                    Kind::Null => d.skip(),
                    _ => d.type_error(Self::GO_TYPE),
                }
            }
        }
    };
}
pub(crate) use go_struct;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_go() {
        let names = ["timestamp", "event_id"];
        assert_eq!(match_field(&names, "TIMESTAMP"), Some("timestamp"));
        assert_eq!(match_field(&names, "time\u{17F}tamp"), Some("timestamp"));
        assert_eq!(match_field(&names, "Event_ID"), Some("event_id"));
        assert_eq!(match_field(&names, "eventid"), None);
        assert_eq!(match_field(&names, "timestampx"), None);
        assert_eq!(match_field(&["kind"], "\u{212A}ind"), Some("kind"));
        assert_eq!(match_field(&["kind"], "k\u{131}nd"), None);
    }

    #[test]
    fn ints_follow_parse_int() {
        assert_eq!(decode::<i64>(b"-0").unwrap(), 0);
        assert!(decode::<i64>(b"1.0").is_err());
        assert!(decode::<i64>(b"1e3").is_err());
        assert!(decode::<i64>(b"9223372036854775808").is_err());
        assert_eq!(decode::<i64>(b"-9223372036854775808").unwrap(), i64::MIN);
    }
}
