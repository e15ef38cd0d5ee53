//! Issue 24's acceptance on the emulated boards, beyond the good install and the hanging release of `mcu.rs`: a
//! SIGKILL of the agent while it confirms and while it reverts, a release that crash-loops, an ELF artifact, and
//! the second board family (Stellaris LM3S6965). QEMU boards started by the harness, flashed through their GDB
//! servers by the gdb backend, test firmware built from C; the device's check reads the board's UART file as a
//! device-side script reads a serial port. Judged by what the UART printed and what the twin store holds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{AgentSpec, Env, WAIT, until};
use twinflash_harness::board::{self, Board, BoardKind, Firmware, Variant};

/// `$0` = the UART file, `$1` = the version, `$2` = a hold file. Confirmed when the hold file is absent, the UART
/// printed nothing for half a second (a crash loop never settles) and its newest line ends with the banner naming
/// the version (the UART ends its lines with CR LF; a line the firmware was cut off in, by a reset or the debugger,
/// runs on into the next boot's banner).
const SETTLED_BANNER: &str = r#"[ -e "$2" ] && exit 1
a=$(wc -c < "$0"); sleep 0.5; b=$(wc -c < "$0")
last=$(tr -d '\r' < "$0" | grep -v '^$' | tail -n 1)
[ "$a" = "$b" ] || exit 1
case "$last" in *"boot version=$1") exit 0 ;; esac
exit 1"#;

/// The banner in a UART line: from `boot version=` on (a line cut off by a reset runs on into the next banner).
fn banner(line: &str) -> Option<&str> {
    line.rfind("boot version=").map(|at| &line[at..])
}

/// How long the board may take to print its banner after the reset.
const BOOT: Duration = Duration::from_secs(20);

/// One emulated board, halted with an empty flash, and an agent whose one device flashes it through the gdb
/// backend and confirms by [`SETTLED_BANNER`].
struct Scene {
    board: Board,
    env: Env,
    /// While this file exists the check does not pass: a window in which the agent is killed.
    hold: PathBuf,
    chip: &'static str,
    id: String,
    _dir: tempfile::TempDir,
}

/// Leaked: AgentSpec borrows its strings for any lifetime.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

impl Scene {
    async fn start(kind: BoardKind, timeout_secs: u64) -> Scene {
        let board = Board::start(kind, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hold = dir.path().join("hold");
        let flasher = leak(twinflash_testkit::gdb_flasher_toml(&board));
        let uart = board.uart_path().display().to_string();
        let hold_arg = hold.display().to_string();
        let argv = [
            "/bin/sh",
            "-c",
            SETTLED_BANNER,
            &uart,
            "{version}",
            &hold_arg,
        ];
        let confirm = leak(twinflash_testkit::confirm_toml(&argv, timeout_secs, 200));
        let chip = kind.chip();
        let env = Env::start(1, |s| AgentSpec {
            extra_device_toml: confirm,
            flasher_toml: Some((chip, flasher)),
            ..s
        })
        .await;
        let id = env.device(0).id;
        Scene {
            board,
            env,
            hold,
            chip,
            id,
            _dir: dir,
        }
    }

    /// Pushes `fw`'s raw binary, placed at the board's flash origin.
    async fn push_bin(&self, tag: &str, fw: &Firmware) -> String {
        let origin = Some(fw.board().flash_origin());
        self.push_file(tag, fw.bin(), fw.version(), origin, "bin")
            .await
    }

    /// Pushes `file` as `fw/mcu:<tag>`, a real twinflash artifact whose format is detected from the content, and
    /// checks that it was taken for `format`.
    async fn push_file(
        &self,
        tag: &str,
        file: &Path,
        version: &str,
        base_address: Option<u64>,
        format: &str,
    ) -> String {
        let tls = twinflash_artifact::TlsOptions {
            plain_http: vec![self.env.registry.host()],
            ..Default::default()
        };
        let req = twinflash_artifact::PushRequest {
            reference: format!("{}/fw/mcu:{tag}", self.env.registry.host()),
            file: file.to_owned(),
            version: version.into(),
            chip: self.chip.into(),
            format: None,
            base_address,
            annotations: BTreeMap::new(),
        };
        let pushed = twinflash_artifact::push(
            &tls,
            &twinflash_artifact::Credentials::default(),
            &req,
            |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(
            pushed.artifact.format.as_str(),
            format,
            "{:?}",
            pushed.artifact
        );
        pushed.pinned_reference
    }

    fn hold(&self, on: bool) {
        if on {
            std::fs::write(&self.hold, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(&self.hold);
        }
    }

    /// How many times the board printed the banner of `version` (one per boot of that image).
    fn banners(&self, version: &str) -> usize {
        let want = format!("boot version={version}");
        self.board
            .uart_lines()
            .iter()
            .filter(|l| banner(l) == Some(want.as_str()))
            .count()
    }

    /// The newest banner the board printed.
    fn last_banner(&self) -> Option<String> {
        self.board
            .uart_lines()
            .iter()
            .rev()
            .find_map(|l| banner(l))
            .map(str::to_owned)
    }

    /// SIGKILL and restart the agent; returns once the new process runs.
    async fn kill_and_restart(&mut self) {
        self.env.agent.kill9();
        self.env.agent.spawn();
        let agent = &self.env.agent;
        assert!(
            until(WAIT, || agent
                .log()
                .matches("twinflash-edge running")
                .count()
                >= 2)
            .await,
            "{}",
            agent.log()
        );
    }

    /// Installs `reference` (of `version`) and waits until it is confirmed: the twin and the UART say so.
    async fn install(&self, reference: &str, version: &str) {
        self.env.intent(0, reference).await;
        self.env.wait(0, "firmware", reference).await;
        self.env.wait(0, "firmware-state", "installed").await;
        assert_eq!(self.env.actual(0, "firmware").as_deref(), Some(reference));
        assert_eq!(
            self.env.actual(0, "firmware-version").as_deref(),
            Some(version)
        );
        assert_eq!(
            self.last_banner().as_deref(),
            Some(format!("boot version={version}").as_str())
        );
    }

    /// The twin store never held `reference` nor `version` as the device's firmware.
    fn never_claimed(&self, reference: &str, version: &str) {
        let firmware = self.env.cloud.history(&self.id, "firmware");
        assert!(!firmware.iter().any(|f| f == reference), "{firmware:?}");
        let versions = self.env.cloud.history(&self.id, "firmware-version");
        assert!(!versions.iter().any(|v| v == version), "{versions:?}");
    }

    /// From its first report of `reference` on, the twin held `reference` and `version` at every observed point.
    fn always_since_installed(&self, reference: &str, version: &str) {
        for (twin, want) in [("firmware", reference), ("firmware-version", version)] {
            let history = self.env.cloud.history(&self.id, twin);
            let first = history.iter().position(|v| v == want);
            assert!(
                first.is_some_and(|i| history[i..].iter().all(|v| v == want)),
                "{twin}: {history:?}"
            );
        }
    }

    /// After a release was reverted: `failed:boot-failed`, the old firmware in the twin, the old banner newest on
    /// the UART.
    fn reverted_to(&self, old: &str, old_version: &str) {
        assert_eq!(self.env.actual(0, "firmware").as_deref(), Some(old));
        assert_eq!(
            self.env.actual(0, "firmware-version").as_deref(),
            Some(old_version)
        );
        assert_eq!(
            self.last_banner().as_deref(),
            Some(format!("boot version={old_version}").as_str()),
            "{:?}",
            self.board.uart_lines()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_an_emulated_board_confirms_resumes_the_confirmation_without_flashing_again()
{
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    let mut s = Scene::start(kind, 60).await;
    let good = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let v1 = s.push_bin("1.0.0", &good).await;

    // The check is held: the board boots the release, the agent stays in `confirming`.
    s.hold(true);
    s.env.intent(0, &v1).await;
    s.env.wait(0, "firmware-state", "confirming").await;
    s.board.wait_line("boot version=1.0.0", BOOT).unwrap();
    s.kill_and_restart().await;
    assert_ne!(
        s.env.actual(0, "firmware").as_deref(),
        Some(v1.as_str()),
        "not claimed while unconfirmed"
    );
    s.hold(false);
    s.env.wait(0, "firmware-state", "installed").await;
    assert_eq!(s.env.actual(0, "firmware").as_deref(), Some(v1.as_str()));
    assert_eq!(
        s.env.actual(0, "firmware-version").as_deref(),
        Some("1.0.0")
    );
    println!("UART: {:?}", s.board.uart_lines());
    assert_eq!(
        s.banners("1.0.0"),
        1,
        "booted once: the restarted agent confirmed without flashing (and resetting) again"
    );
    assert_eq!(s.last_banner().as_deref(), Some("boot version=1.0.0"));
    let states = s.env.cloud.states(&s.id);
    let confirming = states.iter().position(|st| st == "confirming").unwrap();
    assert!(
        !states[confirming..]
            .iter()
            .any(|st| st.starts_with("flashing")),
        "no flash after confirming: {states:?}"
    );
    let log = s.env.agent.log();
    assert_eq!(
        log.matches("firmware confirmed: the device runs it")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_an_emulated_board_is_reverted_resumes_the_revert_and_ends_on_the_old_firmware()
 {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    let mut s = Scene::start(kind, 8).await;
    let good = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let hangs = Firmware::build(kind, Variant::Hang, "2.0.0").unwrap();
    let v1 = s.push_bin("1.0.0", &good).await;
    let v2 = s.push_bin("2.0.0", &hangs).await;
    s.install(&v1, "1.0.0").await;

    // The release hangs; the check is held as well, so that the revert's confirmation waits for the restart.
    s.hold(true);
    s.env.intent(0, &v2).await;
    let agent = &s.env.agent;
    assert!(
        until(WAIT, || agent
            .log()
            .contains("putting the previous firmware back"))
        .await,
        "{}",
        agent.log()
    );
    s.kill_and_restart().await;
    s.hold(false);
    s.env.wait(0, "firmware-state", "failed:boot-failed").await;
    println!("UART: {:?}", s.board.uart_lines());
    s.reverted_to(&v1, "1.0.0");
    s.never_claimed(&v2, "2.0.0");
    s.always_since_installed(&v1, "1.0.0");
    assert_eq!(s.banners("2.0.0"), 0, "the hanging release printed nothing");
    assert!(s.banners("1.0.0") >= 2, "the old firmware booted again");
    let states = s.env.cloud.states(&s.id);
    assert!(
        states.iter().any(|st| st == "confirming"),
        "the release was flashed and awaited: {states:?}"
    );
    let log = s.env.agent.log();
    assert!(
        log.contains("previous firmware back and confirmed"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_crash_loops_on_an_emulated_board_is_reverted() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    let s = Scene::start(kind, 6).await;
    let good = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let crashes = Firmware::build(kind, Variant::CrashLoop, "2.0.0").unwrap();
    let v1 = s.push_bin("1.0.0", &good).await;
    let v2 = s.push_bin("2.0.0", &crashes).await;
    s.install(&v1, "1.0.0").await;

    let before = s.board.uart_lines().len();
    s.env.intent(0, &v2).await;
    let ended = until(WAIT, || {
        s.env
            .actual(0, "firmware-state")
            .is_some_and(|st| st.starts_with("failed:"))
    })
    .await;
    let after: Vec<String> = s.board.uart_lines().split_off(before);
    assert!(
        ended && s.env.actual(0, "firmware-state").as_deref() == Some("failed:boot-failed"),
        "{:?}\nUART: {after:?}\n{}",
        s.env.cloud.states(&s.id),
        s.env.agent.log()
    );
    println!("UART after the crash-looping release and the revert: {after:?}");
    // It booted, printed its banner and crashed, again and again, until the revert.
    assert!(
        after.iter().filter(|l| *l == "crash").count() >= 2,
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .any(|l| banner(l) == Some("boot version=2.0.0")),
        "{after:?}"
    );
    s.reverted_to(&v1, "1.0.0");
    assert_eq!(
        after.last().and_then(|l| banner(l)),
        Some("boot version=1.0.0")
    );
    s.never_claimed(&v2, "2.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elf_artifact_is_installed_on_an_emulated_stm32() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    let s = Scene::start(kind, 20).await;
    let good = Firmware::build(kind, Variant::Good, "1.1.0").unwrap();
    let v = s
        .push_file("1.1.0-elf", good.elf(), "1.1.0", None, "elf")
        .await;
    s.install(&v, "1.1.0").await;
    assert_eq!(s.banners("1.1.0"), 1);
    // What the flash holds is the image the ELF places there (its BIN twin, from objcopy).
    let bin = std::fs::read(good.bin()).unwrap();
    let flash = s
        .board
        .read_memory(kind.flash_origin(), bin.len() as u64)
        .unwrap();
    assert!(flash == bin, "the flash holds the ELF's image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_stellaris_board_is_updated() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Lm3s6965evb;
    let s = Scene::start(kind, 20).await;
    let v1_fw = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let v2_fw = Firmware::build(kind, Variant::Good, "1.2.0").unwrap();
    let v1 = s.push_bin("lm3s-1.0.0", &v1_fw).await;
    let v2 = s.push_bin("lm3s-1.2.0", &v2_fw).await;
    s.install(&v1, "1.0.0").await;
    s.install(&v2, "1.2.0").await;
    println!("UART: {:?}", s.board.uart_lines());
    assert_eq!((s.banners("1.0.0"), s.banners("1.2.0")), (1, 1));
    let states = s.env.cloud.states(&s.id);
    assert_eq!(
        states.iter().filter(|st| *st == "confirming").count(),
        2,
        "{states:?}"
    );
}
