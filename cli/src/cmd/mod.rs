//! One module per verb, each with its clap `Cmd` and `run()`; `registry` holds the shared
//! connection and credential options.

pub mod crd;
pub mod inspect;
pub mod mqtt;
pub mod pull;
pub mod push;
pub mod registry;
pub mod rollout;
pub mod set;
pub mod sign;
pub mod sigs;
pub mod status;
pub mod verify;
