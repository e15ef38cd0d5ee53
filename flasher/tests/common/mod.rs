//! Helpers shared by the integration tests: firmware files in a temp dir and flash requests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use twinflash_flasher::{FirmwareFormat, FlashRequest, Progress};

/// Write `bytes` to `dir/name` and return the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A request for `image` annotated with `chip`.
pub fn request(
    image: PathBuf,
    format: FirmwareFormat,
    base: Option<u64>,
    chip: &str,
    version: &str,
) -> FlashRequest {
    FlashRequest {
        image,
        format,
        base_address: base,
        chip: chip.to_owned(),
        reference: format!(
            "registry.local:5000/fw/blinky@sha256:{:0>64}",
            version.replace('.', "")
        ),
        version: version.to_owned(),
    }
}

/// A progress channel whose events can be collected after the flash.
pub fn progress() -> (
    twinflash_flasher::ProgressSender,
    tokio::sync::mpsc::UnboundedReceiver<Progress>,
) {
    tokio::sync::mpsc::unbounded_channel()
}

/// Drain every event received so far.
pub fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Progress>) -> Vec<Progress> {
    let mut out = Vec::new();
    while let Ok(p) = rx.try_recv() {
        out.push(p);
    }
    out
}

/// The process's peak resident set (VmHWM) in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}
