//! Contract of the simulated backend: formats, geometry, faults, A/B, persistence.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;

use common::{drain, progress, request, write};
use twinflash_flasher::simulated::{
    BootOutcome, Faults, SimulatedFlasher, Slot, write_faults_file,
};
use twinflash_flasher::{
    CancellationToken, FirmwareFormat, FlashRequest, Flasher, FlasherConfig, Phase,
    SimulatedConfig, build,
};
use twinflash_image::fixtures;

const CHIP: &str = "nRF52840_xxAA";
const ORIGIN: u64 = 0x0800_0000;

fn sim(dir: &Path, ab: bool) -> SimulatedFlasher {
    let mut cfg = SimulatedConfig::new(dir.join("dev"), 64 * 1024);
    cfg.origin = ORIGIN;
    cfg.sector_size = 4096;
    cfg.page_size = 256;
    cfg.ab = ab;
    SimulatedFlasher::new(cfg, CHIP).unwrap()
}

fn flash_bin(dev: &SimulatedFlasher) -> Vec<u8> {
    std::fs::read(dev.dir().unwrap().join("flash.bin")).unwrap()
}

/// A BIN of `len` pattern bytes for `version` at ORIGIN + `offset`.
fn bin(dir: &Path, version: &str, len: usize, seed: u8, offset: u64) -> (FlashRequest, Vec<u8>) {
    let data = fixtures::pattern(len, seed);
    let path = write(dir, &format!("fw-{version}.bin"), &data);
    (
        request(
            path,
            FirmwareFormat::Bin,
            Some(ORIGIN + offset),
            "nRF52840",
            version,
        ),
        data,
    )
}

async fn flash(
    dev: &SimulatedFlasher,
    req: &FlashRequest,
) -> Result<twinflash_flasher::FlashOutcome, twinflash_flasher::FlashError> {
    let (tx, _rx) = progress();
    dev.flash(req, tx, CancellationToken::new()).await
}

#[tokio::test]
async fn bin_lands_at_base_minus_origin_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), false);
    let (req, data) = bin(tmp.path(), "1.0.0", 5000, 1, 0x1100);
    let (tx, mut rx) = progress();
    let out = dev.flash(&req, tx, CancellationToken::new()).await.unwrap();
    assert_eq!(out.bytes, 5000);

    let flash = flash_bin(&dev);
    assert_eq!(flash.len(), 64 * 1024);
    assert_eq!(&flash[0x1100..0x1100 + 5000], &data[..]);
    assert!(flash[..0x1100].iter().all(|b| *b == 0xFF));
    assert!(flash[0x1100 + 5000..].iter().all(|b| *b == 0xFF));

    let inst = dev.installed().await.unwrap().unwrap();
    assert_eq!(
        (inst.reference.as_str(), inst.version.as_str()),
        (req.reference.as_str(), "1.0.0")
    );
    assert!(inst.confirmed);
    assert_eq!(inst.slot, None);

    let c = dev.counters().unwrap();
    assert_eq!(c.erases, 2, "0x1100..0x2488 touches sectors 1 and 2");
    // Pages: 0x1100..0x2488 -> pages 0x11..=0x24 = 20 page programs.
    assert_eq!(c.page_programs, 20);
    assert_eq!(c.bytes_programmed, 5000);
    assert_eq!(c.started.get(&req.reference), Some(&1));
    assert_eq!(c.completed.get(&req.reference), Some(&1));

    let events = drain(&mut rx);
    assert!(
        events.windows(2).all(|w| w[0].percent < w[1].percent),
        "{events:?}"
    );
    assert_eq!(events.first().map(|p| p.phase), Some(Phase::Erasing));
    assert_eq!(
        events.last().map(|p| (p.phase, p.percent)),
        Some((Phase::Verifying, 100))
    );
    assert!(events.iter().any(|p| p.phase == Phase::Programming));
}

#[tokio::test]
async fn elf_ihex_and_uf2_are_written_at_their_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), false);
    let a = fixtures::pattern(700, 2);
    let b = fixtures::pattern(300, 3);
    let elf = write(
        tmp.path(),
        "fw.elf",
        &fixtures::elf32(
            &[(ORIGIN as u32, &a), (ORIGIN as u32 + 0x8000, &b)],
            0x1000_0000,
        ),
    );
    let hex = write(
        tmp.path(),
        "fw.hex",
        fixtures::ihex(ORIGIN as u32 + 0x3000, &b).as_bytes(),
    );
    let uf2 = write(
        tmp.path(),
        "fw.uf2",
        &fixtures::uf2(ORIGIN as u32 + 0x5000, &a, 256),
    );

    flash(
        &dev,
        &request(elf, FirmwareFormat::Elf, None, CHIP, "1.0.0"),
    )
    .await
    .unwrap();
    let f = flash_bin(&dev);
    assert_eq!(&f[..700], &a[..]);
    assert_eq!(&f[0x8000..0x8000 + 300], &b[..]);

    flash(
        &dev,
        &request(hex, FirmwareFormat::Ihex, None, CHIP, "1.0.1"),
    )
    .await
    .unwrap();
    assert_eq!(&flash_bin(&dev)[0x3000..0x3000 + 300], &b[..]);

    flash(
        &dev,
        &request(uf2, FirmwareFormat::Uf2, None, CHIP, "1.0.2"),
    )
    .await
    .unwrap();
    assert_eq!(&flash_bin(&dev)[0x5000..0x5000 + 700], &a[..]);
    assert_eq!(dev.installed().await.unwrap().unwrap().version, "1.0.2");
}

#[tokio::test]
async fn refusals_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), false);
    let before = flash_bin(&dev);

    let (mut req, _) = bin(tmp.path(), "1.0.0", 100, 1, 0);
    req.chip = "STM32F411RETx".into();
    assert_eq!(
        flash(&dev, &req).await.unwrap_err().code().as_str(),
        "chip-mismatch"
    );
    assert!(dev.check_chip("nrf52840").is_ok());
    assert_eq!(
        dev.check_chip("nRF52833").unwrap_err().code().as_str(),
        "chip-mismatch"
    );

    let (req, _) = bin(tmp.path(), "1.0.1", 100, 1, 64 * 1024 - 50);
    assert_eq!(
        flash(&dev, &req).await.unwrap_err().code().as_str(),
        "too-large"
    );
    let (mut req, _) = bin(tmp.path(), "1.0.2", 100, 1, 0);
    req.base_address = Some(ORIGIN - 4);
    assert_eq!(
        flash(&dev, &req).await.unwrap_err().code().as_str(),
        "too-large"
    );

    let junk = write(tmp.path(), "junk.elf", b"\x7fELF garbage");
    let req = request(junk, FirmwareFormat::Elf, None, CHIP, "1.0.3");
    assert_eq!(
        flash(&dev, &req).await.unwrap_err().code().as_str(),
        "unsupported-artifact"
    );

    let (req, _) = bin(tmp.path(), "1.0.4", 100, 1, 0);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (tx, _rx) = progress();
    assert!(
        dev.flash(&req, tx, cancel)
            .await
            .unwrap_err()
            .is_cancelled()
    );

    assert_eq!(flash_bin(&dev), before);
    let c = dev.counters().unwrap();
    assert!(
        c.started.is_empty() && c.erases == 0 && c.page_programs == 0,
        "{c:?}"
    );
    assert_eq!(dev.installed().await.unwrap(), None);
}

#[tokio::test]
async fn busy_from_faults_file_is_transient_and_clears() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), false);
    let dir = dev.dir().unwrap();
    // Another process would write this file; the device re-reads it at each operation.
    std::fs::write(dir.join("faults.json"), br#"{"busy": true}"#).unwrap();
    let (req, _) = bin(tmp.path(), "1.0.0", 100, 1, 0);
    let err = flash(&dev, &req).await.unwrap_err();
    assert_eq!(err.code().as_str(), "probe-busy");
    assert!(err.is_transient());
    assert!(dev.counters().unwrap().started.is_empty());
    write_faults_file(&dir, &Faults::default()).unwrap();
    flash(&dev, &req).await.unwrap();
}

#[tokio::test]
async fn single_bank_power_cut_leaves_detectable_partial_image_and_reflash_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), false);
    let (v1, _) = bin(tmp.path(), "1.0.0", 6000, 1, 0);
    let (v2, data2) = bin(tmp.path(), "2.0.0", 6000, 2, 0);
    flash(&dev, &v1).await.unwrap();

    let dir = dev.dir().unwrap();
    write_faults_file(
        &dir,
        &Faults {
            power_cut_at_byte: Some(1000),
            ..Faults::default()
        },
    )
    .unwrap();
    let err = flash(&dev, &v2).await.unwrap_err();
    assert_eq!(err.code().as_str(), "flash-failed");
    assert!(err.to_string().contains("power"), "{err}");

    // Partly programmed: the first 1000 bytes are v2, the rest of page 3 and of sector 0 stay erased.
    let f = flash_bin(&dev);
    assert_eq!(&f[..1000], &data2[..1000]);
    assert!(f[1000..4096].iter().all(|b| *b == 0xFF));
    assert_eq!(
        dev.installed().await.unwrap(),
        None,
        "a partial image must not be reported"
    );
    let state = dev.state().unwrap();
    assert_eq!(state.writing.as_deref(), Some(v2.reference.as_str()));
    // The one-shot fault was consumed from faults.json.
    assert_eq!(
        twinflash_flasher::simulated::read_faults_file(&dir).unwrap(),
        Faults::default()
    );

    flash(&dev, &v2).await.unwrap();
    assert_eq!(&flash_bin(&dev)[..6000], &data2[..]);
    assert_eq!(dev.installed().await.unwrap().unwrap().version, "2.0.0");
    let c = dev.counters().unwrap();
    assert_eq!(
        (
            c.power_cuts,
            c.started[&v2.reference],
            c.completed[&v2.reference]
        ),
        (1, 2, 1)
    );
}

#[tokio::test]
async fn ab_power_cut_keeps_old_image_and_test_mode_reverts_unless_confirmed() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), true);
    let half = 32 * 1024;
    let (v1, d1) = bin(tmp.path(), "1.0.0", 3000, 1, 0);
    let (v2, d2) = bin(tmp.path(), "2.0.0", 3000, 2, 0);
    let (v3, _) = bin(tmp.path(), "3.0.0", 3000, 3, 0);

    // Fresh device: v1 goes to slot B, boots in test mode, is confirmed.
    flash(&dev, &v1).await.unwrap();
    let inst = dev.installed().await.unwrap().unwrap();
    assert_eq!(
        (inst.version.as_str(), inst.slot.as_deref(), inst.confirmed),
        ("1.0.0", Some("b"), false)
    );
    assert!(dev.confirm().unwrap());
    assert_eq!(&flash_bin(&dev)[half..half + 3000], &d1[..]);

    // Power cut while writing v2 into slot A: v1 still boots.
    dev.set_faults(Faults {
        power_cut_at_byte: Some(1500),
        ..Faults::default()
    });
    assert_eq!(
        flash(&dev, &v2).await.unwrap_err().code().as_str(),
        "flash-failed"
    );
    assert_eq!(dev.boot().unwrap(), BootOutcome::Booted(Slot::B));
    let inst = dev.installed().await.unwrap().unwrap();
    assert_eq!((inst.version.as_str(), inst.confirmed), ("1.0.0", true));
    assert_eq!(&flash_bin(&dev)[..1500], &d2[..1500]);

    // Flash again: verified, test boot from A; not confirmed -> the next boot reverts to v1.
    flash(&dev, &v2).await.unwrap();
    let inst = dev.installed().await.unwrap().unwrap();
    assert_eq!(
        (inst.version.as_str(), inst.slot.as_deref(), inst.confirmed),
        ("2.0.0", Some("a"), false)
    );
    assert_eq!(
        dev.boot().unwrap(),
        BootOutcome::Reverted {
            from: Slot::A,
            to: Slot::B
        }
    );
    assert_eq!(dev.installed().await.unwrap().unwrap().version, "1.0.0");

    // v3 confirmed survives boots.
    flash(&dev, &v3).await.unwrap();
    assert!(dev.confirm().unwrap());
    assert_eq!(dev.boot().unwrap(), BootOutcome::Booted(Slot::A));
    let inst = dev.installed().await.unwrap().unwrap();
    assert_eq!((inst.version.as_str(), inst.confirmed), ("3.0.0", true));
    assert_eq!(dev.counters().unwrap().reverts, 1);
    assert!(!dev.confirm().unwrap(), "nothing left in test mode");
}

#[tokio::test]
async fn corrupt_write_over_unerased_data_is_caught_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), false);
    let (v1, _) = bin(tmp.path(), "1.0.0", 2000, 1, 0);
    let (v2, _) = bin(tmp.path(), "2.0.0", 2000, 2, 0);
    flash(&dev, &v1).await.unwrap();
    dev.set_faults(Faults {
        skip_erase: true,
        ..Faults::default()
    });
    let err = flash(&dev, &v2).await.unwrap_err();
    assert_eq!(err.code().as_str(), "verify-failed", "{err}");
    let c = dev.counters().unwrap();
    assert!(c.corrupt_programs > 0);
    assert_eq!(c.verify_failures, 1);
    assert_eq!(dev.installed().await.unwrap(), None);
    dev.set_faults(Faults::default());
    flash(&dev, &v2).await.unwrap();
    assert_eq!(dev.installed().await.unwrap().unwrap().version, "2.0.0");
}

#[tokio::test]
async fn verify_error_and_fail_after_bytes_faults() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), false);
    let (v1, d1) = bin(tmp.path(), "1.0.0", 2000, 1, 0);
    dev.set_faults(Faults {
        verify_error: true,
        ..Faults::default()
    });
    assert_eq!(
        flash(&dev, &v1).await.unwrap_err().code().as_str(),
        "verify-failed"
    );
    assert_eq!(
        flash(&dev, &v1).await.unwrap_err().code().as_str(),
        "verify-failed",
        "verify_error stays set"
    );

    dev.set_faults(Faults {
        fail_after_bytes: Some(700),
        ..Faults::default()
    });
    let err = flash(&dev, &v1).await.unwrap_err();
    assert_eq!(err.code().as_str(), "flash-failed");
    // Pages before the failing one (0x200..0x300 holds byte 700) were programmed.
    let f = flash_bin(&dev);
    assert_eq!(&f[..512], &d1[..512]);
    assert!(f[512..2000].iter().all(|b| *b == 0xFF));
    flash(&dev, &v1).await.unwrap();
    assert_eq!(dev.installed().await.unwrap().unwrap().version, "1.0.0");
}

#[tokio::test]
async fn config_faults_and_counters_persist_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg: FlasherConfig = toml::from_str(&format!(
        "kind = \"simulated\"\ndir = {:?}\nsize = 32768\nsector_size = 1024\npage_size = 128\nfaults = {{ fail_after_bytes = 10 }}\n",
        tmp.path().join("dev")
    ))
    .unwrap();
    let (v1, _) = bin(tmp.path(), "1.0.0", 300, 1, 0);
    let v1 = FlashRequest {
        base_address: Some(0),
        ..v1
    };
    let dev = build(&cfg, CHIP).unwrap();
    assert_eq!(dev.kind(), "simulated");
    let (tx, _rx) = progress();
    assert_eq!(
        dev.flash(&v1, tx, CancellationToken::new())
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "flash-failed"
    );
    let (tx, _rx) = progress();
    dev.flash(&v1, tx, CancellationToken::new()).await.unwrap();
    drop(dev);

    // "Restart": a new instance on the same directory sees the image and the counters.
    let FlasherConfig::Simulated(mut c) = cfg else {
        unreachable!()
    };
    c.faults = Faults::default();
    let again = SimulatedFlasher::new(c, CHIP).unwrap();
    assert_eq!(again.installed().await.unwrap().unwrap().version, "1.0.0");
    let counters = again.counters().unwrap();
    assert_eq!(
        (
            counters.started[&v1.reference],
            counters.completed[&v1.reference]
        ),
        (2, 1)
    );
}

#[test]
fn bad_geometry_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let base = SimulatedConfig::new(tmp.path().join("d"), 64 * 1024);
    for cfg in [
        SimulatedConfig {
            size: 0,
            ..base.clone()
        },
        SimulatedConfig {
            sector_size: 1000,
            ..base.clone()
        },
        SimulatedConfig {
            size: 4096 * 3,
            ab: true,
            ..base.clone()
        },
        SimulatedConfig {
            page_size: 0,
            ..base.clone()
        },
    ] {
        assert!(SimulatedFlasher::new(cfg, CHIP).is_err());
    }
    // A flash.bin of another size than configured is refused, not truncated.
    SimulatedFlasher::new(base.clone(), CHIP).unwrap();
    assert!(
        SimulatedFlasher::new(
            SimulatedConfig {
                size: 128 * 1024,
                ..base
            },
            CHIP
        )
        .is_err()
    );
}

#[tokio::test]
async fn malformed_faults_file_is_reported_not_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), false);
    std::fs::write(
        dev.dir().unwrap().join("faults.json"),
        br#"{"power_cut_at": 5}"#,
    )
    .unwrap();
    let (req, _) = bin(tmp.path(), "1.0.0", 100, 1, 0);
    let err = flash(&dev, &req).await.unwrap_err();
    assert!(err.to_string().contains("faults.json"), "{err}");
    assert!(dev.counters().unwrap().started.is_empty());
}

#[tokio::test]
async fn the_running_slot_is_read_and_a_reset_is_a_boot() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = sim(tmp.path(), true);
    let (v1, data1) = bin(tmp.path(), "1.0.0", 4096, 1, 0);
    flash(&dev, &v1).await.unwrap();
    assert!(dev.confirm().unwrap());
    let (v2, data2) = bin(tmp.path(), "2.0.0", 4096, 2, 0);
    flash(&dev, &v2).await.unwrap();
    // The new image runs in test mode from slot B: a read at its addresses gives its bytes.
    assert_eq!(
        dev.read_memory(ORIGIN + 16, 32).await.unwrap(),
        data2[16..48]
    );
    // A reset without its confirmation: the bootloader reverts, and the read gives the old image.
    dev.reset().await.unwrap();
    assert_eq!(dev.read_memory(ORIGIN, 8).await.unwrap(), data1[..8]);
    assert_eq!(dev.counters().unwrap().reverts, 1);
    // Outside the slot, or too long: refused.
    for (address, len) in [(ORIGIN - 1, 4), (ORIGIN + 32 * 1024 - 2, 4), (ORIGIN, 8192)] {
        let err = dev.read_memory(address, len).await.unwrap_err();
        assert_eq!(
            err.code().as_str(),
            "too-large",
            "{address:#x}+{len}: {err}"
        );
    }
}

#[tokio::test]
async fn a_backend_that_cannot_reset_or_read_memory_says_so_with_a_stable_code() {
    let cmd: FlasherConfig =
        toml::from_str("kind = \"command\"\nflash = [\"true\", \"{file}\"]\n").unwrap();
    let f = build(&cmd, CHIP).unwrap();
    let reset = f.reset().await.unwrap_err();
    let read = f.read_memory(0, 4).await.unwrap_err();
    for e in [&reset, &read] {
        assert_eq!(e.code().as_str(), "invalid-config", "{e}");
        assert!(e.to_string().contains("command flasher cannot"), "{e}");
    }
}
