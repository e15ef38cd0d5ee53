//! Serves the harness's in-memory Kubernetes API server ([`FakeApi`]) until killed, loaded with
//! the objects of the YAML files given, and writes a kubeconfig for it. For trying `twinflash-cloud`,
//! `twinflash rollout` or `tests/cluster.rs` on a machine without a cluster; a stand-in with the
//! limits listed in harness/src/kubeapi/mod.rs, not a Kubernetes API server.
//!
//! `cargo run -p twinflash-harness --example fake_kube_api -- <dir> [manifest.yaml ...]`
//! then `KUBECONFIG=<dir>/kubeconfig ...`. KubeEdge's Device CRD has no status subresource, so
//! Devices are served without one, as a cluster would.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line helper

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;
use twinflash_harness::FakeApi;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: fake_kube_api <dir> [manifest.yaml ...]");
        return ExitCode::from(2);
    };
    match run(dir, args.map(PathBuf::from).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake_kube_api: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: PathBuf, manifests: Vec<PathBuf>) -> Result<(), String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let api = FakeApi::start().map_err(|e| e.to_string())?;
    api.without_status_subresource("devices.kubeedge.io", "v1beta1", "devices");
    let mut loaded = 0;
    for path in &manifests {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc)
                .map_err(|e| format!("{}: not YAML: {e}", path.display()))?;
            if value.is_null() {
                continue;
            }
            api.put(value)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            loaded += 1;
        }
    }
    let kubeconfig = api.kubeconfig(&dir).map_err(|e| e.to_string())?;
    eprintln!(
        "fake Kubernetes API server on {} with {loaded} objects (in memory, gone when this process ends)",
        api.url()
    );
    println!("KUBECONFIG={}", kubeconfig.display());
    loop {
        std::thread::park();
    }
}
