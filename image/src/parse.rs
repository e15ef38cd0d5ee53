//! The one parser: firmware bytes of a format to an [`Image`] (address, bytes) segments, or the
//! [`ImageError`] that refuses them. `twinflash push` and the flasher both call [`parse`].

use object::read::elf::{FileHeader, ProgramHeader};

use crate::{ELF_MAGIC, FirmwareFormat, ImageError, uf2};

/// Most separate pieces of data one image may have: ELF loadable segments with file data, or runs of Intel HEX
/// records or UF2 blocks (a record that continues the previous one extends its run). Toolchains write a handful; the
/// limit bounds what a file of many tiny pieces costs the parser (each piece is an allocation), and with it the
/// memory of the agent that flashes it.
pub const MAX_SEGMENTS: usize = 16_384;

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
        check_layout(
            format,
            segments.iter().map(|s| (s.address, s.data.len() as u64)),
        )?;
        let mut out: Vec<Segment> = Vec::with_capacity(segments.len());
        for seg in segments {
            match out.last_mut() {
                Some(last) if seg.address == last.end() => last.data.extend_from_slice(&seg.data),
                _ => out.push(seg),
            }
        }
        Ok(Image { segments: out })
    }
}

/// Refuses data that wraps the address space, and overlaps, in `(address, length)` pieces sorted by address.
fn check_layout(
    format: FirmwareFormat,
    sorted: impl IntoIterator<Item = (u64, u64)>,
) -> Result<(), ImageError> {
    let mut previous_end: Option<u64> = None;
    for (at, len) in sorted {
        let end = at
            .checked_add(len)
            .ok_or(ImageError::Wraps { format, at })?;
        if let Some(previous_end) = previous_end
            && at < previous_end
        {
            return Err(ImageError::Overlap {
                format,
                at,
                previous_end,
            });
        }
        previous_end = Some(end);
    }
    Ok(())
}

/// The data of an image as a parser finds it, within the parser limits: a piece that starts where the previous one
/// ends extends it (contiguous records cost one allocation, not one each), at most [`MAX_SEGMENTS`] separate pieces,
/// and never more data bytes than the file has. Each limit is checked before the bytes are copied. Made by
/// [`Pieces::layout_only`], it keeps only where the pieces are, not their bytes.
pub(crate) struct Pieces {
    format: FirmwareFormat,
    /// (address, length) of each piece, in file order.
    runs: Vec<(u64, u64)>,
    /// The bytes of each piece, unless only the layout is wanted.
    data: Option<Vec<Vec<u8>>>,
    bytes: u64,
    max_bytes: u64,
}

impl Pieces {
    /// Pieces of a file of `file_len` bytes.
    pub(crate) fn new(format: FirmwareFormat, file_len: usize) -> Self {
        Self {
            format,
            runs: Vec::new(),
            data: Some(Vec::new()),
            bytes: 0,
            max_bytes: file_len as u64,
        }
    }

    /// Where the pieces of a file of `file_len` bytes are, without their bytes.
    pub(crate) fn layout_only(format: FirmwareFormat, file_len: u64) -> Self {
        Self {
            format,
            runs: Vec::new(),
            data: None,
            bytes: 0,
            max_bytes: file_len,
        }
    }

    /// Adds `data` at `address` (nothing for empty data).
    pub(crate) fn push(&mut self, address: u64, data: &[u8]) -> Result<(), ImageError> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        self.bytes = self.bytes.saturating_add(len);
        if self.bytes > self.max_bytes {
            return Err(ImageError::DataExceedsFile {
                format: self.format,
                file: self.max_bytes,
            });
        }
        if let Some(last) = self.runs.last_mut()
            && last.0.checked_add(last.1) == Some(address)
        {
            last.1 += len;
            if let Some(bytes) = self.data.as_mut().and_then(|d| d.last_mut()) {
                bytes.extend_from_slice(data);
            }
            return Ok(());
        }
        if self.runs.len() >= MAX_SEGMENTS {
            return Err(ImageError::TooManySegments {
                format: self.format,
                max: MAX_SEGMENTS,
            });
        }
        self.runs.push((address, len));
        if let Some(d) = self.data.as_mut() {
            d.push(data.to_vec());
        }
        Ok(())
    }

    /// The pieces, in file order.
    pub(crate) fn into_segments(self) -> Vec<Segment> {
        let data = self.data.unwrap_or_default();
        self.runs
            .into_iter()
            .zip(data)
            .map(|((address, _), data)| Segment { address, data })
            .collect()
    }

    /// The layout as [`Image::from_segments`] judges and merges it: sorted, no overlap, adjacent pieces merged.
    pub(crate) fn into_layout(self) -> Result<Vec<(u64, u64)>, ImageError> {
        let format = self.format;
        let mut runs = self.runs;
        runs.sort_by_key(|r| r.0);
        check_layout(format, runs.iter().copied())?;
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
        for (address, len) in runs {
            match out.last_mut() {
                Some(last) if last.0 + last.1 == address => last.1 += len,
                _ => out.push((address, len)),
            }
        }
        Ok(out)
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
    let mut pieces = Pieces::new(FirmwareFormat::Elf, bytes.len());
    for load in elf_layout(bytes)? {
        let data = usize::try_from(load.offset)
            .ok()
            .zip(usize::try_from(load.len).ok())
            .and_then(|(at, len)| bytes.get(at..at.checked_add(len)?))
            .ok_or_else(|| ImageError::Elf("segment data out of file bounds".to_owned()))?;
        pieces.push(load.address, data)?;
    }
    Ok(pieces.into_segments())
}

/// One loadable piece of an ELF file: `len` bytes at `offset` in the file, to be written at `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfLoad {
    /// The physical (load) address.
    pub address: u64,
    /// Where its bytes are in the file.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

/// Where an ELF file's data is: its PT_LOAD segments with file data, at their physical (load) addresses, sorted by
/// address, judged as [`parse`] judges an ELF but without reading the data: the headers only. `data` is the whole
/// file in memory (`&[u8]`) or a file read on demand (`&object::ReadCache<File>`), so a flasher can stream a large
/// ELF from its file.
///
/// Where each segment's data is, how many there are, how many bytes they hold together (at most the file's size:
/// segments may not share file bytes) and whether they overlap are all checked: a small file whose headers name the
/// same bytes many times is refused without allocating them.
pub fn elf_layout<'a, R: object::ReadRef<'a>>(data: R) -> Result<Vec<ElfLoad>, ImageError> {
    let err = |e: object::read::Error| ImageError::Elf(e.to_string());
    if data.read_bytes_at(0, ELF_MAGIC.len() as u64) != Ok(ELF_MAGIC) {
        return Err(ImageError::Elf("no ELF magic".to_owned()));
    }
    match object::FileKind::parse(data).map_err(err)? {
        object::FileKind::Elf32 => {
            elf_loads::<object::elf::FileHeader32<object::Endianness>, R>(data)
        }
        object::FileKind::Elf64 => {
            elf_loads::<object::elf::FileHeader64<object::Endianness>, R>(data)
        }
        other => Err(ImageError::Elf(format!("not an ELF file ({other:?})"))),
    }
}

fn elf_loads<'a, H: FileHeader<Endian = object::Endianness>, R: object::ReadRef<'a>>(
    data: R,
) -> Result<Vec<ElfLoad>, ImageError> {
    let format = FirmwareFormat::Elf;
    let err = |e: object::read::Error| ImageError::Elf(e.to_string());
    let file_len = data
        .len()
        .map_err(|()| ImageError::Elf("cannot read the file's length".to_owned()))?;
    let header = H::parse(data).map_err(err)?;
    let endian = header.endian().map_err(err)?;
    let mut loads: Vec<ElfLoad> = Vec::new();
    let mut total: u64 = 0;
    for ph in header.program_headers(endian, data).map_err(err)? {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        let (offset, len) = ph.file_range(endian);
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(ImageError::Elf(
                "segment data out of file bounds".to_owned(),
            ));
        }
        if len == 0 {
            continue;
        }
        if loads.len() >= MAX_SEGMENTS {
            return Err(ImageError::TooManySegments {
                format,
                max: MAX_SEGMENTS,
            });
        }
        total = total.saturating_add(len);
        if total > file_len {
            return Err(ImageError::DataExceedsFile {
                format,
                file: file_len,
            });
        }
        loads.push(ElfLoad {
            address: ph.p_paddr(endian).into(),
            offset,
            len,
        });
    }
    loads.sort_by_key(|l| l.address);
    check_layout(format, loads.iter().map(|l| (l.address, l.len)))?;
    Ok(loads)
}

/// Intel HEX, line by line: every record's syntax and checksum, exactly one end-of-file record, last.
/// The `ihex` crate parses each record; its `Reader` is not used because it names no line and
/// ignores what follows the end-of-file record.
pub(crate) fn parse_ihex(bytes: &[u8]) -> Result<Vec<Segment>, ImageError> {
    let mut out = Pieces::new(FirmwareFormat::Ihex, bytes.len());
    ihex_records(bytes, |address, data| out.push(address, data))?;
    Ok(out.into_segments())
}

/// The longest line an Intel HEX record may take here: 521 characters (255 data bytes) and room for whitespace. A
/// longer line is refused without reading it whole.
const MAX_IHEX_LINE: u64 = 1024;

/// Reads Intel HEX from `reader` line by line and calls `visit(address, data)` for each data record, in file order,
/// with the rules of [`parse_ihex`]. Holds one line at a time.
pub(crate) fn ihex_records(
    mut reader: impl std::io::BufRead,
    mut visit: impl FnMut(u64, &[u8]) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    use std::io::BufRead as _;
    let mut base: u64 = 0;
    let mut saw_eof = false;
    let mut raw = Vec::with_capacity(128);
    let mut line = 0usize;
    loop {
        raw.clear();
        let n = std::io::Read::take(&mut reader, MAX_IHEX_LINE + 1)
            .read_until(b'\n', &mut raw)
            .map_err(|e| ImageError::Ihex {
                line: line + 1,
                reason: format!("cannot read the file: {e}"),
            })?;
        if n == 0 {
            break;
        }
        line += 1;
        let bad = |reason: String| ImageError::Ihex { line, reason };
        if raw.len() as u64 > MAX_IHEX_LINE {
            return Err(bad(format!(
                "line longer than {MAX_IHEX_LINE} characters: not an Intel HEX record"
            )));
        }
        let text = std::str::from_utf8(&raw).map_err(|_| bad("not ASCII text".to_owned()))?;
        let record = text.trim();
        if record.is_empty() {
            continue;
        }
        if saw_eof {
            return Err(bad("data after the end-of-file record".to_owned()));
        }
        match ihex::Record::from_record_string(record).map_err(|e| bad(e.to_string()))? {
            ihex::Record::Data { offset, value } => visit(base + u64::from(offset), &value)?,
            ihex::Record::ExtendedSegmentAddress(seg) => base = u64::from(seg) << 4,
            ihex::Record::ExtendedLinearAddress(upper) => base = u64::from(upper) << 16,
            ihex::Record::EndOfFile => saw_eof = true,
            ihex::Record::StartSegmentAddress { .. } | ihex::Record::StartLinearAddress(_) => {}
        }
    }
    if !saw_eof {
        return Err(ImageError::Ihex {
            line,
            reason: "no end-of-file record".to_owned(),
        });
    }
    Ok(())
}

/// Calls `visit(address, data)` for the data of an Intel HEX or UF2 file of `len` bytes read from `reader`, in file
/// order, judged as [`parse`] judges the file (its records; the layout is [`stream_layout`]'s). Holds one record or
/// block at a time, so a flasher can stream a large image.
pub fn stream_data(
    format: FirmwareFormat,
    reader: impl std::io::BufRead,
    len: u64,
    visit: impl FnMut(u64, &[u8]) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    if len == 0 {
        return Err(ImageError::Empty);
    }
    match format {
        FirmwareFormat::Ihex => ihex_records(reader, visit),
        FirmwareFormat::Uf2 => uf2::blocks(reader, len, visit),
        FirmwareFormat::Bin | FirmwareFormat::Elf => Err(ImageError::Unstreamable(format)),
    }
}

/// Where the data of an Intel HEX or UF2 file of `len` bytes goes, without holding it: (address, length) pieces
/// sorted by address, adjacent ones merged, judged exactly as [`parse`] judges the file (the same records, limits,
/// overlaps and emptiness).
pub fn stream_layout(
    format: FirmwareFormat,
    reader: impl std::io::BufRead,
    len: u64,
) -> Result<Vec<(u64, u64)>, ImageError> {
    let mut pieces = Pieces::layout_only(format, len);
    stream_data(format, reader, len, |address, data| {
        pieces.push(address, data)
    })?;
    let layout = pieces.into_layout()?;
    if layout.is_empty() {
        return Err(ImageError::NoData(format));
    }
    Ok(layout)
}
