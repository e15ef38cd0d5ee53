//! Shared pieces of the full-path benchmark drivers (`bench_controller_api`, `bench_rollout_api`):
//! the real `twinflash-cloud` release binary as a child process against the harness's in-memory
//! Kubernetes API server (`FakeApi`), a real mosquitto and a real docker-registry, all on loopback.
#![allow(dead_code)] // each driver uses its part

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rumqttc::{Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use twinflash_harness::kubeapi::RequestRecord;
use twinflash_harness::{FakeApi, Registry, free_port};

/// Namespace of every Device.
pub const NS: &str = "default";
/// The chip every Device declares (annotation) and every pushed artifact is built for.
pub const CHIP: &str = "STM32F411RETx";
/// KubeEdge's Device resource.
pub const DEV: (&str, &str, &str) = ("devices.kubeedge.io", "v1beta1", "devices");
/// twinflash's FirmwareRollout resource.
pub const FWR: (&str, &str, &str) = ("twinflash.io", "v1alpha1", "firmwarerollouts");
/// The edgecore-mode intent topic filter (`$hw/events/device/{ns}/{name}/twin/update`).
pub const INTENT_FILTER: &str = "$hw/events/device/+/+/twin/update";

/// A fixed pseudo-random number per index (splitmix64), so runs are comparable.
pub fn mix(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Device `i`'s name.
pub fn name(i: usize) -> String {
    format!("dev-{i:05}")
}

/// The first command-line argument as a device count (default 10,000).
pub fn device_count() -> anyhow::Result<usize> {
    match std::env::args().nth(1) {
        None => Ok(10_000),
        Some(a) => match a.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!("usage: <driver> [devices >= 1], got {a:?}"),
        },
    }
}

/// `spec.properties` of a twinflash Device whose `firmware` desired value is `desired`.
pub fn properties(desired: &str) -> Value {
    let prop = |n: &str, v: &str| json!({"name": n, "desired": {"value": v, "metadata": {"type": "string"}}});
    json!([
        prop("firmware", desired),
        prop("firmware-version", ""),
        prop("firmware-state", "")
    ])
}

/// A KubeEdge-shaped Device (as `tests/rollout_e2e.rs` builds them): labels, the chip annotation,
/// a node, the three firmware twins.
pub fn device_json(i: usize, desired: &str) -> Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {
            "name": name(i),
            "namespace": NS,
            "labels": {"app": "blinky", "twinflash.io/fleet": "bench"},
            "annotations": {"twinflash.io/chip": CHIP},
        },
        "spec": {
            "nodeName": format!("node-{}", i / 100),
            "properties": properties(desired),
        },
    })
}

pub use twinflash_testkit::image;

/// Pushes `bytes` as a BIN artifact for the bench's chip (the test kit's push); returns the digest-pinned reference.
pub async fn push(
    registry: &Registry,
    dir: &Path,
    repo_tag: &str,
    bytes: &[u8],
    version: &str,
) -> anyhow::Result<String> {
    Ok(twinflash_testkit::push(registry, dir, repo_tag, bytes, version, CHIP).await)
}

/// The `sha256:<hex>` digest of a pinned reference.
pub fn digest_of(pinned: &str) -> anyhow::Result<String> {
    pinned
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .context("not a digest-pinned reference")
}

/// The `twinflash-cloud` binary: `TWINFLASH_CLOUD_BIN`, else next to the examples directory
/// (`target/release/twinflash-cloud` for `target/release/examples/<driver>`).
pub fn cloud_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TWINFLASH_CLOUD_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("twinflash-cloud"))
        .context("no directory above the driver")?;
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p twinflash-cloud --bins -p twinflash-bench --examples`",
            bin.display()
        );
    }
    Ok(bin)
}

/// `twinflash-cloud` as a child process (edgecore mode, `status_location = "device"`), killed
/// when dropped.
pub struct Cloud {
    child: Child,
    log: PathBuf,
    metrics_port: u16,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl Cloud {
    /// Starts the binary with its configuration in `dir`, `KUBECONFIG` and `POD_NAME` set.
    pub fn start(
        dir: &Path,
        kubeconfig: &Path,
        mqtt_port: u16,
        registry_host: &str,
        resync_secs: u64,
    ) -> anyhow::Result<Cloud> {
        let metrics_port = free_port();
        let config = dir.join("cloud.toml");
        std::fs::write(
            &config,
            format!(
                "mode = \"edgecore\"\nstatus_location = \"device\"\nresync_period_secs = {resync_secs}\n\
                 [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"twinflash-cloud-bench\"\n\
                 [registry]\nplain_http = [\"{registry_host}\"]\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
            ),
        )?;
        let log = dir.join("cloud.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(cloud_binary()?)
            .arg("--config")
            .arg(&config)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", "twinflash-cloud-bench")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning twinflash-cloud")?;
        Ok(Cloud {
            child,
            log,
            metrics_port,
            spawned: Instant::now(),
        })
    }

    /// The last `lines` lines of the controller's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of the log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Peak resident set size (VmHWM) of the child in MiB, from `/proc/<pid>/status`.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        twinflash_harness::status_kib(Some(self.child.id()), "VmHWM").map(|kib| kib as f64 / 1024.0)
    }

    /// CPU seconds (user + system) the child used so far.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The counters of `GET /metrics` (name with labels -> value); empty when unreachable.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let text = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })()
        .unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// One counter of [`Cloud::metrics`] (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).copied().unwrap_or(0.0)
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of the process whose `stat` file is `path` (USER_HZ = 100).
pub fn cpu_secs(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// One intent seen on the broker: the device (`{ns}/{name}` from the topic) and which of the
/// watched digests its payload carries.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `{ns}/{name}`.
    pub device: String,
    /// Index into the digests given to [`Intents::start`].
    pub digest: usize,
}

#[derive(Default)]
struct IntentLog {
    /// Per watched digest: the first arrival of each device.
    first: Vec<HashMap<String, Instant>>,
    /// Every intent message received (republications included).
    messages: u64,
}

/// An MQTT subscriber on [`INTENT_FILTER`] that records, per watched digest, which devices got
/// an intent carrying it and when the first one arrived.
#[derive(Clone)]
pub struct Intents {
    log: Arc<Mutex<IntentLog>>,
}

impl Intents {
    /// Subscribes (QoS 1) and waits for the SUBACK. `tx` gets every first arrival.
    pub async fn start(
        mqtt_port: u16,
        digests: Vec<String>,
        tx: Option<mpsc::UnboundedSender<Seen>>,
    ) -> anyhow::Result<Intents> {
        let log = Arc::new(Mutex::new(IntentLog {
            first: digests.iter().map(|_| HashMap::new()).collect(),
            messages: 0,
        }));
        let mut opts = MqttOptions::new("bench-intents", "127.0.0.1", mqtt_port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_inflight(1000);
        let (client, mut events) = twinflash_mqtt::client(opts);
        client
            .subscribe(INTENT_FILTER, QoS::AtLeastOnce)
            .await
            .context("subscribing")?;
        let (subacked_tx, subacked) = tokio::sync::oneshot::channel::<()>();
        let l = log.clone();
        tokio::spawn(async move {
            let _client = client; // dropping it would end the event loop
            let mut subacked_tx = Some(subacked_tx);
            while let Ok(ev) = events.poll().await {
                match ev {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(t) = subacked_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let device = p
                            .topic
                            .strip_prefix("$hw/events/device/")
                            .and_then(|t| t.strip_suffix("/twin/update"))
                            .unwrap_or(&p.topic)
                            .to_owned();
                        let now = Instant::now();
                        let Ok(mut log) = l.lock() else { return };
                        log.messages += 1;
                        for (i, d) in digests.iter().enumerate() {
                            if contains(&p.payload, d.as_bytes())
                                && let Some(map) = log.first.get_mut(i)
                                && !map.contains_key(&device)
                            {
                                map.insert(device.clone(), now);
                                if let Some(tx) = &tx {
                                    let _ = tx.send(Seen {
                                        device: device.clone(),
                                        digest: i,
                                    });
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subacked)
            .await
            .context("no SUBACK from mosquitto")?
            .context("subscriber ended")?;
        Ok(Intents { log })
    }

    /// Devices that got an intent carrying digest `i`.
    pub fn count(&self, i: usize) -> usize {
        self.log
            .lock()
            .map(|l| l.first.get(i).map_or(0, HashMap::len))
            .unwrap_or(0)
    }

    /// The latest first arrival of digest `i`.
    pub fn last_arrival(&self, i: usize) -> Option<Instant> {
        self.log
            .lock()
            .ok()
            .and_then(|l| l.first.get(i).and_then(|m| m.values().max().copied()))
    }

    /// Intent messages received in all (republications and duplicates included).
    pub fn messages(&self) -> u64 {
        self.log.lock().map(|l| l.messages).unwrap_or(0)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Polls `done` every `every` until it holds; an error naming `what` after `timeout`.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    while !done() {
        if t0.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
    Ok(t0.elapsed())
}

/// The resource, the object name and the subresource a request path names
/// (`/apis/{g}/{v}[/namespaces/{ns}]/{resource}[/{name}[/{sub}]]`, `/api/v1/...`).
pub fn parse_path(path: &str) -> (String, Option<String>, Option<String>) {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest: &[&str] = match seg.first() {
        Some(&"apis") => seg.get(3..).unwrap_or_default(),
        Some(&"api") => seg.get(2..).unwrap_or_default(),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        r => r,
    };
    let owned = |i: usize| rest.get(i).map(|s| (*s).to_owned());
    (owned(0).unwrap_or_default(), owned(1), owned(2))
}

/// A request class of the fake API server's log: `VERB resource[/sub]` (a GET with
/// `watch=true` is `WATCH`, a GET of a collection `LIST`).
pub fn kind_of(r: &RequestRecord) -> String {
    let (resource, name, sub) = parse_path(&r.path);
    let verb = match (r.method.as_str(), r.query.contains("watch=true"), &name) {
        ("GET", true, _) => "WATCH",
        ("GET", false, None) => "LIST",
        (m, _, _) => m,
    };
    match sub {
        Some(s) => format!("{verb} {resource}/{s}"),
        None => format!("{verb} {resource}"),
    }
}

/// Requests of `reqs` by [`kind_of`], as `kind n, kind n, ...` (largest first).
pub fn summary(reqs: &[RequestRecord]) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for r in reqs {
        *by.entry(kind_of(r)).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The registry, the API server and the pushed artifacts, set up once per driver.
pub struct World {
    /// Keeps the pushed files and the configuration.
    pub dir: tempfile::TempDir,
    /// The fake API server (Device CRD without status subresource, as KubeEdge's).
    pub api: FakeApi,
    /// docker-registry.
    pub registry: Registry,
    /// `KUBECONFIG` for the controller and the driver's own client.
    pub kubeconfig: PathBuf,
}

impl World {
    /// Pushes the two firmware versions every benchmark uses (`fw/blinky` 1.0.0 and 2.0.0, 4 KiB);
    /// returns their digest-pinned references.
    pub async fn push_v1_v2(&self) -> anyhow::Result<(String, String)> {
        let v1 = push(
            &self.registry,
            self.dir.path(),
            "fw/blinky:1.0.0",
            &image(1, 4096),
            "1.0.0",
        )
        .await?;
        let v2 = push(
            &self.registry,
            self.dir.path(),
            "fw/blinky:2.0.0",
            &image(2, 4096),
            "2.0.0",
        )
        .await?;
        Ok((v1, v2))
    }

    /// Starts the registry and the API server.
    pub fn start() -> anyhow::Result<World> {
        let dir = tempfile::tempdir()?;
        let registry = Registry::start().context("starting docker-registry")?;
        let api = FakeApi::start().context("starting the fake API server")?;
        api.without_status_subresource(DEV.0, DEV.1, DEV.2);
        let kubeconfig = api.kubeconfig(dir.path())?;
        Ok(World {
            dir,
            api,
            registry,
            kubeconfig,
        })
    }
}
