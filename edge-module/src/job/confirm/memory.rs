//! The `memory` check: the version string the running firmware keeps in its memory, read through the flasher
//! (`Flasher::read_memory`) at `address`, or at an ELF `symbol` looked up in the flashed artifact. The firmware
//! writes it at boot, so reading it proves the image runs, not only that it was written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use twinflash_flasher::{FirmwareFormat, Flasher};

use super::Once;
use crate::config::ConfirmConfig;

/// Where the version string is: the configured address, or the symbol's address in the artifact.
pub(super) async fn locate(
    cfg: &ConfirmConfig,
    artifact: &Path,
    format: FirmwareFormat,
) -> Result<u64, String> {
    if let Some(address) = cfg.address {
        return Ok(address);
    }
    let symbol = cfg.symbol.clone().unwrap_or_default();
    if format != FirmwareFormat::Elf {
        return Err(format!(
            "the symbol `{symbol}` is looked up in an ELF artifact, and this one is {format}: set `address` instead"
        ));
    }
    let path = artifact.to_owned();
    tokio::task::spawn_blocking(move || elf_symbol(&path, &symbol))
        .await
        .map_err(|e| format!("symbol lookup: {e}"))?
}

/// The address of `symbol` in the ELF file at `path` (read in pieces, never whole).
fn elf_symbol(path: &PathBuf, symbol: &str) -> Result<u64, String> {
    use object::{Object as _, ObjectSymbol as _};
    let file = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let cache = object::ReadCache::new(file);
    let elf =
        object::File::parse(&cache).map_err(|e| format!("the artifact is not an ELF file: {e}"))?;
    let found = elf
        .symbol_by_name(symbol)
        .ok_or_else(|| format!("the artifact has no symbol `{symbol}`"))?;
    Ok(found.address())
}

/// What `bytes` (read from the device) say: the string up to the first NUL is the running version. The flashed
/// version confirms; the replaced one (still in RAM until the new firmware overwrites it) or nothing printable is
/// "not yet"; another printable string is another version.
pub(super) fn judge(bytes: &[u8], expected: &str, replaced: Option<&str>) -> Once {
    let text = bytes.split(|b| *b == 0).next().unwrap_or_default();
    if text.is_empty() {
        return Once::NotYet("the version string is empty".into());
    }
    if !text.iter().all(|b| b.is_ascii_graphic()) {
        return Once::NotYet(format!(
            "the version string is not printable: {}",
            hex::encode(&text[..text.len().min(16)])
        ));
    }
    let text = String::from_utf8_lossy(text);
    if text == expected {
        Once::Confirmed
    } else if replaced == Some(text.as_ref()) {
        Once::NotYet(format!(
            "the device still shows the previous version {text}"
        ))
    } else {
        Once::OtherVersion(format!("the device's memory says {text}"))
    }
}

/// One read of `length` bytes at `address`, bounded by `left`.
pub(super) async fn run(
    flasher: &dyn Flasher,
    address: u64,
    length: u64,
    expected: &str,
    replaced: Option<&str>,
    left: Duration,
) -> Once {
    match tokio::time::timeout(left, flasher.read_memory(address, length)).await {
        Err(_) => Once::NotYet(format!(
            "reading {length} bytes at {address:#x} did not end in time"
        )),
        Ok(Err(e)) => Once::NotYet(format!(
            "reading {length} bytes at {address:#x}: {e} ({})",
            e.code()
        )),
        Ok(Ok(bytes)) => judge(&bytes, expected, replaced),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_up_to_its_nul_is_the_running_version() {
        let ok = |o: Once| matches!(o, Once::Confirmed);
        let other = |o: Once| matches!(o, Once::OtherVersion(_));
        let not_yet = |o: Once| matches!(o, Once::NotYet(_));
        assert!(ok(judge(b"2.0.0\0\0\0garbage", "2.0.0", Some("1.0.0"))));
        assert!(ok(judge(b"2.0.0", "2.0.0", None)));
        assert!(other(judge(b"9.9.9\0", "2.0.0", Some("1.0.0"))));
        assert!(not_yet(judge(b"1.0.0\0", "2.0.0", Some("1.0.0"))));
        assert!(not_yet(judge(b"\0\0\0\0", "2.0.0", None)));
        assert!(not_yet(judge(&[0xff; 32], "2.0.0", None)));
        assert!(not_yet(judge(b"2.0\n0\0", "2.0.0", None)));
        assert!(not_yet(judge(b"", "2.0.0", None)));
    }

    #[tokio::test]
    async fn a_symbol_needs_an_elf_and_an_address_needs_nothing() {
        let cfg = |v: serde_json::Value| -> ConfirmConfig { serde_json::from_value(v).unwrap() };
        let by_address = cfg(serde_json::json!({"kind": "memory", "address": "0x20000000"}));
        assert_eq!(
            locate(&by_address, Path::new("/nonexistent"), FirmwareFormat::Bin).await,
            Ok(0x2000_0000)
        );
        let by_symbol =
            cfg(serde_json::json!({"kind": "memory", "symbol": "twinflash_running_version"}));
        let err = locate(&by_symbol, Path::new("/nonexistent"), FirmwareFormat::Bin)
            .await
            .unwrap_err();
        assert!(err.contains("set `address`"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let not_elf = dir.path().join("x.elf");
        std::fs::write(&not_elf, b"not an elf").unwrap();
        let err = locate(&by_symbol, &not_elf, FirmwareFormat::Elf)
            .await
            .unwrap_err();
        assert!(err.contains("not an ELF"), "{err}");
        // This test program is an ELF file with symbols.
        let me = std::env::current_exe().unwrap();
        let main = locate(
            &cfg(serde_json::json!({"kind": "memory", "symbol": "main"})),
            &me,
            FirmwareFormat::Elf,
        )
        .await;
        assert!(main.is_ok_and(|a| a > 0));
        let err = locate(
            &cfg(serde_json::json!({"kind": "memory", "symbol": "twinflash_no_such_symbol"})),
            &me,
            FirmwareFormat::Elf,
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("no symbol `twinflash_no_such_symbol`"),
            "{err}"
        );
    }
}
