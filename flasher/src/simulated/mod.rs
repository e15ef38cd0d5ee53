//! The simulated backend: a behavioural model of a microcontroller's flash kept in files, for tests,
//! demos and chaos runs. Layout of `dir`: `flash.bin` (the flash, erased bytes 0xFF; in A/B mode slot A
//! is the first half, slot B the second), `installed.json`, `counters.json`, optional `faults.json`.

mod device;
mod faults;
mod model;
mod state;

use std::path::Path;
use std::sync::{Arc, Mutex};

pub use device::BootOutcome;
pub use faults::{FAULTS_FILE, Faults, write_file as write_faults_file};
pub use model::{ERASED, FLASH_FILE, FlashMemory};
pub use state::{COUNTERS_FILE, Counters, DeviceState, INSTALLED_FILE, Slot, SlotImage};

use crate::progress::Reporter;
use crate::{
    BoxFuture, CancellationToken, FlashError, FlashOutcome, FlashRequest, Flasher, Installed,
    ProgressSender, SimulatedConfig,
};
use device::Device;

/// A simulated device. Cheap to clone; clones share the device and serialise operations on it.
#[derive(Debug, Clone)]
pub struct SimulatedFlasher {
    device: Arc<Mutex<Device>>,
    runtime_faults: Arc<Mutex<Faults>>,
    chip: String,
}

impl SimulatedFlasher {
    /// Validate the geometry and open (or create) the device in `cfg.dir`.
    pub fn new(cfg: SimulatedConfig, chip: &str) -> Result<Self, FlashError> {
        validate(&cfg)?;
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| FlashError::io(format!("creating {}", cfg.dir.display()), e))?;
        let mem = FlashMemory::open(
            &cfg.dir,
            cfg.size,
            cfg.sector_size,
            cfg.page_size,
            cfg.write_bytes_per_sec,
        )?;
        let runtime_faults = Arc::new(Mutex::new(Faults::default()));
        let device = Device {
            cfg,
            chip: chip.to_owned(),
            mem,
            runtime_faults: runtime_faults.clone(),
        };
        Ok(SimulatedFlasher {
            device: Arc::new(Mutex::new(device)),
            runtime_faults,
            chip: chip.to_owned(),
        })
    }

    /// Set the run-time faults of this process (in addition to the config's and `faults.json`).
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.runtime_faults.lock() {
            *f = faults;
        }
    }

    /// Reset the device (blocking): an A/B image flashed since the last boot starts in test mode;
    /// a test-mode image that was not confirmed is reverted.
    pub fn boot(&self) -> Result<BootOutcome, FlashError> {
        self.with_device(|d| d.boot())
    }

    /// Confirm the running test-mode image (what MCUboot's `boot_set_confirmed` does); false if none.
    pub fn confirm(&self) -> Result<bool, FlashError> {
        self.with_device(|d| d.confirm())
    }

    /// The persistent counters.
    pub fn counters(&self) -> Result<Counters, FlashError> {
        self.with_device(|d| d.counters())
    }

    /// The content of `installed.json`.
    pub fn state(&self) -> Result<DeviceState, FlashError> {
        self.with_device(|d| d.state())
    }

    /// [`Flasher::installed`], blocking.
    pub fn installed_blocking(&self) -> Result<Option<Installed>, FlashError> {
        self.with_device(|d| d.installed())
    }

    /// The device directory.
    pub fn dir(&self) -> Result<std::path::PathBuf, FlashError> {
        self.with_device(|d| Ok(d.cfg.dir.clone()))
    }

    /// [`Flasher::flash`], blocking (runs on the calling thread).
    pub fn flash_blocking(
        &self,
        req: &FlashRequest,
        progress: ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<FlashOutcome, FlashError> {
        let mut reporter = Reporter::new(progress);
        self.with_device(|d| d.flash(req, &mut reporter, cancel))
    }

    fn with_device<T>(
        &self,
        f: impl FnOnce(&mut Device) -> Result<T, FlashError>,
    ) -> Result<T, FlashError> {
        let mut guard = self.device.lock().map_err(|_| FlashError::Internal {
            detail: "simulated device lock poisoned".into(),
        })?;
        f(&mut guard)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(SimulatedFlasher) -> Result<T, FlashError> + Send + 'static,
    ) -> Result<T, FlashError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|e| FlashError::Internal {
                detail: format!("simulated flash task failed: {e}"),
            })?
    }
}

fn validate(cfg: &SimulatedConfig) -> Result<(), FlashError> {
    let bad = |detail: String| Err(FlashError::Config { detail });
    let (size, sector, page) = (cfg.size, cfg.sector_size, cfg.page_size);
    if sector == 0 || page == 0 || size == 0 {
        return bad("size, sector_size and page_size must be > 0".into());
    }
    if sector % page != 0 {
        return bad(format!(
            "sector_size {sector} is not a multiple of page_size {page}"
        ));
    }
    let slot = if cfg.ab { size / 2 } else { size };
    if size % sector != 0 || (cfg.ab && (size % 2 != 0 || slot % sector != 0)) {
        return bad(format!(
            "size {size} must be a multiple of sector_size {sector}{}",
            if cfg.ab { " per slot (size/2)" } else { "" }
        ));
    }
    if size > 1 << 32 {
        return bad(format!(
            "size {size} is larger than the 4 GiB a simulated device supports"
        ));
    }
    if cfg.origin.checked_add(size).is_none() {
        return bad("origin + size overflows".into());
    }
    Ok(())
}

impl Flasher for SimulatedFlasher {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    fn chip(&self) -> &str {
        &self.chip
    }

    fn reads_back(&self) -> bool {
        true
    }

    fn flash<'a>(
        &'a self,
        req: &'a FlashRequest,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<FlashOutcome, FlashError>> {
        let req = req.clone();
        Box::pin(self.blocking(move |this| this.flash_blocking(&req, progress, &cancel)))
    }

    fn installed(&self) -> BoxFuture<'_, Result<Option<Installed>, FlashError>> {
        Box::pin(self.blocking(|this| this.installed_blocking()))
    }

    /// A reboot: [`SimulatedFlasher::boot`] (an unconfirmed A/B test image reverts, as at any boot).
    fn reset(&self) -> BoxFuture<'_, Result<(), FlashError>> {
        Box::pin(self.blocking(|this| this.boot().map(|_| ())))
    }

    /// The flash of the slot that boots (a simulated device has no RAM): a version string in the image is read
    /// where the image put it.
    fn read_memory(&self, address: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>, FlashError>> {
        Box::pin(self.blocking(move |this| this.with_device(|d| d.read_memory(address, len))))
    }
}

/// Read `faults.json` of a device directory (missing file: no faults).
pub fn read_faults_file(dir: &Path) -> Result<Faults, FlashError> {
    faults::read_file(dir)
}
