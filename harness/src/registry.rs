//! A real docker-registry (CNCF distribution 2.8) on a free loopback port with filesystem storage
//! in a temp dir, optionally behind htpasswd basic auth and HTTPS (with required client certificates);
//! stop and start again on the same storage, with the same or other options.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::HarnessError;
use crate::http;
use crate::process::{self, ServiceProcess};

pub(crate) const BINARY: &str = "docker-registry";
const FALLBACK: &str = "/usr/bin/docker-registry";
const HTPASSWD_BINARY: &str = "htpasswd";
const HTPASSWD_FALLBACK: &str = "/usr/bin/htpasswd";
/// A deadline, not a delay (ready in ~20-50 ms); generous for a loaded 2-core CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 5;
/// Per readiness probe: short, so an exit is noticed soon even if a stranger holds the port.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
const CONFIG_FILE: &str = "config.yml";
const OUTPUT_FILE: &str = "registry.log";
const HTPASSWD_FILE: &str = "htpasswd";
const STORAGE_DIR: &str = "storage";

/// How to run the registry. `Default` is anonymous access over plain HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOptions {
    /// `(user, password)`: require HTTP basic auth (htpasswd file, bcrypt via `htpasswd -Bbn`).
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS (`http.tls`) instead of plain HTTP.
    pub tls: Option<RegistryTls>,
}

/// HTTPS for the registry: its certificate and key, and the CAs whose client certificates it
/// requires (`http.tls.clientcas`; empty: no client certificate asked for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryTls {
    /// Server certificate (PEM) valid for 127.0.0.1.
    pub cert_file: PathBuf,
    /// Server key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) of accepted client certificates; non-empty makes one required.
    pub client_cas: Vec<PathBuf>,
}

/// A docker-registry process on `127.0.0.1:<free port>`. Dropping it SIGKILLs the registry and
/// removes config and storage.
#[derive(Debug)]
pub struct Registry {
    // Declared first so the process dies before its directory is removed.
    proc: Option<ServiceProcess>,
    port: u16,
    binary: PathBuf,
    opts: RegistryOptions,
    root: PathBuf,
    dir: TempDir,
}

impl Registry {
    /// An anonymous registry on a free port with empty storage.
    pub fn start() -> Result<Registry, HarnessError> {
        Registry::start_with(RegistryOptions::default())
    }

    /// A registry with `opts`. Retries on another port if the chosen one was taken meanwhile.
    pub fn start_with(opts: RegistryOptions) -> Result<Registry, HarnessError> {
        let binary = process::find_binary(BINARY, FALLBACK)?;
        let dir = tempfile::Builder::new()
            .prefix("twinflash-registry-")
            .tempdir()
            .map_err(|e| HarnessError::io("create registry temp dir", e))?;
        let root = dir.path().join(STORAGE_DIR);
        fs::create_dir_all(&root)
            .map_err(|e| HarnessError::io(format!("create {}", root.display()), e))?;
        if let Some((user, password)) = &opts.basic_auth {
            write_htpasswd(&dir.path().join(HTPASSWD_FILE), user, password)?;
        }
        let mut registry = Registry {
            proc: None,
            port: 0,
            binary,
            opts,
            root,
            dir,
        };
        let mut attempt = 1;
        loop {
            registry.port = crate::free_port();
            match registry.launch() {
                Ok(()) => return Ok(registry),
                Err(e) if e.is_port_taken() && attempt < START_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "registry did not start; trying another port");
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

    /// `127.0.0.1:<port>`, the registry part of an OCI reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`, or `https://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The storage root (`storage.filesystem.rootdirectory`); kept across [`Registry::stop`].
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The temp dir holding config, htpasswd, log and (under `storage/`) the storage root.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's pid (of the last process started).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, ServiceProcess::pid)
    }

    /// SIGKILL and reap; storage is kept.
    pub fn stop(&mut self) {
        if let Some(proc) = self.proc.as_ref() {
            proc.kill();
        }
    }

    /// Starts it again on the same port with the same storage (stopping it first if it runs).
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        self.stop();
        let mut attempt = 1;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if e.is_port_taken() && attempt < START_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "registry restart failed; retrying");
                    attempt += 1;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Restarts it on the same port and storage with other options (e.g. push over plain TLS,
    /// then require client certificates). The htpasswd file is written again if needed.
    pub fn restart_with(&mut self, opts: RegistryOptions) -> Result<(), HarnessError> {
        if let Some((user, password)) = &opts.basic_auth {
            write_htpasswd(&self.dir.path().join(HTPASSWD_FILE), user, password)?;
        }
        self.opts = opts;
        self.start_again()
    }

    /// Whether the registry process is alive.
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(ServiceProcess::is_running)
    }

    /// Everything the registry printed (all runs, appended).
    pub fn log(&self) -> String {
        fs::read(self.dir.path().join(OUTPUT_FILE))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn config_text(&self) -> String {
        let mut conf = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: twinflash-harness-not-a-secret\n",
            root = self.root.display(),
            port = self.port,
        );
        if let Some(tls) = &self.opts.tls {
            conf.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert_file.display(),
                tls.key_file.display()
            ));
            if !tls.client_cas.is_empty() {
                conf.push_str("    clientcas:\n");
                for ca in &tls.client_cas {
                    conf.push_str(&format!("      - {}\n", ca.display()));
                }
            }
        }
        if self.opts.basic_auth.is_some() {
            conf.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: twinflash-harness\n    path: {}\n",
                self.dir.path().join(HTPASSWD_FILE).display()
            ));
        }
        conf
    }

    /// Writes the config for the current port, spawns, waits until `GET /v2/` answers.
    fn launch(&mut self) -> Result<(), HarnessError> {
        let config = self.dir.path().join(CONFIG_FILE);
        fs::write(&config, self.config_text())
            .map_err(|e| HarnessError::io(format!("write {}", config.display()), e))?;
        let output = self.dir.path().join(OUTPUT_FILE);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve").arg(&config).current_dir(self.dir.path());
        self.proc = None;
        let proc = ServiceProcess::spawn(BINARY, cmd, &output)?;
        let addr = self.addr();
        let expected = if self.opts.basic_auth.is_some() {
            401
        } else {
            200
        };
        let tls = self.opts.tls.is_some();
        let result = process::wait_ready(&proc, self.port, READY_TIMEOUT, &[&output], || {
            if tls {
                // The plain-HTTP probe cannot speak TLS: a listening socket is enough.
                return std::net::TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok();
            }
            http::get_within(addr, "/v2/", None, PROBE_TIMEOUT).is_ok_and(|head| {
                head.status == expected
                    && head
                        .header("Docker-Distribution-Api-Version")
                        .is_some_and(|v| v.starts_with("registry/2"))
            })
        });
        self.proc = Some(proc);
        if result.is_err() {
            self.stop();
        }
        result
    }
}

/// `htpasswd -Bbn user password` (bcrypt) into `path`.
fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<(), HarnessError> {
    let binary = process::find_binary(HTPASSWD_BINARY, HTPASSWD_FALLBACK)?;
    let out = Command::new(binary)
        .args(["-Bbn", user, password])
        .output()
        .map_err(|source| HarnessError::Spawn {
            binary: HTPASSWD_BINARY,
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Htpasswd {
            user: user.to_owned(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    fs::write(path, format!("{line}\n"))
        .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))
}
