//! The agent's state directory: one agent at a time (an advisory `flock`), private to the agent's user, and no stale
//! temporary files.
//!
//! Two agents on one state directory would both journal, flash and report, and with the same MQTT client id knock
//! each other off the broker about twice a second. The lock is taken before anything is read and held for the
//! process's life (the kernel drops it when the process dies, SIGKILL included, so a crash never leaves it stuck).
//!
//! The agent replays what it finds here as its own: journaled intents, and in DMI mode whole Devices with their
//! flasher settings (a `command` flasher's argv runs as the agent's user, often root). So every directory it uses is
//! created with mode 0700 and every state file with 0600 whatever the umask, and it refuses to start on a directory
//! that group or others can write, or that another user owns ([`StateDirError::Unsafe`]). One place for all of it:
//! [`private_dir`] and [`atomic_file`] are what the journal, the outbox and the DMI store create their files with.

use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file under the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// Mode of the state directory and of every directory the agent creates in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every state file the agent writes.
pub const FILE_MODE: u32 = 0o600;

/// The subdirectories of the state directory the agent uses: checked at start when they exist (whatever the mode),
/// created when the mode uses them (`dmi...`: DMI mode only).
pub const SUBDIRS: [&str; 6] = [
    "journal",
    "outbox",
    "cache",
    "dmi",
    "dmi/devices",
    "dmi/models",
];

/// The state directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Another agent holds the lock.
    #[error(
        "state directory {} is in use by another twinflash-edge (pid {pid}); one agent per state directory",
        dir.display()
    )]
    InUse { dir: PathBuf, pid: String },
    /// The directory or one the agent uses in it is not private to the agent's user.
    #[error(
        "state directory {}: {reason}. The agent replays what it finds there (intents, Devices with their flasher \
         settings) as its own, so only its own user may write there: chown it to uid {uid} and chmod 700 [{}]",
        dir.display(),
        mqtt_schema::ErrorCode::InvalidConfig
    )]
    Unsafe {
        dir: PathBuf,
        reason: String,
        uid: u32,
    },
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
            StateDirError::Unsafe { .. } => mqtt_schema::ErrorCode::InvalidConfig,
            _ => mqtt_schema::ErrorCode::Internal,
        }
    }
}

/// Why a directory cannot be used: an I/O error, or it is not private to the agent's user.
enum Problem {
    Io(io::Error),
    Unsafe(String),
}

impl Problem {
    fn at(self, dir: &Path) -> StateDirError {
        match self {
            Problem::Io(source) => StateDirError::Io {
                dir: dir.to_owned(),
                source,
            },
            Problem::Unsafe(reason) => StateDirError::Unsafe {
                dir: dir.to_owned(),
                reason,
                uid: euid(),
            },
        }
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Why `md` (a directory the agent would trust) is not private to the agent's user, if it is not.
fn not_private(md: &Metadata) -> Option<String> {
    if !md.is_dir() {
        return Some("is not a directory".into());
    }
    if md.uid() != euid() {
        return Some(format!(
            "is owned by uid {}, and the agent runs as uid {}",
            md.uid(),
            euid()
        ));
    }
    let mode = md.mode() & 0o7777;
    (mode & 0o022 != 0).then(|| format!("is writable by group or others (mode {mode:04o})"))
}

/// Checks `dir` if it exists (a symbolic link is followed: what counts is the directory the agent would use).
fn check(dir: &Path) -> Result<bool, Problem> {
    match fs::metadata(dir) {
        Ok(md) => match not_private(&md) {
            Some(reason) => Err(Problem::Unsafe(reason)),
            None => Ok(true),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Problem::Io(e)),
    }
}

/// Creates `dir` (and missing parents) with mode 0700 whatever the umask, or checks the one that is there.
fn ensure(dir: &Path) -> Result<(), Problem> {
    if check(dir)? {
        return Ok(());
    }
    // The mode is masked by the umask, which can only take bits away: never more than 0700 in between. Set it
    // exactly afterwards, so an unusual umask (0277) cannot leave the agent a directory it cannot write.
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(Problem::Io)?;
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(Problem::Io)?;
    // Created by someone else in between: checked like any other.
    check(dir).map(|_| ())
}

/// Creates the directory `dir` (and missing parents) with mode 0700 whatever the umask, or checks the one that is
/// there: a directory of the agent's user that neither group nor others can write (an `PermissionDenied` error
/// saying why otherwise). The journal, the outbox and the DMI store create their directories with it.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    ensure(dir).map_err(|p| match p {
        Problem::Io(e) => e,
        Problem::Unsafe(reason) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {reason}", dir.display()),
        ),
    })
}

/// Opens `path` for an atomic replacement (temporary file, fsync, rename, fsync of the directory) whose file gets
/// mode 0600 whatever the umask and whatever mode the file it replaces had.
pub fn atomic_file(path: &Path) -> io::Result<atomic_write_file::AtomicWriteFile> {
    use atomic_write_file::unix::OpenOptionsExt as _;
    let file = atomic_write_file::OpenOptions::new()
        .preserve_mode(false)
        .mode(FILE_MODE)
        .open(path)?;
    file.as_file()
        .set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Reads the file at `path`, which must be a regular file of at most `max` bytes (a symbolic link to one is
/// followed). A FIFO, a device (`/dev/zero`), a socket or a directory is refused without being read, and without
/// blocking on a FIFO that has no writer; a longer file is refused (`InvalidData`) after reading at most `max + 1`
/// bytes. For state files and for the files settings name (keys, certificates, passwords).
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let not_regular = |md: &Metadata| {
        let ft = md.file_type();
        (!ft.is_file()).then(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a regular file (a FIFO, a device, a socket or a directory)",
                    path.display()
                ),
            )
        })
    };
    if let Some(e) = not_regular(&fs::metadata(path)?) {
        return Err(e);
    }
    // Swapped for a FIFO since: O_NONBLOCK opens it at once, and it is refused below.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if let Some(e) = not_regular(&file.metadata()?) {
        return Err(e);
    }
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is longer than {max} bytes", path.display()),
        ));
    }
    Ok(buf)
}

/// The exclusive hold on a state directory; released when dropped or when the process ends.
#[derive(Debug)]
pub struct StateDirLock {
    _lock: Flock<File>,
}

/// Takes the state directory `dir` (creating it with mode 0700, or refusing one that is not private to the agent's
/// user), or says which agent has it.
pub fn lock(dir: &Path) -> Result<StateDirLock, StateDirError> {
    let io_err = |source| StateDirError::Io {
        dir: dir.to_owned(),
        source,
    };
    ensure(dir).map_err(|p| p.at(dir))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(io_err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            // Name the holder for the next one that tries (best effort: the lock is what counts).
            let _ = lock.set_permissions(Permissions::from_mode(FILE_MODE));
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

/// After [`lock`]: creates the subdirectories the agent uses (`dmi`: the DMI ones too) with mode 0700, and checks
/// every one of [`SUBDIRS`] that exists. The first that is not private to the agent's user stops the start.
pub fn prepare(dir: &Path, dmi: bool) -> Result<(), StateDirError> {
    for sub in SUBDIRS {
        let path = dir.join(sub);
        let result = if dmi || !sub.starts_with("dmi") {
            ensure(&path)
        } else {
            check(&path).map(|_| ())
        };
        result.map_err(|p| p.at(&path))?;
    }
    Ok(())
}

/// `--check-config`: checks the state directory and its subdirectories as [`lock`] and [`prepare`] would, without
/// creating anything (a missing one is fine: the agent creates it).
pub fn check_existing(dir: &Path) -> Result<(), StateDirError> {
    for path in std::iter::once(dir.to_owned()).chain(SUBDIRS.iter().map(|s| dir.join(s))) {
        check(&path).map_err(|p| p.at(&path))?;
    }
    Ok(())
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
    fn a_directory_others_can_write_or_another_user_owns_is_refused_and_a_new_one_is_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let _lock = lock(&dir).unwrap();
        prepare(&dir, true).unwrap();
        for sub in std::iter::once("").chain(SUBDIRS) {
            let mode = fs::metadata(dir.join(sub)).unwrap().mode() & 0o7777;
            assert_eq!(mode, DIR_MODE, "{sub}");
        }
        let lock_mode = fs::metadata(dir.join(LOCK_FILE)).unwrap().mode() & 0o7777;
        assert_eq!(lock_mode, FILE_MODE);
        let devices = dir.join("dmi/devices");
        fs::set_permissions(&devices, Permissions::from_mode(0o777)).unwrap();
        for refused in [prepare(&dir, false), check_existing(&dir)] {
            match refused {
                Err(e @ StateDirError::Unsafe { .. }) => {
                    assert_eq!(e.code(), mqtt_schema::ErrorCode::InvalidConfig);
                    let text = e.to_string();
                    assert!(
                        text.contains("dmi/devices") && text.contains("0777"),
                        "{text}"
                    );
                }
                other => panic!("expected Unsafe, got {other:?}"),
            }
        }
        fs::set_permissions(&devices, Permissions::from_mode(0o750)).unwrap();
        prepare(&dir, true).unwrap();
        // A regular file where a directory belongs.
        fs::remove_dir(dir.join("dmi/models")).unwrap();
        fs::write(dir.join("dmi/models"), b"").unwrap();
        assert!(matches!(
            prepare(&dir, true),
            Err(StateDirError::Unsafe { .. })
        ));
        let err = private_dir(&dir.join("dmi/models")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn atomic_files_are_0600_whatever_the_file_they_replace() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        let mut f = atomic_file(&path).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, FILE_MODE);
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
