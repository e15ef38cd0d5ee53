//! The checks edgecore applies to twin updates (edge/pkg/devicetwin/dtcommon/util.go and
//! `dttype.UnmarshalDeviceTwinUpdate`), with Go's exact error strings.

use crate::ErrorCode;
use crate::gojson::{self, DecodeError};
use crate::types::DeviceTwinUpdate;

/// The `metadata.type` edgecore gives a deleted twin.
pub const TYPE_DELETED: &str = "deleted";
/// Longest twin key edgecore accepts.
pub const MAX_TWIN_KEY_LEN: usize = 128;
/// Longest twin value edgecore accepts.
pub const MAX_TWIN_VALUE_LEN: usize = 512;

/// Whether `c` is in the twin charset `[a-zA-Z0-9-_.,:/@#]`.
pub fn is_twin_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ',' | ':' | '/' | '@' | '#')
}

fn charset_len(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(is_twin_char)
}

/// `dtcommon.ValidateTwinKey`: `^[a-zA-Z0-9-_.,:/@#]{1,128}$`.
pub fn validate_twin_key(key: &str) -> bool {
    charset_len(key, MAX_TWIN_KEY_LEN)
}

/// `dtcommon.ValidateTwinValue`: `^[a-zA-Z0-9-_.,:/@#]{1,512}$`.
pub fn validate_twin_value(value: &str) -> bool {
    charset_len(value, MAX_TWIN_VALUE_LEN)
}

/// Why `dtcommon.ValidateValue` rejects a value; `Display` is edgecore's reason string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueTypeError {
    /// `int`/`integer` value that `strconv.ParseInt(v, 10, 64)` rejects.
    #[error("the value is not int or integer")]
    NotInt,
    /// `float` value that `strconv.ParseFloat(v, 64)` rejects.
    #[error("the value is not float")]
    NotFloat,
    /// `boolean` value other than exactly `true` / `false`.
    #[error("the bool value must be true or false")]
    NotBool,
    /// A type name edgecore does not know (e.g. `double`, `bytes`, `Int`).
    #[error("the value type is not allowed")]
    TypeNotAllowed {
        /// The rejected type name.
        value_type: String,
    },
}

impl ValueTypeError {
    /// The stable code (a message edgecore refuses is not ours to classify further).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

/// `dtcommon.ValidateValue(valueType, value)` as of the golden vectors (v02): "", `string` and
/// `deleted` accept anything; `int`/`integer`, `float`, `boolean` must parse; others are refused.
pub fn validate_value(value_type: &str, value: &str) -> Result<(), ValueTypeError> {
    match value_type {
        "" | "string" | TYPE_DELETED => Ok(()),
        "int" | "integer" => value
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| ValueTypeError::NotInt),
        "float" => {
            if go_parse_float_ok(value) {
                Ok(())
            } else {
                Err(ValueTypeError::NotFloat)
            }
        }
        "boolean" => match value {
            "true" | "false" => Ok(()),
            _ => Err(ValueTypeError::NotBool),
        },
        other => Err(ValueTypeError::TypeNotAllowed {
            value_type: other.to_owned(),
        }),
    }
}

/// Why edgecore refuses a `twin/update` before touching any twin; published as a 400 result on
/// `$hw/events/device//twin/update/result`. `Display` is edgecore's reason string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinUpdateError {
    /// `json.Unmarshal` failed (Go's `ErrorUnmarshal`).
    #[error("Unmarshal update request body failed, please check the request")]
    Unmarshal(#[source] DecodeError),
    /// `"twin"` missing or null (`ErrorUpdate`).
    #[error("Update twin error, key:twin does not exist")]
    MissingTwin,
    /// A twin key outside the charset or too long (`ErrorKey`).
    #[error(
        "The key of twin must only include upper or lowercase letters, number, english, and special letter - _ . , : / @ # and the length of key should be less than 128 bytes"
    )]
    Key {
        /// The offending key.
        key: String,
    },
    /// A non-empty expected or actual value outside the charset or too long (`ErrorValue`).
    #[error(
        "The value of twin must only include upper or lowercase letters, number, english, and special letter - _ . , : / @ # and the length of value should be less than 512 bytes"
    )]
    Value {
        /// The twin whose value is refused.
        key: String,
    },
}

impl TwinUpdateError {
    /// The status edgecore puts in its error result.
    pub const STATUS: i64 = 400;

    /// edgecore's reason string (the same as `Display`).
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// The stable code: a refused update is an unexpected input, reported as `internal`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

/// The checks of `dttype.UnmarshalDeviceTwinUpdate` on an already decoded update. Go walks the
/// map in random order; this walks it in key order, so with several bad twins the error can name
/// a different twin than edgecore would (the reason string is the same per error kind only when
/// one kind is present).
pub fn validate_device_twin_update(update: &DeviceTwinUpdate) -> Result<(), TwinUpdateError> {
    let twins = update.twin.as_ref().ok_or(TwinUpdateError::MissingTwin)?;
    for (key, twin) in twins {
        if !validate_twin_key(key) {
            return Err(TwinUpdateError::Key { key: key.clone() });
        }
        let Some(twin) = twin else { continue };
        for side in [&twin.expected, &twin.actual] {
            let value = side.as_ref().and_then(|v| v.value.as_deref()).unwrap_or("");
            if !value.is_empty() && !validate_twin_value(value) {
                return Err(TwinUpdateError::Value { key: key.clone() });
            }
        }
    }
    Ok(())
}

/// `dttype.UnmarshalDeviceTwinUpdate`: decode as Go does, then validate.
pub fn unmarshal_device_twin_update(bytes: &[u8]) -> Result<DeviceTwinUpdate, TwinUpdateError> {
    let update: DeviceTwinUpdate = gojson::decode(bytes).map_err(TwinUpdateError::Unmarshal)?;
    validate_device_twin_update(&update)?;
    Ok(update)
}

/// Whether Go's `strconv.ParseFloat(s, 64)` returns no error: Go float syntax (decimal or hex
/// with mandatory `p` exponent, `_` separators per `underscoreOK`, `inf`/`infinity`/`nan`) and
/// no overflow to infinity.
pub(crate) fn go_parse_float_ok(s: &str) -> bool {
    if let Some(ok) = special(s) {
        return ok;
    }
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i = 1;
    }
    let hex =
        b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'x' | b'X')) && i + 2 < b.len();
    let mant_start = if hex { i + 2 } else { i };
    i = mant_start;
    let (mut saw_dot, mut saw_digits, mut underscores) = (false, false, false);
    let mut mant_end = i;
    while let Some(&c) = b.get(i) {
        match c {
            b'_' => underscores = true,
            b'.' if !saw_dot => saw_dot = true,
            b'0'..=b'9' => saw_digits = true,
            c if hex && c.is_ascii_hexdigit() => saw_digits = true,
            _ => break,
        }
        i += 1;
        mant_end = i;
    }
    if !saw_digits {
        return false;
    }
    let exp_char = if hex { b'p' } else { b'e' };
    let mut exp: i64 = 0;
    if b.get(i).map(u8::to_ascii_lowercase) == Some(exp_char) {
        i += 1;
        let mut neg = false;
        if let Some(&sign @ (b'+' | b'-')) = b.get(i) {
            neg = sign == b'-';
            i += 1;
        }
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        while let Some(&c) = b.get(i) {
            match c {
                b'_' => underscores = true,
                b'0'..=b'9' => exp = (exp * 10 + i64::from(c - b'0')).min(1_000_000),
                _ => break,
            }
            i += 1;
        }
        if neg {
            exp = -exp;
        }
    } else if hex {
        return false;
    }
    if i != b.len() || (underscores && !underscore_ok(s)) {
        return false;
    }
    let value = if hex {
        hex_value(b.get(mant_start..mant_end).unwrap_or(&[]), exp)
    } else {
        s.replace('_', "").parse::<f64>().unwrap_or(f64::INFINITY)
    };
    value.is_finite()
}

/// Go's `special`: `[+-]inf`, `[+-]infinity`, `nan` (case-insensitive, whole string).
fn special(s: &str) -> Option<bool> {
    let lower = s.to_ascii_lowercase();
    let unsigned = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    if unsigned == "inf" || unsigned == "infinity" || lower == "nan" {
        return Some(true);
    }
    None
}

/// Go's `underscoreOK`: underscores only between digits (or after a base prefix).
fn underscore_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i = 1;
    }
    let mut saw = b'^';
    let mut hex = false;
    if b.get(i) == Some(&b'0')
        && matches!(
            b.get(i + 1).map(u8::to_ascii_lowercase),
            Some(b'b' | b'o' | b'x')
        )
    {
        hex = b.get(i + 1).map(u8::to_ascii_lowercase) == Some(b'x');
        i += 2;
        saw = b'0';
    }
    while let Some(&c) = b.get(i) {
        i += 1;
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
            continue;
        }
        if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
            continue;
        }
        if saw == b'_' {
            return false;
        }
        saw = b'!';
    }
    saw != b'_'
}

/// Approximate magnitude of a hex float mantissa `m` (digits, optional dot, underscores) times
/// 2^exp; used only to detect overflow.
fn hex_value(m: &[u8], exp: i64) -> f64 {
    let mut mant: f64 = 0.0;
    let mut frac_digits: i64 = 0;
    let mut after_dot = false;
    for &c in m {
        match c {
            b'.' => after_dot = true,
            b'_' => {}
            c => {
                let d = char::from(c).to_digit(16).unwrap_or(0);
                mant = mant * 16.0 + f64::from(d);
                if after_dot {
                    frac_digits += 1;
                }
            }
        }
    }
    let e = (exp - 4 * frac_digits).clamp(-5000, 5000);
    let e = i32::try_from(e).unwrap_or(0);
    mant * 2f64.powi(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_follow_go() {
        for ok in [
            "1",
            "-5",
            "+5",
            "1e3",
            "1_000",
            ".5",
            "5.",
            "NaN",
            "inf",
            "-Infinity",
            "0x1p-2",
            "0x1.8p1",
            "1e-400",
        ] {
            assert!(go_parse_float_ok(ok), "{ok}");
        }
        for bad in [
            "", " 1", "0x1A", "1e", "1__0", "_1", "1_", "+nan", "infin", "1e400", "0x1p2000",
            "abc", "1.2.3", "0x",
        ] {
            assert!(!go_parse_float_ok(bad), "{bad}");
        }
    }
}
