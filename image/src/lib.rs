//! Firmware images, in one place for every user: the formats twinflash carries ([`FirmwareFormat`]),
//! detection from content ([`sniff`]) and the one parser ([`parse`]) whose verdict `twinflash push`
//! and the flasher share, so both accept and refuse the same files with the same error code.
//!
//! No I/O (it reads only the bytes it is given), no async; its dependencies are `object` and `ihex`,
//! which the edge agent carries anyway. Test fixtures are behind the `test-support` feature.

mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod fixtures;
mod parse;
mod uf2;

use std::fmt;
use std::str::FromStr;

pub use error::ImageError;
pub use parse::{
    ElfLoad, Image, MAX_SEGMENTS, Segment, check_bin, elf_layout, parse, stream_data, stream_layout,
};

/// Bytes [`sniff`] wants to see (fewer when the file is shorter): one UF2 block.
pub const SNIFF_LEN: usize = uf2::BLOCK;

const ELF_MAGIC: &[u8] = b"\x7fELF";
const MEDIA_TYPE_PREFIX: &str = "application/vnd.twinflash.firmware.";

/// The firmware file formats twinflash carries, one layer media type each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirmwareFormat {
    /// An ELF executable; its loadable segments at their physical addresses.
    Elf,
    /// Intel HEX records.
    Ihex,
    /// A raw binary, placed at a base address.
    Bin,
    /// Microsoft's UF2 block format; its main-flash blocks.
    Uf2,
}

impl FirmwareFormat {
    /// Every format, in wire order.
    pub const ALL: [FirmwareFormat; 4] = [Self::Elf, Self::Ihex, Self::Bin, Self::Uf2];

    /// Short name, as on the command line and in `{format}`: `elf`, `ihex`, `bin`, `uf2`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Elf => "elf",
            Self::Ihex => "ihex",
            Self::Bin => "bin",
            Self::Uf2 => "uf2",
        }
    }

    /// The OCI layer media type, e.g. `application/vnd.twinflash.firmware.elf`.
    pub const fn media_type(self) -> &'static str {
        match self {
            Self::Elf => "application/vnd.twinflash.firmware.elf",
            Self::Ihex => "application/vnd.twinflash.firmware.ihex",
            Self::Bin => "application/vnd.twinflash.firmware.bin",
            Self::Uf2 => "application/vnd.twinflash.firmware.uf2",
        }
    }

    /// The format whose layer media type is exactly `media_type`.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.media_type() == media_type)
    }
}

impl fmt::Display for FirmwareFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a short name (case-insensitive, `hex` for `ihex`) or a layer media type.
impl FromStr for FirmwareFormat {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let name = lower.strip_prefix(MEDIA_TYPE_PREFIX).unwrap_or(&lower);
        match name {
            "elf" => Ok(Self::Elf),
            "ihex" | "hex" => Ok(Self::Ihex),
            "bin" => Ok(Self::Bin),
            "uf2" => Ok(Self::Uf2),
            _ => Err(ImageError::UnknownFormat(s.to_owned())),
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for FirmwareFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Guesses the format from the first bytes of a file ([`SNIFF_LEN`] when the file has them).
/// `None` means no structured format was recognised: a raw binary.
pub fn sniff(head: &[u8]) -> Option<FirmwareFormat> {
    if head.starts_with(ELF_MAGIC) {
        return Some(FirmwareFormat::Elf);
    }
    // Start magics are enough to claim the format: parsing then names what is broken.
    if uf2::has_start_magic(head) {
        return Some(FirmwareFormat::Uf2);
    }
    let first_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    if let Some(record) = first_line.strip_prefix(b":")
        && record.len() >= 10
        && record.iter().all(u8::is_ascii_hexdigit)
    {
        return Some(FirmwareFormat::Ihex);
    }
    None
}

/// Parses a base address given as hex (`0x08000000` or `08000000`).
pub fn parse_base_address(s: &str) -> Result<u64, ImageError> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || digits.len() > 16 {
        return Err(ImageError::BadBaseAddress(s.to_owned()));
    }
    u64::from_str_radix(digits, 16).map_err(|_| ImageError::BadBaseAddress(s.to_owned()))
}

/// Formats a base address as the annotation wants it: `0x` and lower-case hex, 8 digits at least.
pub fn format_base_address(address: u64) -> String {
    format!("{address:#010x}")
}

#[cfg(test)]
mod tests;
