//! What several controller test crates share: the `[mqtt]` settings of a loopback broker, read the way the
//! controller reads its configuration, a Kubernetes client of the harness's FakeApi, and a running controller.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // tests: a panic is a failed test

use std::path::Path;
use std::sync::Arc;

use kube::config::{KubeConfigOptions, Kubeconfig};
use twinflash_harness::FakeApi;

/// The controller's `[mqtt]` for a broker on `127.0.0.1:port`, from the environment override as a deployment
/// would set it.
pub fn mqtt_settings(port: u16) -> twinflash_mqtt::MqttSettings {
    let env = [(
        "TWINFLASH_CLOUD__MQTT__URL".to_owned(),
        format!("mqtt://127.0.0.1:{port}"),
    )];
    twinflash_cloud::config::Config::load_with_env(None, Some(env.into_iter().collect()))
        .unwrap()
        .mqtt
        .unwrap()
}

/// A client of `api`, through a kubeconfig written into `dir`.
pub async fn client(api: &FakeApi, dir: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(api.kubeconfig(dir).unwrap()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// A controller started by a test: its context, and its tasks (the Device controller, the MQTT delivery) until
/// [`Run::stop`].
pub struct Run {
    /// The controller's context (metrics).
    pub ctx: Arc<twinflash_cloud::controller::Context>,
    /// Ends the MQTT delivery.
    pub cancel: tokio_util::sync::CancellationToken,
    /// The tasks.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Run {
    /// Stops every task and waits for it.
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}
