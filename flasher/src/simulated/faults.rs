//! Fault injection for the simulated device, from the config, from the API and from `faults.json`.
//!
//! `faults.json` in the device `dir` is re-read at each operation, so another process (a test, a
//! chaos script) can inject a fault into a running agent. One-shot faults are cleared once they fire.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::state::write_json_atomic;
use crate::FlashError;

/// The file name, inside the device directory, read before each operation.
pub const FAULTS_FILE: &str = "faults.json";

/// Faults to inject. Every field is optional; an empty object means no fault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// One-shot: programming fails (flash-failed) at the page holding image byte N; earlier pages stay written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_after_bytes: Option<u64>,
    /// One-shot: power is lost after exactly N image bytes were programmed, leaving a partly
    /// programmed page and sector; the operation ends with flash-failed and nothing is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_cut_at_byte: Option<u64>,
    /// While set: one programmed cell does not take (a weak bit), so verify finds a difference.
    #[serde(default, skip_serializing_if = "is_false")]
    pub verify_error: bool,
    /// While set: the device answers busy (probe-busy, transient) and nothing is touched.
    #[serde(default, skip_serializing_if = "is_false")]
    pub busy: bool,
    /// While set: sector erases are silently skipped, so programming lands on unerased data
    /// (programming can only clear bits) and verify catches the corruption.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_erase: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Faults {
    /// True when no fault is set.
    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }

    /// Combine: the first source that sets a one-shot value wins; flags are or-ed.
    pub(crate) fn merged(sources: &[&Faults]) -> Faults {
        let mut out = Faults::default();
        for f in sources {
            out.fail_after_bytes = out.fail_after_bytes.or(f.fail_after_bytes);
            out.power_cut_at_byte = out.power_cut_at_byte.or(f.power_cut_at_byte);
            out.verify_error |= f.verify_error;
            out.busy |= f.busy;
            out.skip_erase |= f.skip_erase;
        }
        out
    }

    /// Remove the one-shot faults that fired.
    pub(crate) fn clear_fired(&mut self, fired: Fired) {
        if fired.fail_after_bytes {
            self.fail_after_bytes = None;
        }
        if fired.power_cut {
            self.power_cut_at_byte = None;
        }
    }
}

/// Which one-shot faults fired during an operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fired {
    pub fail_after_bytes: bool,
    pub power_cut: bool,
}

impl Fired {
    pub(crate) fn any(self) -> bool {
        self.fail_after_bytes || self.power_cut
    }
}

/// Read `faults.json` from `dir`; a missing file means no faults, a malformed one is an error.
/// A parse failure is retried briefly, since a script may be rewriting the file in place.
pub(crate) fn read_file(dir: &Path) -> Result<Faults, FlashError> {
    let path = dir.join(FAULTS_FILE);
    let mut attempt = 0;
    loop {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Faults::default()),
            Err(e) => return Err(FlashError::io(format!("reading {}", path.display()), e)),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Faults::default());
        }
        match serde_json::from_slice(&bytes) {
            Ok(f) => return Ok(f),
            Err(_) if attempt < 3 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => {
                return Err(FlashError::Config {
                    detail: format!("{}: {e}", path.display()),
                });
            }
        }
    }
}

/// Write `faults.json` atomically (used to clear one-shot faults and by tests).
pub fn write_file(dir: &Path, faults: &Faults) -> Result<(), FlashError> {
    write_json_atomic(&dir.join(FAULTS_FILE), faults)
}
