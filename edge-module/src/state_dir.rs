//! The agent's state directory: one agent at a time (an advisory `flock`), and no stale temporary files.
//!
//! Two agents on one state directory would both journal, flash and report, and with the same MQTT client id knock
//! each other off the broker about twice a second. The lock is taken before anything is read and held for the
//! process's life (the kernel drops it when the process dies, SIGKILL included, so a crash never leaves it stuck).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file under the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// The state directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Another agent holds the lock.
    #[error(
        "state directory {} is in use by another twinflash-edge (pid {pid}); one agent per state directory",
        dir.display()
    )]
    InUse { dir: PathBuf, pid: String },
    /// The directory or its lock file cannot be created or locked.
    #[error("state directory {}: {source}", dir.display())]
    Io { dir: PathBuf, source: io::Error },
}

impl StateDirError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        match self {
            StateDirError::Io { source, .. } if crate::journal::is_disk_full(source) => {
                mqtt_schema::ErrorCode::DiskFull
            }
            _ => mqtt_schema::ErrorCode::Internal,
        }
    }
}

/// The exclusive hold on a state directory; released when dropped or when the process ends.
#[derive(Debug)]
pub struct StateDirLock {
    _lock: Flock<File>,
}

/// Takes the state directory `dir` (creating it), or says which agent has it.
pub fn lock(dir: &Path) -> Result<StateDirLock, StateDirError> {
    let io_err = |source| StateDirError::Io {
        dir: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_err)?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            // Name the holder for the next one that tries (best effort: the lock is what counts).
            let _ = fs::write(&path, format!("{}\n", std::process::id()));
            Ok(StateDirLock { _lock: lock })
        }
        Err((_, Errno::EWOULDBLOCK)) => Err(StateDirError::InUse {
            dir: dir.to_owned(),
            pid: fs::read_to_string(&path)
                .map(|s| s.trim().chars().take(20).collect())
                .unwrap_or_default(),
        }),
        Err((_, errno)) => Err(io_err(io::Error::from(errno))),
    }
}

/// Removes the temporary files an interrupted atomic write left in `dir` (`.<name>.XXXXXX`, see atomic-write-file)
/// and returns how many. Call it only while holding the lock: a running agent's temporary files are live.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_temp = name.starts_with('.')
            && [".json.", ".jsonl."].iter().any(|ext| name.contains(ext))
            && entry.file_type().is_ok_and(|t| t.is_file());
        if is_temp && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        match lock(dir.path()) {
            Err(StateDirError::InUse { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        assert!(lock(dir.path()).is_ok());
    }

    #[test]
    fn stale_temporary_files_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            ".default__a.json.Xk3j9Q",
            ".default__a.jsonl.abcdef",
            "default__a.json",
            "default__a.jsonl",
            ".hidden-note",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".hidden-note", "default__a.json", "default__a.jsonl"]
        );
        assert_eq!(remove_stale_temps(&dir.path().join("missing")), 0);
    }
}
