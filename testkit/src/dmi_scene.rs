//! [`DmiScene`]: what every DMI scenario (edge-module/tests/dmi.rs) and the DMI benchmark against KubeEdge
//! (bench/examples/bench_dmi_kubeedge.rs) start from, real or stand-in: it writes only through the API server, as an
//! operator does, and judges by what KubeEdge holds, edgecore's stored twins AND DeviceStatus.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use twinflash_harness::Registry;

use crate::{Agent, AgentSpec, DmiKubeEdge, KubeEdgeMode, SimDevice, device_model, image, push};

const NS: &str = "default";
/// Bound of the wait for the agent's registration.
const WAIT: Duration = Duration::from_secs(60);
/// Bound of a wait for one install or repair (a slow CI machine, real processes).
pub const CONVERGE: Duration = Duration::from_secs(120);

/// One DMI scenario's world: KubeEdge (real or stand-in), a registry, and an agent whose simulated devices are
/// declared only by their Device objects.
pub struct DmiScene {
    pub ke: DmiKubeEdge,
    pub agent: Agent,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    /// The scenario's name, in failure messages and report lines.
    pub scenario: &'static str,
}

impl DmiScene {
    /// Registry, KubeEdge ([`DmiKubeEdge::start`]: real or stand-in), the test DeviceModel, and an agent with
    /// `devices` simulated devices (`tweak` changes its spec); returns once the agent is edgecore's mapper.
    pub async fn start(
        scenario: &'static str,
        devices: usize,
        tweak: impl FnOnce(AgentSpec<'_>) -> AgentSpec<'_>,
    ) -> DmiScene {
        crate::init();
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start().unwrap();
        let ke = DmiKubeEdge::start(&dir.path().join("kubeedge")).await;
        ke.apply(&device_model(NS)).await;
        let agent_dir = dir.path().join("agent");
        let spec = AgentSpec {
            dmi: Some(ke.socket()),
            node: ke.node().to_owned(),
            device_prefix: ke.device_prefix(),
            ..AgentSpec::new(&agent_dir, 0, vec![registry.host()], devices)
        };
        let agent = Agent::start(tweak(spec));
        let w = DmiScene {
            ke,
            agent,
            registry,
            dir,
            scenario,
        };
        // Devices are declared once the agent is edgecore's mapper of protocol twinflash (edgecore has no DMI client
        // for the protocol before, and logs the Device as failed).
        w.until("the agent registered with edgecore", WAIT, || {
            w.agent
                .log()
                .contains("registered with edgecore as a DMI mapper")
        })
        .await;
        w
    }

    pub fn sim(&self, i: usize) -> &SimDevice {
        &self.agent.devices[i]
    }

    pub fn name(&self, i: usize) -> String {
        self.sim(i).id.split_once('/').unwrap().1.to_owned()
    }

    /// Device `i` as an operator writes it, wanting `wanted`.
    pub fn device(&self, i: usize, wanted: &str) -> Value {
        self.sim(i).device(self.ke.node(), wanted)
    }

    pub async fn create(&self, i: usize, wanted: &str) {
        self.ke.apply(&self.device(i, wanted)).await;
    }

    /// `kubectl edit` of device `i`'s desired firmware.
    pub async fn edit(&self, i: usize, wanted: &str) {
        self.ke.set_firmware(NS, &self.name(i), wanted).await;
    }

    pub async fn push(&self, tag: &str, seed: u8, len: usize) -> String {
        push(
            &self.registry,
            self.dir.path(),
            &format!("fw/blinky:{tag}"),
            &image(seed, len),
            tag,
            crate::CHIP,
        )
        .await
    }

    /// Polls `ok` until it holds; panics after `within` with the agent's log and what KubeEdge holds.
    pub async fn until(
        &self,
        what: &str,
        within: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        while !ok() {
            assert!(
                t0.elapsed() < within,
                "[{}] timed out after {within:?} waiting for {what}\n{}\n--- agent log ---\n{}",
                self.ke.mode(),
                self.ke.dump(),
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t0.elapsed()
    }

    /// Waits until edgecore stores a `firmware-state` of device `i` starting with `prefix`.
    pub async fn wait_stored_state(&self, i: usize, prefix: &str) {
        let what = format!("edgecore to store a state {prefix}*");
        self.until(&what, CONVERGE, || {
            self.ke
                .actual(NS, &self.name(i), "firmware-state")
                .is_some_and(|v| v.starts_with(prefix))
        })
        .await;
    }

    /// The reported values of device `i`'s DeviceStatus, by twin.
    pub async fn reported(&self, i: usize) -> BTreeMap<String, String> {
        let status = self.ke.status(NS, &self.name(i)).await;
        crate::FIRMWARE_TWINS
            .iter()
            .filter_map(|t| {
                let v = crate::real::reported(status.as_ref()?, t)?;
                Some(((*t).to_owned(), v))
            })
            .collect()
    }

    /// The actual values edgecore stores for device `i`, by twin.
    pub fn stored(&self, i: usize) -> BTreeMap<String, String> {
        self.ke
            .twins(NS, &self.name(i))
            .into_iter()
            .filter_map(|(k, t)| Some((k, t.actual?)))
            .collect()
    }

    /// Waits until edgecore's store AND DeviceStatus both hold `want` (twin -> actual value) for device `i`; returns
    /// how long it took.
    pub async fn wait_held(&self, i: usize, want: &[(&str, &str)], within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let stored = self.stored(i);
            let reported = self.reported(i).await;
            let holds = |m: &BTreeMap<String, String>| {
                want.iter()
                    .all(|(t, v)| m.get(*t).map(String::as_str) == Some(*v))
            };
            if holds(&stored) && holds(&reported) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "[{}] {}: after {within:?} KubeEdge does not hold {want:?} for {}\nedgecore stores {stored:?}\n\
                 DeviceStatus reports {reported:?}\n{}\n--- agent log ---\n{}",
                self.ke.mode(),
                self.scenario,
                self.name(i),
                self.ke.dump(),
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_installed(&self, i: usize, reference: &str, version: &str) -> Duration {
        self.wait_held(
            i,
            &[
                ("firmware", reference),
                ("firmware-state", "installed"),
                ("firmware-version", version),
            ],
            CONVERGE,
        )
        .await
    }

    /// One report line: the scenario, the mode, `what` took `took`, and what KubeEdge holds for device `i`.
    pub async fn report(&self, i: usize, what: &str, took: Duration) {
        println!(
            "SCENARIO {} [{}]: {what} {:.2} s; device_twin actual {:?}; DeviceStatus reported {:?}",
            self.scenario,
            self.ke.mode(),
            took.as_secs_f64(),
            self.stored(i),
            self.reported(i).await
        );
    }
}
