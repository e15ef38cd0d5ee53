//! UF2 block parsing, by hand: the format is 512-byte blocks with fixed magics.
//!
//! No maintained UF2 reader crate fits (the few on crates.io are writers or tied to one board), and the format is small.

use super::{FirmwareFormat, Segment};
use crate::FlashError;

const BLOCK: usize = 512;
const MAGIC_START0: u32 = 0x0A32_4655;
const MAGIC_START1: u32 = 0x9E5D_5157;
const MAGIC_END: u32 = 0x0AB1_6F30;
const FLAG_NOT_MAIN_FLASH: u32 = 0x0000_0001;
const MAX_PAYLOAD: usize = 476;

fn word(block: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&block[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The payloads of all main-flash blocks.
pub(super) fn parse(bytes: &[u8]) -> Result<Vec<Segment>, FlashError> {
    let bad = |detail: String| FlashError::unsupported(FirmwareFormat::Uf2, detail);
    if bytes.is_empty() || !bytes.len().is_multiple_of(BLOCK) {
        return Err(bad(format!(
            "length {} is not a non-zero multiple of {BLOCK}",
            bytes.len()
        )));
    }
    let mut out = Vec::new();
    for (i, block) in bytes.chunks_exact(BLOCK).enumerate() {
        if word(block, 0) != MAGIC_START0
            || word(block, 4) != MAGIC_START1
            || word(block, BLOCK - 4) != MAGIC_END
        {
            return Err(bad(format!("block {i}: bad magic")));
        }
        let flags = word(block, 8);
        let address = u64::from(word(block, 12));
        let size = word(block, 16) as usize;
        if size > MAX_PAYLOAD {
            return Err(bad(format!(
                "block {i}: payload size {size} > {MAX_PAYLOAD}"
            )));
        }
        if flags & FLAG_NOT_MAIN_FLASH != 0 {
            continue;
        }
        out.push(Segment {
            address,
            data: block[32..32 + size].to_vec(),
        });
    }
    Ok(out)
}
