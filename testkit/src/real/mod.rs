//! Real mode: the KubeEdge end-to-end tests run against a REAL edgecore and cloudcore that the user provides, on a
//! real Kubernetes API server, the way envtest runs controller tests against a real kube-apiserver and etcd.
//!
//! The environment names them ([`RealEnv::from_env`]): `EDGECORE` and `CLOUDCORE` (paths of the binaries) and
//! `KUBECONFIG` (a cluster-admin kubeconfig of the API server). Without `EDGECORE` and `CLOUDCORE` the tests run
//! against the stand-ins (as in CI), and say so.
//!
//! [`RealKubeEdge::start`] starts both binaries ITSELF, in a temporary directory, with configurations it writes
//! (docs/testing.md lists every setting):
//! - cloudcore on free loopback ports (cloudHub websocket and https, monitor, tunnel, a unix socket in the temp
//!   dir), its kubeconfig = `KUBECONFIG`; it keeps its CA, certificate and join token in secrets of namespace
//!   `kubeedge` (created, or reused when they exist);
//! - edgecore as edge node [`NODE`], with edged disabled (no container runtime), its sqlite store and its DMI socket
//!   in the temp dir, its eventbus on an external mosquitto of the harness (`mqttMode: 2`), its join token read from
//!   secret `kubeedge/tokensecret`;
//! - what the cluster needs, when it is missing: namespace `kubeedge`, KubeEdge's device and reliablesyncs CRDs
//!   (testkit/data/kubeedge-crds), and the Node object of [`NODE`] (edged would register it; it is off);
//! - both processes are SIGKILLed when the handle drops (and with the test process), and the Devices labelled
//!   [`LABEL`] are deleted with their DeviceStatus (also at the next start, after a crashed run).
//!
//! Tests in real mode share one cluster and one edge node: they run one at a time (a lock file serialises them
//! across test binaries; run them with `--test-threads=1` so that waiting for the lock costs no test's time). Each
//! test names its Devices after [`RealKubeEdge::run_id`].
mod cluster;
mod store;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use twinflash_harness::{Mosquitto, ServiceProcess, free_port, log_tail, tcp_accepts};

pub use cluster::{
    CRD, Cluster, DEVICE, DEVICE_MODEL, DEVICE_STATUS, EVENT, FIELD_MANAGER, Kind, NAMESPACE,
    NODE as NODE_KIND, OBJECT_SYNC, SECRET, observed_desired, reported,
};
pub use store::DbTwin;

/// The edge node of real mode (its Node object is created when missing).
pub const NODE: &str = "twinflash-real-edge";
/// The label of every Device a real-mode test creates (`twinflash.io/testkit: real`): swept at the end of a test
/// and at the next start.
pub const LABEL: (&str, &str) = ("twinflash.io/testkit", "real");
/// KubeEdge v1.23.1's Device, DeviceModel, DeviceStatus, ObjectSync and ClusterObjectSync CRDs, trimmed
/// (testkit/data/kubeedge-crds/README.md): created only where the cluster has none.
const CRDS: &str = include_str!("../../data/kubeedge-crds/for-real-dmi.yaml");
/// How long cloudcore and edgecore may take to come up.
const START: Duration = Duration::from_secs(90);
/// Serialises real-mode tests across test processes.
const LOCK_FILE: &str = "twinflash-real-kubeedge.lock";

/// The real components the environment names.
#[derive(Debug, Clone)]
pub struct RealEnv {
    pub edgecore: PathBuf,
    pub cloudcore: PathBuf,
    pub kubeconfig: PathBuf,
}

impl RealEnv {
    /// `EDGECORE`, `CLOUDCORE` and `KUBECONFIG`, when `EDGECORE` and `CLOUDCORE` are set; `None` when neither is
    /// (the stand-ins). Panics, naming the variable, when only one is set, when `KUBECONFIG` is missing, or when a
    /// path is not a file.
    pub fn from_env() -> Option<RealEnv> {
        RealEnv::from_vars(|n| std::env::var_os(n))
    }

    /// [`RealEnv::from_env`] with the variables `var` gives.
    pub fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<RealEnv> {
        let var = |n: &str| var(n).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (edgecore, cloudcore) = match (var("EDGECORE"), var("CLOUDCORE")) {
            (None, None) => return None,
            (Some(e), Some(c)) => (e, c),
            _ => panic!(
                "real mode needs both EDGECORE and CLOUDCORE (paths of the binaries); unset both for the stand-ins"
            ),
        };
        let kubeconfig = var("KUBECONFIG").unwrap_or_else(|| {
            panic!("real mode (EDGECORE and CLOUDCORE set) needs KUBECONFIG: a cluster-admin kubeconfig of the API server")
        });
        for (n, p) in [
            ("EDGECORE", &edgecore),
            ("CLOUDCORE", &cloudcore),
            ("KUBECONFIG", &kubeconfig),
        ] {
            assert!(p.is_file(), "{n}={} is not a file", p.display());
        }
        Some(RealEnv {
            edgecore,
            cloudcore,
            kubeconfig,
        })
    }

    /// [`RealEnv::from_env`], and one line on stderr saying which KubeEdge test `what` runs against.
    pub fn announce(what: &str) -> Option<RealEnv> {
        let env = RealEnv::from_env();
        match &env {
            Some(e) => eprintln!(
                "REAL KubeEdge: {what} runs against edgecore {} and cloudcore {} on the API server of {} \
                 (real mode: run with --test-threads=1)",
                e.edgecore.display(),
                e.cloudcore.display(),
                e.kubeconfig.display()
            ),
            None => eprintln!(
                "STAND-IN KubeEdge: {what} runs against the stand-ins (set EDGECORE, CLOUDCORE and KUBECONFIG for \
                 real components; docs/testing.md)"
            ),
        }
        env
    }
}

/// The loopback ports of one run.
#[derive(Debug, Clone, Copy)]
struct Ports {
    websocket: u16,
    https: u16,
    quic: u16,
    tunnel: u16,
    monitor: u16,
    mqtt_internal: u16,
}

/// A running real cloudcore and edgecore, started by the test (see the module's documentation).
pub struct RealKubeEdge {
    env: RealEnv,
    dir: tempfile::TempDir,
    run_id: String,
    cluster: Cluster,
    mqtt: Mosquitto,
    ports: Ports,
    cloudcore: Mutex<Option<ServiceProcess>>,
    edgecore: Mutex<Option<ServiceProcess>>,
    _lock: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for RealKubeEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealKubeEdge")
            .field("env", &self.env)
            .field("dir", &self.dir.path())
            .field("run_id", &self.run_id)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// A name no earlier run used: `r` and the time in hex, and a counter of this process.
fn fresh_run_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "r{:x}{:x}",
        secs & 0xff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A number this process never returned before (event ids of the test kit's own messages).
pub fn fresh_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn lock() -> nix::fcntl::Flock<File> {
    let path = std::env::temp_dir().join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("lock file {}: {e}", path.display()));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", path.display()))
}

/// Polls `ready` until it holds; panics with the tail of `log` when `proc` exits first or after [`START`].
async fn wait_up(
    proc: &ServiceProcess,
    log: &Path,
    what: &str,
    mut ready: impl AsyncFnMut() -> bool,
) {
    let started = Instant::now();
    loop {
        if let Some(status) = proc.exit_status() {
            panic!(
                "{what} exited ({status}) while starting\n{}",
                log_tail(&[log], 40)
            );
        }
        if ready().await {
            return;
        }
        assert!(
            started.elapsed() < START,
            "{what} not ready after {START:?}\n{}",
            log_tail(&[log], 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The inode of a socket file, if it exists.
/// The socket file's identity: inode and change time. The inode alone is not enough: the file system may give the
/// new socket the inode number the removed one freed (seen in issue 22's real runs: the second start of edgecore in
/// one run was not seen for 90 s).
fn socket_inode(p: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Whether `log`, from byte `from` on, contains `needle`.
fn logged_since(log: &Path, from: u64, needle: &str) -> bool {
    std::fs::read(log).is_ok_and(|b| {
        let from = usize::try_from(from).unwrap_or(0).min(b.len());
        String::from_utf8_lossy(&b[from..]).contains(needle)
    })
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

impl RealKubeEdge {
    /// Prepares the cluster, starts mosquitto, cloudcore and edgecore, and returns once edgecore is connected to
    /// cloudcore and serves DMI. Waits first for any other real-mode test (the lock).
    pub async fn start(env: RealEnv) -> RealKubeEdge {
        crate::init();
        let lock = tokio::task::spawn_blocking(lock)
            .await
            .unwrap_or_else(|e| panic!("lock: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("twinflash-real-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let cluster = Cluster::connect(&env.kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        prepare(&cluster).await;
        sweep(&cluster).await;
        let mqtt = Mosquitto::start().unwrap_or_else(|e| panic!("mosquitto: {e}"));
        let ports = Ports {
            websocket: free_port(),
            https: free_port(),
            quic: free_port(),
            tunnel: free_port(),
            monitor: free_port(),
            mqtt_internal: free_port(),
        };
        for d in ["cloudcore", "edgecore/dmi", "edgecore/certs"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        let ke = RealKubeEdge {
            env,
            dir,
            run_id: fresh_run_id(),
            cluster,
            mqtt,
            ports,
            cloudcore: Mutex::new(None),
            edgecore: Mutex::new(None),
            _lock: lock,
        };
        std::fs::write(ke.cloudcore_config(), ke.render_cloudcore())
            .unwrap_or_else(|e| panic!("cloudcore config: {e}"));
        ke.start_cloudcore().await;
        ke.start_edgecore().await;
        ke
    }

    /// The edge node's name.
    pub fn node(&self) -> &'static str {
        NODE
    }

    /// A name unique to this run, valid in a DNS label: the prefix of the run's Device names.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// edgecore's DMI server socket (`modules.deviceTwin.dmiSockPath` + `/dmi.sock`).
    pub fn dmi_socket(&self) -> PathBuf {
        self.dir.path().join("edgecore/dmi/dmi.sock")
    }

    /// The broker of edgecore's eventbus (the agent's broker in MQTT mode).
    pub fn mqtt(&self) -> &Mosquitto {
        &self.mqtt
    }

    /// The broker, to restart it.
    pub fn mqtt_mut(&mut self) -> &mut Mosquitto {
        &mut self.mqtt
    }

    /// The API server.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// `KUBECONFIG`.
    pub fn kubeconfig(&self) -> &Path {
        &self.env.kubeconfig
    }

    /// The run's directory (configurations, logs, edgecore's store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// edgecore's sqlite database.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("edgecore/edgecore.db")
    }

    fn cloudcore_config(&self) -> PathBuf {
        self.dir.path().join("cloudcore/cloudcore.yaml")
    }

    fn edgecore_config(&self) -> PathBuf {
        self.dir.path().join("edgecore/edgecore.yaml")
    }

    /// cloudcore's log file.
    pub fn cloudcore_log_path(&self) -> PathBuf {
        self.dir.path().join("cloudcore.log")
    }

    /// edgecore's log file.
    pub fn edgecore_log_path(&self) -> PathBuf {
        self.dir.path().join("edgecore.log")
    }

    /// Everything edgecore logged so far (all its starts).
    pub fn edgecore_log(&self) -> String {
        std::fs::read(self.edgecore_log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Everything cloudcore logged so far.
    pub fn cloudcore_log(&self) -> String {
        std::fs::read(self.cloudcore_log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Labels `obj` as a Device of real mode ([`LABEL`]), swept after the test.
    pub fn mark(obj: &mut Value) {
        obj["metadata"]["labels"][LABEL.0] = json!(LABEL.1);
    }

    fn render_cloudcore(&self) -> String {
        let d = self.dir.path().display();
        let p = self.ports;
        format!(
            r#"apiVersion: cloudcore.config.kubeedge.io/v1alpha1
kind: CloudCore
commonConfig:
  tunnelPort: {tunnel}
  monitorServer:
    bindAddress: 127.0.0.1:{monitor}
    enableProfiling: false
kubeAPIConfig:
  kubeConfig: {kubeconfig}
  master: ""
  contentType: application/vnd.kubernetes.protobuf
  qps: 100
  burst: 200
modules:
  cloudHub:
    enable: true
    advertiseAddress: [127.0.0.1]
    dnsNames: [localhost]
    nodeLimit: 10
    keepaliveInterval: 30
    writeTimeout: 30
    edgeCertSigningDuration: 365
    tokenRefreshDuration: 12
    tlsCAFile: {d}/cloudcore/ca/rootCA.crt
    tlsCAKeyFile: {d}/cloudcore/ca/rootCA.key
    tlsCertFile: {d}/cloudcore/certs/server.crt
    tlsPrivateKeyFile: {d}/cloudcore/certs/server.key
    websocket: {{enable: true, address: 127.0.0.1, port: {ws}}}
    quic: {{enable: false, address: 127.0.0.1, port: {quic}, maxIncomingStreams: 10000}}
    https: {{enable: true, address: 127.0.0.1, port: {https}}}
    unixsocket: {{enable: true, address: "unix://{d}/cloudcore/kubeedge.sock"}}
    authorization: {{enable: false}}
  edgeController: {{enable: true, nodeUpdateFrequency: 10}}
  deviceController: {{enable: true}}
  syncController: {{enable: true}}
  dynamicController: {{enable: false}}
  cloudStream: {{enable: false}}
  router: {{enable: false}}
  iptablesManager: {{enable: false}}
  taskManager: {{enable: false}}
"#,
            tunnel = p.tunnel,
            monitor = p.monitor,
            kubeconfig = self.env.kubeconfig.display(),
            ws = p.websocket,
            quic = p.quic,
            https = p.https,
        )
    }

    fn render_edgecore(&self, token: &str) -> String {
        let d = self.dir.path().display();
        let p = self.ports;
        format!(
            r#"apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
database:
  driverName: sqlite3
  aliasName: default
  dataSource: {db}
modules:
  edged:
    enable: false
    hostnameOverride: {node}
    nodeIP: 127.0.0.1
    registerNodeNamespace: default
  edgeHub:
    enable: true
    heartbeat: 15
    messageQPS: 30
    messageBurst: 60
    projectID: e632aba927ea4ac2b575ec1603d56f10
    httpServer: https://127.0.0.1:{https}
    token: "{token}"
    tlsCaFile: {d}/edgecore/certs/ca.crt
    tlsCertFile: {d}/edgecore/certs/server.crt
    tlsPrivateKeyFile: {d}/edgecore/certs/server.key
    rotateCertificates: true
    websocket: {{enable: true, server: "127.0.0.1:{ws}", handshakeTimeout: 30, readDeadline: 15, writeDeadline: 15}}
    quic: {{enable: false, server: "127.0.0.1:{quic}", handshakeTimeout: 30, readDeadline: 15, writeDeadline: 15}}
  eventBus:
    enable: true
    mqttMode: 2
    mqttServerExternal: tcp://127.0.0.1:{mqtt}
    mqttServerInternal: tcp://127.0.0.1:{mqtt_internal}
    mqttQOS: 0
    mqttRetain: false
    mqttSessionQueueSize: 100
    tls: {{enable: false}}
  metaManager:
    enable: true
    contextSendGroup: hub
    contextSendModule: websocket
    remoteQueryTimeout: 60
    metaServer: {{enable: false}}
  deviceTwin:
    enable: true
    dmiSockPath: {d}/edgecore/dmi
  serviceBus: {{enable: false}}
  edgeStream: {{enable: false}}
  taskManager: {{enable: false}}
  dbTest: {{enable: false}}
"#,
            db = self.db().display(),
            node = NODE,
            https = p.https,
            ws = p.websocket,
            quic = p.quic,
            mqtt = self.mqtt.port(),
            mqtt_internal = p.mqtt_internal,
        )
    }

    /// Starts cloudcore (no-op while it runs) and waits until its cloudHub ports accept and its join token exists.
    pub async fn start_cloudcore(&self) {
        if self.cloudcore_running() {
            return;
        }
        let log = self.cloudcore_log_path();
        let mut cmd = std::process::Command::new(&self.env.cloudcore);
        cmd.arg(format!("--config={}", self.cloudcore_config().display()));
        let proc = ServiceProcess::spawn("cloudcore", cmd, &log)
            .unwrap_or_else(|e| panic!("starting cloudcore: {e}"));
        wait_up(&proc, &log, "cloudcore", || async {
            tcp_accepts(self.ports.https)
                && tcp_accepts(self.ports.websocket)
                && self.token().await.is_some()
        })
        .await;
        *self.cloudcore.lock().unwrap() = Some(proc);
    }

    /// SIGKILLs cloudcore (an outage): edgecore loses its cloud link and reconnects once it is back.
    pub fn stop_cloudcore(&self) {
        if let Some(p) = self.cloudcore.lock().unwrap().take() {
            p.kill();
        }
    }

    /// Whether cloudcore runs.
    pub fn cloudcore_running(&self) -> bool {
        self.cloudcore
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(ServiceProcess::is_running)
    }

    /// The join token of secret `kubeedge/tokensecret` (cloudcore writes it at start).
    async fn token(&self) -> Option<String> {
        let s = self.cluster.get(&SECRET, "kubeedge", "tokensecret").await?;
        let data = s["data"]["tokendata"].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()?;
        String::from_utf8(bytes).ok()
    }

    /// Starts edgecore (no-op while it runs): its configuration is written at the first start (with the join token;
    /// edgecore rewrites it once it holds its certificates), and kept as edgecore left it afterwards. Returns once
    /// edgecore serves DMI and is connected to cloudcore (when cloudcore runs).
    pub async fn start_edgecore(&self) {
        if self.edgecore_running() {
            return;
        }
        let config = self.edgecore_config();
        if !config.exists() {
            let token = self
                .token()
                .await
                .unwrap_or_else(|| panic!("no secret kubeedge/tokensecret: is cloudcore running?"));
            std::fs::write(&config, self.render_edgecore(&token))
                .unwrap_or_else(|e| panic!("edgecore config: {e}"));
        }
        let log = self.edgecore_log_path();
        let from = file_len(&log);
        // edgecore removes and creates its DMI socket at each start: a new inode says it serves.
        let stale = socket_inode(&self.dmi_socket());
        let mut cmd = std::process::Command::new(&self.env.edgecore);
        cmd.arg(format!("--config={}", config.display()))
            .env("CHECK_EDGECORE_ENVIRONMENT", "false");
        let proc = ServiceProcess::spawn("edgecore", cmd, &log)
            .unwrap_or_else(|e| panic!("starting edgecore: {e}"));
        let need_cloud = self.cloudcore_running();
        wait_up(&proc, &log, "edgecore", || {
            let serving = socket_inode(&self.dmi_socket()).is_some_and(|i| Some(i) != stale);
            std::future::ready(
                serving
                    && (!need_cloud
                        || logged_since(
                            &log,
                            from,
                            "Websocket connect to cloud access successful",
                        )),
            )
        })
        .await;
        *self.edgecore.lock().unwrap() = Some(proc);
    }

    /// SIGKILLs edgecore (a crash or a power loss); its store and its DMI socket file stay.
    pub fn stop_edgecore(&self) {
        if let Some(p) = self.edgecore.lock().unwrap().take() {
            p.kill();
        }
    }

    /// [`RealKubeEdge::stop_edgecore`] then [`RealKubeEdge::start_edgecore`].
    pub async fn restart_edgecore(&self) {
        self.stop_edgecore();
        self.start_edgecore().await;
    }

    /// Whether edgecore runs (false after a stop, or if it crashed).
    pub fn edgecore_running(&self) -> bool {
        self.edgecore
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(ServiceProcess::is_running)
    }

    /// The twins edgecore stores for device `namespace/name` (its `device_twin` rows), by twin name.
    pub fn twins(&self, namespace: &str, name: &str) -> BTreeMap<String, DbTwin> {
        store::device_twins(&self.db(), namespace, name)
    }

    /// The devices edgecore's twin module knows (`<namespace>/<name>`) and their stored state.
    pub fn devices(&self) -> BTreeMap<String, Option<String>> {
        store::devices(&self.db())
    }

    /// edgecore's stored twins and the tails of both logs, for a failure message.
    pub fn dump(&self) -> String {
        format!(
            "real edgecore (running: {}), cloudcore (running: {}) in {}\ndevice_twin:\n{}{}",
            self.edgecore_running(),
            self.cloudcore_running(),
            self.dir.path().display(),
            store::dump(&self.db()),
            log_tail(&[&self.edgecore_log_path(), &self.cloudcore_log_path()], 30)
        )
    }

    /// Keeps the run's directory (logs, configurations, edgecore's store) after the test; returns its path.
    pub fn keep(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_owned()
    }
}

impl Drop for RealKubeEdge {
    fn drop(&mut self) {
        self.stop_edgecore();
        self.stop_cloudcore();
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "real mode: the failed run's logs, configurations and edgecore store are kept in {}",
                self.dir.path().display()
            );
        }
        // The Devices of the run go with it; a fresh client on its own runtime (this may run while the test's
        // runtime unwinds).
        let kubeconfig = self.env.kubeconfig.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(c) = Cluster::connect(&kubeconfig).await {
                    sweep(&c).await;
                }
            });
        })
        .join();
    }
}

/// Creates what the cluster needs when it is missing: namespace `kubeedge`, KubeEdge's CRDs (trimmed copies), and
/// the Node of [`NODE`]. What exists is left as it is (a user's own CRDs win).
async fn prepare(cluster: &Cluster) {
    if cluster.get(&NAMESPACE, "", "kubeedge").await.is_none() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubeedge"}});
        let _ = cluster.create(&NAMESPACE, &ns).await;
    }
    let crds: Vec<Value> = serde_yaml::Deserializer::from_str(CRDS)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("testkit/data/kubeedge-crds: {e}"))
        })
        .collect();
    for crd in crds {
        let Some(name) = crd["metadata"]["name"].as_str() else {
            continue;
        };
        if cluster.get(&CRD, "", name).await.is_some() {
            continue;
        }
        eprintln!("real mode: creating CRD {name} (missing from the cluster)");
        if let Err(e) = cluster.create(&CRD, &crd).await {
            panic!("creating CRD {name}: {e}");
        }
        let started = Instant::now();
        while !established(cluster, name).await {
            assert!(started.elapsed() < START, "CRD {name} not Established");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if cluster.get(&NODE_KIND, "", NODE).await.is_none() {
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": NODE,
                "labels": {
                    "kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux",
                    "node-role.kubernetes.io/edge": "", "node-role.kubernetes.io/agent": "",
                    "twinflash.io/delivery": "dmi",
                },
                "annotations": {"twinflash.io/registered-by": "twinflash-testkit (edgecore runs with edged disabled)"},
            },
            "spec": {"taints": [{"key": "node.kubernetes.io/no-runtime", "value": "edged-disabled", "effect": "NoSchedule"}]},
        });
        let _ = cluster.create(&NODE_KIND, &node).await;
    }
}

async fn established(cluster: &Cluster, name: &str) -> bool {
    cluster.get(&CRD, "", name).await.is_some_and(|c| {
        c["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
    })
}

/// Deletes every Device labelled [`LABEL`] and its DeviceStatus (no garbage collector may run to follow the
/// owner reference), and the ObjectSyncs of [`NODE`].
///
/// Each run's edgecore starts with an empty store, as a new node does. cloudhub sends an object to a node only when
/// its resourceVersion is newer than the node's ObjectSync of it (dispatcher/message_dispatcher.go): with the
/// previous run's ObjectSyncs left, an unchanged DeviceModel never reaches the new edgecore, which then refuses every
/// Device of that model ("device model sim-model not found in cache", seen in the first real run of issue 22).
async fn sweep(cluster: &Cluster) {
    let prefix = format!("{NODE}.");
    for s in cluster.list(&OBJECT_SYNC, None, None).await {
        let ns = s["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = s["metadata"]["name"].as_str().unwrap_or_default();
        if name.starts_with(&prefix) {
            let _ = cluster.delete(&OBJECT_SYNC, ns, name).await;
        }
    }
    let selector = format!("{}={}", LABEL.0, LABEL.1);
    for d in cluster.list(&DEVICE, None, Some(&selector)).await {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let _ = cluster.delete(&DEVICE, ns, name).await;
        let _ = cluster.delete(&DEVICE_STATUS, ns, name).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &Path)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let vars: Vec<(String, std::ffi::OsString)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_os_str().to_owned()))
            .collect();
        move |n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
    }

    #[test]
    fn neither_binary_named_is_the_stand_ins_whatever_kubeconfig_says() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(RealEnv::from_vars(env(&[])).is_none());
        assert!(RealEnv::from_vars(env(&[("KUBECONFIG", f.path())])).is_none());
        assert!(
            RealEnv::from_vars(env(&[
                ("EDGECORE", Path::new("")),
                ("CLOUDCORE", Path::new(""))
            ]))
            .is_none()
        );
    }

    #[test]
    fn both_binaries_and_a_kubeconfig_are_real_mode() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = RealEnv::from_vars(env(&[
            ("EDGECORE", f.path()),
            ("CLOUDCORE", f.path()),
            ("KUBECONFIG", f.path()),
        ]))
        .unwrap();
        assert_eq!(e.kubeconfig, f.path());
    }

    #[test]
    #[should_panic(expected = "needs both EDGECORE and CLOUDCORE")]
    fn one_binary_alone_is_an_error() {
        let f = tempfile::NamedTempFile::new().unwrap();
        RealEnv::from_vars(env(&[("EDGECORE", f.path()), ("KUBECONFIG", f.path())]));
    }

    #[test]
    #[should_panic(expected = "needs KUBECONFIG")]
    fn real_mode_without_kubeconfig_is_an_error() {
        let f = tempfile::NamedTempFile::new().unwrap();
        RealEnv::from_vars(env(&[("EDGECORE", f.path()), ("CLOUDCORE", f.path())]));
    }

    #[test]
    #[should_panic(expected = "CLOUDCORE=/nonexistent/cloudcore is not a file")]
    fn a_missing_binary_is_named() {
        let f = tempfile::NamedTempFile::new().unwrap();
        RealEnv::from_vars(env(&[
            ("EDGECORE", f.path()),
            ("CLOUDCORE", Path::new("/nonexistent/cloudcore")),
            ("KUBECONFIG", f.path()),
        ]));
    }

    #[test]
    fn run_ids_are_dns_labels_and_differ() {
        let (a, b) = (fresh_run_id(), fresh_run_id());
        assert_ne!(a, b);
        for id in [a, b] {
            assert!(id.len() + 3 <= 63, "{id}");
            assert!(
                id.starts_with('r')
                    && id
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{id}"
            );
        }
    }
}
