//! Issue 6's "two replicas never publish at once", with real processes: two `twinflash-cloud`
//! replicas share one Lease on the harness's in-memory Kubernetes API server ([`FakeApi`]). The
//! leader reaches the API server through a fault proxy that then black-holes it. kube-lease-manager
//! alone would keep it leading; the lease watchdog must stop it before the other replica takes the
//! expired lease over. Leadership is read from each replica's `twinflash_cloud_leader` gauge.
//!
//! Issue 22's F1 on top: a replica that lost its lease sends the API server nothing but its Lease requests (no
//! nudge, no watch: every leader task stopped), and after it wins the lease again each Device is nudged once per
//! period (one anti-entropy loop, not two). Requests are told apart by the User-Agent each replica sends
//! (`twinflash-cloud/<version> (<pod name>)`), which the harness's API server records with the fieldManager.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twinflash_harness::kubeapi::RequestRecord;
use twinflash_harness::{FakeApi, Fault, FaultProxy, Mosquitto, free_port};

/// A `twinflash-cloud` replica as a child process, killed when dropped.
struct Replica {
    child: Child,
    log: std::path::PathBuf,
    metrics: SocketAddr,
}

impl Replica {
    /// A replica in mode direct with the broker on `mqtt_port`.
    fn start(dir: &Path, name: &str, kubeconfig: &Path, mqtt_port: u16) -> Replica {
        let config = format!(
            "mode = \"direct\"\nstatus_location = \"device\"\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"{name}\"\n"
        );
        Replica::start_with(dir, name, kubeconfig, &config)
    }

    /// A replica with `config` (without its `[metrics]` section, added here).
    fn start_with(dir: &Path, name: &str, kubeconfig: &Path, config: &str) -> Replica {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_text = format!("{config}[metrics]\nlisten = \"{metrics}\"\n");
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, config_text).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_twinflash-cloud"))
            .arg("--config")
            .arg(&config)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", "twinflash-system")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Replica {
            child,
            log,
            metrics,
        }
    }

    /// `GET path` on the metrics port: the whole answer; `None` while the server does not answer.
    fn http_get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// The `twinflash_cloud_leader` gauge; `None` while the metrics server does not answer.
    fn leading(&self) -> Option<bool> {
        let body = self.http_get("/metrics")?;
        let line = body
            .lines()
            .find(|l| l.starts_with("twinflash_cloud_leader "))?;
        Some(line.ends_with(" 1"))
    }

    /// The gauge, asked again for up to 5 s while the metrics server does not answer (a loaded machine).
    fn leading_now(&self) -> Option<bool> {
        let start = Instant::now();
        loop {
            let answer = self.leading();
            if answer.is_some() || start.elapsed() > Duration::from_secs(5) {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/readyz`: its status line and body.
    fn readyz(&self) -> String {
        self.http_get("/readyz").unwrap_or_default()
    }

    /// SIGTERM (the replica releases its lease) and wait for the exit.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples both gauges until `done` holds for the latest sample or `limit` passes; returns every
/// sample as (elapsed, a leads, b leads).
fn sample(
    a: &Replica,
    b: &Replica,
    limit: Duration,
    done: impl Fn(bool, bool) -> bool,
) -> Vec<(Duration, bool, bool)> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < limit {
        let (la, lb) = (a.leading().unwrap_or(false), b.leading().unwrap_or(false));
        seen.push((start.elapsed(), la, lb));
        if done(la, lb) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// A fault proxy in front of `api`, and two kubeconfigs under `dir`: through the proxy (replica a's) and direct
/// (replica b's).
fn links(api: &FakeApi, dir: &Path) -> (FaultProxy, std::path::PathBuf, std::path::PathBuf) {
    let proxy = FaultProxy::start(api.addr()).unwrap();
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let via_proxy = api
        .kubeconfig_for(&dir_a, &format!("http://{}", proxy.addr()))
        .unwrap();
    let direct = api.kubeconfig(&dir_b).unwrap();
    (proxy, via_proxy, direct)
}

#[test]
fn a_leader_cut_off_from_the_api_server_stops_before_the_other_replica_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let api = FakeApi::start().unwrap();
    let (proxy, via_proxy, direct) = links(&api, dir.path());

    // Replica a starts first and takes the lease; b waits.
    let a = Replica::start(dir.path(), "replica-a", &via_proxy, mqtt.port());
    let seen = sample(&a, &a, Duration::from_secs(60), |la, _| la);
    assert!(seen.last().unwrap().1, "a never led:\n{}", a.log());
    let b = Replica::start(dir.path(), "replica-b", &direct, mqtt.port());
    // b is up (its metrics answer) and follows.
    let up = Instant::now();
    while b.leading().is_none() && up.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        b.leading_now(),
        Some(false),
        "b leads beside a:\n{}",
        b.log()
    );

    // Black-hole a's link to the API server: its lease manager still thinks it leads.
    proxy.set(Fault::Stall);
    let seen = sample(&a, &b, Duration::from_secs(90), |_, lb| lb);
    let overlap: Vec<_> = seen.iter().filter(|(_, la, lb)| *la && *lb).collect();
    assert!(
        overlap.is_empty(),
        "both replicas led at once at {overlap:?}\n--- a ---\n{}\n--- b ---\n{}",
        a.log(),
        b.log()
    );
    let a_off = seen.iter().find(|(_, la, _)| !*la).map(|s| s.0);
    let b_on = seen.iter().find(|(_, _, lb)| *lb).map(|s| s.0);
    let (Some(a_off), Some(b_on)) = (a_off, b_on) else {
        panic!(
            "no handover (a stopped at {a_off:?}, b started at {b_on:?})\n--- a ---\n{}\n--- b ---\n{}",
            a.log(),
            b.log()
        );
    };
    assert!(
        a_off < b_on,
        "a stopped at {a_off:?}, b started at {b_on:?}"
    );
    assert!(
        seen.iter()
            .skip_while(|s| s.0 < a_off)
            .all(|(_, la, _)| !*la),
        "a led again while cut off"
    );

    // The link is back: the lease is b's now, and a stays a follower.
    proxy.set(Fault::Pass);
    let seen = sample(&a, &b, Duration::from_secs(5), |_, _| false);
    assert!(
        seen.iter().all(|(_, la, lb)| !*la && *lb),
        "after the link came back: {:?}",
        seen.iter().find(|(_, la, lb)| *la || !*lb)
    );
    let (g, v, p) = ("coordination.k8s.io", "v1", "leases");
    let lease = api
        .get(g, v, p, "twinflash-system", "twinflash-cloud")
        .expect("the Lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert!(
        a.log().contains("leading only until it expires"),
        "the watchdog said why:\n{}",
        a.log()
    );
}

const NS: &str = "default";
/// The anti-entropy period of the F1 test, seconds.
const PERIOD_SECS: u64 = 2;
const DEVICES: usize = 3;

fn device_name(i: usize) -> String {
    format!("blinky-{i}")
}

/// A Device in mode dmi whose digest-pinned intent a controller published before (its record is in the
/// annotations): the controller has nothing to write for it, but its DeviceStatus shows no report, so the
/// anti-entropy loop nudges it once per period (a JSON patch of `desired.metadata["twinflash.io/nudge"]`).
fn published_device(i: usize) -> Value {
    let pinned = format!("registry.local:5000/fw/blinky@sha256:{}", "ab".repeat(32));
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {
            "name": device_name(i), "namespace": NS,
            "annotations": {
                "twinflash.io/generation": "1", "twinflash.io/desired": pinned,
                "twinflash.io/pinned": pinned, "twinflash.io/reason": "IntentPublished",
                "twinflash.io/message": "published",
            },
        },
        "spec": {
            "nodeName": "edge-1",
            "protocol": {"protocolName": "twinflash"},
            "properties": [
                {"name": "firmware", "desired": {"value": pinned, "metadata": {"type": "string"}}},
                {"name": "firmware-version", "desired": {"value": ""}},
                {"name": "firmware-state", "desired": {"value": ""}},
            ],
        },
    })
}

/// Whether `r` came from the replica `name` (its User-Agent names it).
fn from(r: &RequestRecord, name: &str) -> bool {
    r.user_agent.ends_with(&format!("({name})"))
}

fn is_lease(r: &RequestRecord) -> bool {
    r.path.contains("/apis/coordination.k8s.io/")
}

/// When replica `name` nudged Device `device` (its JSON patches of the Device that the API server applied).
fn nudges(api: &FakeApi, name: &str, device: &str) -> Vec<Instant> {
    let path = format!("/apis/devices.kubeedge.io/v1beta1/namespaces/{NS}/devices/{device}");
    api.requests()
        .iter()
        .filter(|r| from(r, name) && r.method == "PATCH" && r.path == path && r.status == 200)
        .filter(|r| r.content_type.starts_with("application/json-patch+json"))
        .map(|r| r.at)
        .collect()
}

fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool, log: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_follower_writes_nothing_and_a_reelected_leader_nudges_once_per_period() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start().unwrap();
    for i in 0..DEVICES {
        api.put(published_device(i)).unwrap();
        // cloudcore created the DeviceStatus; nothing was reported yet: stale.
        api.put(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
            "metadata": {"name": device_name(i), "namespace": NS},
            "spec": {"deviceRef": {"name": device_name(i)}},
        }))
        .unwrap();
    }
    let (proxy, via_proxy, direct) = links(&api, dir.path());
    let config = format!(
        "mode = \"dmi\"\nstatus_location = \"device-status\"\n\
         [anti_entropy]\nperiod_secs = {PERIOD_SECS}\n"
    );
    let period = Duration::from_secs(PERIOD_SECS);

    // a leads and nudges every stale Device.
    let a = Replica::start_with(dir.path(), "replica-a", &via_proxy, &config);
    wait_for(
        "a leads",
        Duration::from_secs(60),
        || a.leading() == Some(true),
        || a.log(),
    );
    wait_for(
        "a nudges every Device",
        Duration::from_secs(30),
        || (0..DEVICES).all(|i| !nudges(&api, "replica-a", &device_name(i)).is_empty()),
        || a.log(),
    );
    let mut b = Replica::start_with(dir.path(), "replica-b", &direct, &config);
    wait_for(
        "b is up",
        Duration::from_secs(30),
        || b.leading().is_some(),
        || b.log(),
    );
    assert_eq!(
        b.leading_now(),
        Some(false),
        "b leads beside a:\n{}",
        b.log()
    );
    // F5: ready = leading with the watches synced, or standing by.
    wait_for(
        "a ready",
        Duration::from_secs(10),
        || a.readyz().contains("ok: leading"),
        || a.readyz(),
    );
    wait_for(
        "b ready, standing by",
        Duration::from_secs(10),
        || {
            let ready = b.readyz();
            ready.starts_with("HTTP/1.1 200") && ready.contains("ok: standing by")
        },
        || b.readyz(),
    );

    // a loses the API server for longer than the lease; b takes over.
    proxy.set(Fault::Refuse);
    let mut b_off = Instant::now();
    let seen = sample(&a, &b, Duration::from_secs(60), |_, lb| lb);
    for (at, la, lb) in &seen {
        assert!(!(*la && *lb), "both replicas led at {at:?}");
    }
    if let Some((at, _, _)) = seen.iter().rev().find(|(_, _, lb)| !*lb) {
        b_off = b_off.checked_add(*at).unwrap_or(b_off);
    }
    assert!(
        seen.last().is_some_and(|s| s.2),
        "b never took over:\n{}",
        b.log()
    );

    // The link is back; a follows. For three periods it asks the API server about its Lease only.
    proxy.set(Fault::Pass);
    let back = Instant::now();
    std::thread::sleep(period * 3);
    assert_eq!(
        (a.leading_now(), b.leading_now()),
        (Some(false), Some(true))
    );
    let requests = api.requests();
    let follower_a: Vec<&RequestRecord> = requests
        .iter()
        .filter(|r| from(r, "replica-a") && r.at >= back && !is_lease(r))
        .collect();
    assert!(
        follower_a.is_empty(),
        "replica a, a follower, still sends {} request(s) other than its Lease's: {:#?}\n{}",
        follower_a.len(),
        follower_a.iter().take(5).collect::<Vec<_>>(),
        a.log()
    );
    // b, before it led: its Lease only, too (200 ms before the last sample that saw it following).
    let follower_b: Vec<&RequestRecord> = requests
        .iter()
        .filter(|r| from(r, "replica-b") && !is_lease(r))
        .filter(|r| r.at + Duration::from_millis(200) < b_off)
        .collect();
    assert!(
        follower_b.is_empty(),
        "replica b, a follower: {follower_b:#?}"
    );

    // Re-election of the same process: b steps down, a wins the lease again and runs one anti-entropy loop.
    b.terminate();
    wait_for(
        "a leads again",
        Duration::from_secs(40),
        || a.leading() == Some(true),
        || a.log(),
    );
    let again = Instant::now();
    let window = period * 4 + Duration::from_secs(1);
    std::thread::sleep(window);
    // One loop: consecutive nudges at least a period apart by its clock; their arrival here may differ by the load.
    // Two loops give pairs of gaps that add up to about a period (one of them half a period or less).
    let tolerance = Duration::from_millis(700);
    for i in 0..DEVICES {
        let times: Vec<Instant> = nudges(&api, "replica-a", &device_name(i))
            .into_iter()
            .filter(|t| *t >= again)
            .collect();
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            times.len() >= 2,
            "{}: {} nudge(s) in {window:?} after the re-election\n{}",
            device_name(i),
            times.len(),
            a.log()
        );
        assert!(
            gaps.iter().all(|g| *g + tolerance >= period),
            "{}: nudged more than once per period ({PERIOD_SECS} s) after the re-election: gaps {gaps:?}\n{}",
            device_name(i),
            a.log()
        );
        let most = usize::try_from(window.as_secs() / PERIOD_SECS).unwrap() + 1;
        assert!(
            times.len() <= most,
            "{}: {} nudges",
            device_name(i),
            times.len()
        );
    }

    // F3: every request names its replica; every write but kube-lease-manager's Lease create names a manager,
    // twinflash-cloud's for everything that is not the Lease.
    let requests = api.requests();
    let ua = format!("twinflash-cloud/{} (replica-", env!("CARGO_PKG_VERSION"));
    let anonymous: Vec<&RequestRecord> = requests
        .iter()
        .filter(|r| !r.user_agent.starts_with(&ua))
        .collect();
    assert!(anonymous.is_empty(), "{anonymous:#?}");
    let unmanaged: Vec<&RequestRecord> = requests
        .iter()
        .filter(|r| r.is_write() && !is_lease(r) && r.field_manager != "twinflash-cloud")
        .collect();
    assert!(unmanaged.is_empty(), "{unmanaged:#?}");
}
