//! The partial download: `<hex>.partial` plus `<hex>.state` (durable offset and the serialized
//! SHA-256 state). A checkpoint fsyncs the partial before it records the offset, so it never
//! claims bytes that are not on disk; resuming truncates whatever came after the checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest, Sha256};

use crate::error::FetchError;

const STATE_MAGIC: &[u8; 8] = b"TFSTATE1";

/// How the download continues, decided when the partial is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Nothing durable: start at byte 0.
    Fresh,
    /// Continue at this durable offset.
    PartialContent(u64),
}

/// A partial download of one blob.
pub struct Partial {
    hex: String,
    dir: PathBuf,
    file: File,
    hasher: Sha256,
    offset: u64,
    durable: u64,
    resume: Resume,
    /// A checkpoint running on its own thread (fsync, then the state file).
    pending: Option<std::thread::JoinHandle<Result<u64, FetchError>>>,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial")
            .field("hex", &self.hex)
            .field("offset", &self.offset)
            .field("durable", &self.durable)
            .finish()
    }
}

/// Paths of the partial and its state for blob `hex` in `dir`.
pub fn partial_paths(dir: &Path, hex: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{hex}.partial")),
        dir.join(format!("{hex}.state")),
    )
}

/// Reads a checkpoint: the durable offset and the hash state at that offset.
pub fn read_state(path: &Path) -> Option<(u64, Sha256)> {
    let mut bytes = Vec::new();
    File::open(path).ok()?.read_to_end(&mut bytes).ok()?;
    let rest = bytes.strip_prefix(STATE_MAGIC.as_slice())?;
    let (offset, state) = rest.split_at_checked(8)?;
    let offset = u64::from_le_bytes(offset.try_into().ok()?);
    let state = state.try_into().ok()?;
    let hasher = Sha256::deserialize(state).ok()?;
    Some((offset, hasher))
}

impl Partial {
    /// Opens (or creates) the partial for `hex` in `dir`, continuing from the last checkpoint.
    pub fn open(dir: &Path, hex: &str) -> Result<Self, FetchError> {
        let (partial_path, state_path) = partial_paths(dir, hex);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial_path)
            .map_err(|e| FetchError::io("open partial", &partial_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| FetchError::io("stat partial", &partial_path, e))?
            .len();
        let (offset, hasher, resume) = match read_state(&state_path) {
            Some((offset, hasher)) if offset > 0 && offset <= len => {
                (offset, hasher, Resume::PartialContent(offset))
            }
            _ => (0, Sha256::new(), Resume::Fresh),
        };
        let mut partial = Self {
            hex: hex.to_owned(),
            dir: dir.to_owned(),
            file,
            hasher,
            offset,
            durable: offset,
            resume,
            pending: None,
        };
        partial.truncate_to_offset()?;
        Ok(partial)
    }

    fn truncate_to_offset(&mut self) -> Result<(), FetchError> {
        let path = self.partial_path();
        self.file
            .set_len(self.offset)
            .map_err(|e| FetchError::io("truncate partial", &path, e))?;
        self.file
            .seek(SeekFrom::Start(self.offset))
            .map_err(|e| FetchError::io("seek partial", &path, e))?;
        Ok(())
    }

    /// How this partial was opened.
    pub fn resume(&self) -> Resume {
        self.resume
    }

    /// Bytes written so far (durable or not).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes covered by the last checkpoint.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    fn partial_path(&self) -> PathBuf {
        partial_paths(&self.dir, &self.hex).0
    }

    fn state_path(&self) -> PathBuf {
        partial_paths(&self.dir, &self.hex).1
    }

    /// Drops everything and starts at byte 0 (the source answered a Range request with 200).
    pub fn restart(&mut self) -> Result<(), FetchError> {
        self.settle()?;
        self.offset = 0;
        self.hasher = Sha256::new();
        self.truncate_to_offset()?;
        self.checkpoint()
    }

    /// Appends bytes and hashes them.
    pub fn write(&mut self, data: &[u8]) -> Result<(), FetchError> {
        self.file.write_all(data).map_err(|e| {
            let path = self.partial_path();
            FetchError::io("write partial", path, e)
        })?;
        self.advance(data);
        Ok(())
    }

    /// A second descriptor of the partial file sharing its position, for a writer thread that
    /// appends while this side hashes. Bytes written through it are given to
    /// [`Partial::advance`] only once written, so a checkpoint never names unwritten bytes.
    pub fn writer(&self) -> Result<File, FetchError> {
        self.file
            .try_clone()
            .map_err(|e| FetchError::io("dup partial", self.partial_path(), e))
    }

    /// Hashes and counts bytes a [`Partial::writer`] has already appended to the file.
    pub fn advance(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.offset += data.len() as u64;
    }

    /// The partial file's path.
    pub fn path(&self) -> PathBuf {
        self.partial_path()
    }

    /// Makes the bytes written so far durable and records offset and hash state atomically.
    pub fn checkpoint(&mut self) -> Result<(), FetchError> {
        self.settle()?;
        self.durable = (self.checkpoint_job()?)()?;
        Ok(())
    }

    /// Starts a checkpoint of the bytes written so far on another thread, so the download goes
    /// on while the disk catches up. Skipped (returns false) while the previous one still runs.
    pub fn checkpoint_in_background(&mut self) -> Result<bool, FetchError> {
        if self.pending.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(false);
        }
        self.settle()?;
        let job = self.checkpoint_job()?;
        let handle = std::thread::Builder::new()
            .name("twinflash-checkpoint".to_owned())
            .spawn(job)
            .map_err(|e| FetchError::io("spawn checkpoint thread", self.partial_path(), e))?;
        self.pending = Some(handle);
        Ok(true)
    }

    /// Waits for a background checkpoint, if any, and takes its result.
    pub fn settle(&mut self) -> Result<(), FetchError> {
        if let Some(handle) = self.pending.take() {
            match handle.join() {
                Ok(result) => self.durable = result?,
                Err(_) => return Err(FetchError::Config("checkpoint thread panicked".to_owned())),
            }
        }
        Ok(())
    }

    /// The work of one checkpoint at the current offset: fsync the partial (through its own
    /// descriptor), then write the state. Returns the durable offset.
    fn checkpoint_job(
        &self,
    ) -> Result<impl FnOnce() -> Result<u64, FetchError> + Send + 'static, FetchError> {
        let partial_path = self.partial_path();
        let file = self
            .file
            .try_clone()
            .map_err(|e| FetchError::io("dup partial", &partial_path, e))?;
        let state_path = self.state_path();
        let offset = self.offset;
        let mut state = Vec::with_capacity(128);
        state.extend_from_slice(STATE_MAGIC);
        state.extend_from_slice(&offset.to_le_bytes());
        state.extend_from_slice(self.hasher.serialize().as_slice());
        Ok(move || {
            file.sync_data()
                .map_err(|e| FetchError::io("fsync partial", &partial_path, e))?;
            write_atomic(&state_path, &state)?;
            Ok(offset)
        })
    }

    /// The sha256 of everything written (`sha256:<hex>`).
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Removes the partial and its state.
    pub fn discard(mut self) -> Result<(), FetchError> {
        let _ = self.settle();
        let (partial, state) = partial_paths(&self.dir, &self.hex);
        drop(self.file);
        remove_if_exists(&state)?;
        remove_if_exists(&partial)?;
        Ok(())
    }

    /// Verifies size and digest, then fsyncs, renames into `dest` and fsyncs the directory.
    /// On a mismatch the partial is discarded.
    pub fn finish(mut self, size: u64, expected: &str, dest: &Path) -> Result<(), FetchError> {
        self.settle()?;
        let actual = self.digest();
        if self.offset != size || actual != expected {
            let note = if self.offset != size {
                format!("{} bytes, expected {size}", self.offset)
            } else {
                actual
            };
            self.discard()?;
            return Err(FetchError::DigestMismatch {
                expected: expected.to_owned(),
                actual: note,
            });
        }
        let path = self.partial_path();
        self.file
            .sync_all()
            .map_err(|e| FetchError::io("fsync partial", &path, e))?;
        std::fs::rename(&path, dest).map_err(|e| FetchError::io("rename into cache", dest, e))?;
        sync_dir(&self.dir)?;
        remove_if_exists(&self.state_path())?;
        Ok(())
    }
}

/// Writes `data` to `path` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FetchError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| FetchError::io("create", &tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| FetchError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FetchError::io("rename", path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), FetchError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FetchError::io("fsync directory", dir, e))
}

fn remove_if_exists(path: &Path) -> Result<(), FetchError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FetchError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn resumes_from_the_checkpoint_and_drops_later_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut p = Partial::open(dir.path(), "ab").unwrap();
        assert_eq!(p.resume(), Resume::Fresh);
        p.write(&data[..3000]).unwrap();
        p.checkpoint().unwrap();
        p.write(&data[3000..5000]).unwrap(); // not checkpointed: lost on "crash"
        drop(p);

        let mut p = Partial::open(dir.path(), "ab").unwrap();
        assert_eq!(p.resume(), Resume::PartialContent(3000));
        assert_eq!(p.offset(), 3000);
        p.write(&data[3000..]).unwrap();
        let dest = dir.path().join("ab");
        p.finish(data.len() as u64, &sha(&data), &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(!dir.path().join("ab.partial").exists());
        assert!(!dir.path().join("ab.state").exists());
    }

    #[test]
    fn a_background_checkpoint_is_durable_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partial::open(dir.path(), "bb").unwrap();
        p.write(b"0123456789").unwrap();
        assert!(p.checkpoint_in_background().unwrap());
        p.write(b"abc").unwrap();
        p.settle().unwrap();
        assert_eq!(p.durable(), 10);
        drop(p);
        let p = Partial::open(dir.path(), "bb").unwrap();
        assert_eq!(p.resume(), Resume::PartialContent(10));
        assert_eq!(p.digest(), {
            let mut h = Sha256::new();
            h.update(b"0123456789");
            format!("sha256:{}", hex::encode(h.finalize()))
        });
    }

    #[test]
    fn bytes_appended_through_the_writer_then_advanced_resume_like_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partial::open(dir.path(), "dd").unwrap();
        p.write(b"0123").unwrap();
        let mut w = p.writer().unwrap();
        w.write_all(b"4567").unwrap();
        p.advance(b"4567");
        w.write_all(b"89").unwrap(); // written, not yet hashed: not in the checkpoint
        p.checkpoint().unwrap();
        drop((p, w));
        let p = Partial::open(dir.path(), "dd").unwrap();
        assert_eq!(p.resume(), Resume::PartialContent(8));
        assert_eq!(
            std::fs::read(dir.path().join("dd.partial")).unwrap(),
            b"01234567"
        );
        assert_eq!(p.digest(), sha(b"01234567"));
    }

    #[test]
    fn mismatch_discards_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partial::open(dir.path(), "cd").unwrap();
        p.write(b"hello").unwrap();
        p.checkpoint().unwrap();
        let dest = dir.path().join("cd");
        let err = p.finish(5, &sha(b"hellO"), &dest).unwrap_err();
        assert!(matches!(err, FetchError::DigestMismatch { .. }));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_state_beyond_the_file_or_garbage_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partial::open(dir.path(), "ef").unwrap();
        p.write(b"0123456789").unwrap();
        p.checkpoint().unwrap();
        drop(p);
        std::fs::write(dir.path().join("ef.partial"), b"0123").unwrap();
        assert_eq!(
            Partial::open(dir.path(), "ef").unwrap().resume(),
            Resume::Fresh
        );
        std::fs::write(dir.path().join("ef.state"), b"TFSTATE1garbage").unwrap();
        let p = Partial::open(dir.path(), "ef").unwrap();
        assert_eq!(p.resume(), Resume::Fresh);
        assert_eq!(p.offset(), 0);
    }

    #[test]
    fn restart_resets_hash_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partial::open(dir.path(), "aa").unwrap();
        p.write(b"junk").unwrap();
        p.restart().unwrap();
        p.write(b"good").unwrap();
        let dest = dir.path().join("aa");
        p.finish(4, &sha(b"good"), &dest).unwrap();
        assert_eq!(std::fs::read(dest).unwrap(), b"good");
    }
}
