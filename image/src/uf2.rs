//! UF2 block parsing, by hand: the format is 512-byte blocks with fixed magics
//! (<https://github.com/microsoft/uf2>).
//!
//! No maintained UF2 reader crate fits (the few on crates.io are writers or tied to one board), and the format is small.

use crate::parse::Pieces;
use crate::{FirmwareFormat, ImageError, Segment};

/// Size of one block.
pub(crate) const BLOCK: usize = 512;
const MAGIC_START0: u32 = 0x0A32_4655;
const MAGIC_START1: u32 = 0x9E5D_5157;
const MAGIC_END: u32 = 0x0AB1_6F30;
const FLAG_NOT_MAIN_FLASH: u32 = 0x0000_0001;
const MAX_PAYLOAD: usize = 476;
/// Where the payload starts in a block.
const PAYLOAD: usize = 32;

/// The little-endian word at `at`, 0 past the end.
fn word(block: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(bytes) = block.get(at..at + 4) {
        w.copy_from_slice(bytes);
    }
    u32::from_le_bytes(w)
}

/// True when `head` starts with the two start magics of a UF2 block.
pub(crate) fn has_start_magic(head: &[u8]) -> bool {
    word(head, 0) == MAGIC_START0 && word(head, 4) == MAGIC_START1
}

/// The payloads of all main-flash blocks.
pub(crate) fn parse(bytes: &[u8]) -> Result<Vec<Segment>, ImageError> {
    let mut out = Pieces::new(FirmwareFormat::Uf2, bytes.len());
    blocks(bytes, bytes.len() as u64, |address, data| {
        out.push(address, data)
    })?;
    Ok(out.into_segments())
}

/// Reads the `len` bytes of a UF2 file block by block and calls `visit(address, payload)` for each main-flash
/// block, in file order. Holds one block at a time.
pub(crate) fn blocks(
    mut reader: impl std::io::Read,
    len: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    if !len.is_multiple_of(BLOCK as u64) {
        return Err(ImageError::Uf2 {
            block: len / BLOCK as u64,
            reason: format!("file size {len} is not a multiple of {BLOCK}"),
        });
    }
    let mut block = [0u8; BLOCK];
    for i in 0..len / BLOCK as u64 {
        let bad = |reason: String| ImageError::Uf2 { block: i, reason };
        reader
            .read_exact(&mut block)
            .map_err(|e| bad(format!("cannot read the block: {e}")))?;
        if !has_start_magic(&block) {
            return Err(bad("bad start magic".to_owned()));
        }
        if word(&block, BLOCK - 4) != MAGIC_END {
            return Err(bad("bad end magic".to_owned()));
        }
        let flags = word(&block, 8);
        let address = u64::from(word(&block, 12));
        let size = word(&block, 16) as usize;
        if size > MAX_PAYLOAD {
            return Err(bad(format!("payload size {size} exceeds {MAX_PAYLOAD}")));
        }
        if flags & FLAG_NOT_MAIN_FLASH != 0 {
            continue;
        }
        visit(address, &block[PAYLOAD..PAYLOAD + size])?;
    }
    Ok(())
}
