//! Durable state of the simulated device: `installed.json` (what each slot holds, which boots)
//! and `counters.json`, both written atomically (temp file, fsync, rename, fsync directory).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::FlashError;

/// Metadata file naming what is installed; written only after verify.
pub const INSTALLED_FILE: &str = "installed.json";
/// Persistent operation counters.
pub const COUNTERS_FILE: &str = "counters.json";

/// An A/B slot. Single-bank devices only use `A`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// At `origin`.
    #[default]
    A,
    /// At `origin + size/2`.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"a"` or `"b"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// A verified image in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotImage {
    /// The artifact reference.
    pub reference: String,
    /// Its version.
    pub version: String,
    /// SHA-256 (hex) of the image bytes, region after region.
    pub sha256: String,
    /// `(address, length)` of each region, at the image's own (slot A) addresses.
    pub regions: Vec<(u64, u64)>,
}

/// The content of `installed.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceState {
    /// Image in slot A (the only slot of a single-bank device).
    pub a: Option<SlotImage>,
    /// Image in slot B.
    pub b: Option<SlotImage>,
    /// The slot that boots.
    pub active: Slot,
    /// The active slot runs in test mode and reverts at the next boot unless confirmed.
    pub testing: bool,
    /// A verified image waiting for the next boot to be tried.
    pub pending: Option<Slot>,
    /// The reference being written while a flash is in progress (diagnostics only).
    pub writing: Option<String>,
}

impl DeviceState {
    /// The image in `slot`.
    pub fn slot(&self, slot: Slot) -> Option<&SlotImage> {
        match slot {
            Slot::A => self.a.as_ref(),
            Slot::B => self.b.as_ref(),
        }
    }

    /// Replace the image in `slot`.
    pub fn set_slot(&mut self, slot: Slot, image: Option<SlotImage>) {
        match slot {
            Slot::A => self.a = image,
            Slot::B => self.b = image,
        }
    }
}

/// Counters that prove what the device did, kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Sector erases.
    pub erases: u64,
    /// Page program operations.
    pub page_programs: u64,
    /// Bytes programmed.
    pub bytes_programmed: u64,
    /// Programs over unerased data that could not be represented (bits would need to go 0 -> 1).
    pub corrupt_programs: u64,
    /// Verifies that found a difference.
    pub verify_failures: u64,
    /// Power cuts injected.
    pub power_cuts: u64,
    /// Boots (after a flash or by `boot()`).
    pub boots: u64,
    /// Test-mode images reverted at boot.
    pub reverts: u64,
    /// Flash operations that started writing, per reference (persisted before the first erase).
    pub started: BTreeMap<String, u64>,
    /// Flash operations that verified, per reference.
    pub completed: BTreeMap<String, u64>,
}

/// Read a JSON state file; a missing file gives the default.
pub(crate) fn read_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T, FlashError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| FlashError::Internal {
            detail: format!("{} is corrupt: {e}", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(FlashError::io(format!("reading {}", path.display()), e)),
    }
}

/// Write `value` as JSON: temp file, fsync, rename over `path`, fsync the directory.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), FlashError> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| FlashError::Internal {
        detail: format!("serializing {}: {e}", path.display()),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| FlashError::io(ctx("creating temp for"), e))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| FlashError::io(ctx("writing"), e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| FlashError::io(ctx("renaming into"), e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FlashError::io(ctx("syncing directory of"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_round_trip_and_missing_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(COUNTERS_FILE);
        let c: Counters = read_json(&p).unwrap();
        assert_eq!(c, Counters::default());
        let mut c = Counters::default();
        c.started.insert("r@sha256:1".into(), 2);
        write_json_atomic(&p, &c).unwrap();
        assert_eq!(read_json::<Counters>(&p).unwrap(), c);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::write(&p, b"{ torn").unwrap();
        assert!(read_json::<Counters>(&p).is_err());
    }
}
