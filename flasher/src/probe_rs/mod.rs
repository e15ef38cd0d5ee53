//! The probe-rs backend: a debug probe (CMSIS-DAP, J-Link, ST-Link, ...) flashing through probe-rs's
//! loaders with verify always on, preverify to skip unchanged content, then reset and run.
//! probe-rs is blocking: every call runs in `spawn_blocking`, one operation at a time per probe.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use probe_rs::config::Registry;
use probe_rs::flashing::{
    self, BinLoader, BinOptions, DownloadOptions, ElfLoader, ElfOptions, FileDownloadError,
    FlashLoader, FlashProgress, HexLoader, ImageLoader, ProgressEvent, ProgressOperation,
    Uf2Loader,
};
use probe_rs::probe::list::Lister;
use probe_rs::probe::{
    DebugProbeError, DebugProbeSelector, Probe, ProbeCreationError, WireProtocol,
};
use probe_rs::{Permissions, Session};
use tokio::sync::Mutex;

use crate::progress::{Phase, Reporter};
use crate::{
    BoxFuture, CancellationToken, FirmwareFormat, FlashError, FlashOutcome, FlashRequest, Flasher,
    ProbeRsConfig, ProgressSender,
};

/// A parsed `VID:PID[:serial]` probe selector (hex ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeSelector {
    /// USB vendor id.
    pub vid: u16,
    /// USB product id.
    pub pid: u16,
    /// Serial number, when several probes of one kind are connected.
    pub serial: Option<String>,
}

impl ProbeSelector {
    /// Parse `VID:PID[:serial]`, e.g. `1366:1015:000683123456` or `0483:374b`.
    pub fn parse(s: &str) -> Result<Self, FlashError> {
        let bad = |why: &str| FlashError::Config {
            detail: format!("probe selector {s:?} {why} (expected VID:PID[:serial] in hex)"),
        };
        let mut parts = s.trim().splitn(3, ':');
        let hex16 = |p: Option<&str>, what: &str| -> Result<u16, FlashError> {
            let p = p.ok_or_else(|| bad(&format!("has no {what}")))?;
            if p.is_empty() || p.len() > 4 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(&format!("has an invalid {what} {p:?}")));
            }
            u16::from_str_radix(p, 16).map_err(|_| bad(&format!("has an invalid {what}")))
        };
        let vid = hex16(parts.next(), "vendor id")?;
        let pid = hex16(parts.next(), "product id")?;
        let serial = match parts.next() {
            None => None,
            Some(sn)
                if sn.is_empty() || sn.chars().any(|c| c.is_control() || c.is_whitespace()) =>
            {
                return Err(bad("has an empty or invalid serial number"));
            }
            Some(sn) => Some(sn.to_owned()),
        };
        Ok(ProbeSelector { vid, pid, serial })
    }

    fn to_probe_rs(&self) -> DebugProbeSelector {
        DebugProbeSelector {
            vendor_id: self.vid,
            product_id: self.pid,
            interface: None,
            serial_number: self.serial.clone(),
        }
    }
}

impl std::fmt::Display for ProbeSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vid, self.pid)?;
        if let Some(s) = &self.serial {
            write!(f, ":{s}")?;
        }
        Ok(())
    }
}

/// Check `chip` against probe-rs's built-in target database.
pub fn validate_chip(chip: &str) -> Result<(), FlashError> {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY
        .get_or_init(Registry::from_builtin_families)
        .get_target_by_name(chip)
        .map(|_| ())
        .map_err(|e| FlashError::Config {
            detail: format!("chip {chip:?} is not in probe-rs's target database: {e}"),
        })
}

/// One lock per probe, shared by every device configured on it.
fn probe_lock(key: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<StdMutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let map = LOCKS.get_or_init(Default::default);
    match map.lock() {
        Ok(mut m) => m.entry(key.to_owned()).or_default().clone(),
        // A poisoned map only means another thread panicked while inserting: use a private lock.
        Err(_) => Arc::new(Mutex::new(())),
    }
}

/// Flashes one device through one probe.
#[derive(Debug, Clone)]
pub struct ProbeRsFlasher {
    cfg: ProbeRsConfig,
    chip: String,
    selector: Option<ProbeSelector>,
    protocol: Option<WireProtocol>,
    lock: Arc<Mutex<()>>,
}

impl ProbeRsFlasher {
    /// Validate the selector, the chip name and the protocol; touches no hardware.
    pub fn new(cfg: ProbeRsConfig, chip: &str) -> Result<Self, FlashError> {
        let selector = cfg.probe.as_deref().map(ProbeSelector::parse).transpose()?;
        validate_chip(chip)?;
        let protocol = cfg
            .protocol
            .as_deref()
            .map(|p| {
                p.parse::<WireProtocol>()
                    .map_err(|detail| FlashError::Config { detail })
            })
            .transpose()?;
        if cfg.speed_khz == Some(0) {
            return Err(FlashError::Config {
                detail: "speed_khz must be > 0".into(),
            });
        }
        let key = selector
            .as_ref()
            .map_or_else(|| "*".to_owned(), ToString::to_string);
        Ok(ProbeRsFlasher {
            lock: probe_lock(&key),
            cfg,
            chip: chip.to_owned(),
            selector,
            protocol,
        })
    }

    fn selector_text(&self) -> String {
        self.selector
            .as_ref()
            .map_or_else(|| "(any)".to_owned(), ToString::to_string)
    }

    /// Open the configured probe (or the only connected one).
    pub fn open_probe(&self) -> Result<Probe, FlashError> {
        let lister = Lister::new();
        let sel = self.selector_text();
        let probe = match &self.selector {
            Some(s) => {
                let wanted = s.to_probe_rs();
                if lister.list(Some(&wanted)).is_empty() {
                    return Err(FlashError::ProbeNotFound {
                        selector: sel,
                        detail:
                            "no such probe is connected (or it is not accessible: check udev rules)"
                                .into(),
                    });
                }
                lister.open(wanted)
            }
            None => {
                let all = lister.list_all();
                match all.as_slice() {
                    [one] => one.open(),
                    [] => Err(DebugProbeError::ProbeCouldNotBeCreated(
                        ProbeCreationError::NotFound,
                    )),
                    many => {
                        return Err(FlashError::Config {
                            detail: format!(
                                "{} probes are connected; set `probe = \"VID:PID[:serial]\"`",
                                many.len()
                            ),
                        });
                    }
                }
            }
        };
        probe.map_err(|e| map_probe_error(&sel, e))
    }

    /// Apply protocol and speed, then attach to the configured chip (under reset if configured).
    pub fn attach(&self, mut probe: Probe) -> Result<Session, FlashError> {
        let sel = self.selector_text();
        if let Some(p) = self.protocol {
            probe
                .select_protocol(p)
                .map_err(|e| map_probe_error(&sel, e))?;
        }
        if let Some(khz) = self.cfg.speed_khz {
            probe.set_speed(khz).map_err(|e| map_probe_error(&sel, e))?;
        }
        let session = if self.cfg.connect_under_reset {
            probe.attach_under_reset(self.chip.as_str(), Permissions::default())
        } else {
            probe.attach(self.chip.as_str(), Permissions::default())
        };
        session.map_err(|e| map_error(&sel, e))
    }

    /// Load the image, skip it when the device already holds it (preverify), else erase, program and
    /// verify; then reset and run. With `dry_run`, everything is prepared and nothing is written.
    pub fn download(
        &self,
        session: &mut Session,
        req: &FlashRequest,
        dry_run: bool,
        progress: ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<FlashOutcome, FlashError> {
        let sel = self.selector_text();
        let mut file = File::open(&req.image)
            .map_err(|e| FlashError::io(format!("opening image {}", req.image.display()), e))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut loader: FlashLoader = session.target().flash_loader();
        loader
            .load_image(session, &mut file, image_loader(req), None)
            .map_err(|e| map_download_error(&sel, req.format, e))?;
        if cancel.is_cancelled() {
            return Err(FlashError::Cancelled);
        }
        if self.cfg.preverify
            && !dry_run
            && loader.verify(session, &mut FlashProgress::empty()).is_ok()
        {
            tracing::info!(chip = %self.chip, "content already on the device, nothing to flash");
            self.reset_and_run(session)?;
            let _ = progress.send(crate::Progress {
                phase: Phase::Verifying,
                percent: 100,
            });
            return Ok(FlashOutcome {
                bytes,
                unchanged: true,
            });
        }
        let reporter = StdMutex::new(ProgressMap::new(progress));
        let mut options = DownloadOptions::default();
        options.verify = true; // without it probe-rs can be silently incomplete
        options.preverify = self.cfg.preverify;
        options.dry_run = dry_run;
        options.progress = FlashProgress::new(|ev| {
            if let Ok(mut r) = reporter.lock() {
                r.event(ev);
            }
        });
        loader
            .commit(session, options)
            .map_err(|e| map_download_error(&sel, req.format, FileDownloadError::Flash(e)))?;
        if !dry_run {
            if let Ok(mut r) = reporter.lock() {
                r.done();
            }
            self.reset_and_run(session)?;
        }
        Ok(FlashOutcome {
            bytes,
            unchanged: false,
        })
    }

    fn reset_and_run(&self, session: &mut Session) -> Result<(), FlashError> {
        if !self.cfg.reset_after {
            return Ok(());
        }
        let sel = self.selector_text();
        session
            .core(0)
            .and_then(|mut core| core.reset())
            .map_err(|e| map_error(&sel, e))
    }

    fn flash_blocking(
        &self,
        req: &FlashRequest,
        progress: ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<FlashOutcome, FlashError> {
        let probe = self.open_probe()?;
        let mut session = self.attach(probe)?;
        self.download(&mut session, req, false, progress, cancel)
    }
}

fn image_loader(req: &FlashRequest) -> Box<dyn ImageLoader> {
    match req.format {
        FirmwareFormat::Elf => Box::new(ElfLoader(ElfOptions::default())),
        FirmwareFormat::Ihex => Box::new(HexLoader),
        FirmwareFormat::Uf2 => Box::new(Uf2Loader),
        FirmwareFormat::Bin => Box::new(BinLoader(BinOptions {
            base_address: req.base_address,
            skip: 0,
        })),
    }
}

/// probe-rs progress events to one overall percentage (see [`crate::progress`]).
struct ProgressMap {
    reporter: Reporter,
    totals: HashMap<u8, (u64, u64)>,
}

impl ProgressMap {
    fn new(tx: ProgressSender) -> Self {
        ProgressMap {
            reporter: Reporter::new(tx),
            totals: HashMap::new(),
        }
    }

    fn phase(op: ProgressOperation) -> (u8, Phase) {
        match op {
            ProgressOperation::Erase => (0, Phase::Erasing),
            ProgressOperation::Fill | ProgressOperation::Program => (1, Phase::Programming),
            ProgressOperation::Verify => (2, Phase::Verifying),
        }
    }

    fn event(&mut self, ev: ProgressEvent) {
        match ev {
            ProgressEvent::AddProgressBar { operation, total } => {
                let (k, _) = Self::phase(operation);
                self.totals.entry(k).or_default().1 += total.unwrap_or(0);
            }
            ProgressEvent::Progress {
                operation, size, ..
            } => {
                let (k, phase) = Self::phase(operation);
                let e = self.totals.entry(k).or_default();
                e.0 += size;
                let (done, total) = *e;
                self.reporter.report(phase, done, total.max(done));
            }
            ProgressEvent::Finished(operation) => {
                let (_, phase) = Self::phase(operation);
                self.reporter.report(phase, 1, 1);
            }
            ProgressEvent::DiagnosticMessage { message } => {
                tracing::info!(target: "probe_rs", "{message}")
            }
            _ => {}
        }
    }

    fn done(&mut self) {
        self.reporter.report(Phase::Verifying, 1, 1);
    }
}

fn io_busy(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ResourceBusy | std::io::ErrorKind::PermissionDenied
    ) || e.to_string().to_ascii_lowercase().contains("busy")
}

/// Map a probe error to `probe-not-found`, `probe-busy` or `flash-failed`.
pub fn map_probe_error(selector: &str, e: DebugProbeError) -> FlashError {
    let detail = e.to_string();
    let busy = |detail| FlashError::ProbeBusy {
        what: selector.to_owned(),
        detail,
    };
    let not_found = |detail| FlashError::ProbeNotFound {
        selector: selector.to_owned(),
        detail,
    };
    match &e {
        DebugProbeError::ProbeCouldNotBeCreated(ProbeCreationError::NotFound) => not_found(detail),
        DebugProbeError::ProbeCouldNotBeCreated(ProbeCreationError::CouldNotOpen) => busy(detail),
        DebugProbeError::ProbeCouldNotBeCreated(ProbeCreationError::Usb(io))
        | DebugProbeError::Usb(io)
            if io_busy(io) =>
        {
            busy(detail)
        }
        DebugProbeError::ProbeCouldNotBeCreated(ProbeCreationError::Usb(io))
        | DebugProbeError::Usb(io)
            if io.kind() == std::io::ErrorKind::NotFound =>
        {
            not_found(detail)
        }
        DebugProbeError::TargetNotFound => FlashError::ProbeNotFound {
            selector: selector.to_owned(),
            detail: format!("{detail} (is the board powered and wired?)"),
        },
        _ => FlashError::FlashFailed { detail },
    }
}

/// Map a probe-rs session error.
pub fn map_error(selector: &str, e: probe_rs::Error) -> FlashError {
    match e {
        probe_rs::Error::Probe(p) => map_probe_error(selector, p),
        probe_rs::Error::ChipNotFound(r) => FlashError::Config {
            detail: format!("probe {selector}: {r}"),
        },
        probe_rs::Error::Timeout => FlashError::Timeout {
            what: format!("probe {selector}"),
            seconds: 0,
        },
        other => FlashError::FlashFailed {
            detail: other.to_string(),
        },
    }
}

/// Map a download error to the stable codes.
pub fn map_download_error(
    selector: &str,
    format: FirmwareFormat,
    e: FileDownloadError,
) -> FlashError {
    let detail = e.to_string();
    match e {
        FileDownloadError::Flash(flashing::FlashError::Verify) => {
            FlashError::VerifyFailed { detail }
        }
        FileDownloadError::Flash(flashing::FlashError::NoSuitableNvm { .. }) => {
            FlashError::TooLarge { detail }
        }
        FileDownloadError::Flash(flashing::FlashError::Core(inner)) => map_error(selector, inner),
        FileDownloadError::Flash(_) => FlashError::FlashFailed { detail },
        FileDownloadError::IhexRead(_)
        | FileDownloadError::Elf(_)
        | FileDownloadError::Object(_)
        | FileDownloadError::ImageFormatSpecific { .. }
        | FileDownloadError::NoLoadableSegments => FlashError::unsupported(format, detail),
        FileDownloadError::IncompatibleImage { .. }
        | FileDownloadError::IncompatibleImageChip { .. } => FlashError::ChipMismatch {
            device: format!("probe {selector}"),
            device_chip: "the attached target".into(),
            artifact: detail,
        },
        FileDownloadError::IO(source) => FlashError::Io {
            context: "reading the image".into(),
            source,
        },
        FileDownloadError::Other(inner) => map_error(selector, inner),
    }
}

impl Flasher for ProbeRsFlasher {
    fn kind(&self) -> &'static str {
        "probe-rs"
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
        Box::pin(async move {
            self.check_chip(&req.chip)?;
            let guard = self.lock.clone().lock_owned().await;
            let this = self.clone();
            let req = req.clone();
            tokio::task::spawn_blocking(move || {
                let _guard = guard;
                this.flash_blocking(&req, progress, &cancel)
            })
            .await
            .map_err(|e| FlashError::Internal {
                detail: format!("probe-rs task failed: {e}"),
            })?
        })
    }
}

#[cfg(test)]
mod tests;
