//! Go `encoding/json` compatibility: byte-identical encoding ([`to_go_json`]) and decoding with
//! Go's semantics ([`decode`], [`decode_partial`]) for the Go-shaped types of this crate.

mod decode;
mod encode;
mod scan;

pub use decode::{Decoder, GoDecode, decode, decode_partial};
pub(crate) use decode::{go_struct, match_field};
pub use encode::{GoFormatter, to_go_json};
#[doc(hidden)]
pub use scan::Kind;

use crate::ErrorCode;

/// Why Go's `json.Unmarshal` would reject a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a single well-formed JSON value (includes trailing data, a byte-order mark, and
    /// nesting deeper than Go's limit of 10000).
    #[error("invalid JSON at byte {offset}: {reason}")]
    Syntax {
        /// Byte offset of the problem.
        offset: usize,
        /// Go's description of the problem.
        reason: &'static str,
    },
    /// A JSON value of the wrong type for a field (Go's `UnmarshalTypeError`).
    #[error("cannot unmarshal {found} into field {field:?} of Go type {expected}")]
    Type {
        /// What the JSON held, e.g. `string` or `number 1.5`.
        found: String,
        /// The JSON name of the innermost field ("" at the top level).
        field: &'static str,
        /// The Go type of the field.
        expected: &'static str,
    },
}

impl DecodeError {
    /// The stable code: `invalid-message`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidMessage
    }
}
