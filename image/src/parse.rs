//! The one parser: firmware bytes of a format to an [`Image`] (address, bytes) segments, or the
//! [`ImageError`] that refuses them. `twinflash push` and the flasher both call [`parse`].

use object::read::elf::{FileHeader, ProgramHeader};

use crate::{ELF_MAGIC, FirmwareFormat, ImageError, uf2};

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

/// A parsed image: non-empty, non-overlapping segments sorted by address, adjacent ones merged.
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

    /// True when there is nothing to write (never for an image [`parse`] returned).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sorts, refuses overlaps and wrap-around, merges adjacent segments and drops empty ones.
    pub fn from_segments(
        format: FirmwareFormat,
        mut segments: Vec<Segment>,
    ) -> Result<Image, ImageError> {
        segments.retain(|s| !s.data.is_empty());
        segments.sort_by_key(|s| s.address);
        let mut out: Vec<Segment> = Vec::with_capacity(segments.len());
        for seg in segments {
            if seg.address.checked_add(seg.data.len() as u64).is_none() {
                return Err(ImageError::Wraps {
                    format,
                    at: seg.address,
                });
            }
            match out.last_mut() {
                Some(last) if seg.address < last.end() => {
                    return Err(ImageError::Overlap {
                        format,
                        at: seg.address,
                        previous_end: last.end(),
                    });
                }
                Some(last) if seg.address == last.end() => last.data.extend_from_slice(&seg.data),
                _ => out.push(seg),
            }
        }
        Ok(Image { segments: out })
    }
}

/// Parses firmware bytes of `format`. `base_address` places a BIN (required for it, ignored by the
/// others). This is the verdict of both `twinflash push` and the flasher: an empty file, a
/// malformed one, a BIN without base address and a file with no data to write are refused.
pub fn parse(
    bytes: &[u8],
    format: FirmwareFormat,
    base_address: Option<u64>,
) -> Result<Image, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let segments = match format {
        FirmwareFormat::Bin => vec![Segment {
            address: check_bin(bytes.len() as u64, base_address)?,
            data: bytes.to_vec(),
        }],
        FirmwareFormat::Elf => parse_elf(bytes)?,
        FirmwareFormat::Ihex => parse_ihex(bytes)?,
        FirmwareFormat::Uf2 => uf2::parse(bytes)?,
    };
    let image = Image::from_segments(format, segments)?;
    if image.is_empty() {
        return Err(ImageError::NoData(format));
    }
    Ok(image)
}

/// The part of [`parse`] that judges a BIN: it depends only on the length and the base address,
/// so a BIN too large to read whole can be judged without its bytes. Returns the base address.
pub fn check_bin(len: u64, base_address: Option<u64>) -> Result<u64, ImageError> {
    if len == 0 {
        return Err(ImageError::Empty);
    }
    let base = base_address.ok_or(ImageError::MissingBaseAddress)?;
    if base.checked_add(len).is_none() {
        return Err(ImageError::Wraps {
            format: FirmwareFormat::Bin,
            at: base,
        });
    }
    Ok(base)
}

fn parse_elf(bytes: &[u8]) -> Result<Vec<Segment>, ImageError> {
    if !bytes.starts_with(ELF_MAGIC) {
        return Err(ImageError::Elf("no ELF magic".to_owned()));
    }
    let err = |e: object::read::Error| ImageError::Elf(e.to_string());
    match object::FileKind::parse(bytes).map_err(err)? {
        object::FileKind::Elf32 => {
            elf_segments::<object::elf::FileHeader32<object::Endianness>>(bytes)
        }
        object::FileKind::Elf64 => {
            elf_segments::<object::elf::FileHeader64<object::Endianness>>(bytes)
        }
        other => Err(ImageError::Elf(format!("not an ELF file ({other:?})"))),
    }
}

/// The PT_LOAD segments with file data, at their physical (load) addresses.
fn elf_segments<H: FileHeader<Endian = object::Endianness>>(
    bytes: &[u8],
) -> Result<Vec<Segment>, ImageError> {
    let err = |e: object::read::Error| ImageError::Elf(e.to_string());
    let header = H::parse(bytes).map_err(err)?;
    let endian = header.endian().map_err(err)?;
    let mut out = Vec::new();
    for ph in header.program_headers(endian, bytes).map_err(err)? {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        let data = ph
            .data(endian, bytes)
            .map_err(|()| ImageError::Elf("segment data out of file bounds".to_owned()))?;
        out.push(Segment {
            address: ph.p_paddr(endian).into(),
            data: data.to_vec(),
        });
    }
    Ok(out)
}

/// Intel HEX, line by line: every record's syntax and checksum, exactly one end-of-file record, last.
/// The `ihex` crate parses each record; its `Reader` is not used because it names no line and
/// ignores what follows the end-of-file record.
fn parse_ihex(bytes: &[u8]) -> Result<Vec<Segment>, ImageError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ImageError::Ihex {
        line: line_of(bytes, e.valid_up_to()),
        reason: "not ASCII text".to_owned(),
    })?;
    let mut base: u64 = 0;
    let mut saw_eof = false;
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let record = raw.trim();
        if record.is_empty() {
            continue;
        }
        let bad = |reason: String| ImageError::Ihex { line, reason };
        if saw_eof {
            return Err(bad("data after the end-of-file record".to_owned()));
        }
        match ihex::Record::from_record_string(record).map_err(|e| bad(e.to_string()))? {
            ihex::Record::Data { offset, value } => out.push(Segment {
                address: base + u64::from(offset),
                data: value,
            }),
            ihex::Record::ExtendedSegmentAddress(seg) => base = u64::from(seg) << 4,
            ihex::Record::ExtendedLinearAddress(upper) => base = u64::from(upper) << 16,
            ihex::Record::EndOfFile => saw_eof = true,
            ihex::Record::StartSegmentAddress { .. } | ihex::Record::StartLinearAddress(_) => {}
        }
    }
    if !saw_eof {
        return Err(ImageError::Ihex {
            line: text.lines().count(),
            reason: "no end-of-file record".to_owned(),
        });
    }
    Ok(out)
}

fn line_of(data: &[u8], offset: usize) -> usize {
    data.iter().take(offset).filter(|b| **b == b'\n').count() + 1
}
