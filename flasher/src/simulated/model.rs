//! The behavioural model of NOR flash kept in `flash.bin`: sector erase to 0xFF, page programming
//! that can only clear bits (so writing over unerased data corrupts it), and a write-speed throttle.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::FlashError;

/// The flash image file in the device directory.
pub const FLASH_FILE: &str = "flash.bin";

/// The value of an erased byte.
pub const ERASED: u8 = 0xFF;

/// Bytes of [`ERASED`] written at a time: erasing costs this much memory whatever the size of the flash or a sector.
pub const ERASE_CHUNK: usize = 64 * 1024;

/// Writes `len` erased bytes at `offset`, [`ERASE_CHUNK`] at a time.
fn fill_erased(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let erased = [ERASED; ERASE_CHUNK];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ERASE_CHUNK as u64) as usize;
        file.write_all_at(&erased[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Create an erased `flash.bin` atomically (a crash never leaves a short file behind).
fn create_erased(dir: &Path, path: &Path, size: u64) -> Result<(), FlashError> {
    let tmp = dir.join(format!(".{FLASH_FILE}.{}.tmp", std::process::id()));
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let file = File::create(&tmp).map_err(|e| FlashError::io(ctx("creating"), e))?;
    fill_erased(&file, 0, size).map_err(|e| FlashError::io(ctx("initialising"), e))?;
    file.sync_all()
        .map_err(|e| FlashError::io(ctx("syncing"), e))?;
    std::fs::rename(&tmp, path).map_err(|e| FlashError::io(ctx("renaming"), e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FlashError::io(format!("syncing {}", dir.display()), e))
}

/// Flash memory backed by a file; offsets are relative to the start of the flash.
#[derive(Debug)]
pub struct FlashMemory {
    file: File,
    path: PathBuf,
    size: u64,
    sector_size: u64,
    page_size: u64,
    write_bytes_per_sec: Option<u64>,
}

/// What one page program did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramResult {
    /// True when some bit would have had to go from 0 to 1: the cell now holds `old & new`.
    pub corrupt: bool,
}

impl FlashMemory {
    /// Open `dir/flash.bin`, creating it erased (all 0xFF) when missing. A file of another size is an error.
    pub fn open(
        dir: &Path,
        size: u64,
        sector_size: u64,
        page_size: u64,
        write_bytes_per_sec: Option<u64>,
    ) -> Result<FlashMemory, FlashError> {
        let path = dir.join(FLASH_FILE);
        let ctx = |what: &str| format!("{what} {}", path.display());
        if !path.exists() {
            create_erased(dir, &path, size)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| FlashError::io(ctx("opening"), e))?;
        let len = file
            .metadata()
            .map_err(|e| FlashError::io(ctx("stat"), e))?
            .len();
        if len != size {
            return Err(FlashError::Config {
                detail: format!(
                    "{} is {len} bytes, configured size is {size}",
                    path.display()
                ),
            });
        }
        Ok(FlashMemory {
            file,
            path,
            size,
            sector_size,
            page_size,
            write_bytes_per_sec,
        })
    }

    /// Flash size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Erase granularity.
    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    /// Programming granularity.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), FlashError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(FlashError::TooLarge {
                detail: format!(
                    "{len} bytes at offset {offset:#x} exceed flash of {:#x} bytes",
                    self.size
                ),
            });
        }
        Ok(())
    }

    /// Read `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, FlashError> {
        self.check_range(offset, len)?;
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| FlashError::io(format!("reading {}", self.path.display()), e))?;
        Ok(buf)
    }

    /// Erase the sector with index `sector` (all bytes 0xFF), without holding a sector in memory.
    pub fn erase_sector(&self, sector: u64) -> Result<(), FlashError> {
        let offset = sector.saturating_mul(self.sector_size);
        self.check_range(offset, self.sector_size)?;
        fill_erased(&self.file, offset, self.sector_size)
            .map_err(|e| FlashError::io(format!("erasing sector {sector}"), e))
    }

    /// Program `data` at `offset`, which must lie within one page. Programming only clears bits.
    pub fn program(&self, offset: u64, data: &[u8]) -> Result<ProgramResult, FlashError> {
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 || offset / self.page_size != (offset + len - 1) / self.page_size {
            return Err(FlashError::Internal {
                detail: format!("program of {len} bytes at {offset:#x} crosses a page boundary"),
            });
        }
        let old = self.read(offset, len)?;
        let mut corrupt = false;
        let new: Vec<u8> = old
            .iter()
            .zip(data)
            .map(|(o, d)| {
                corrupt |= o & d != *d;
                o & d
            })
            .collect();
        self.file
            .write_all_at(&new, offset)
            .map_err(|e| FlashError::io(format!("programming at {offset:#x}"), e))?;
        if let Some(rate) = self.write_bytes_per_sec.filter(|r| *r > 0) {
            std::thread::sleep(Duration::from_secs_f64(len as f64 / rate as f64));
        }
        Ok(ProgramResult { corrupt })
    }

    /// Overwrite a byte regardless of flash physics (fault injection of a weak cell).
    pub(crate) fn poke(&self, offset: u64, value: u8) -> Result<(), FlashError> {
        self.check_range(offset, 1)?;
        self.file
            .write_all_at(&[value], offset)
            .map_err(|e| FlashError::io(format!("poking {offset:#x}"), e))
    }

    /// Make programmed data durable.
    pub fn sync(&self) -> Result<(), FlashError> {
        self.file
            .sync_data()
            .map_err(|e| FlashError::io(format!("syncing {}", self.path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(dir: &Path) -> FlashMemory {
        FlashMemory::open(dir, 8192, 4096, 256, None).unwrap()
    }

    #[test]
    fn fresh_flash_is_erased() {
        let dir = tempfile::tempdir().unwrap();
        let m = mem(dir.path());
        assert_eq!(
            std::fs::read(dir.path().join(FLASH_FILE)).unwrap(),
            vec![0xFF; 8192]
        );
        assert_eq!(m.read(8190, 2).unwrap(), vec![0xFF, 0xFF]);
        assert!(m.read(8190, 3).is_err());
    }

    #[test]
    fn programming_clears_bits_only_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let m = mem(dir.path());
        assert!(!m.program(0, &[0x0F, 0xF0]).unwrap().corrupt);
        // 0x0F -> 0x03 only clears bits: fine. 0xF0 -> 0x0F needs 0->1: corrupt, cell holds 0x00.
        let r = m.program(0, &[0x03, 0x0F]).unwrap();
        assert!(r.corrupt);
        assert_eq!(m.read(0, 2).unwrap(), vec![0x03, 0x00]);
        m.erase_sector(0).unwrap();
        assert_eq!(m.read(0, 2).unwrap(), vec![0xFF, 0xFF]);
        assert!(m.program(250, &[0; 10]).is_err(), "crosses a page");
        assert!(m.erase_sector(2).is_err());
    }

    #[test]
    fn size_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FLASH_FILE), [0xFF; 10]).unwrap();
        let err = FlashMemory::open(dir.path(), 8192, 4096, 256, None).unwrap_err();
        assert!(err.to_string().contains("configured size"), "{err}");
    }
}
