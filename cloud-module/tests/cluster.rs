//! Against a real cluster, only when `KUBECONFIG` points at one (none can be installed here):
//! the KubeEdge objects the cluster holds decode with this crate's reduced types, and the leader
//! election acquires and releases a (test-named) Lease. Each test prints SKIPPED otherwise.
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

#[tokio::test]
async fn real_cluster_lease_is_acquired_and_released() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "SKIPPED real_cluster_lease_is_acquired_and_released: KUBECONFIG is not set (no cluster here)"
        );
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .expect("KUBECONFIG is set but unusable");
    let ns = client.default_namespace().to_owned();
    let name = format!("twinflash-cloud-test-{}", std::process::id());
    let (manager, task) =
        twinflash_cloud::leader::watch_lease(client.clone(), &ns, &name, "cluster-test")
            .await
            .expect("create the Lease (RBAC for leases?)");
    // Through the watchdog, as twinflash-cloud runs it: it must read the real Lease as ours.
    let cancel = tokio_util::sync::CancellationToken::new();
    let (mut leading, watchdog) = twinflash_cloud::leader::watchdog::guard(
        manager,
        Api::namespaced(client, &ns),
        name.clone(),
        "cluster-test".into(),
        twinflash_cloud::leader::TIMING,
        cancel.clone(),
    );
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while !*leading.borrow_and_update() {
            leading.changed().await.expect("lease task alive");
        }
    })
    .await
    .expect("a free lease is acquired and the watchdog reads it as ours");
    cancel.cancel();
    watchdog.await.unwrap();
    drop(leading);
    task.await.unwrap().expect("lease released");
    eprintln!("lease {ns}/{name} acquired and released (the Lease object is left behind)");
}
