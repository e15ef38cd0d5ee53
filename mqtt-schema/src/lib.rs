//! KubeEdge device-twin wire format and twinflash's firmware twin conventions.
//!
//! Wire-only: no I/O, no async. Encodes byte-identically to Go's `encoding/json`.

mod code;

pub use code::{ErrorCode, UnknownErrorCode};
