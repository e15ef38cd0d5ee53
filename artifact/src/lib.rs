//! The twinflash firmware artifact: format, push and a resumable, verified fetcher.
//!
//! One library defines the format (media types, annotations, validation) for every user of it:
//! the operator CLI pushes with it, the edge agent and `twinflash pull` fetch with it. Firmware
//! files are parsed by `twinflash-image`, the same parser the flasher runs.

pub mod auth;
pub mod error;
pub mod fetch;
pub mod format;
mod http;
pub mod inspect;
pub mod manifest;
pub mod push;
pub mod registry;
pub mod signature;

pub use auth::Credentials;
pub use error::FetchError;
pub use fetch::{FetchConfig, FetchEvent, Fetched, Fetcher, Mirror, RetryPolicy, parse_pinned};
pub use format::{FirmwareFormat, ImageError};
pub use inspect::{Inspected, inspect};
pub use manifest::FirmwareArtifact;
pub use oci_client::Reference;
pub use push::{PushError, PushRequest, Pushed, push};
pub use registry::{Timeouts, TlsOptions};
