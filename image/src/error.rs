//! [`ImageError`]: why a firmware file is refused, one line each, and its stable code.

use crate::FirmwareFormat;

/// A firmware file that is not what it claims to be, or a format or base address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// A format name that is not one of ours.
    #[error("unknown firmware format {0:?} (expected elf, ihex, bin or uf2)")]
    UnknownFormat(String),
    /// A base address that is not a hex number.
    #[error("invalid base address {0:?} (expected hex, e.g. 0x08000000)")]
    BadBaseAddress(String),
    /// The file is empty.
    #[error("the firmware file is empty")]
    Empty,
    /// The ELF does not parse, or its loadable segments are out of bounds.
    #[error("malformed ELF file: {0}")]
    Elf(String),
    /// An Intel HEX record is invalid, or the end-of-file record is missing or not last.
    #[error("malformed Intel HEX file: line {line}: {reason}")]
    Ihex {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A UF2 block is invalid.
    #[error("malformed UF2 file: block {block}: {reason}")]
    Uf2 {
        /// 0-based block index.
        block: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A raw binary without a base address.
    #[error(
        "a raw binary needs a base address (--base-address; the format could not be detected from its content)"
    )]
    MissingBaseAddress,
    /// The file parses but holds nothing to write (an ELF without loadable data, a HEX of only an
    /// end-of-file record, a UF2 without main-flash blocks).
    #[error("the {0} image contains no data to write")]
    NoData(FirmwareFormat),
    /// Two pieces of data for the same address.
    #[error(
        "the {format} image has overlapping data at {at:#x} (the previous piece ends at {previous_end:#x})"
    )]
    Overlap {
        /// The format.
        format: FirmwareFormat,
        /// Where the second piece starts.
        at: u64,
        /// Where the first one ends.
        previous_end: u64,
    },
    /// More separate pieces of data than [`crate::MAX_SEGMENTS`] (ELF loadable segments, or runs of Intel HEX records
    /// or UF2 blocks after joining the ones that continue each other).
    #[error(
        "the {format} image has more than {max} separate pieces of data (a firmware has a handful)"
    )]
    TooManySegments {
        /// The format.
        format: FirmwareFormat,
        /// The limit.
        max: usize,
    },
    /// The pieces of data hold more bytes than the file: ELF segments that name the same file bytes over and over.
    #[error(
        "the {format} image's segments hold more data than the {file} bytes of the file (segments that share file bytes)"
    )]
    DataExceedsFile {
        /// The format.
        format: FirmwareFormat,
        /// The file's size.
        file: u64,
    },
    /// Data that runs past the end of the 64-bit address space.
    #[error("the {format} image has data at {at:#x} that wraps the address space")]
    Wraps {
        /// The format.
        format: FirmwareFormat,
        /// Where the piece starts.
        at: u64,
    },
    /// [`crate::stream_data`] asked for a format it does not read record by record (a BIN or an ELF is read in
    /// place instead).
    #[error("the {0} format is not read record by record")]
    Unstreamable(FirmwareFormat),
}

impl ImageError {
    /// The stable code of this error: always `unsupported-artifact`.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        mqtt_schema::ErrorCode::UnsupportedArtifact
    }
}
