//! Flashing backends behind one trait: probe-rs (feature `probe-rs`), an external command, a GDB
//! server (the GDB remote serial protocol) and a simulated microcontroller flash. [`build`] turns a device's `[devices.flasher]` config into a
//! [`Flasher`]; every `flash` returns only after the content on the device was verified.

pub mod chip;
pub mod command;
pub mod config;
mod error;
pub mod gdb;
pub mod image;
#[cfg(feature = "probe-rs")]
pub mod probe_rs;
pub mod progress;
pub mod simulated;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
pub use tokio_util::sync::CancellationToken;

pub use chip::{check_chip, chip_fits};
pub use config::{CommandConfig, FlasherConfig, GdbConfig, ProbeRsConfig, SimulatedConfig};
pub use error::FlashError;
pub use image::{FirmwareFormat, Image, ImageError, Segment};
pub use progress::{Phase, Progress, ProgressSender};

/// A boxed future, so that [`Flasher`] stays dyn-compatible.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to flash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashRequest {
    /// The verified image file (from the artifact cache).
    pub image: PathBuf,
    /// Its format.
    pub format: FirmwareFormat,
    /// Where a BIN goes (the artifact's `io.twinflash.firmware.base-address`); ignored by other formats.
    pub base_address: Option<u64>,
    /// The artifact's chip annotation.
    pub chip: String,
    /// The digest-pinned reference of the artifact (recorded by backends that can read it back).
    pub reference: String,
    /// The artifact's version.
    pub version: String,
}

/// What a successful flash did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashOutcome {
    /// Bytes of image data now verified on the device.
    pub bytes: u64,
    /// True when the content already matched and nothing was erased or programmed (preverify).
    pub unchanged: bool,
}

/// Firmware that a backend read back from the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The reference recorded when it was flashed.
    pub reference: String,
    /// Its version.
    pub version: String,
    /// SHA-256 (hex) of the image data as laid out in flash, re-checked on every read back.
    pub sha256: String,
    /// The A/B slot it runs from (`"a"` or `"b"`), for devices with two slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// False while an A/B image runs in test mode and would revert at the next boot.
    pub confirmed: bool,
}

/// A flashing backend for one device.
///
/// Implementations serialise operations on the same probe or device; `flash` honours `cancel` only
/// before its first erase or write, then runs to the end (a flash is never interrupted).
pub trait Flasher: Send + Sync {
    /// The backend kind: `probe-rs`, `command`, `gdb` or `simulated`.
    fn kind(&self) -> &'static str;

    /// The device's configured chip.
    fn chip(&self) -> &str;

    /// `chip-mismatch` unless an artifact annotated `artifact_chip` fits this device (see [`chip_fits`]).
    fn check_chip(&self, artifact_chip: &str) -> Result<(), FlashError> {
        check_chip(self.kind(), self.chip(), artifact_chip)
    }

    /// Whether [`Flasher::installed`] can read anything back from the device.
    fn reads_back(&self) -> bool {
        false
    }

    /// Erase, program and verify `req`; returns only after the content on the device is verified.
    fn flash<'a>(
        &'a self,
        req: &'a FlashRequest,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<FlashOutcome, FlashError>>;

    /// What is installed, where the backend can tell; `Ok(None)` when it cannot or nothing valid is.
    fn installed(&self) -> BoxFuture<'_, Result<Option<Installed>, FlashError>> {
        Box::pin(async { Ok(None) })
    }

    /// Resets the device so that it boots what its flash holds, and leaves it running (what a confirmation check
    /// that listens for the boot banner needs after an agent restart). Default: [`FlashError::Unsupported`].
    fn reset(&self) -> BoxFuture<'_, Result<(), FlashError>> {
        let backend = self.kind();
        Box::pin(async move {
            Err(FlashError::Unsupported {
                backend,
                operation: "reset the device",
            })
        })
    }

    /// Reads `len` bytes of the running device's memory from `address`, and leaves it running (a confirmation
    /// check reading the version the firmware wrote at boot). Default: [`FlashError::Unsupported`].
    fn read_memory(&self, address: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>, FlashError>> {
        let _ = (address, len);
        let backend = self.kind();
        Box::pin(async move {
            Err(FlashError::Unsupported {
                backend,
                operation: "read the device's memory",
            })
        })
    }
}

/// The most bytes one [`Flasher::read_memory`] may ask for.
pub const MAX_MEMORY_READ: u64 = 4096;

/// Build the backend described by `cfg` for a device whose chip is `chip`.
///
/// Validates the configuration (probe selector, chip name in probe-rs's target database, argv
/// template, flash geometry) without touching hardware.
pub fn build(cfg: &FlasherConfig, chip: &str) -> Result<Box<dyn Flasher>, FlashError> {
    match cfg {
        FlasherConfig::ProbeRs(c) => build_probe_rs(c, chip),
        FlasherConfig::Command(c) => Ok(Box::new(command::CommandFlasher::new(c.clone(), chip)?)),
        FlasherConfig::Gdb(c) => Ok(Box::new(gdb::GdbFlasher::new(c.clone(), chip)?)),
        FlasherConfig::Simulated(c) => {
            Ok(Box::new(simulated::SimulatedFlasher::new(c.clone(), chip)?))
        }
    }
}

#[cfg(feature = "probe-rs")]
fn build_probe_rs(cfg: &ProbeRsConfig, chip: &str) -> Result<Box<dyn Flasher>, FlashError> {
    Ok(Box::new(probe_rs::ProbeRsFlasher::new(cfg.clone(), chip)?))
}

#[cfg(not(feature = "probe-rs"))]
fn build_probe_rs(_cfg: &ProbeRsConfig, _chip: &str) -> Result<Box<dyn Flasher>, FlashError> {
    Err(FlashError::Config {
        detail: "this build has no probe-rs backend (cargo feature `probe-rs` is off)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_dispatches_on_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let sim: FlasherConfig = toml::from_str(&format!(
            "kind = \"simulated\"\ndir = {:?}\nsize = 8192\n",
            tmp.path().join("d")
        ))
        .unwrap();
        let f = build(&sim, "nRF52840_xxAA").unwrap();
        assert_eq!(
            (f.kind(), f.chip(), f.reads_back()),
            ("simulated", "nRF52840_xxAA", true)
        );

        let cmd: FlasherConfig =
            toml::from_str("kind = \"command\"\nflash = [\"true\", \"{file}\"]\n").unwrap();
        let f = build(&cmd, "esp32c3").unwrap();
        assert_eq!((f.kind(), f.reads_back()), ("command", false));
        assert_eq!(
            f.check_chip("esp32c6").unwrap_err().code().as_str(),
            "chip-mismatch"
        );

        let gdb: FlasherConfig =
            toml::from_str("kind = \"gdb\"\ntarget = \"127.0.0.1:1234\"\n").unwrap();
        let f = build(&gdb, "STM32F405RG").unwrap();
        assert_eq!((f.kind(), f.reads_back()), ("gdb", false));
        let bad: FlasherConfig = toml::from_str("kind = \"gdb\"\ntarget = \"\"\n").unwrap();
        assert!(build(&bad, "c").is_err());

        let pr: FlasherConfig =
            toml::from_str("kind = \"probe-rs\"\nprobe = \"1366:1015\"\n").unwrap();
        let built = build(&pr, "nRF52840_xxAA");
        #[cfg(feature = "probe-rs")]
        assert_eq!(
            built.map(|f| f.kind()).map_err(|e| e.to_string()),
            Ok("probe-rs")
        );
        #[cfg(not(feature = "probe-rs"))]
        assert!(built.is_err_and(|e| e.to_string().contains("feature")));
    }
}
