//! Firmware images as a list of (address, bytes) segments, from the `twinflash-image` crate: the
//! same parser `twinflash push` runs, so the flasher refuses exactly what push refuses.
//!
//! Every backend that writes memory itself (the simulated device) uses [`load`]; probe-rs has its own loaders.

use std::path::Path;

pub use twinflash_image::{FirmwareFormat, Image, ImageError, Segment, parse};

use crate::FlashError;

/// Reads and parses an image file. `base_address` places a BIN (required for it).
pub fn load(
    path: &Path,
    format: FirmwareFormat,
    base_address: Option<u64>,
) -> Result<Image, FlashError> {
    let bytes = std::fs::read(path)
        .map_err(|e| FlashError::io(format!("reading image {}", path.display()), e))?;
    Ok(parse(&bytes, format, base_address)?)
}
