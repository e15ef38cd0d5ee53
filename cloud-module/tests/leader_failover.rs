//! Issue 6's "two replicas never publish at once", with real processes: two `twinflash-cloud`
//! replicas share one Lease on the harness's in-memory Kubernetes API server ([`FakeApi`]). The
//! leader reaches the API server through a fault proxy that then black-holes it. kube-lease-manager
//! alone would keep it leading; the lease watchdog must stop it before the other replica takes the
//! expired lease over. Leadership is read from each replica's `twinflash_cloud_leader` gauge.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use twinflash_harness::{FakeApi, Fault, FaultProxy, Mosquitto, free_port};

/// A `twinflash-cloud` replica as a child process, killed when dropped.
struct Replica {
    child: Child,
    log: std::path::PathBuf,
    metrics: SocketAddr,
}

impl Replica {
    fn start(dir: &Path, name: &str, kubeconfig: &Path, mqtt_port: u16) -> Replica {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "mode = \"direct\"\nstatus_location = \"device\"\n\
                 [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"{name}\"\n\
                 [metrics]\nlisten = \"{metrics}\"\n"
            ),
        )
        .unwrap();
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

    /// The `twinflash_cloud_leader` gauge; `None` while the metrics server does not answer.
    fn leading(&self) -> Option<bool> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let line = body
            .lines()
            .find(|l| l.starts_with("twinflash_cloud_leader "))?;
        Some(line.ends_with(" 1"))
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

#[test]
fn a_leader_cut_off_from_the_api_server_stops_before_the_other_replica_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let api = FakeApi::start().unwrap();
    let proxy = FaultProxy::start(api.addr()).unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let via_proxy = api
        .kubeconfig_for(&dir_a, &format!("http://{}", proxy.addr()))
        .unwrap();
    let direct = api.kubeconfig(&dir_b).unwrap();

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
    assert_eq!(b.leading(), Some(false), "b leads beside a:\n{}", b.log());

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
