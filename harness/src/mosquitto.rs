//! A real mosquitto broker on a free loopback port, with its own temp dir for config, log and
//! persistence db; hard stop (a crash), graceful restart keeping sessions, or restart losing them.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::HarnessError;
use crate::process::{self, ServiceProcess};

pub(crate) const BINARY: &str = "mosquitto";
const FALLBACK: &str = "/usr/sbin/mosquitto";
/// A deadline, not a delay (ready in ~20-50 ms); generous for a loaded 2-core CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const TERM_GRACE: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 5;
const LOG_FILE: &str = "mosquitto.log";
const OUTPUT_FILE: &str = "mosquitto.out";
const CONFIG_FILE: &str = "mosquitto.conf";
const DB_FILE: &str = "mosquitto.db";

/// PEM files for a TLS listener (`cafile`, `certfile`, `keyfile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate clients are verified against (and that signed `cert_file`).
    pub ca_file: PathBuf,
    /// Server certificate.
    pub cert_file: PathBuf,
    /// Server private key.
    pub key_file: PathBuf,
}

/// How to run the broker. `Default` is persistence on, plain TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MosquittoOptions {
    /// Keep sessions and queued QoS 1/2 messages in a db in the temp dir (default true).
    pub persistence: bool,
    /// Serve MQTT over TLS instead of plain TCP; [`Mosquitto::url`] then says `mqtts://`.
    pub tls: Option<TlsFiles>,
    /// With `tls`: refuse clients without a certificate signed by the CA (mutual TLS).
    pub require_client_cert: bool,
    /// Refuse anonymous clients; accept these users (`mosquitto_passwd` writes the password file).
    pub users: Vec<(String, String)>,
}

/// Writes `<dir>/passwd` with `mosquitto_passwd -b` (mosquitto hashes the passwords itself).
fn write_passwords(dir: &Path, users: &[(String, String)]) -> Result<(), HarnessError> {
    let file = dir.join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new(process::find_binary(
            "mosquitto_passwd",
            "/usr/bin/mosquitto_passwd",
        )?);
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg(&file)
            .arg(user)
            .arg(password)
            .output()
            .map_err(|e| HarnessError::io("run mosquitto_passwd", e))?;
        if !out.status.success() {
            return Err(HarnessError::io(
                "mosquitto_passwd",
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            ));
        }
    }
    Ok(())
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        MosquittoOptions {
            persistence: true,
            tls: None,
            require_client_cert: false,
            users: Vec::new(),
        }
    }
}

/// A mosquitto process on `127.0.0.1:<free port>`. Dropping it SIGKILLs the broker and removes the
/// temp dir.
#[derive(Debug)]
pub struct Mosquitto {
    // Declared first so the process dies before its directory is removed.
    proc: Option<ServiceProcess>,
    port: u16,
    binary: PathBuf,
    opts: MosquittoOptions,
    dir: TempDir,
}

impl Mosquitto {
    /// A broker with persistence on, on a free port, in a fresh temp dir.
    pub fn start() -> Result<Mosquitto, HarnessError> {
        Mosquitto::start_with(MosquittoOptions::default())
    }

    /// A broker with `opts`. Retries on another port if the chosen one was taken meanwhile.
    pub fn start_with(opts: MosquittoOptions) -> Result<Mosquitto, HarnessError> {
        let binary = process::find_binary(BINARY, FALLBACK)?;
        if let Some(tls) = &opts.tls {
            for path in [&tls.ca_file, &tls.cert_file, &tls.key_file] {
                if !path.is_file() {
                    return Err(HarnessError::MissingFile { path: path.clone() });
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("twinflash-mosquitto-")
            .tempdir()
            .map_err(|e| HarnessError::io("create mosquitto temp dir", e))?;
        write_passwords(dir.path(), &opts.users)?;
        let mut broker = Mosquitto {
            proc: None,
            port: 0,
            binary,
            opts,
            dir,
        };
        let mut attempt = 1;
        loop {
            broker.port = crate::free_port();
            match broker.launch() {
                Ok(()) => return Ok(broker),
                Err(e) if e.is_port_taken() && attempt < START_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "mosquitto did not start; trying another port");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `mqtt://127.0.0.1:<port>` (`mqtts://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "mqtts"
        } else {
            "mqtt"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The broker's pid (of the last process started; 0 if it never started).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, ServiceProcess::pid)
    }

    /// The temp dir holding config, log and persistence db.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Hard stop, like a crash: SIGKILL, then reap. The db keeps what the last autosave wrote.
    pub fn stop(&mut self) {
        if let Some(proc) = self.proc.as_ref() {
            proc.kill();
        }
    }

    /// Starts the broker again on the same port (stopping it first if it runs).
    ///
    /// `keep_sessions = true`: graceful SIGTERM so mosquitto writes its db, then start with the same
    /// persistence dir; persistent sessions and their queued QoS 1 messages survive (with
    /// persistence on). `false`: SIGKILL and delete the db, so clients get `session_present = false`.
    pub fn restart(&mut self, keep_sessions: bool) -> Result<(), HarnessError> {
        if let Some(proc) = self.proc.as_ref() {
            if keep_sessions {
                proc.terminate(TERM_GRACE);
            } else {
                proc.kill();
            }
        }
        if !keep_sessions {
            let db = self.dir.path().join(DB_FILE);
            match fs::remove_file(&db) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(HarnessError::io(format!("remove {}", db.display()), e)),
            }
        }
        // The port is ours, but the kernel may need a moment after the old listener died.
        let mut attempt = 1;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if e.is_port_taken() && attempt < START_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "mosquitto restart failed; retrying");
                    attempt += 1;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the broker process is alive.
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(ServiceProcess::is_running)
    }

    /// The broker's log file (all runs, appended), plus anything it printed on stdout/stderr.
    pub fn log(&self) -> String {
        let read = |name: &str| {
            fs::read(self.dir.path().join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let mut text = read(LOG_FILE);
        text.push_str(&read(OUTPUT_FILE));
        text
    }

    fn config_text(&self) -> String {
        let dir = self.dir.path().display();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence {persistence}\n\
             persistence_location {dir}/\n\
             persistence_file {DB_FILE}\n\
             autosave_interval 1\n\
             max_queued_messages 100000\n\
             max_queued_bytes 0\n\
             log_dest file {dir}/{LOG_FILE}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             connection_messages true\n\
             set_tcp_nodelay true\n\
             log_timestamp_format %H:%M:%S\n",
            port = self.port,
            persistence = self.opts.persistence,
        );
        if let Some(tls) = &self.opts.tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                tls.ca_file.display(),
                tls.cert_file.display(),
                tls.key_file.display()
            ));
        }
        if self.opts.tls.is_some() && self.opts.require_client_cert {
            conf.push_str("require_certificate true\n");
        }
        if !self.opts.users.is_empty() {
            conf = conf.replace("allow_anonymous true", "allow_anonymous false");
            conf.push_str(&format!("password_file {dir}/passwd\n"));
        }
        if running_as_root() {
            // Without it mosquitto drops to user `mosquitto`, cannot write its db and loses sessions.
            conf.push_str("user root\n");
        }
        conf
    }

    /// Writes the config for the current port, spawns, waits until it listens.
    fn launch(&mut self) -> Result<(), HarnessError> {
        let config = self.dir.path().join(CONFIG_FILE);
        fs::write(&config, self.config_text())
            .map_err(|e| HarnessError::io(format!("write {}", config.display()), e))?;
        let log = self.dir.path().join(LOG_FILE);
        let output = self.dir.path().join(OUTPUT_FILE);
        let log_offset = fs::metadata(&log).map_or(0, |m| m.len());
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&config).current_dir(self.dir.path());
        self.proc = None;
        let proc = ServiceProcess::spawn(BINARY, cmd, &output)?;
        let port = self.port;
        // Ready = this run logged "running" (so the listener is ours, not a stranger's that took the
        // port) and a TCP connect succeeds.
        let result = process::wait_ready(&proc, port, READY_TIMEOUT, &[&log, &output], || {
            logged_since(&log, log_offset, " running") && process::tcp_accepts(port)
        });
        self.proc = Some(proc);
        if result.is_err() {
            self.stop();
        }
        result
    }
}

fn logged_since(log: &Path, offset: u64, needle: &str) -> bool {
    let Ok(bytes) = fs::read(log) else {
        return false;
    };
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).contains(needle)
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}
