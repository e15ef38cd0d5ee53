//! Firmware images as a list of (address, bytes) segments, from the `twinflash-image` crate: the
//! same parser `twinflash push` runs, so the flasher refuses exactly what push refuses.
//!
//! Every backend that writes memory itself (the simulated device, the gdb backend) reads images through [`Source`];
//! probe-rs has its own loaders.

use std::path::Path;

pub use twinflash_image::{ElfLoad, FirmwareFormat, Image, ImageError, Segment, parse};

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

/// An image as the backends that write memory themselves read it (the simulated device, the gdb backend): a BIN and
/// an ELF are read from their file chunk by chunk (positional reads, so writing and verifying read them twice and
/// never hold them whole; of an ELF only its headers are read whole); Intel HEX and UF2 are parsed whole by [`load`]
/// (at most the agent's `max_artifact_bytes`).
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
    /// An ELF file, judged by its headers as [`parse`] judges it ([`twinflash_image::elf_layout`]).
    Elf {
        /// The open file.
        file: std::fs::File,
        /// Its path, for messages.
        path: std::path::PathBuf,
        /// Its loadable pieces, in address order.
        loads: Vec<ElfLoad>,
    },
}

impl Source {
    /// Opens (a BIN) or reads and parses (other formats) the image file. Blocking.
    pub fn open(
        path: &Path,
        format: FirmwareFormat,
        base_address: Option<u64>,
    ) -> Result<Source, FlashError> {
        if !matches!(format, FirmwareFormat::Bin | FirmwareFormat::Elf) {
            return Ok(Source::Loaded(load(path, format, base_address)?));
        }
        let file = std::fs::File::open(path)
            .map_err(|e| FlashError::io(format!("opening image {}", path.display()), e))?;
        if format == FirmwareFormat::Elf {
            let cache = object::ReadCache::new(file);
            let loads = twinflash_image::elf_layout(&cache)?;
            if loads.is_empty() {
                return Err(ImageError::NoData(format).into());
            }
            return Ok(Source::Elf {
                file: cache.into_inner(),
                path: path.to_path_buf(),
                loads,
            });
        }
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
            Source::Elf { loads, .. } => loads.iter().map(|l| l.len).sum(),
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
            Source::Elf { loads, .. } => loads.iter().map(|l| (l.address, l.len)).collect(),
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

    /// Fills `buf` with the bytes of segment `seg` from `offset` (a positional read for a BIN or an ELF).
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
            Source::Bin { file, path, .. } => read_at(file, path, offset, buf),
            Source::Elf { file, path, loads } => {
                let load = loads.get(seg).filter(|l| {
                    offset
                        .checked_add(buf.len() as u64)
                        .is_some_and(|end| end <= l.len)
                });
                let Some(load) = load else {
                    return Err(FlashError::Internal {
                        detail: format!(
                            "read of {} bytes past segment {seg} at {offset}",
                            buf.len()
                        ),
                    });
                };
                read_at(file, path, load.offset + offset, buf)
            }
        }
    }
}

/// A positional read of exactly `buf.len()` bytes.
fn read_at(
    file: &std::fs::File,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), FlashError> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
        .map_err(|e| FlashError::io(format!("reading image {}", path.display()), e))
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

    #[test]
    fn an_elf_is_read_in_place_with_the_parsers_segments_and_verdicts() {
        use twinflash_image::fixtures;
        let tmp = tempfile::tempdir().unwrap();
        let elf = tmp.path().join("fw.elf");
        let a = fixtures::pattern(300, 1);
        let b = fixtures::pattern(40, 2);
        // Given out of address order, with a virtual-to-physical offset: placed by physical address.
        let bytes = fixtures::elf32(&[(0x0800_1000, &b), (0x0800_0000, &a)], 0x1000_0000);
        std::fs::write(&elf, &bytes).unwrap();
        let src = Source::open(&elf, FirmwareFormat::Elf, None).unwrap();
        assert!(matches!(src, Source::Elf { .. }), "streamed, not loaded");
        let parsed = parse(&bytes, FirmwareFormat::Elf, None).unwrap();
        let want: Vec<(u64, u64)> = parsed
            .segments
            .iter()
            .map(|s| (s.address, s.data.len() as u64))
            .collect();
        assert_eq!(src.segments(), want);
        assert_eq!(src.len(), 340);
        let mut got = Vec::new();
        src.for_each_chunk(64, |addr, bytes| {
            got.push((addr, bytes.to_vec()));
            Ok(true)
        })
        .unwrap();
        let flat: Vec<u8> = got.iter().flat_map(|(_, b)| b.clone()).collect();
        let expected: Vec<u8> = parsed
            .segments
            .iter()
            .flat_map(|s| s.data.clone())
            .collect();
        assert_eq!(flat, expected);
        assert_eq!(got[0].0, 0x0800_0000);
        let mut buf = [0u8; 8];
        assert!(src.read(1, 36, &mut buf).is_err(), "past the segment");

        // What the parser refuses, the streamed source refuses with the same code.
        for bad in [
            fixtures::elf32_loads(64, &[(0x100, 0x10_0000, 0x20)]),
            fixtures::elf32_header_bomb(),
            b"\x7fELF but not really".to_vec(),
        ] {
            std::fs::write(&elf, &bad).unwrap();
            let streamed = Source::open(&elf, FirmwareFormat::Elf, None).unwrap_err();
            let parsed = FlashError::from(parse(&bad, FirmwareFormat::Elf, None).unwrap_err());
            assert_eq!(streamed.code(), parsed.code(), "{streamed} / {parsed}");
        }
    }
}
