//! The per-device journal under `state_dir`: what is wanted, what is installed, what was started.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) before an intent is acknowledged on MQTT,
//! so a restart rebuilds every job from it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::JobState;

const SCHEMA: u32 = 1;

/// The journal file as stored.
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
    /// The journal file holds something this version cannot read; it was moved aside.
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

/// One device's journal file.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// The journal of device `id` (`namespace/name` or `name`) under `state_dir`.
    pub fn new(state_dir: &Path, id: &str) -> Journal {
        let file = format!("{}.json", id.replace('/', "__"));
        Journal {
            path: state_dir.join("journal").join(file),
        }
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the journal; a missing file is an empty state. An unreadable one is moved aside and reported, so the
    /// job starts from what the device reports instead of failing forever.
    pub fn load(&self) -> Result<JobState, JournalError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(JobState::default()),
            Err(source) => {
                return Err(JournalError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.schema == SCHEMA => Ok(r.state),
            Ok(r) => Err(self.move_aside(format!("schema {} is not {SCHEMA}", r.schema))),
            Err(e) => Err(self.move_aside(e.to_string())),
        }
    }

    fn move_aside(&self, reason: String) -> JournalError {
        let moved_to = self.path.with_extension("json.corrupt");
        if let Err(source) = fs::rename(&self.path, &moved_to) {
            return JournalError::Io {
                path: self.path.clone(),
                source,
            };
        }
        JournalError::Corrupt {
            path: self.path.clone(),
            reason,
            moved_to,
        }
    }

    /// Stores the state durably. Returns only when the new content is on disk.
    pub fn store(&self, state: &JobState) -> Result<(), JournalError> {
        let io_err = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let record = Record {
            schema: SCHEMA,
            state: state.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let mut file = atomic_write_file::AtomicWriteFile::open(&self.path).map_err(io_err)?;
        file.write_all(&bytes).map_err(io_err)?;
        file.commit().map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "default/blinky-01");
        assert_eq!(j.load().unwrap(), JobState::default());
        let st = JobState {
            wanted: Some("r@sha256:1".into()),
            installed: Some("r@sha256:0".into()),
            flash_started: Some("r@sha256:1".into()),
            outcome: None,
            attempts: 2,
            installed_version: Some("1.0.0".into()),
        };
        j.store(&st).unwrap();
        assert_eq!(j.load().unwrap(), st);
        assert!(j.path().ends_with("journal/default__blinky-01.json"));
    }

    #[test]
    fn a_corrupt_journal_is_moved_aside_not_fatal() {
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
