//! Firmware images as a list of (address, bytes) segments: ELF, Intel HEX, BIN and UF2.
//!
//! Every backend that writes memory itself (the simulated device) uses this; probe-rs has its own loaders.

mod uf2;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use object::read::elf::{FileHeader, ProgramHeader};

use crate::FlashError;

/// A firmware file format (`application/vnd.twinflash.firmware.<fmt>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirmwareFormat {
    /// An ELF executable; its loadable segments at their physical addresses.
    Elf,
    /// Intel HEX.
    Ihex,
    /// A raw binary, placed at a base address.
    Bin,
    /// Microsoft's UF2 block format.
    Uf2,
}

impl FirmwareFormat {
    /// Every format, in wire order.
    pub const ALL: [FirmwareFormat; 4] = [
        FirmwareFormat::Elf,
        FirmwareFormat::Ihex,
        FirmwareFormat::Bin,
        FirmwareFormat::Uf2,
    ];

    /// The wire string: `elf`, `ihex`, `bin`, `uf2`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FirmwareFormat::Elf => "elf",
            FirmwareFormat::Ihex => "ihex",
            FirmwareFormat::Bin => "bin",
            FirmwareFormat::Uf2 => "uf2",
        }
    }

    /// The OCI layer media type, e.g. `application/vnd.twinflash.firmware.elf`.
    pub fn media_type(self) -> String {
        format!("application/vnd.twinflash.firmware.{}", self.as_str())
    }
}

impl fmt::Display for FirmwareFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not a known firmware format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown firmware format {0:?} (expected elf, ihex, bin or uf2)")]
pub struct UnknownFormat(pub String);

impl FromStr for FirmwareFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let lower = lower
            .strip_prefix("application/vnd.twinflash.firmware.")
            .unwrap_or(&lower);
        match lower {
            "elf" => Ok(FirmwareFormat::Elf),
            "ihex" | "hex" => Ok(FirmwareFormat::Ihex),
            "bin" => Ok(FirmwareFormat::Bin),
            "uf2" => Ok(FirmwareFormat::Uf2),
            _ => Err(UnknownFormat(s.to_owned())),
        }
    }
}

/// Contiguous bytes at an absolute address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The first address.
    pub address: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Segment {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.address.saturating_add(self.data.len() as u64)
    }
}

/// A parsed image: non-overlapping segments sorted by address, adjacent ones merged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// The segments.
    pub segments: Vec<Segment>,
}

impl Image {
    /// Total number of bytes in all segments.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.data.len() as u64).sum()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sort, reject overlaps, merge adjacent segments and drop empty ones.
    pub fn from_segments(
        format: FirmwareFormat,
        mut segments: Vec<Segment>,
    ) -> Result<Image, FlashError> {
        segments.retain(|s| !s.data.is_empty());
        segments.sort_by_key(|s| s.address);
        let mut out: Vec<Segment> = Vec::with_capacity(segments.len());
        for seg in segments {
            if seg.address.checked_add(seg.data.len() as u64).is_none() {
                return Err(FlashError::unsupported(
                    format,
                    "segment wraps the address space",
                ));
            }
            match out.last_mut() {
                Some(last) if seg.address < last.end() => {
                    return Err(FlashError::unsupported(
                        format,
                        format!(
                            "overlapping data at {:#x} (previous segment ends at {:#x})",
                            seg.address,
                            last.end()
                        ),
                    ));
                }
                Some(last) if seg.address == last.end() => last.data.extend_from_slice(&seg.data),
                _ => out.push(seg),
            }
        }
        Ok(Image { segments: out })
    }
}

/// Read and parse an image file. `base_address` places a BIN (default `default_base`).
pub fn load(
    path: &Path,
    format: FirmwareFormat,
    base_address: Option<u64>,
    default_base: u64,
) -> Result<Image, FlashError> {
    let bytes = std::fs::read(path)
        .map_err(|e| FlashError::io(format!("reading image {}", path.display()), e))?;
    parse(&bytes, format, base_address.unwrap_or(default_base))
}

/// Parse image bytes; `base_address` is used for BIN only.
pub fn parse(bytes: &[u8], format: FirmwareFormat, base_address: u64) -> Result<Image, FlashError> {
    let segments = match format {
        FirmwareFormat::Bin => vec![Segment {
            address: base_address,
            data: bytes.to_vec(),
        }],
        FirmwareFormat::Elf => parse_elf(bytes)?,
        FirmwareFormat::Ihex => parse_ihex(bytes)?,
        FirmwareFormat::Uf2 => uf2::parse(bytes)?,
    };
    let image = Image::from_segments(format, segments)?;
    if image.is_empty() {
        return Err(FlashError::unsupported(
            format,
            "the image contains no data to write",
        ));
    }
    Ok(image)
}

fn parse_elf(bytes: &[u8]) -> Result<Vec<Segment>, FlashError> {
    let err = |e: object::read::Error| FlashError::unsupported(FirmwareFormat::Elf, e.to_string());
    match object::FileKind::parse(bytes).map_err(err)? {
        object::FileKind::Elf32 => {
            elf_segments::<object::elf::FileHeader32<object::Endianness>>(bytes)
        }
        object::FileKind::Elf64 => {
            elf_segments::<object::elf::FileHeader64<object::Endianness>>(bytes)
        }
        other => Err(FlashError::unsupported(
            FirmwareFormat::Elf,
            format!("not an ELF file ({other:?})"),
        )),
    }
}

/// The PT_LOAD segments with file data, at their physical (load) addresses.
fn elf_segments<H: FileHeader<Endian = object::Endianness>>(
    bytes: &[u8],
) -> Result<Vec<Segment>, FlashError> {
    let err = |e: object::read::Error| FlashError::unsupported(FirmwareFormat::Elf, e.to_string());
    let header = H::parse(bytes).map_err(err)?;
    let endian = header.endian().map_err(err)?;
    let mut out = Vec::new();
    for ph in header.program_headers(endian, bytes).map_err(err)? {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        let data = ph.data(endian, bytes).map_err(|()| {
            FlashError::unsupported(FirmwareFormat::Elf, "segment data out of file bounds")
        })?;
        if data.is_empty() {
            continue;
        }
        out.push(Segment {
            address: ph.p_paddr(endian).into(),
            data: data.to_vec(),
        });
    }
    if out.is_empty() {
        return Err(FlashError::unsupported(
            FirmwareFormat::Elf,
            "no loadable segments with data",
        ));
    }
    Ok(out)
}

fn parse_ihex(bytes: &[u8]) -> Result<Vec<Segment>, FlashError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| FlashError::unsupported(FirmwareFormat::Ihex, "not ASCII text"))?;
    let mut base: u64 = 0;
    let mut out = Vec::new();
    for record in ihex::Reader::new(text) {
        let record =
            record.map_err(|e| FlashError::unsupported(FirmwareFormat::Ihex, e.to_string()))?;
        match record {
            ihex::Record::Data { offset, value } => out.push(Segment {
                address: base + u64::from(offset),
                data: value,
            }),
            ihex::Record::ExtendedSegmentAddress(seg) => base = u64::from(seg) << 4,
            ihex::Record::ExtendedLinearAddress(upper) => base = u64::from(upper) << 16,
            ihex::Record::EndOfFile => break,
            ihex::Record::StartSegmentAddress { .. } | ihex::Record::StartLinearAddress(_) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
