//! The command backend: an external flashing tool (esptool, dfu-util, avrdude, nrfjprog, openocd)
//! run from an argv template, without a shell, with a timeout, its output captured into the log.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::progress::{Phase, Reporter};
use crate::{
    BoxFuture, CancellationToken, CommandConfig, FlashError, FlashOutcome, FlashRequest, Flasher,
    ProgressSender,
};

/// The placeholders an argv template may use.
pub const PLACEHOLDERS: [&str; 4] = ["file", "chip", "base_address", "format"];

/// Lines of tool output kept for an error message (all lines go to the log).
const TAIL_LINES: usize = 12;

/// Runs an external tool per flash. Operations on one flasher are serialised.
#[derive(Debug, Clone)]
pub struct CommandFlasher {
    cfg: CommandConfig,
    chip: String,
    lock: Arc<Mutex<()>>,
}

impl CommandFlasher {
    /// Validate the templates: a program name, known placeholders only, a timeout > 0.
    pub fn new(cfg: CommandConfig, chip: &str) -> Result<Self, FlashError> {
        validate_template("flash", &cfg.flash)?;
        if let Some(v) = &cfg.verify {
            validate_template("verify", v)?;
        }
        if cfg.timeout_secs == 0 {
            return Err(FlashError::Config {
                detail: "timeout_secs must be > 0".into(),
            });
        }
        Ok(CommandFlasher {
            cfg,
            chip: chip.to_owned(),
            lock: Arc::new(Mutex::new(())),
        })
    }

    async fn run_flash(
        &self,
        req: &FlashRequest,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> Result<FlashOutcome, FlashError> {
        self.check_chip(&req.chip)?;
        let _guard = self.lock.lock().await;
        let flash_argv = render(&self.cfg.flash, req, &self.chip)?;
        let verify_argv = self
            .cfg
            .verify
            .as_ref()
            .map(|t| render(t, req, &self.chip))
            .transpose()?;
        let bytes = tokio::fs::metadata(&req.image)
            .await
            .map_err(|e| FlashError::io(format!("image {}", req.image.display()), e))?
            .len();
        if cancel.is_cancelled() {
            return Err(FlashError::Cancelled);
        }
        let mut reporter = Reporter::new(progress);
        reporter.report(Phase::Erasing, 0, 1);
        let flash = self.run("flash", &flash_argv, Some(&mut reporter)).await?;
        if !flash.success {
            return Err(FlashError::FlashFailed {
                detail: format!(
                    "{} exited with {}: {}",
                    flash_argv[0], flash.status, flash.tail
                ),
            });
        }
        reporter.report(Phase::Programming, 1, 1);
        if let Some(argv) = verify_argv {
            let verify = self.run("verify", &argv, None).await?;
            if !verify.success {
                return Err(FlashError::VerifyFailed {
                    detail: format!("{} exited with {}: {}", argv[0], verify.status, verify.tail),
                });
            }
        }
        reporter.report(Phase::Verifying, 1, 1);
        Ok(FlashOutcome {
            bytes,
            unchanged: false,
        })
    }

    /// Run one command to completion or timeout, logging every output line.
    async fn run(
        &self,
        what: &str,
        argv: &[String],
        reporter: Option<&mut Reporter>,
    ) -> Result<RunResult, FlashError> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &self.cfg.workdir {
            cmd.current_dir(dir);
        }
        tracing::info!(command = what, argv = ?argv, "running flash tool");
        let mut child = cmd.spawn().map_err(|e| FlashError::FlashFailed {
            detail: format!("cannot start {}: {e}", argv[0]),
        })?;
        let pid = child.id();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let readers = [
            child.stdout.take().map(|o| spawn_lines(o, tx.clone())),
            child.stderr.take().map(|e| spawn_lines(e, tx.clone())),
        ];
        drop(tx);
        let limit = Duration::from_secs(self.cfg.timeout_secs);
        let mut tail: Vec<String> = Vec::new();
        let mut reporter = reporter;
        let collect = async {
            while let Some(line) = rx.recv().await {
                tracing::info!(command = what, "{line}");
                if let (Some(r), Some(p)) = (reporter.as_deref_mut(), percent_in(&line)) {
                    r.report(Phase::Programming, u64::from(p), 100);
                }
                tail.push(line);
                if tail.len() > TAIL_LINES {
                    tail.remove(0);
                }
            }
            child.wait().await
        };
        let status = match tokio::time::timeout(limit, collect).await {
            Ok(status) => {
                status.map_err(|e| FlashError::io(format!("waiting for {}", argv[0]), e))?
            }
            Err(_) => {
                kill_group(pid);
                for r in readers.into_iter().flatten() {
                    r.abort();
                }
                return Err(FlashError::Timeout {
                    what: format!("{what} command {}", argv[0]),
                    seconds: self.cfg.timeout_secs,
                });
            }
        };
        tracing::info!(command = what, %status, "flash tool finished");
        Ok(RunResult {
            success: status.success(),
            status: status.to_string(),
            tail: tail.join(" | "),
        })
    }
}

struct RunResult {
    success: bool,
    status: String,
    tail: String,
}

fn spawn_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // esptool-style tools redraw progress with '\r': each redraw counts as a line.
            for part in line.split('\r').filter(|s| !s.trim().is_empty()) {
                if tx.send(part.to_owned()).is_err() {
                    return;
                }
            }
        }
    })
}

/// Kill the tool's whole process group (it may have started helpers that hold the output open).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A percentage printed by the tool (`Writing at 0x00010000... (45 %)`, `Download [====] 45%`).
fn percent_in(line: &str) -> Option<u8> {
    let idx = line.rfind('%')?;
    let digits: String = line[..idx]
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    let n: u8 = digits.chars().rev().collect::<String>().parse().ok()?;
    (n <= 100).then_some(n)
}

fn validate_template(name: &str, argv: &[String]) -> Result<(), FlashError> {
    let bad = |detail: String| Err(FlashError::Config { detail });
    match argv.first() {
        None => return bad(format!("{name} command is empty")),
        Some(p) if p.trim().is_empty() => {
            return bad(format!("{name} command has an empty program name"));
        }
        Some(p) if p.contains('{') => {
            return bad(format!(
                "{name} command: the program name cannot be a placeholder"
            ));
        }
        Some(_) => {}
    }
    for arg in argv {
        if arg.matches('{').count() != arg.matches('}').count() {
            return bad(format!("{name} command: unbalanced braces in {arg:?}"));
        }
        for ph in placeholders_in(arg) {
            if !PLACEHOLDERS.contains(&ph) {
                return bad(format!(
                    "{name} command: unknown placeholder {{{ph}}} (known: {})",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
                ));
            }
        }
    }
    Ok(())
}

fn placeholders_in(arg: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => {
                out.push(after);
                break;
            }
        }
    }
    out
}

/// Substitute placeholders, one argv element at a time. Values never split or join arguments,
/// and no shell runs, so nothing in an artifact can inject a command.
pub fn render(
    template: &[String],
    req: &FlashRequest,
    chip: &str,
) -> Result<Vec<String>, FlashError> {
    let file = std::path::absolute(&req.image)
        .map_err(|e| FlashError::io(format!("image path {}", req.image.display()), e))?;
    let file = file.to_str().ok_or_else(|| FlashError::Internal {
        detail: format!("image path {} is not UTF-8", req.image.display()),
    })?;
    let needs_base = template.iter().any(|a| a.contains("{base_address}"));
    let base = match (req.base_address, needs_base) {
        (Some(b), _) => format!("{b:#x}"),
        (None, false) => String::new(),
        (None, true) => {
            return Err(FlashError::unsupported(
                req.format,
                "the flash command needs {base_address} and the artifact has no base address",
            ));
        }
    };
    Ok(template
        .iter()
        .map(|arg| {
            arg.replace("{file}", file)
                .replace("{chip}", chip)
                .replace("{base_address}", &base)
                .replace("{format}", req.format.as_str())
        })
        .collect())
}

impl Flasher for CommandFlasher {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn chip(&self) -> &str {
        &self.chip
    }

    fn flash<'a>(
        &'a self,
        req: &'a FlashRequest,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<FlashOutcome, FlashError>> {
        Box::pin(self.run_flash(req, progress, cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FirmwareFormat;

    fn req(base: Option<u64>) -> FlashRequest {
        FlashRequest {
            image: "/cache/fw; rm -rf $HOME.bin".into(),
            format: FirmwareFormat::Bin,
            base_address: base,
            chip: "esp32c3".into(),
            reference: "r".into(),
            version: "1".into(),
        }
    }

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn render_substitutes_within_single_arguments() {
        let t = argv(&[
            "avrdude",
            "-p",
            "{chip}",
            "-Uflash:w:{file}:{format}",
            "{base_address}",
        ]);
        let out = render(&t, &req(Some(0x1000)), "esp32c3").unwrap();
        assert_eq!(out.len(), 5, "a value never adds arguments");
        assert_eq!(out[2], "esp32c3");
        assert_eq!(out[3], "-Uflash:w:/cache/fw; rm -rf $HOME.bin:bin");
        assert_eq!(out[4], "0x1000");
        let err = render(&t, &req(None), "esp32c3").unwrap_err();
        assert_eq!(err.code().as_str(), "unsupported-artifact");
        assert!(render(&argv(&["x", "{file}"]), &req(None), "c").is_ok());
    }

    #[test]
    fn templates_are_validated() {
        let ok = CommandConfig {
            flash: argv(&["esptool.py", "write_flash", "{base_address}", "{file}"]),
            verify: None,
            timeout_secs: 10,
            workdir: None,
        };
        assert!(CommandFlasher::new(ok.clone(), "c").is_ok());
        for bad in [
            CommandConfig {
                flash: vec![],
                ..ok.clone()
            },
            CommandConfig {
                flash: argv(&["{file}"]),
                ..ok.clone()
            },
            CommandConfig {
                flash: argv(&["t", "{fiel}"]),
                ..ok.clone()
            },
            CommandConfig {
                flash: argv(&["t", "{file"]),
                ..ok.clone()
            },
            CommandConfig {
                verify: Some(argv(&["v", "{version}"])),
                ..ok.clone()
            },
            CommandConfig {
                timeout_secs: 0,
                ..ok.clone()
            },
        ] {
            assert!(CommandFlasher::new(bad.clone(), "c").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentages_from_tool_output() {
        assert_eq!(percent_in("Writing at 0x00010000... (45 %)"), Some(45));
        assert_eq!(
            percent_in("Download\t[=====  ]  100%   4096 bytes"),
            Some(100)
        );
        assert_eq!(percent_in("no number %"), None);
        assert_eq!(percent_in("250%"), None);
        assert_eq!(percent_in("plain"), None);
    }
}
