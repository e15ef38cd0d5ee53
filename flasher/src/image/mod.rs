//! Firmware images for the backends that write memory themselves (the simulated device, the gdb backend), judged by
//! the `twinflash-image` crate: the same rules `twinflash push` applies, so the flasher refuses exactly what push
//! refuses. probe-rs has its own loaders.

use std::path::Path;

pub use twinflash_image::{ElfLoad, FirmwareFormat, Image, ImageError, Segment, parse};

use crate::FlashError;

/// An image as the backends that write memory themselves read it, never held whole: pieces of data at known offsets
/// of a file, read with positional reads (writing and verifying read them twice).
/// - A BIN is one piece, the whole file, judged by its length and base address ([`twinflash_image::check_bin`]).
/// - An ELF's pieces are its loadable segments, judged by its headers ([`twinflash_image::elf_layout`]); only the
///   headers are read whole.
/// - Intel HEX and UF2 spread their data over text records or 512-byte blocks: they are read record by record, once
///   to judge them and once to write their data into an unnamed temporary file beside the image (its pieces one
///   after the other), whose pieces are then read the same way.
#[derive(Debug)]
pub struct Source {
    /// The file the pieces are read from.
    file: std::fs::File,
    /// The image's path, for messages.
    path: std::path::PathBuf,
    /// The pieces, in address order.
    loads: Vec<ElfLoad>,
}

impl Source {
    /// Opens and judges the image file (see [`Source`]). `base_address` places a BIN (required for it). Blocking.
    pub fn open(
        path: &Path,
        format: FirmwareFormat,
        base_address: Option<u64>,
    ) -> Result<Source, FlashError> {
        let file = std::fs::File::open(path)
            .map_err(|e| FlashError::io(format!("opening image {}", path.display()), e))?;
        let (file, loads) = match format {
            FirmwareFormat::Bin => {
                let len = file
                    .metadata()
                    .map_err(|e| FlashError::io(format!("image {}", path.display()), e))?
                    .len();
                let address = twinflash_image::check_bin(len, base_address)?;
                let whole = ElfLoad {
                    address,
                    offset: 0,
                    len,
                };
                (file, vec![whole])
            }
            FirmwareFormat::Elf => {
                let cache = object::ReadCache::new(file);
                let loads = twinflash_image::elf_layout(&cache)?;
                if loads.is_empty() {
                    return Err(ImageError::NoData(format).into());
                }
                (cache.into_inner(), loads)
            }
            FirmwareFormat::Ihex | FirmwareFormat::Uf2 => flatten(&file, path, format)?,
        };
        Ok(Source {
            file,
            path: path.to_path_buf(),
            loads,
        })
    }

    /// Bytes of image data.
    pub fn len(&self) -> u64 {
        self.loads.iter().map(|l| l.len).sum()
    }

    /// True when there is nothing to write (never for an opened image).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segments as (address, length), in address order.
    pub fn segments(&self) -> Vec<(u64, u64)> {
        self.loads.iter().map(|l| (l.address, l.len)).collect()
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

    /// Fills `buf` with the bytes of segment `seg` from `offset` (a positional read of the file).
    pub fn read(&self, seg: usize, offset: u64, buf: &mut [u8]) -> Result<(), FlashError> {
        let load = self.loads.get(seg).filter(|l| {
            offset
                .checked_add(buf.len() as u64)
                .is_some_and(|end| end <= l.len)
        });
        let Some(load) = load else {
            return Err(FlashError::Internal {
                detail: format!("read of {} bytes past segment {seg} at {offset}", buf.len()),
            });
        };
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, load.offset + offset)
            .map_err(|e| FlashError::io(format!("reading image {}", self.path.display()), e))
    }
}

/// Bytes gathered before one positional write of a flattened image (records are small; most follow each other).
const FLATTEN_BUFFER: usize = 64 * 1024;

/// Judges an Intel HEX or UF2 file record by record ([`twinflash_image::stream_layout`]), then writes its data into
/// an unnamed temporary file beside it, piece after piece in address order, and returns that file with where each
/// piece is in it. Never holds more than one record and [`FLATTEN_BUFFER`] bytes.
fn flatten(
    file: &std::fs::File,
    path: &Path,
    format: FirmwareFormat,
) -> Result<(std::fs::File, Vec<ElfLoad>), FlashError> {
    use std::io::{BufReader, Seek as _};
    use std::os::unix::fs::FileExt;
    let io = |what: &str, e| FlashError::io(format!("{what} {}", path.display()), e);
    let len = file.metadata().map_err(|e| io("image", e))?.len();
    let layout = twinflash_image::stream_layout(format, BufReader::new(file), len)?;
    let mut offset = 0u64;
    let loads: Vec<ElfLoad> = layout
        .into_iter()
        .map(|(address, len)| {
            let load = ElfLoad {
                address,
                offset,
                len,
            };
            offset += len;
            load
        })
        .collect();
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let flat = tempfile::tempfile_in(dir).map_err(|e| io("temporary file beside image", e))?;
    let mut rewind = file;
    rewind
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|e| io("reading image", e))?;
    // Contiguous data is gathered and written at once: (where in `flat`, bytes). A write error stops the stream
    // (any error does) and is reported as the I/O error it is.
    let mut pending: (u64, Vec<u8>) = (0, Vec::with_capacity(FLATTEN_BUFFER));
    let mut write_error: Option<std::io::Error> = None;
    let flush = |pending: &mut (u64, Vec<u8>)| -> std::io::Result<()> {
        if !pending.1.is_empty() {
            flat.write_all_at(&pending.1, pending.0)?;
            pending.1.clear();
        }
        Ok(())
    };
    let streamed =
        twinflash_image::stream_data(format, BufReader::new(file), len, |address, data| {
            // The layout was judged first, so every piece lies inside one of its loads.
            let at = loads
                .partition_point(|l| l.address <= address)
                .saturating_sub(1);
            let Some(load) = loads.get(at) else {
                return Ok(());
            };
            let to = load.offset + (address - load.address);
            if pending.0 + pending.1.len() as u64 != to
                || pending.1.len() + data.len() > FLATTEN_BUFFER
            {
                if let Err(e) = flush(&mut pending) {
                    write_error = Some(e);
                    return Err(ImageError::Unstreamable(format));
                }
                pending.0 = to;
            }
            pending.1.extend_from_slice(data);
            Ok(())
        });
    if let Some(e) = write_error {
        return Err(io("writing the data of", e));
    }
    streamed?;
    flush(&mut pending).map_err(|e| io("writing the data of", e))?;
    Ok((flat, loads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bin_is_read_in_place_and_a_hex_from_its_flattened_data() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("fw.bin");
        std::fs::write(&bin, (0..=255u8).collect::<Vec<_>>()).unwrap();
        let src = Source::open(&bin, FirmwareFormat::Bin, Some(0x1000)).unwrap();
        let whole = ElfLoad {
            address: 0x1000,
            offset: 0,
            len: 256,
        };
        assert_eq!(src.loads, vec![whole], "the file itself, read in place");
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
        assert!(
            src.loads.iter().all(|l| l.offset > 0),
            "read in place, at the segments' offsets in the ELF: {:?}",
            src.loads
        );
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

    #[test]
    fn intel_hex_and_uf2_are_streamed_with_the_parsers_segments_and_verdicts() {
        use twinflash_image::fixtures;
        let tmp = tempfile::tempdir().unwrap();
        let a = fixtures::pattern(1000, 3);
        let b = fixtures::pattern(300, 4);
        // Records of at most 200 bytes, the second piece first in the file.
        let records = |at: u32, data: &'static [u8]| {
            data.chunks(200)
                .enumerate()
                .map(move |(i, c)| (at + 200 * i as u32, c))
        };
        let (a_, b_): (&'static [u8], &'static [u8]) = (a.clone().leak(), b.clone().leak());
        let hex = fixtures::ihex_pieces(records(0x0800_4000, b_).chain(records(0x0800_0000, a_)));
        let uf2 = [
            fixtures::uf2(0x1000_0000, &a, 256),
            fixtures::uf2(0x1000_2000, &b, 256),
        ]
        .concat();
        for (name, bytes, format) in [
            ("fw.hex", hex.into_bytes(), FirmwareFormat::Ihex),
            ("fw.uf2", uf2, FirmwareFormat::Uf2),
        ] {
            let path = tmp.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            let src = Source::open(&path, format, None).unwrap();
            assert_eq!(
                src.loads.first().map(|l| l.offset),
                Some(0),
                "{name}: its data laid out in a file of its own"
            );
            let parsed = parse(&bytes, format, None).unwrap();
            let want: Vec<(u64, u64)> = parsed
                .segments
                .iter()
                .map(|s| (s.address, s.data.len() as u64))
                .collect();
            assert_eq!(src.segments(), want, "{name}");
            let mut got = Vec::new();
            src.for_each_chunk(100, |_, bytes| {
                got.extend_from_slice(bytes);
                Ok(true)
            })
            .unwrap();
            let expected: Vec<u8> = parsed
                .segments
                .iter()
                .flat_map(|s| s.data.clone())
                .collect();
            assert_eq!(got, expected, "{name}: the same bytes in address order");
        }
        // What the parser refuses, the stream refuses with the same code; nothing is left beside the image.
        let overlapping = fixtures::ihex_pieces([(0x100u32, &a[..16]), (0x108, &b[..16])]);
        for (bytes, format) in [
            (overlapping.into_bytes(), FirmwareFormat::Ihex),
            (b":0400100001020304E2\n".to_vec(), FirmwareFormat::Ihex),
            (b":00000001FF\n".to_vec(), FirmwareFormat::Ihex),
            (vec![0u8; 700], FirmwareFormat::Uf2),
            (vec![0u8; 512], FirmwareFormat::Uf2),
        ] {
            let path = tmp.path().join("bad");
            std::fs::write(&path, &bytes).unwrap();
            let streamed = Source::open(&path, format, None).unwrap_err();
            let parsed = FlashError::from(parse(&bytes, format, None).unwrap_err());
            assert_eq!(streamed.code(), parsed.code(), "{streamed} / {parsed}");
        }
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 3, "only the test's own files: {left:?}");
    }
}
