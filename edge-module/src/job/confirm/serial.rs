//! The `serial` check: a boot line on the device's UART that names the flashed version (`pattern`).
//!
//! The banner comes right after the reset that ends the flash, so the port is opened, and read by a thread of its
//! own, before the flash starts ([`Listener::open`], from `prepare`); the check then reads the lines it collected.
//! While the flash runs the replaced firmware may still print (until the flasher halts it), so a line from before the
//! check began proves nothing unless it names the flashed version, or (installing) another version than the
//! replaced one: see [`Early`]. After an agent restart in `confirming` no banner comes by itself: the check opens the
//! port, resets the device through the flasher, and listens.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqtt_schema::clip::clip;
use tokio::sync::mpsc;

use super::Once;
use crate::config::{ConfirmConfig, VersionPattern};

/// Lines kept while nobody reads them (the flash); more are dropped.
const BACKLOG: usize = 1024;
/// The longest line kept (the rest of a longer one is dropped).
const MAX_LINE: usize = 512;
/// How often the reader thread looks whether it is still wanted.
const POLL: Duration = Duration::from_millis(50);

/// What the reader thread saw.
enum Event {
    /// A line (without its end), and when it was complete.
    Line(Instant, String),
    /// The port failed (unplugged, closed): the thread ended.
    Lost(String),
}

/// The device's UART, read by a thread from [`Listener::open`] on. Dropping it stops the thread and closes the port
/// (waiting at most [`POLL`] for the thread, so that the next check can open the port again at once).
pub(super) struct Listener {
    port: PathBuf,
    events: mpsc::Receiver<Event>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.events.close();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Opens `port` at `baud` (raw, exclusive), drops what it held before, and starts reading lines.
    pub(super) async fn open(port: &Path, baud: u32) -> Result<Listener, String> {
        let path = port.to_owned();
        let opened = tokio::task::spawn_blocking(move || {
            let tty = serialport::new(path.to_string_lossy(), baud)
                .timeout(POLL)
                .open_native()?;
            serialport::SerialPort::clear(&tty, serialport::ClearBuffer::Input)?;
            Ok::<_, serialport::Error>(tty)
        })
        .await
        .map_err(|e| format!("opening {}: {e}", port.display()))?;
        let tty = opened.map_err(|e| format!("cannot open {}: {e}", port.display()))?;
        let (tx, events) = mpsc::channel(BACKLOG);
        let name = port.display().to_string();
        let reader = std::thread::Builder::new()
            .name("twinflash-uart".into())
            .spawn(move || read_lines(tty, &tx, &name))
            .map_err(|e| format!("cannot start the reader of {}: {e}", port.display()))?;
        Ok(Listener {
            port: port.to_owned(),
            events,
            reader: Some(reader),
        })
    }
}

/// The reader thread: lines to `tx` until the listener is dropped or the port fails.
fn read_lines(mut tty: impl std::io::Read, tx: &mpsc::Sender<Event>, port: &str) {
    let mut buf = [0u8; 256];
    let mut line = Vec::new();
    let mut dropped = 0u64;
    loop {
        if tx.is_closed() {
            return;
        }
        let n = match tty.read(&mut buf) {
            Ok(0) => {
                // A tty without a writer may read nothing at once: wait as a timeout would.
                std::thread::sleep(POLL);
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.try_send(Event::Lost(format!("reading {port}: {e}")));
                return;
            }
        };
        for &b in &buf[..n] {
            if b != b'\n' {
                if line.len() < MAX_LINE {
                    line.push(b);
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            line.clear();
            match tx.try_send(Event::Line(Instant::now(), text)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(port, dropped, "UART lines dropped: nobody reads them");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

/// Which lines printed before the check began (while the flash ran, the replaced firmware possibly still running)
/// are evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Early {
    /// A line naming the flashed version, or another one than this: the replaced firmware's version, which it may
    /// print until the flasher halts it.
    AllBut(String),
    /// Only a line naming the flashed version (a revert, or nothing known of the replaced firmware: it may print
    /// anything).
    OnlyConfirming,
}

impl Early {
    /// Whether a line from before the check began that names `printed` is evidence.
    fn counts(&self, printed: &str, expected: &str) -> bool {
        printed == expected
            || match self {
                Early::AllBut(replaced) => printed != replaced,
                Early::OnlyConfirming => false,
            }
    }
}

/// A serial check: its settings and, once open, its listener.
#[derive(Debug)]
pub(super) struct Serial {
    port: PathBuf,
    baud: u32,
    pattern: VersionPattern,
    listener: Option<Listener>,
}

impl Serial {
    /// The check of `cfg` (a `kind = "serial"` table), listening already when `listener` is given.
    pub(super) fn new(cfg: &ConfirmConfig, listener: Option<Listener>) -> Result<Serial, String> {
        let pattern = VersionPattern::parse(cfg.pattern.as_deref().unwrap_or_default())?;
        Ok(Serial {
            port: cfg.port.clone().unwrap_or_default(),
            baud: cfg.baud(),
            pattern,
            listener,
        })
    }

    /// Whether the port is open.
    #[cfg(test)]
    fn listening(&self) -> bool {
        self.listener.is_some()
    }

    /// Opens the port unless it is open.
    pub(super) async fn listen(&mut self) -> Result<(), String> {
        if self.listener.is_none() {
            self.listener = Some(Listener::open(&self.port, self.baud).await?);
        }
        Ok(())
    }

    /// Waits up to `left` for a line that decides: the `expected` version (`Confirmed`) or another one
    /// (`OtherVersion`); lines from before `began` as `early` says. A port that failed is opened again by the next
    /// run.
    pub(super) async fn run(
        &mut self,
        expected: &str,
        early: &Early,
        began: Instant,
        left: Duration,
    ) -> Once {
        if let Err(e) = self.listen().await {
            return Once::NotYet(e);
        }
        let Some(l) = &mut self.listener else {
            return Once::NotYet(format!("{} is not open", self.port.display()));
        };
        let deadline = tokio::time::Instant::now() + left;
        loop {
            let (at, line) = match tokio::time::timeout_at(deadline, l.events.recv()).await {
                Err(_) => {
                    return Once::NotYet(format!(
                        "no line on {} names version {expected}",
                        self.port.display()
                    ));
                }
                Ok(None) => {
                    self.listener = None;
                    return Once::NotYet(format!("{} closed", self.port.display()));
                }
                Ok(Some(Event::Lost(why))) => {
                    self.listener = None;
                    return Once::NotYet(why);
                }
                Ok(Some(Event::Line(at, line))) => (at, line),
            };
            let Some(printed) = self.pattern.version_in(&line) else {
                tracing::trace!(line = %clip(&line), "UART line");
                continue;
            };
            if at < began && !early.counts(printed, expected) {
                tracing::debug!(line = %clip(&line), "a boot line printed during the flash: the replaced firmware's");
                continue;
            }
            if printed == expected {
                return Once::Confirmed;
            }
            return Once::OtherVersion(clip(&line).to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn cfg(port: &Path) -> ConfirmConfig {
        serde_json::from_value(serde_json::json!({
            "kind": "serial",
            "port": port,
            "pattern": "boot version={version}",
        }))
        .unwrap()
    }

    /// A pty pair: the master end plays the device; the check opens the slave's path.
    async fn pty() -> (serialport::TTYPort, Serial, PathBuf) {
        let (master, slave) = serialport::TTYPort::pair().unwrap();
        let path = PathBuf::from(serialport::SerialPort::name(&slave).unwrap());
        drop(slave);
        let mut check = Serial::new(&cfg(&path), None).unwrap();
        check.listen().await.unwrap();
        (master, check, path)
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_boot_line_decides_and_other_lines_do_not() {
        let (mut dev, mut check, path) = pty().await;
        let began = Instant::now();
        let early = Early::OnlyConfirming;
        dev.write_all(b"noise\r\nboot ver\r\nboot version=2.0.0\r\n")
            .unwrap();
        let once = check.run("2.0.0", &early, began, WAIT).await;
        assert!(matches!(once, Once::Confirmed), "{once:?}");
        dev.write_all(b"boot version=9.9.9\r\n").unwrap();
        let once = check.run("2.0.0", &early, began, WAIT).await;
        assert!(
            matches!(&once, Once::OtherVersion(l) if l == "boot version=9.9.9"),
            "{once:?}"
        );
        // Nothing more: not yet, when the time is up.
        let once = check
            .run("2.0.0", &early, began, Duration::from_millis(300))
            .await;
        assert!(matches!(once, Once::NotYet(_)), "{once:?}");
        assert!(check.listening());
        // The port is open exclusively, and closed when the check is dropped: the next one opens it at once.
        let mut next = Serial::new(&cfg(&path), None).unwrap();
        assert!(next.listen().await.is_err(), "opened twice");
        drop(check);
        next.listen().await.unwrap();
    }

    #[tokio::test]
    async fn lines_from_the_flash_count_only_when_they_cannot_be_the_replaced_firmwares() {
        let (mut dev, mut check, _) = pty().await;
        // Printed while the flash ran: the replaced firmware's banner, then a mislabelled new one.
        dev.write_all(b"boot version=1.0.0\r\nboot version=9.9.9\r\n")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let early = Early::AllBut("1.0.0".into());
        let once = check.run("2.0.0", &early, Instant::now(), WAIT).await;
        assert!(
            matches!(&once, Once::OtherVersion(l) if l.ends_with("9.9.9")),
            "{once:?}"
        );
        // A revert listens the same way, but only a line naming the version it puts back counts.
        dev.write_all(b"boot version=9.9.9\r\nboot version=1.0.0\r\n")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let once = check
            .run("1.0.0", &Early::OnlyConfirming, Instant::now(), WAIT)
            .await;
        assert!(matches!(once, Once::Confirmed), "{once:?}");
        assert!(Early::AllBut("1.0.0".into()).counts("2.0.0", "2.0.0"));
        assert!(!Early::AllBut("1.0.0".into()).counts("1.0.0", "2.0.0"));
        assert!(!Early::OnlyConfirming.counts("3.0.0", "2.0.0"));
    }

    #[tokio::test]
    async fn a_port_that_cannot_be_opened_is_not_yet_and_named() {
        let mut check = Serial::new(&cfg(Path::new("/dev/twinflash-no-such-uart")), None).unwrap();
        let once = check
            .run("1.0.0", &Early::OnlyConfirming, Instant::now(), WAIT)
            .await;
        assert!(
            matches!(&once, Once::NotYet(why) if why.contains("twinflash-no-such-uart")),
            "{once:?}"
        );
        assert!(!check.listening());
    }
}
