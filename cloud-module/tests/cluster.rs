//! Against a real cluster, only when `KUBECONFIG` points at one (none can be installed here):
//! the KubeEdge objects the cluster holds decode with this crate's reduced types.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::api::{Api, ListParams};
use twinflash_cloud::crd::{Device, DeviceModel};

#[tokio::test]
async fn real_cluster_devices_decode() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("SKIPPED real_cluster_devices_decode: KUBECONFIG is not set (no cluster here)");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .expect("KUBECONFIG is set but unusable");
    let lp = ListParams::default().limit(50);
    let devices = Api::<Device>::all(client.clone())
        .list(&lp)
        .await
        .expect("list devices (KubeEdge CRDs installed?)");
    let models = Api::<DeviceModel>::all(client)
        .list(&lp)
        .await
        .expect("list devicemodels");
    eprintln!(
        "decoded {} Devices and {} DeviceModels",
        devices.items.len(),
        models.items.len()
    );
}
