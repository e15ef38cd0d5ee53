//! A SIGKILL of the flashing process at any moment leaves a state that a later flash recovers from.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use twinflash_flasher::simulated::SimulatedFlasher;
use twinflash_flasher::{CancellationToken, FirmwareFormat, Flasher, SimulatedConfig};
use twinflash_image::fixtures;

const CHIP: &str = "STM32F411RETx";
const SIZE: u64 = 128 * 1024;
const IMAGE_LEN: usize = 48 * 1024;

fn cfg(dev_dir: &Path, ab: bool, throttled: bool) -> SimulatedConfig {
    let mut c = SimulatedConfig::new(dev_dir, SIZE);
    c.ab = ab;
    c.write_bytes_per_sec = throttled.then_some(12 * 1024);
    c
}

fn image(dir: &Path, seed: u8) -> PathBuf {
    common::write(
        dir,
        &format!("fw{seed}.bin"),
        &fixtures::pattern(IMAGE_LEN, seed),
    )
}

/// Not a test by itself: the child process that a test kills. Run only through `spawn_child`.
#[test]
#[ignore = "child process of kill_mid_write_*"]
fn child_flash() {
    let dev_dir = PathBuf::from(std::env::var("SIM_CHILD_DEV").unwrap());
    let img = PathBuf::from(std::env::var("SIM_CHILD_IMAGE").unwrap());
    let ab = std::env::var("SIM_CHILD_AB").unwrap() == "1";
    let dev = SimulatedFlasher::new(cfg(&dev_dir, ab, true), CHIP).unwrap();
    let req = common::request(img, FirmwareFormat::Bin, Some(0), CHIP, "2.0.0");
    let (tx, _rx) = common::progress();
    dev.flash_blocking(&req, tx, &CancellationToken::new())
        .unwrap();
}

fn spawn_child(dev_dir: &Path, img: &Path, ab: bool) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_flash", "--nocapture"])
        .env("SIM_CHILD_DEV", dev_dir)
        .env("SIM_CHILD_IMAGE", img)
        .env("SIM_CHILD_AB", if ab { "1" } else { "0" })
        .spawn()
        .unwrap()
}

/// Wait until the child has programmed at least `bytes` of the new image at `offset`, then SIGKILL it.
fn kill_when_programmed(
    child: &mut std::process::Child,
    flash: &Path,
    offset: usize,
    new: &[u8],
    bytes: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let f = std::fs::read(flash).unwrap_or_default();
        if f.len() >= offset + bytes && f[offset..offset + bytes] == new[..bytes] {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "child ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "child made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

async fn reflash(dev: &SimulatedFlasher, img: PathBuf, version: &str) {
    let req = common::request(img, FirmwareFormat::Bin, Some(0), CHIP, version);
    let (tx, _rx) = common::progress();
    dev.flash(&req, tx, CancellationToken::new()).await.unwrap();
}

#[tokio::test]
async fn kill_mid_write_single_bank_then_reflash_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dev_dir = tmp.path().join("dev");
    let v1 = image(tmp.path(), 1);
    let v2 = image(tmp.path(), 2);
    let dev = SimulatedFlasher::new(cfg(&dev_dir, false, false), CHIP).unwrap();
    reflash(&dev, v1, "1.0.0").await;

    let mut child = spawn_child(&dev_dir, &v2, false);
    let new = std::fs::read(&v2).unwrap();
    kill_when_programmed(&mut child, &dev_dir.join("flash.bin"), 0, &new, 4096);

    let flash = std::fs::read(dev_dir.join("flash.bin")).unwrap();
    assert_ne!(&flash[..IMAGE_LEN], &new[..], "the kill came mid-write");
    assert_eq!(
        dev.installed().await.unwrap(),
        None,
        "partial image is not reported"
    );
    reflash(&dev, v2, "2.0.0").await;
    assert_eq!(dev.installed().await.unwrap().unwrap().version, "2.0.0");
    let c = dev.counters().unwrap();
    let r = common::request(PathBuf::new(), FirmwareFormat::Bin, None, CHIP, "2.0.0").reference;
    assert_eq!((c.started[&r], c.completed[&r]), (2, 1));
}

#[tokio::test]
async fn kill_mid_write_ab_keeps_old_image_bootable() {
    let tmp = tempfile::tempdir().unwrap();
    let dev_dir = tmp.path().join("dev");
    let v1 = image(tmp.path(), 1);
    let v2 = image(tmp.path(), 2);
    let dev = SimulatedFlasher::new(cfg(&dev_dir, true, false), CHIP).unwrap();
    reflash(&dev, v1, "1.0.0").await; // goes to slot B
    assert!(dev.confirm().unwrap());

    let mut child = spawn_child(&dev_dir, &v2, true); // writes slot A
    let new = std::fs::read(&v2).unwrap();
    kill_when_programmed(&mut child, &dev_dir.join("flash.bin"), 0, &new, 4096);

    dev.boot().unwrap();
    let inst = dev.installed().await.unwrap().unwrap();
    assert_eq!(
        (inst.version.as_str(), inst.slot.as_deref(), inst.confirmed),
        ("1.0.0", Some("b"), true)
    );
    reflash(&dev, v2, "2.0.0").await;
    assert_eq!(dev.installed().await.unwrap().unwrap().version, "2.0.0");
}
