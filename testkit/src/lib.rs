//! The shared test kit of the integration and end-to-end tests (a dev-dependency only, never in a shipped binary):
//! firmware pushed to a real registry with twinflash-artifact ([`push`]), real `twinflash-edge` processes with
//! simulated devices ([`Agent`], found or built by [`agent_binary`]), and two MQTT observers in the cloud's place:
//! [`Cloud`] plays edgecore (it interprets reports and answers `twin/get`), [`Observer`] records raw messages; and
//! [`Edgecore`], a stand-in that behaves as the real edgecore v1.23.1 (store, reconnects, lost messages, cloud link);
//! [`DmiEdgecore`], the same for edgecore's DMI side (the gRPC server and client a DMI mapper talks to).
//! The broker and the registry themselves come from twinflash-harness.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod agent;
mod binary;
mod board_device;
mod cloud;
mod cloud_process;
mod cloudcore;
mod dmi_edgecore;
mod dmi_scene;
mod edgecore;
pub mod grpc_go;
mod kubeedge_backend;
mod kubeedge_dmi;
mod kubeedge_mqtt;
mod observe;
pub mod real;
mod unparsed;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use twinflash_harness::Registry;

pub use agent::{Agent, AgentSpec, SimDevice, device_model};
pub use binary::{agent_binary, cloud_binary, set_agent_binary};
pub use board_device::{UART_BANNER_CHECK, confirm_toml, gdb_flasher_toml, uart_confirm_toml};
pub use cloud::{Cloud, Seen};
pub use cloud_process::CloudProcess;
pub use cloudcore::{Cloudcore, CloudcoreWriter, FIRMWARE_TWINS, Load, sync_twin};
pub use dmi_edgecore::{
    ACCEPTED_STATES, DeviceStateRecord, DmiCounters, DmiEdgecore, DmiLog, DmiLogKind,
    MAPPER_CALL_DEADLINE, RATE_BURST, RATE_PER_SEC, StateSync, convert_device, convert_model,
};
pub use dmi_scene::{CONVERGE, DmiScene};
pub use edgecore::{
    Clock, CloudSync, Counters, Direction, EDGECORE_RECONNECT, Edgecore, EdgecoreOptions, Logged,
    StoredTwin, publish_expected, publish_once,
};
pub use kubeedge_backend::{KubeEdgeMode, STANDIN_NODE};
pub use kubeedge_dmi::DmiKubeEdge;
pub use kubeedge_mqtt::{MQTT_MODEL, MqttKubeEdge, mqtt_device_model};
pub use observe::{Message, Observer};
pub use unparsed::{firmware_manifest, push_unparsed, sha256_digest};

/// Where the simulated flash starts, and where [`push`] places a BIN artifact.
pub const ORIGIN: u64 = 0x0800_0000;
/// The default size of a simulated device's flash.
pub const FLASH_SIZE: u64 = 256 * 1024;
/// The chip of every simulated device, and of the artifacts pushed for them.
pub const CHIP: &str = "STM32F411RETx";
/// Generous bound of [`wait_until`] and of an [`Observer`]'s subscription (a loaded machine, several processes; a
/// passing run takes seconds).
pub const WAIT: Duration = Duration::from_secs(60);

/// Installs rustls's ring provider (once per process; the registry client needs one).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A firmware image of `len` bytes whose content depends on `seed`.
pub fn image(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Pushes `bytes` as a BIN artifact at ORIGIN and returns the digest-pinned reference.
pub async fn push(
    registry: &Registry,
    dir: &Path,
    repo_tag: &str,
    bytes: &[u8],
    version: &str,
    chip: &str,
) -> String {
    let file = dir.join(format!("{}.bin", repo_tag.replace(['/', ':'], "_")));
    std::fs::write(&file, bytes).unwrap();
    push_file(registry, repo_tag, file, version, chip, Some(ORIGIN)).await
}

/// Pushes `file` (its format detected from its content; a BIN at `base_address`) and returns the digest-pinned
/// reference.
pub async fn push_file(
    registry: &Registry,
    repo_tag: &str,
    file: std::path::PathBuf,
    version: &str,
    chip: &str,
    base_address: Option<u64>,
) -> String {
    let tls = twinflash_artifact::TlsOptions {
        plain_http: vec![registry.host()],
        ..Default::default()
    };
    let req = twinflash_artifact::PushRequest {
        reference: format!("{}/{repo_tag}", registry.host()),
        file,
        version: version.into(),
        chip: chip.into(),
        format: None,
        base_address,
        annotations: BTreeMap::new(),
    };
    twinflash_artifact::push(
        &tls,
        &twinflash_artifact::Credentials::default(),
        &req,
        |_, _| {},
    )
    .await
    .unwrap()
    .pinned_reference
}

/// Polls `cond` until it holds or [`WAIT`] passes; panics with `what()` otherwise.
pub async fn wait_until(mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out: {}", what());
}
