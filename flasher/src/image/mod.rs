//! Firmware images as a list of (address, bytes) segments, from the `twinflash-image` crate: the
//! same parser `twinflash push` runs, so the flasher refuses exactly what push refuses.
//!
//! Every backend that writes memory itself (the simulated device, the gdb backend) reads images through [`Source`];
//! probe-rs has its own loaders.

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

/// An image as the backends that write memory themselves read it (the simulated device, the gdb backend): a BIN is
/// read from its file chunk by chunk (positional reads, so writing and verifying read it twice and never hold it
/// whole); ELF, Intel HEX and UF2 are parsed whole by [`load`] (at most the agent's `max_artifact_bytes`).
#[derive(Debug)]
pub enum Source {
    /// A parsed image.
    Loaded(Image),
    /// A BIN file, judged by its length and base address as [`parse`] judges it.
    Bin {
        /// The open file.
        file: std::fs::File,
        /// Its path, for messages.
        path: std::path::PathBuf,
        /// Where its first byte goes.
        base: u64,
        /// Its length.
        len: u64,
    },
}

impl Source {
    /// Opens (a BIN) or reads and parses (other formats) the image file. Blocking.
    pub fn open(
        path: &Path,
        format: FirmwareFormat,
        base_address: Option<u64>,
    ) -> Result<Source, FlashError> {
        if format != FirmwareFormat::Bin {
            return Ok(Source::Loaded(load(path, format, base_address)?));
        }
        let file = std::fs::File::open(path)
            .map_err(|e| FlashError::io(format!("opening image {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| FlashError::io(format!("image {}", path.display()), e))?
            .len();
        let base = twinflash_image::check_bin(len, base_address)?;
        Ok(Source::Bin {
            file,
            path: path.to_path_buf(),
            base,
            len,
        })
    }

    /// Bytes of image data.
    pub fn len(&self) -> u64 {
        match self {
            Source::Loaded(image) => image.len(),
            Source::Bin { len, .. } => *len,
        }
    }

    /// True when there is nothing to write (never for an opened image).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segments as (address, length), in address order.
    pub fn segments(&self) -> Vec<(u64, u64)> {
        match self {
            Source::Loaded(image) => image
                .segments
                .iter()
                .map(|s| (s.address, s.data.len() as u64))
                .collect(),
            Source::Bin { base, len, .. } => vec![(*base, *len)],
        }
    }

    /// Calls `f(address, bytes)` for the image in pieces of at most `chunk` bytes, in order, while it returns true.
    pub fn for_each_chunk(
        &self,
        chunk: usize,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, FlashError>,
    ) -> Result<(), FlashError> {
        let mut buf = vec![0u8; chunk.max(1)];
        for (seg, (address, len)) in self.segments().into_iter().enumerate() {
            let mut pos = 0u64;
            while pos < len {
                let n = usize::try_from(len - pos)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let piece = &mut buf[..n];
                self.read(seg, pos, piece)?;
                if !f(address + pos, piece)? {
                    return Ok(());
                }
                pos += n as u64;
            }
        }
        Ok(())
    }

    /// Fills `buf` with the bytes of segment `seg` from `offset` (a positional read for a BIN).
    pub fn read(&self, seg: usize, offset: u64, buf: &mut [u8]) -> Result<(), FlashError> {
        match self {
            Source::Loaded(image) => {
                let data = image
                    .segments
                    .get(seg)
                    .map_or(&[][..], |s| s.data.as_slice());
                let chunk = usize::try_from(offset)
                    .ok()
                    .and_then(|start| Some(start..start.checked_add(buf.len())?))
                    .and_then(|range| data.get(range))
                    .ok_or_else(|| FlashError::Internal {
                        detail: format!(
                            "read of {} bytes past segment {seg} at {offset}",
                            buf.len()
                        ),
                    })?;
                buf.copy_from_slice(chunk);
                Ok(())
            }
            Source::Bin { file, path, .. } => {
                use std::os::unix::fs::FileExt;
                file.read_exact_at(buf, offset)
                    .map_err(|e| FlashError::io(format!("reading image {}", path.display()), e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bin_is_read_in_place_and_other_formats_are_parsed() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("fw.bin");
        std::fs::write(&bin, (0..=255u8).collect::<Vec<_>>()).unwrap();
        let src = Source::open(&bin, FirmwareFormat::Bin, Some(0x1000)).unwrap();
        assert!(matches!(src, Source::Bin { .. }));
        assert_eq!((src.len(), src.segments()), (256, vec![(0x1000, 256)]));
        let mut buf = [0u8; 4];
        src.read(0, 100, &mut buf).unwrap();
        assert_eq!(buf, [100, 101, 102, 103]);
        assert!(src.read(0, 254, &mut buf).is_err(), "past the end");
        let mut seen = Vec::new();
        src.for_each_chunk(100, |addr, bytes| {
            seen.push((addr, bytes.len(), bytes[0]));
            Ok(addr < 0x1064)
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(0x1000, 100, 0), (0x1064, 100, 100)],
            "stops when told"
        );
        let no_base = Source::open(&bin, FirmwareFormat::Bin, None).unwrap_err();
        assert_eq!(
            no_base.code(),
            FlashError::from(parse(&[1], FirmwareFormat::Bin, None).unwrap_err()).code()
        );

        let hex = tmp.path().join("fw.hex");
        std::fs::write(&hex, ":0400100001020304E2\n:00000001FF\n").unwrap();
        let src = Source::open(&hex, FirmwareFormat::Ihex, None).unwrap();
        assert_eq!(src.segments(), vec![(0x10, 4)]);
        src.read(0, 1, &mut buf[..3]).unwrap();
        assert_eq!(&buf[..3], &[2, 3, 4]);
        assert!(src.read(0, 2, &mut buf).is_err());
    }
}
