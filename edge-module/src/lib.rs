//! The twinflash edge agent: from a twin delta to a verified install, through any outage.
//!
//! The modules follow an intent through the agent:
//! - `wire`: what an incoming MQTT message means (pure `classify`);
//! - `link`: the MQTT connections, the subscriber's dispatcher and the publisher's `ledger`;
//! - `plan`: every decision of a device's job, pure and table-tested;
//! - `job`: the driver over those decisions, with its two I/O steps `job::fetch` and `job::flash`;
//! - `journal`: the durable per-device state, written before an intent is acknowledged;
//! - `report`: what goes back through the twin (`report::outbox`, durable; `report::progress`, throttling);
//! - `dmi`: the other delivery path, as KubeEdge's DMI device mapper (devices and intents from edgecore over gRPC,
//!   reports through its DMI server), on the same jobs, journals and outbox.
//!
//! Around them: `device` (what link and job share about one device), `config`, `metrics`, `quiet` (rate-limited
//! warnings), `state_dir` (one agent per directory); `agent` wires them together. The design is recorded in
//! docs/decisions/0002-edge-agent-design.md.

pub mod file_name;
pub mod job;
pub mod journal;
pub mod link;
pub mod plan;
pub mod report;
pub mod wire;

pub mod agent;
pub mod config;
pub mod device;
pub mod dmi;
pub mod metrics;
pub mod quiet;
pub mod state_dir;
