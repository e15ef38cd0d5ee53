//! Hostile and careless configuration (issue 23): every setting that would fail later (a panic in tokio's semaphore,
//! a journal that cannot be written, a missing `/healthz`, a read that never ends, edgecore's own socket taken over)
//! is refused by `twinflash-edge --check-config` with exit status 2 and one line naming the key, and at start the
//! same way. Each case runs the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bound of one run of the binary: a hung read of a FIFO must fail the test, not stall it.
const RUN: Duration = Duration::from_secs(20);

/// A valid MQTT-mode file in `dir`, with `{extra}` spliced in by the cases.
fn mqtt_config(dir: &Path) -> String {
    format!(
        "node = \"n\"\nstate_dir = \"{0}/state\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nclient_id = \"c\"\n\
         [[devices]]\nid = \"default/d\"\nchip = \"STM32F411RETx\"\n[devices.flasher]\nkind = \"simulated\"\n\
         dir = \"{0}/d\"\nsize = 65536\n",
        dir.display()
    )
}

/// A valid DMI-mode file in `dir`.
fn dmi_config(dir: &Path) -> String {
    format!(
        "node = \"n\"\nstate_dir = \"{0}/state\"\n[kubeedge]\nmode = \"dmi\"\ndmi_socket = \"{0}/edgecore/dmi.sock\"\n",
        dir.display()
    )
}

/// Inserts `lines` into the TOML `text` at the start of `[section]` (appended as a new section when missing).
fn with(text: &str, section: &str, lines: &str) -> String {
    let header = format!("[{section}]\n");
    match text.find(&header) {
        Some(at) => {
            let end = at + header.len();
            format!("{}{lines}\n{}", &text[..end], &text[end..])
        }
        None => format!("{text}{header}{lines}\n"),
    }
}

/// Runs `twinflash-edge` with `args` on `config` for at most [`RUN`].
fn run(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    support::run_for(
        Path::new(env!("CARGO_BIN_EXE_twinflash-edge")),
        config,
        args,
        RUN,
    )
}

/// `--check-config` on `text`, written to `dir/<name>.toml`.
fn check(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    run(&file, &["--check-config"])
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    path
}

/// Each case: its name, the file, and what the one line must name. All cases run; the failures are listed together.
fn expect_refused(dir: &Path, cases: Vec<(&str, String, Vec<&str>)>) {
    let mut failures = Vec::new();
    for (name, text, names) in cases {
        let started = Instant::now();
        let (code, out) = check(dir, name, &text);
        let ok = code == Some(2)
            && out.lines().count() == 1
            && names.iter().all(|n| out.contains(n))
            && out.len() < 1024;
        if !ok {
            failures.push(format!(
                "{name}: expected exit 2 and one line naming {names:?}; got {code:?} after {:.1?}: {}",
                started.elapsed(),
                out.chars().take(400).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The gdb backend (issue 24): `--check-config` builds it, refuses a target that is no `host:port` or device path,
/// and says where each device is flashed through.
#[test]
fn check_config_checks_and_describes_a_gdb_flasher() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sim = format!(
        "kind = \"simulated\"\ndir = \"{}/d\"\nsize = 65536\n",
        dir.display()
    );
    let gdb = mqtt_config(dir).replace(
        &sim,
        "kind = \"gdb\"\ntarget = \"127.0.0.1:3333\"\nreset = \"system_reset\"\n",
    );
    assert!(gdb.contains("kind = \"gdb\""), "{gdb}");
    let (code, out) = check(dir, "gdb", &gdb);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "default/d: [[devices]] entry (gdb 127.0.0.1:3333, reset: monitor system_reset)"
        ),
        "{out}"
    );
    expect_refused(
        dir,
        vec![
            (
                "gdb-target",
                gdb.replace("127.0.0.1:3333", "localhost"),
                vec!["default/d", "gdb target", "host:port"],
            ),
            (
                "gdb-unknown-key",
                gdb.replace("reset = ", "reset_after = true\nreset = "),
                vec!["reset_after"],
            ),
        ],
    );
}

#[test]
fn settings_that_would_fail_at_run_time_are_refused_by_check_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = mqtt_config(dir);
    let (code, out) = check(dir, "good", &good);
    assert_eq!(code, Some(0), "{out}");

    let big = 1u64 << 61;
    let long_id = format!("default/{}", "d".repeat(292));
    let cases = vec![
        // tokio's Semaphore::new panics above usize::MAX >> 3.
        (
            "downloads",
            with(&good, "limits", &format!("downloads = {big}")),
            vec!["limits.downloads", "1024"],
        ),
        (
            "flashes",
            with(&good, "limits", &format!("flashes = {big}")),
            vec!["limits.flashes"],
        ),
        // A 300-character id: every journal write failed with "File name too long".
        (
            "long-id",
            good.replace("default/d", &long_id),
            vec!["devices[0].id", "at most 253"],
        ),
        (
            "not-a-kubernetes-name",
            good.replace("default/d", "default/My Device"),
            vec!["devices[0].id", "Kubernetes"],
        ),
        // The agent ran without /healthz.
        (
            "listen",
            with(&good, "metrics", "listen = \"localhost:nine\""),
            vec!["metrics.listen"],
        ),
        (
            "listen-port-0",
            with(&good, "metrics", "listen = \"127.0.0.1:0\""),
            vec!["metrics.listen", "port 0"],
        ),
        // The agent's working directory.
        (
            "empty-state-dir",
            good.replace(
                &format!("state_dir = \"{}/state\"", dir.display()),
                "state_dir = \"\"",
            ),
            vec!["state_dir", "empty"],
        ),
        (
            "empty-sim-dir",
            good.replace(&format!("dir = \"{}/d\"", dir.display()), "dir = \"\""),
            vec!["devices[0].flasher.dir", "empty"],
        ),
        (
            "empty-layout-mirror",
            format!("{good}[[registry.mirrors]]\nkind = \"layout\"\npath = \"\"\n"),
            vec!["registry.mirrors[0].path"],
        ),
        (
            "mirror-host-with-scheme",
            format!(
                "{good}[[registry.mirrors]]\nkind = \"registry\"\nhost = \"https://mirror:5000/v2\"\n"
            ),
            vec!["registry.mirrors[0].host"],
        ),
        (
            "plain-http-with-scheme",
            with(&good, "registry", "plain_http = [\"http://registry:5000\"]"),
            vec!["registry.plain_http[0]"],
        ),
        // Timers: `Instant::now() + period` panics far in the future; the check itself overflowed on this one.
        (
            "anti-entropy",
            with(
                &good,
                "twin",
                &format!("anti_entropy_secs = {}", 1u64 << 62),
            ),
            vec!["twin.anti_entropy_secs", "one day"],
        ),
        (
            "retry-max",
            with(&good, "twin", &format!("retry_max_secs = {}", 1u64 << 62)),
            vec!["twin.retry_max_secs"],
        ),
        (
            "blob-deadline",
            with(
                &good,
                "registry",
                &format!("blob_request_timeout_secs = {}", u64::MAX >> 1),
            ),
            vec!["registry.blob_request_timeout_secs"],
        ),
        // rumqttc sends the keep-alive as 16 bits.
        (
            "keep-alive",
            good.replace(
                "client_id = \"c\"",
                "client_id = \"c\"\nkeep_alive_secs = 70000",
            ),
            vec!["mqtt.keep_alive_secs"],
        ),
        // The link could not connect to a URL without a host (exit 1 at start).
        (
            "mqtt-no-host",
            good.replace("mqtt://127.0.0.1:1", "mqtt://:1883"),
            vec!["mqtt.url"],
        ),
        // The fetcher refused credentials without a password at start.
        (
            "username-without-password",
            with(&good, "registry", "username = \"u\""),
            vec!["registry", "password"],
        ),
        (
            "log-level",
            with(&good, "log", "level = \"twinflash_edge=loud\""),
            vec!["log.level"],
        ),
        (
            "node",
            good.replace("node = \"n\"", "node = \"\""),
            vec!["node"],
        ),
        (
            "max-artifact",
            with(&good, "registry", "max_artifact_bytes = 0"),
            vec!["registry.max_artifact_bytes"],
        ),
    ];
    expect_refused(dir, cases);
}

#[test]
fn every_file_a_setting_names_is_opened_bounded_and_must_be_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = mqtt_config(dir);
    let certs = twinflash_harness::make_certs(dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let big = dir.join("big.pem");
    std::fs::write(&big, vec![b'A'; 2 << 20]).unwrap();
    let f = |name: &str| fifo(dir, name).display().to_string();
    let ca = certs.ca.display().to_string();
    let (cert, key) = (
        certs.client_cert.display().to_string(),
        certs.client_key.display().to_string(),
    );

    // What the agent reads, with real files: accepted.
    let tls = good.replace("mqtt://127.0.0.1:1", "mqtts://127.0.0.1:1").replace(
        "client_id = \"c\"",
        &format!("client_id = \"c\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\""),
    );
    let registry = format!("ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"");
    let all = with(&tls, "registry", &registry);
    let (code, out) = check(dir, "all-files", &all);
    assert_eq!(code, Some(0), "{out}");

    let cases = vec![
        // Never opened by --check-config before: the agent failed at start.
        (
            "registry-ca-dev-zero",
            with(&good, "registry", "ca_file = \"/dev/zero\""),
            vec!["registry.ca_file", "not a regular file"],
        ),
        (
            "registry-ca-empty",
            with(
                &good,
                "registry",
                &format!("ca_file = \"{}\"", empty.display()),
            ),
            vec!["registry.ca_file", "no PEM certificate"],
        ),
        (
            "registry-key-fifo",
            with(
                &good,
                "registry",
                &format!("cert_file = \"{cert}\"\nkey_file = \"{}\"", f("reg-key")),
            ),
            vec!["registry.key_file", "not a regular file"],
        ),
        (
            "registry-password-fifo",
            with(
                &good,
                "registry",
                &format!(
                    "username = \"u\"\npassword_file = \"{}\"",
                    f("reg-password")
                ),
            ),
            vec!["registry.password_file", "not a regular file"],
        ),
        (
            "docker-config-directory",
            with(
                &good,
                "registry",
                &format!("docker_config = \"{}\"", dir.display()),
            ),
            vec!["registry.docker_config", "not a regular file"],
        ),
        (
            "registry-ca-2mib",
            with(
                &good,
                "registry",
                &format!("ca_file = \"{}\"", big.display()),
            ),
            vec!["registry.ca_file", "longer than"],
        ),
        // Read without bound, or hung on a FIFO without a writer.
        (
            "signature-key-fifo",
            with(
                &good,
                "signatures",
                &format!("keys = [\"{}\"]", f("release.pub")),
            ),
            vec!["signatures.keys[0]", "not a regular file"],
        ),
        (
            "mqtt-ca-dev-zero",
            tls.replace(&ca, "/dev/zero"),
            vec!["mqtt.ca_file", "not a regular file"],
        ),
        (
            "mqtt-password-fifo",
            good.replace(
                "client_id = \"c\"",
                &format!(
                    "client_id = \"c\"\nusername = \"u\"\npassword_file = \"{}\"",
                    f("mqtt-password")
                ),
            ),
            vec!["mqtt.password_file", "not a regular file"],
        ),
        (
            "mqtt-key-is-a-certificate",
            tls.replace(&key, &cert),
            vec!["mqtt.key_file", "private key"],
        ),
    ];
    expect_refused(dir, cases);
}

#[test]
fn the_mapper_socket_can_never_be_edgecores_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("edgecore")).unwrap();
    let good = dmi_config(dir);
    let (code, out) = check(dir, "good", &good);
    assert_eq!(code, Some(0), "{out}");
    let edgecore = dir.join("edgecore");
    std::os::unix::fs::symlink(&edgecore, dir.join("link")).unwrap();
    let d = dir.display();
    let long = format!("/{}/dmi.sock", "s".repeat(110));
    let cases = vec![
        (
            "equal",
            with(
                &good,
                "kubeedge",
                &format!("mapper_socket = \"{d}/edgecore/dmi.sock\""),
            ),
            vec!["kubeedge.mapper_socket", "edgecore's own"],
        ),
        (
            "dots-and-slashes",
            with(
                &good,
                "kubeedge",
                &format!("mapper_socket = \"{d}//edgecore/./x/../dmi.sock\""),
            ),
            vec!["kubeedge.mapper_socket", "edgecore's own"],
        ),
        (
            "through-a-symlink",
            with(
                &good,
                "kubeedge",
                &format!("mapper_socket = \"{d}/link/dmi.sock\""),
            ),
            vec!["kubeedge.mapper_socket", "edgecore's own"],
        ),
        // The default, <state_dir>/dmi.sock, is edgecore's socket when the state directory is edgecore's.
        (
            "default-in-edgecores-directory",
            good.replace(
                &format!("state_dir = \"{d}/state\""),
                &format!("state_dir = \"{d}/edgecore\""),
            ),
            vec!["kubeedge.mapper_socket", "edgecore's own"],
        ),
        (
            "too-long",
            with(&good, "kubeedge", &format!("mapper_socket = \"{long}\"")),
            vec!["kubeedge.mapper_socket", "107"],
        ),
    ];
    expect_refused(dir, cases);
}

/// A `metrics.listen` that cannot be bound stops the start (exit 1, one line naming it) instead of an agent that
/// runs without `/healthz`.
#[test]
fn a_metrics_listener_that_cannot_be_bound_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = with(
        &mqtt_config(dir),
        "metrics",
        &format!("listen = \"{addr}\""),
    );
    let file = dir.join("taken.toml");
    std::fs::write(&file, &text).unwrap();
    let (code, out) = check(dir, "taken-check", &text);
    assert_eq!(code, Some(0), "the address is valid: {out}");
    let (code, out) = run(&file, &[]);
    assert_eq!(code, Some(1), "{out}");
    let ours: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("twinflash-edge:"))
        .collect();
    assert_eq!(ours.len(), 1, "{out}");
    assert!(
        ours[0].contains("metrics.listen") && ours[0].contains(&addr.to_string()),
        "{out}"
    );
}
