//! The per-device journal under `state_dir`: what is wanted, what is installed, what was started.
//!
//! An append-only JSON-lines log: each change appends one record and `fdatasync`s it before returning, so an intent
//! is durable before it is acknowledged on MQTT, at the cost of one sync. A torn last line (a crash mid-append) is
//! skipped on load. The log is compacted atomically (temp file, fsync, rename, fsync of the directory) at start-up
//! and every [`COMPACT_AFTER`] records.
//!
//! Every string the agent records is a valid reference (at most 512 bytes) or a bounded prefix of an invalid one, so
//! a record stays far below [`MAX_RECORD_BYTES`]. A longer line was not written by this agent: it is refused on
//! load like any unreadable line, never logged whole and never copied forward (the next write starts a fresh log).
//! At most the last [`MAX_READ_BYTES`] of a journal are read: the newest record is at its end.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::plan::JobState;

const SCHEMA: u32 = 1;
/// Records appended before the log is rewritten as one.
pub const COMPACT_AFTER: usize = 1000;
/// Longest journal line accepted on load (a record the agent writes is at most about 3 KiB).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// The tail of a journal file read on load: a log of [`COMPACT_AFTER`] records of the largest size the agent writes
/// fits.
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;

/// One record as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    schema: u32,
    #[serde(flatten)]
    state: JobState,
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the journal file failed.
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The journal holds no readable record; it was moved aside.
    #[error("journal {path} is unreadable ({reason}); moved aside to {moved_to}")]
    Corrupt {
        path: PathBuf,
        reason: String,
        moved_to: PathBuf,
    },
}

impl JournalError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        match self {
            JournalError::Io { source, .. } if is_disk_full(source) => {
                mqtt_schema::ErrorCode::DiskFull
            }
            _ => mqtt_schema::ErrorCode::Internal,
        }
    }
}

/// True when an I/O error means the disk (or quota) is full.
pub fn is_disk_full(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The open log and how many records it holds.
#[derive(Debug, Default)]
struct Log {
    file: Option<File>,
    records: usize,
}

/// One device's journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    log: Mutex<Log>,
}

impl Journal {
    /// The journal of device `id` (`namespace/name` or `name`) under `state_dir`.
    pub fn new(state_dir: &Path, id: &str) -> Journal {
        let file = crate::file_name::for_id(id, "jsonl");
        Journal {
            path: state_dir.join("journal").join(file),
            log: Mutex::new(Log::default()),
        }
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Loads the newest readable record; a missing file is an empty state. A file with no readable record is
    /// moved aside and reported, so the job starts from what the device reports instead of failing forever.
    pub fn load(&self) -> Result<JobState, JournalError> {
        self.load_counted().map(|(state, _)| state)
    }

    /// [`Journal::load`], also counting the unreadable lines before the last one (garbage in the middle of the
    /// journal, which no crash leaves; a torn last line is what a crash mid-append leaves, and is not counted).
    pub fn load_counted(&self) -> Result<(JobState, usize), JournalError> {
        let text = match read_tail(&self.path, MAX_READ_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((JobState::default(), 0)),
            Err(e) => return Err(self.io(e)),
        };
        let mut newest = None;
        let mut garbage = 0;
        let mut last_error = String::from("empty file");
        let lines: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .collect();
        for (i, line) in lines.iter().enumerate().rev() {
            if line.len() > MAX_RECORD_BYTES {
                // Valid JSON or not, no record of this agent is this long: refused, and counted even when last.
                last_error = format!(
                    "a line of {} bytes, over the {MAX_RECORD_BYTES}-byte bound of a record",
                    line.len()
                );
                garbage += 1;
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) if r.schema == SCHEMA => {
                    if newest.is_none() {
                        newest = Some(r.state);
                    }
                    continue;
                }
                Ok(r) => last_error = format!("schema {} is not {SCHEMA}", r.schema),
                Err(e) => last_error = mqtt_schema::clip::clip(&e.to_string()).to_string(),
            }
            if i + 1 < lines.len() {
                garbage += 1;
            }
        }
        match newest {
            Some(state) => Ok((state, garbage)),
            None => Err(self.move_aside(last_error)),
        }
    }

    fn move_aside(&self, reason: String) -> JournalError {
        let moved_to = self.path.with_extension("jsonl.corrupt");
        if let Err(e) = fs::rename(&self.path, &moved_to) {
            return self.io(e);
        }
        JournalError::Corrupt {
            path: self.path.clone(),
            reason,
            moved_to,
        }
    }

    /// Stores the state durably (one appended record, `fdatasync`ed). Returns only when it is on disk.
    pub fn store(&self, state: &JobState) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(&Record {
            schema: SCHEMA,
            state: state.clone(),
        })
        .map_err(|e| self.io(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        line.push(b'\n');
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.file.is_none() || log.records >= COMPACT_AFTER {
            // (Re)start the log with this record as its only one, atomically.
            self.rewrite(&line)?;
            log.file = Some(
                OpenOptions::new()
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| self.io(e))?,
            );
            log.records = 1;
            return Ok(());
        }
        let file = log
            .file
            .as_mut()
            .ok_or_else(|| self.io(io::Error::other("journal not open")))?;
        file.write_all(&line).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        log.records += 1;
        Ok(())
    }

    fn rewrite(&self, line: &[u8]) -> Result<(), JournalError> {
        if let Some(dir) = self.path.parent() {
            crate::state_dir::private_dir(dir).map_err(|e| self.io(e))?;
        }
        let mut file = crate::state_dir::atomic_file(&self.path).map_err(|e| self.io(e))?;
        file.write_all(line).map_err(|e| self.io(e))?;
        file.commit().map_err(|e| self.io(e))
    }
}

/// The last `max` bytes of the file at `path` (all of it when shorter), starting at a line: a cut first line is
/// dropped.
fn read_tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len <= max {
        let mut buf = Vec::new();
        file.take(max).read_to_end(&mut buf)?;
        return Ok(buf);
    }
    // One byte before the tail too: a tail that starts right after a newline keeps its first line.
    file.seek(SeekFrom::Start(len - max - 1))?;
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf)?;
    let first_line = buf
        .iter()
        .position(|b| *b == b'\n')
        .map_or(buf.len(), |i| i + 1);
    buf.drain(..first_line);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(wanted: &str) -> JobState {
        JobState {
            wanted: Some(wanted.into()),
            installed: Some("r@sha256:0".into()),
            flash_started: Some(wanted.into()),
            outcome: None,
            attempts: 2,
            installed_version: Some("1.0.0".into()),
            ..JobState::default()
        }
    }

    #[test]
    fn store_then_load_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "default/blinky-01");
        assert_eq!(j.load().unwrap(), JobState::default());
        j.store(&st("r@sha256:1")).unwrap();
        j.store(&st("r@sha256:2")).unwrap();
        assert_eq!(j.load().unwrap(), st("r@sha256:2"));
        // A new process reads what the old one wrote.
        assert_eq!(
            Journal::new(dir.path(), "default/blinky-01")
                .load()
                .unwrap(),
            st("r@sha256:2")
        );
        assert!(j.path().ends_with("journal/default__blinky-01.jsonl"));
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "d");
        j.store(&st("r@sha256:1")).unwrap();
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(b"{\"schema\":1,\"wanted\":\"r@sha").unwrap();
        assert_eq!(j.load().unwrap(), st("r@sha256:1"));
    }

    #[test]
    fn the_log_is_compacted_and_stays_correct() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "d");
        for i in 0..(COMPACT_AFTER + 5) {
            j.store(&st(&format!("r@sha256:{i}"))).unwrap();
        }
        let lines = fs::read_to_string(j.path()).unwrap().lines().count();
        assert_eq!(lines, 5, "rewritten as one record, then four more appended");
        assert_eq!(
            j.load().unwrap(),
            st(&format!("r@sha256:{}", COMPACT_AFTER + 4))
        );
    }

    #[test]
    fn garbage_in_the_middle_is_counted_and_a_torn_last_line_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "d");
        j.store(&st("r@sha256:1")).unwrap();
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(b"garbage\n\x00\xff\n{\"schema\":9}\n").unwrap();
        drop(f);
        j.store(&st("r@sha256:2")).unwrap();
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(b"{\"schema\":1,\"wanted\":\"r@sha").unwrap();
        assert_eq!(j.load_counted().unwrap(), (st("r@sha256:2"), 3));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever lines surround the records, loading never panics, finds the newest valid record, and counts
        /// every unreadable line but a last one.
        #[test]
        fn fuzzed_journal_lines(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::num::u8::ANY, 0..80)
                        .prop_map(|b| b.into_iter().filter(|c| *c != b'\n').collect::<Vec<u8>>()),
                    (0u32..5).prop_map(|i| serde_json::to_vec(&Record { schema: SCHEMA, state: st(&format!("r@sha256:{i}")) }).unwrap()),
                ],
                0..30,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let j = Journal::new(dir.path(), "d");
            fs::create_dir_all(j.path().parent().unwrap()).unwrap();
            fs::write(j.path(), lines.join(&b'\n')).unwrap();
            let parse = |l: &Vec<u8>| serde_json::from_slice::<Record>(l).ok().filter(|r| r.schema == SCHEMA);
            let kept: Vec<&Vec<u8>> = lines.iter().filter(|l| !l.iter().all(u8::is_ascii_whitespace)).collect();
            let newest = kept.iter().rev().find_map(|l| parse(l)).map(|r| r.state);
            let bad = kept.iter().filter(|l| parse(l).is_none()).count();
            let last_bad = kept.last().is_some_and(|l| parse(l).is_none());
            match (j.load_counted(), newest) {
                (Ok((state, garbage)), Some(want)) => {
                    prop_assert_eq!(state, want);
                    prop_assert_eq!(garbage, bad - usize::from(last_bad));
                }
                (Err(JournalError::Corrupt { .. }), None) => {}
                (got, want) => prop_assert!(false, "got {:?}, wanted {:?}", got, want),
            }
        }
    }

    /// Issue 23: a record with a 1 MiB `wanted` (no record of this agent is that long) was loaded, logged whole and
    /// copied forward at every start.
    #[test]
    fn an_oversized_record_is_refused_on_load_and_not_copied_forward() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "d");
        j.store(&st("r@sha256:1")).unwrap();
        let huge = JobState {
            wanted: Some("r".repeat(1 << 20)),
            ..st("r@sha256:1")
        };
        let mut line = serde_json::to_vec(&Record {
            schema: SCHEMA,
            state: huge,
        })
        .unwrap();
        line.push(b'\n');
        OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(&line)
            .unwrap();
        let again = Journal::new(dir.path(), "d");
        let (state, garbage) = again.load_counted().unwrap();
        let wanted = state.wanted.clone().unwrap_or_default();
        assert!(
            wanted.len() < 100,
            "the oversized record was loaded: wanted of {} bytes",
            wanted.len()
        );
        assert_eq!((state, garbage), (st("r@sha256:1"), 1));
        again.store(&st("r@sha256:2")).unwrap();
        let len = fs::metadata(again.path()).unwrap().len();
        assert!(len < 1024, "copied forward: the journal holds {len} bytes");

        // The only record oversized: moved aside with a bounded reason, and the device starts from what it reports.
        fs::write(again.path(), &line).unwrap();
        match Journal::new(dir.path(), "d").load() {
            Err(e @ JournalError::Corrupt { .. }) => {
                let text = e.to_string();
                assert!(text.len() < 1024 && text.contains("bound"), "{text}");
            }
            other => panic!(
                "expected Corrupt, got {:?}",
                other.map(|s| s.wanted.map(|w| w.len()))
            ),
        }
    }

    #[test]
    fn only_the_tail_of_a_huge_journal_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "d");
        fs::create_dir_all(j.path().parent().unwrap()).unwrap();
        let mut text = b"garbage\n".repeat((MAX_READ_BYTES as usize) / 8 + 1000);
        for i in 0..3 {
            text.extend(
                serde_json::to_vec(&Record {
                    schema: SCHEMA,
                    state: st(&format!("r@sha256:{i}")),
                })
                .unwrap(),
            );
            text.push(b'\n');
        }
        fs::write(j.path(), &text).unwrap();
        let (state, garbage) = j.load_counted().unwrap();
        assert_eq!(state, st("r@sha256:2"));
        assert!(garbage < (MAX_READ_BYTES as usize) / 8, "{garbage}");
        // A tail that begins exactly at a line keeps that line.
        let exact = dir.path().join("exact");
        fs::write(&exact, b"aaaa\nbbbb\ncccc\n").unwrap();
        assert_eq!(read_tail(&exact, 10).unwrap(), b"bbbb\ncccc\n");
        assert_eq!(read_tail(&exact, 9).unwrap(), b"cccc\n");
        assert_eq!(read_tail(&exact, 100).unwrap(), b"aaaa\nbbbb\ncccc\n");
    }

    #[test]
    fn a_journal_with_no_readable_record_is_moved_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "d");
        fs::create_dir_all(j.path().parent().unwrap()).unwrap();
        fs::write(j.path(), b"{\"schema\":1,\"wanted\":").unwrap();
        match j.load() {
            Err(JournalError::Corrupt { moved_to, .. }) => assert!(moved_to.exists()),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(j.load().unwrap(), JobState::default());
    }
}
