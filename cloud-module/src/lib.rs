//! twinflash-cloud: the kube-rs controller that turns a KubeEdge Device's desired `firmware`
//! value into a twin intent on MQTT (since KubeEdge 1.15 cloudcore no longer does) or, in mode
//! `dmi`, pins it where the DMI mapper reads it ([`dmi`]), and the pure pieces it is built from. See `README.md` of this crate for what is built and what is not.

pub mod anti_entropy;
pub mod config;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod direct;
pub mod dmi;
pub mod error;
pub mod events;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod mqtt;
pub mod resolver;
pub mod rollout;
pub mod seams;
pub mod signatures;
pub mod status;
pub mod status_route;

#[cfg(test)]
mod api_verifier;
#[cfg(test)]
mod fixtures;

pub use config::{Config, ConfigError, Mode, StatusLocation};
pub use controller::{Context, error_policy, reconcile, run};
pub use decide::{Decision, Input, Noop, Reason, Record, decide};
pub use error::Error;
pub use seams::{
    ArtifactResolver, IntentSink, ResolveError, ResolvedArtifact, SignatureChecker, SinkError,
    StatusError, StatusWriter,
};
pub use status::apply_actual_report;
