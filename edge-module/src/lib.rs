//! The twinflash edge agent: from a twin delta to a verified install, through any outage.
//!
//! One module per stage: `config`, `link` (MQTT), `plan` (pure decisions), `job` (fetch, check, flash),
//! `journal` (durable per-device state), `outbox` and `report` (durable twin reports), `metrics`; `agent` wires
//! them together. The design is recorded in docs/decisions/0002-edge-agent-design.md.

pub mod agent;
pub mod config;
pub mod device;
pub mod job;
pub mod journal;
pub mod ledger;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod plan;
pub mod progress;
pub mod quiet;
pub mod report;
pub mod state_dir;
pub mod wire;
