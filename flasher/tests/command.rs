//! Contract of the command backend, with a real script standing in for the flashing tool.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};

use twinflash_flasher::command::CommandFlasher;
use twinflash_flasher::{
    CancellationToken, CommandConfig, FirmwareFormat, FlashRequest, Flasher, Phase,
};

fn tool() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fake-tool.sh")
        .display()
        .to_string()
}

fn flasher(mode: &str, dev: &Path, verify: bool, timeout_secs: u64) -> CommandFlasher {
    let d = dev.display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cfg = CommandConfig {
        flash: s(&[
            "sh",
            &tool(),
            mode,
            &d,
            "{chip}",
            "{base_address}",
            "{file}",
        ]),
        verify: verify.then(|| s(&["cmp", "{file}", &format!("{d}/flashed.bin")])),
        timeout_secs,
        workdir: None,
    };
    CommandFlasher::new(cfg, "esp32c3").unwrap()
}

fn image(dir: &Path, name: &str) -> (FlashRequest, Vec<u8>) {
    let data = twinflash_image::fixtures::pattern(3000, 9);
    let path = common::write(dir, name, &data);
    (
        common::request(path, FirmwareFormat::Bin, Some(0x10000), "esp32c3", "1.2.0"),
        data,
    )
}

fn argv_seen(dev: &Path) -> Vec<String> {
    std::fs::read_to_string(dev.join("argv.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn flashes_and_verifies_with_the_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let f = flasher("ok", tmp.path(), true, 30);
    let (req, data) = image(tmp.path(), "fw.bin");
    let (tx, mut rx) = common::progress();
    let out = f.flash(&req, tx, CancellationToken::new()).await.unwrap();
    assert_eq!(out.bytes, 3000);
    assert_eq!(std::fs::read(tmp.path().join("flashed.bin")).unwrap(), data);
    let abs = std::path::absolute(&req.image)
        .unwrap()
        .display()
        .to_string();
    assert_eq!(
        argv_seen(tmp.path()),
        vec!["esp32c3".to_owned(), "0x10000".into(), abs]
    );
    let events = common::drain(&mut rx);
    assert!(
        events
            .iter()
            .any(|p| p.phase == Phase::Programming && p.percent == 50),
        "{events:?}"
    );
    assert_eq!(events.last().map(|p| p.percent), Some(100));
    assert!(!f.reads_back());
    assert_eq!(f.installed().await.unwrap(), None);
}

#[tokio::test]
async fn artifact_data_cannot_inject_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let f = flasher("ok", tmp.path(), true, 30);
    let evil = "fw; touch pwned1 $(touch pwned2) `touch pwned3` | touch pwned4.bin";
    let (req, data) = image(tmp.path(), evil);
    let (tx, _rx) = common::progress();
    f.flash(&req, tx, CancellationToken::new()).await.unwrap();
    assert_eq!(std::fs::read(tmp.path().join("flashed.bin")).unwrap(), data);
    let seen = argv_seen(tmp.path());
    assert_eq!(seen.len(), 3, "the file name stayed one argument: {seen:?}");
    assert!(seen[2].ends_with(evil));
    for p in [
        PathBuf::from("pwned1"),
        tmp.path().join("pwned1"),
        tmp.path().join("pwned2"),
        tmp.path().join("pwned3"),
    ] {
        assert!(!p.exists(), "{} was created", p.display());
    }
}

#[tokio::test]
async fn non_zero_exit_is_flash_failed_with_output() {
    let tmp = tempfile::tempdir().unwrap();
    let f = flasher("fail", tmp.path(), true, 30);
    let (req, _) = image(tmp.path(), "fw.bin");
    let (tx, _rx) = common::progress();
    let err = f
        .flash(&req, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "flash-failed");
    assert!(
        err.to_string().contains("Failed to connect to esp32c3"),
        "{err}"
    );
}

#[tokio::test]
async fn failing_verify_command_is_verify_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let f = flasher("corrupt", tmp.path(), true, 30);
    let (req, _) = image(tmp.path(), "fw.bin");
    let (tx, _rx) = common::progress();
    let err = f
        .flash(&req, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "verify-failed", "{err}");
    // Without a verify command the tool's own word is taken.
    let f = flasher("corrupt", tmp.path(), false, 30);
    let (tx, _rx) = common::progress();
    f.flash(&req, tx, CancellationToken::new()).await.unwrap();
}

#[tokio::test]
async fn hanging_tool_times_out_and_is_killed_with_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let f = flasher("hang", tmp.path(), false, 1);
    let (req, _) = image(tmp.path(), "fw.bin");
    let (tx, _rx) = common::progress();
    let err = f
        .flash(&req, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "timeout", "{err}");
    assert!(!tmp.path().join("flashed.bin").exists());
    // The tool's helper process (its `sleep`) was killed with it: its process group got SIGKILL.
    let pid = std::fs::read_to_string(tmp.path().join("helper.pid")).unwrap();
    let stat = PathBuf::from(format!("/proc/{}/stat", pid.trim()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "helper {} still running",
            pid.trim()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn refusals_do_not_run_the_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let f = flasher("ok", tmp.path(), false, 30);
    let (mut req, _) = image(tmp.path(), "fw.bin");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (tx, _rx) = common::progress();
    assert!(f.flash(&req, tx, cancel).await.unwrap_err().is_cancelled());
    req.chip = "esp32s3".into();
    let (tx, _rx) = common::progress();
    assert_eq!(
        f.flash(&req, tx, CancellationToken::new())
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "chip-mismatch"
    );
    req.chip = "esp32c3".into();
    req.base_address = None;
    let (tx, _rx) = common::progress();
    assert_eq!(
        f.flash(&req, tx, CancellationToken::new())
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "unsupported-artifact"
    );
    assert!(!tmp.path().join("argv.txt").exists());

    let missing = CommandFlasher::new(
        CommandConfig {
            flash: vec!["/nonexistent/esptool".into(), "{file}".into()],
            verify: None,
            timeout_secs: 5,
            workdir: None,
        },
        "esp32c3",
    )
    .unwrap();
    let (req, _) = image(tmp.path(), "fw.bin");
    let (tx, _rx) = common::progress();
    assert_eq!(
        missing
            .flash(&req, tx, CancellationToken::new())
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "flash-failed"
    );
}
