//! The twinflash firmware artifact format (docs/contract.md section 2): media types, annotation keys,
//! and detection plus validation of firmware files from their content (ELF, Intel HEX, UF2, raw binary).

use std::fmt;
use std::str::FromStr;

/// Media type of the OCI image manifest that carries a firmware artifact.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// `artifactType` of every twinflash firmware artifact.
pub const ARTIFACT_TYPE: &str = "application/vnd.twinflash.firmware.v1";
/// Media type of the empty config descriptor.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Content of the empty config blob.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Digest of [`EMPTY_CONFIG`].
pub const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Layer annotation: the original file name.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Manifest annotation: semver version of the firmware (required).
pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
/// Manifest annotation: target chip or family (required).
pub const ANNOTATION_CHIP: &str = "io.twinflash.firmware.chip";
/// Manifest annotation: load address of a raw binary, hex (required for `bin`).
pub const ANNOTATION_BASE_ADDRESS: &str = "io.twinflash.firmware.base-address";
/// Manifest annotation: creation time (RFC 3339, optional).
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// Manifest annotation: source repository (optional).
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
/// Manifest annotation: source revision (optional).
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
/// Manifest annotation: free text (optional).
pub const ANNOTATION_DESCRIPTION: &str = "org.opencontainers.image.description";

/// The firmware file formats twinflash carries, one layer media type each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirmwareFormat {
    /// An ELF executable.
    Elf,
    /// Intel HEX records.
    Ihex,
    /// A raw binary image loaded at a base address.
    Bin,
    /// USB Flashing Format blocks.
    Uf2,
}

impl FirmwareFormat {
    /// Every format.
    pub const ALL: [FirmwareFormat; 4] = [Self::Elf, Self::Ihex, Self::Bin, Self::Uf2];

    /// Short name, as on the command line: `elf`, `ihex`, `bin`, `uf2`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Elf => "elf",
            Self::Ihex => "ihex",
            Self::Bin => "bin",
            Self::Uf2 => "uf2",
        }
    }

    /// The layer media type, e.g. `application/vnd.twinflash.firmware.elf`.
    pub const fn media_type(self) -> &'static str {
        match self {
            Self::Elf => "application/vnd.twinflash.firmware.elf",
            Self::Ihex => "application/vnd.twinflash.firmware.ihex",
            Self::Bin => "application/vnd.twinflash.firmware.bin",
            Self::Uf2 => "application/vnd.twinflash.firmware.uf2",
        }
    }

    /// The format whose layer media type is `media_type`.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.media_type() == media_type)
    }
}

impl fmt::Display for FirmwareFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FirmwareFormat {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "elf" => Ok(Self::Elf),
            "ihex" | "hex" => Ok(Self::Ihex),
            "bin" => Ok(Self::Bin),
            "uf2" => Ok(Self::Uf2),
            _ => Err(FormatError::UnknownFormat(s.to_owned())),
        }
    }
}

/// A firmware file that is not what it claims to be. Each message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// `--format` named no known format.
    #[error("unknown firmware format {0:?} (expected elf, ihex, bin or uf2)")]
    UnknownFormat(String),
    /// The file is empty.
    #[error("the firmware file is empty")]
    Empty,
    /// ELF magic present but the file does not parse.
    #[error("malformed ELF file: {0}")]
    Elf(String),
    /// An Intel HEX record is invalid.
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
    /// The file is a raw binary (or was declared one) and no base address was given.
    #[error(
        "a raw binary needs --base-address (the format could not be detected from its content)"
    )]
    MissingBaseAddress,
    /// An ELF, HEX or UF2 file too large to validate in memory.
    #[error("a {format} file of {size} bytes is larger than the {max} bytes twinflash validates")]
    TooLargeToValidate {
        /// The format.
        format: FirmwareFormat,
        /// File size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The base address is not a hex number.
    #[error("invalid base address {0:?} (expected hex, e.g. 0x08000000)")]
    BadBaseAddress(String),
}

impl FormatError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        mqtt_schema::ErrorCode::UnsupportedArtifact
    }
}

const ELF_MAGIC: &[u8] = b"\x7fELF";
/// UF2 block size and magics (<https://github.com/microsoft/uf2>).
pub const UF2_BLOCK: usize = 512;
const UF2_MAGIC_START0: u32 = 0x0A32_4655;
const UF2_MAGIC_START1: u32 = 0x9E5D_5157;
const UF2_MAGIC_END: u32 = 0x0AB1_6F30;

/// Guesses the format from the first bytes of a file (at least 512 when the file has them).
/// `None` means no structured format was recognised: a raw binary.
pub fn sniff(head: &[u8]) -> Option<FirmwareFormat> {
    if head.starts_with(ELF_MAGIC) {
        return Some(FirmwareFormat::Elf);
    }
    // Start magics are enough to claim the format: validation then names what is broken.
    if le32(head, 0) == UF2_MAGIC_START0 && le32(head, 4) == UF2_MAGIC_START1 {
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

/// Validates a whole file as `format`. A raw binary is valid when it is not empty.
pub fn validate(format: FirmwareFormat, data: &[u8]) -> Result<(), FormatError> {
    if data.is_empty() {
        return Err(FormatError::Empty);
    }
    match format {
        FirmwareFormat::Elf => validate_elf(data),
        FirmwareFormat::Ihex => validate_ihex(data),
        FirmwareFormat::Uf2 => validate_uf2(data),
        FirmwareFormat::Bin => Ok(()),
    }
}

fn validate_elf(data: &[u8]) -> Result<(), FormatError> {
    use object::{Object, ObjectSegment};
    if !data.starts_with(ELF_MAGIC) {
        return Err(FormatError::Elf("no ELF magic".to_owned()));
    }
    let file = object::File::parse(data).map_err(|e| FormatError::Elf(e.to_string()))?;
    if !matches!(file.format(), object::BinaryFormat::Elf) {
        return Err(FormatError::Elf("not an ELF file".to_owned()));
    }
    for segment in file.segments() {
        segment
            .data()
            .map_err(|e| FormatError::Elf(format!("segment out of bounds: {e}")))?;
    }
    Ok(())
}

fn validate_ihex(data: &[u8]) -> Result<(), FormatError> {
    let text = std::str::from_utf8(data).map_err(|e| FormatError::Ihex {
        line: line_of(data, e.valid_up_to()),
        reason: "not ASCII text".to_owned(),
    })?;
    let mut saw_eof = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let record = raw.trim();
        if record.is_empty() {
            continue;
        }
        if saw_eof {
            return Err(FormatError::Ihex {
                line,
                reason: "data after the end-of-file record".to_owned(),
            });
        }
        match ihex::Record::from_record_string(record) {
            Ok(ihex::Record::EndOfFile) => saw_eof = true,
            Ok(_) => {}
            Err(e) => {
                return Err(FormatError::Ihex {
                    line,
                    reason: e.to_string(),
                });
            }
        }
    }
    if !saw_eof {
        return Err(FormatError::Ihex {
            line: text.lines().count(),
            reason: "no end-of-file record".to_owned(),
        });
    }
    Ok(())
}

fn line_of(data: &[u8], offset: usize) -> usize {
    data.iter().take(offset).filter(|b| **b == b'\n').count() + 1
}

fn validate_uf2(data: &[u8]) -> Result<(), FormatError> {
    if !data.len().is_multiple_of(UF2_BLOCK) {
        return Err(FormatError::Uf2 {
            block: (data.len() / UF2_BLOCK) as u64,
            reason: format!("file size {} is not a multiple of 512", data.len()),
        });
    }
    for (index, block) in data.chunks_exact(UF2_BLOCK).enumerate() {
        if let Some(reason) = uf2_block_error(block) {
            return Err(FormatError::Uf2 {
                block: index as u64,
                reason,
            });
        }
    }
    Ok(())
}

fn le32(block: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(bytes) = block.get(at..at + 4) {
        word.copy_from_slice(bytes);
    }
    u32::from_le_bytes(word)
}

fn uf2_block_error(block: &[u8]) -> Option<String> {
    if le32(block, 0) != UF2_MAGIC_START0 || le32(block, 4) != UF2_MAGIC_START1 {
        return Some("bad start magic".to_owned());
    }
    if le32(block, 508) != UF2_MAGIC_END {
        return Some("bad end magic".to_owned());
    }
    let payload = le32(block, 16);
    if payload > 476 {
        return Some(format!("payload size {payload} exceeds 476"));
    }
    None
}

/// Parses a base address given as hex (`0x08000000` or `08000000`).
pub fn parse_base_address(s: &str) -> Result<u64, FormatError> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || digits.len() > 16 {
        return Err(FormatError::BadBaseAddress(s.to_owned()));
    }
    u64::from_str_radix(digits, 16).map_err(|_| FormatError::BadBaseAddress(s.to_owned()))
}

/// Formats a base address as the annotation wants it: `0x` and lower-case hex, 8 digits at least.
pub fn format_base_address(address: u64) -> String {
    format!("{address:#010x}")
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
