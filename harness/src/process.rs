//! Child processes that die with the test: binaries located on `PATH` or their Debian path, spawned
//! from one long-lived thread with `PR_SET_PDEATHSIG`, killed by pid and reaped on drop.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::HarnessError;

/// Directories searched after `PATH` by [`tool_available`]; Debian puts daemons in `sbin`, which is
/// not on a non-root `PATH`.
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A memory field of `/proc/<pid>/status` in KiB (`"VmRSS"`, `"VmHWM"`), for the memory figures of tests and
/// benchmarks; `pid` None reads this process. None when the process or the field is gone.
pub fn status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = pid.map_or_else(
        || "/proc/self/status".to_owned(),
        |p| format!("/proc/{p}/status"),
    );
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Whether an executable called `name` is on `PATH` or in `/usr/sbin`, `/usr/bin`, `/sbin`, `/bin`.
/// Use it to skip a test with a clear message when an optional tool is missing.
pub fn tool_available(name: &str) -> bool {
    find_executable(name).is_some()
}

fn find_executable(name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `binary` from `PATH`, else `fallback`.
pub(crate) fn find_binary(
    binary: &'static str,
    fallback: &'static str,
) -> Result<PathBuf, HarnessError> {
    if let Some(found) = find_executable(binary) {
        return Ok(found);
    }
    let fallback_path = PathBuf::from(fallback);
    if is_executable(&fallback_path) {
        return Ok(fallback_path);
    }
    Err(HarnessError::BinaryNotFound { binary, fallback })
}

type SpawnJob = (Command, Sender<io::Result<Child>>);

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. Test
/// threads, tokio workers and blocking-pool threads come and go, so every child is forked by this
/// one thread, which lives as long as the test process.
fn spawner() -> Option<&'static Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Option<Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnJob>();
            thread::Builder::new()
                .name("harness-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Spawns `cmd` so that the child gets SIGKILL when this test process dies.
fn spawn_dying_with_us(mut cmd: Command) -> io::Result<Child> {
    die_with_parent(&mut cmd);
    let Some(tx) = spawner() else {
        return cmd.spawn();
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| io::Error::other("harness spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("harness spawner thread dropped the request"))?
}

#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec. It only calls prctl(2) and
    // getppid(2), which are async-signal-safe, and builds io::Errors from raw OS codes, which does
    // not allocate. It touches no lock and no state shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent died between fork and prctl: do not run as an orphan.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// A running service process, SIGKILLed and reaped on drop (and killed by the kernel if the test process dies
/// first: `PR_SET_PDEATHSIG`). The child sits behind a mutex so that `is_running(&self)` can reap it without a
/// second owner racing on the pid. Public for the test kit, which starts user-provided binaries (a real edgecore
/// and cloudcore) the same way.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Mutex<Child>,
    pid: u32,
    binary: &'static str,
}

impl ServiceProcess {
    /// Spawns `cmd` with stdout and stderr appended to `output`.
    pub fn spawn(
        binary: &'static str,
        mut cmd: Command,
        output: &Path,
    ) -> Result<ServiceProcess, HarnessError> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)
            .map_err(|e| HarnessError::io(format!("open {}", output.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::io(format!("dup {}", output.display()), e))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let child =
            spawn_dying_with_us(cmd).map_err(|source| HarnessError::Spawn { binary, source })?;
        let pid = child.id();
        tracing::debug!(binary, pid, "spawned");
        Ok(ServiceProcess {
            child: Mutex::new(child),
            pid,
            binary,
        })
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some(status)` once the process has exited (and is reaped).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// SIGKILL by pid (unless already reaped, so a reused pid is never hit) and reap.
    pub fn kill(&self) {
        let mut child = self.child();
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// SIGTERM, wait up to `grace` for a clean exit, SIGKILL after. True if it exited on SIGTERM.
    pub fn terminate(&self, grace: Duration) -> bool {
        {
            let mut child = self.child();
            if !matches!(child.try_wait(), Ok(None)) {
                return true;
            }
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!(
            binary = self.binary,
            pid = self.pid,
            "no exit after SIGTERM; SIGKILL"
        );
        self.kill();
        false
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ready` every few ms until it holds, the process exits or `timeout` passes.
pub(crate) fn wait_ready(
    proc: &ServiceProcess,
    port: u16,
    timeout: Duration,
    logs: &[&Path],
    mut ready: impl FnMut() -> bool,
) -> Result<(), HarnessError> {
    let started = Instant::now();
    loop {
        if let Some(status) = proc.exit_status() {
            return Err(HarnessError::Exited {
                binary: proc.binary,
                port,
                status: status.to_string(),
                log_tail: log_tail(logs, 20),
            });
        }
        if ready() {
            tracing::debug!(binary = proc.binary, port, waited = ?started.elapsed(), "ready");
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(HarnessError::NotReady {
                binary: proc.binary,
                port,
                waited: started.elapsed(),
                log_tail: log_tail(logs, 20),
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The last `lines` lines of each file, each block headed by the file name.
pub fn log_tail(files: &[&Path], lines: usize) -> String {
    let mut out = String::new();
    for file in files {
        let text = fs::read(file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        out.push_str(&format!("--- {} ---\n", file.display()));
        for line in &all[start..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds within 100 ms.
pub fn tcp_accepts(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}
