//! Staged firmware rollouts (`FirmwareRollout`, `twinflash.io/v1alpha1`): waves over the Devices a
//! label selector picks, changing only `spec.properties[firmware].desired`, stopping itself at a
//! failure threshold and optionally rolling back. See `docs/rollouts.md`.

pub mod error;
pub mod observe;
pub mod plan;
pub mod reconcile;
#[cfg(any(test, feature = "test-support"))]
pub mod sim;
pub mod status;

pub use error::RolloutError;
pub use observe::ObservedDevice;
pub use plan::{DesiredPatch, PatchKind, Pin, Plan, PlanEvent, PlanInput, plan};
pub use reconcile::{
    ROLLOUT_API_ACCESS, ROLLOUT_MANAGER, RolloutContext, controller, find_conflict, reconcile, run,
    run_controller,
};
pub use twinflash_rollout_api::types::{
    Condition, DeviceSelector, FailedDevice, FailureThreshold, FirmwareRollout,
    FirmwareRolloutSpec, FirmwareRolloutStatus, InFlight, Phase, SelectorRequirement, Strategy,
    WaveSize,
};
pub use twinflash_rollout_api::{crd_yaml, crds, types};
