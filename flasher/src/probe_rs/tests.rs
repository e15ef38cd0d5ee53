use std::io::ErrorKind;

use probe_rs::probe::fake_probe::FakeProbe;

use super::*;
use twinflash_image::fixtures;

fn cfg(probe: Option<&str>) -> ProbeRsConfig {
    ProbeRsConfig {
        probe: probe.map(str::to_owned),
        speed_khz: None,
        connect_under_reset: false,
        protocol: None,
        preverify: true,
        reset_after: true,
    }
}

fn req(dir: &std::path::Path, name: &str, bytes: &[u8], format: FirmwareFormat) -> FlashRequest {
    let image = dir.join(name);
    std::fs::write(&image, bytes).unwrap();
    FlashRequest {
        image,
        format,
        base_address: None,
        chip: "nRF51822".into(),
        reference: "r@sha256:0".into(),
        version: "1.0.0".into(),
    }
}

#[test]
fn selectors() {
    assert_eq!(
        ProbeSelector::parse("1366:1015:000683123456").unwrap(),
        ProbeSelector {
            vid: 0x1366,
            pid: 0x1015,
            serial: Some("000683123456".into())
        }
    );
    let s = ProbeSelector::parse("0483:374B").unwrap();
    assert_eq!((s.vid, s.pid, s.serial.clone()), (0x0483, 0x374b, None));
    assert_eq!(s.to_string(), "0483:374b");
    // ESP JTAG serials are MAC addresses with colons.
    assert_eq!(
        ProbeSelector::parse("303a:1001:F4:12:FA:00:11:22")
            .unwrap()
            .serial
            .as_deref(),
        Some("F4:12:FA:00:11:22")
    );
    for bad in [
        "",
        "1366",
        "1366:",
        ":1015",
        "13666:1015",
        "xyz1:1015",
        "1366:1015:",
        "1366:1015:a b",
        "-1:2",
    ] {
        let err = ProbeSelector::parse(bad).unwrap_err();
        assert_eq!(err.code().as_str(), "internal", "{bad}");
    }
}

#[test]
fn chip_and_options_are_validated_at_config_time() {
    validate_chip("nRF52840_xxAA").unwrap();
    validate_chip("STM32F411RETx").unwrap();
    assert!(validate_chip("nRF99999_nope").is_err());
    assert!(ProbeRsFlasher::new(cfg(Some("1366:1015")), "nRF52840_xxAA").is_ok());
    assert!(ProbeRsFlasher::new(cfg(Some("1366")), "nRF52840_xxAA").is_err());
    assert!(ProbeRsFlasher::new(cfg(None), "no-such-chip").is_err());
    let bad_proto = ProbeRsConfig {
        protocol: Some("spi".into()),
        ..cfg(None)
    };
    assert!(ProbeRsFlasher::new(bad_proto, "nRF52840_xxAA").is_err());
    let zero = ProbeRsConfig {
        speed_khz: Some(0),
        ..cfg(None)
    };
    assert!(ProbeRsFlasher::new(zero, "nRF52840_xxAA").is_err());
    let ok = ProbeRsConfig {
        protocol: Some("SWD".into()),
        speed_khz: Some(4000),
        ..cfg(None)
    };
    let f = ProbeRsFlasher::new(ok, "nRF52840_xxAA").unwrap();
    assert_eq!(f.check_chip("nrf52840").map_err(|e| e.code()), Ok(()));
    assert_eq!(
        f.check_chip("STM32F4").unwrap_err().code().as_str(),
        "chip-mismatch"
    );
}

#[test]
fn probe_errors_map_to_codes() {
    let cases: Vec<(DebugProbeError, &str, bool)> = vec![
        (
            DebugProbeError::ProbeCouldNotBeCreated(ProbeCreationError::NotFound),
            "probe-not-found",
            true,
        ),
        (
            DebugProbeError::ProbeCouldNotBeCreated(ProbeCreationError::CouldNotOpen),
            "probe-busy",
            true,
        ),
        (
            DebugProbeError::ProbeCouldNotBeCreated(ProbeCreationError::Usb(std::io::Error::from(
                ErrorKind::ResourceBusy,
            ))),
            "probe-busy",
            true,
        ),
        (
            DebugProbeError::Usb(std::io::Error::other("Device or resource busy")),
            "probe-busy",
            true,
        ),
        (
            DebugProbeError::Usb(std::io::Error::from(ErrorKind::NotFound)),
            "probe-not-found",
            true,
        ),
        (DebugProbeError::TargetNotFound, "probe-not-found", true),
        (DebugProbeError::UnsupportedSpeed(1), "flash-failed", false),
    ];
    for (e, code, transient) in cases {
        let text = e.to_string();
        let m = map_probe_error("1366:1015", e);
        assert_eq!(
            (m.code().as_str(), m.is_transient()),
            (code, transient),
            "{text}"
        );
    }
}

#[test]
fn download_errors_map_to_codes() {
    let f = |e| {
        map_download_error("1366:1015", FirmwareFormat::Elf, e)
            .code()
            .as_str()
    };
    assert_eq!(
        f(FileDownloadError::Flash(flashing::FlashError::Verify)),
        "verify-failed"
    );
    assert_eq!(
        f(FileDownloadError::Flash(
            flashing::FlashError::ChipEraseNotSupported
        )),
        "flash-failed"
    );
    assert_eq!(
        f(FileDownloadError::NoLoadableSegments),
        "unsupported-artifact"
    );
    assert_eq!(f(FileDownloadError::Object("bad")), "unsupported-artifact");
    assert_eq!(
        f(FileDownloadError::IncompatibleImageChip {
            target: "nRF52840_xxAA".into(),
            image_chips: vec!["RP2040".into()]
        }),
        "chip-mismatch"
    );
    assert_eq!(
        f(FileDownloadError::Other(probe_rs::Error::Probe(
            DebugProbeError::TargetNotFound
        ))),
        "probe-not-found"
    );
    assert_eq!(
        f(FileDownloadError::Other(probe_rs::Error::Other("x".into()))),
        "flash-failed"
    );
}

#[test]
fn attach_and_dry_run_download_through_fake_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let flasher = ProbeRsFlasher::new(cfg(None), "nrf51822_xxAC").unwrap();
    let mut session = flasher
        .attach(FakeProbe::with_mocked_core().into_probe())
        .unwrap();
    assert_eq!(session.target().name, "nRF51822_xxAC");

    let code = fixtures::pattern(3000, 1);
    let elf = req(
        tmp.path(),
        "fw.elf",
        &fixtures::elf32(&[(0x0, &code)], 0),
        FirmwareFormat::Elf,
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let out = flasher
        .download(&mut session, &elf, true, tx, &CancellationToken::new())
        .unwrap();
    assert_eq!(out.bytes, std::fs::metadata(&elf.image).unwrap().len());
    assert!(!out.unchanged);

    let hex = req(
        tmp.path(),
        "fw.hex",
        fixtures::ihex(0x1000, &code).as_bytes(),
        FirmwareFormat::Ihex,
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    flasher
        .download(&mut session, &hex, true, tx, &CancellationToken::new())
        .unwrap();

    let mut bin = req(tmp.path(), "fw.bin", &code, FirmwareFormat::Bin);
    bin.base_address = Some(0x2000);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    flasher
        .download(&mut session, &bin, true, tx, &CancellationToken::new())
        .unwrap();

    // Data where the chip has no memory at all.
    let outside = req(
        tmp.path(),
        "far.elf",
        &fixtures::elf32(&[(0xF000_0000, &code)], 0),
        FirmwareFormat::Elf,
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let err = flasher
        .download(&mut session, &outside, true, tx, &CancellationToken::new())
        .unwrap_err();
    assert_eq!(err.code().as_str(), "too-large", "{err}");

    let junk = req(tmp.path(), "junk.elf", b"\x7fELF junk", FirmwareFormat::Elf);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let err = flasher
        .download(&mut session, &junk, true, tx, &CancellationToken::new())
        .unwrap_err();
    assert_eq!(err.code().as_str(), "unsupported-artifact", "{err}");

    let cancel = CancellationToken::new();
    cancel.cancel();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    assert!(
        flasher
            .download(&mut session, &elf, false, tx, &cancel)
            .unwrap_err()
            .is_cancelled()
    );
}

#[tokio::test]
async fn absent_probe_is_probe_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    // No USB probe with this (unassigned) id is connected to a test machine.
    let flasher =
        ProbeRsFlasher::new(cfg(Some("f0f0:0f0f:twinflash-test")), "nRF52840_xxAA").unwrap();
    let mut r = req(tmp.path(), "fw.bin", &[1, 2, 3], FirmwareFormat::Bin);
    r.chip = "nRF52840_xxAA".into();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let err = flasher
        .flash(&r, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "probe-not-found", "{err}");
    assert!(err.is_transient());
}
