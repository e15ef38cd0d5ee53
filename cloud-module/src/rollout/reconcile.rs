//! The kube-runtime controller over FirmwareRollouts (watching Devices too): `reconcile` reads the
//! rollout, its Devices and their twins, pins the firmware once, calls the pure
//! [`plan`] and applies it: guarded JSON patches on Devices, the status, Events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams, Patch};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::RolloutError;
use super::observe::ObservedDevice;
use super::plan::{PatchKind, Pin, Plan, PlanInput, plan};
use super::types::{FirmwareRollout, FirmwareRolloutStatus, Phase};
use crate::config::StatusLocation;
use crate::crd::{Device, DeviceStatus, DeviceTwinStatus};
use crate::decide::{Decision, Reason, Record};
use crate::identity::patch_params;
use crate::seams::{ArtifactResolver, ResolveError};
use crate::signatures::{SignatureGate, judge_publication};
use mqtt_schema::{FirmwareRef, RefKind};

/// The reporting controller of rollout Events and the field manager of the rollout controller's writes.
pub const ROLLOUT_MANAGER: &str = "twinflash-rollout";

/// Every Kubernetes API access of the rollout controller: (API group, resource, verbs), granted
/// by `manifests/cloud/rbac.yaml` together with `controller::API_ACCESS`.
pub const ROLLOUT_API_ACCESS: &[(&str, &str, &[&str])] = &[
    (
        "twinflash.io",
        "firmwarerollouts",
        &["get", "list", "watch"],
    ),
    ("twinflash.io", "firmwarerollouts/status", &["patch"]),
    (
        "devices.kubeedge.io",
        "devices",
        &["get", "list", "watch", "patch"],
    ),
    ("devices.kubeedge.io", "devicestatuses", &["list", "watch"]),
    // `create` only: every Event is a new one (crate::events); nothing patches a series.
    ("events.k8s.io", "events", &["create"]),
];

/// Shared state of the rollout reconciler.
pub struct RolloutContext {
    /// Kubernetes client.
    pub client: Client,
    /// Pins a tag to its digest, once per rollout.
    pub resolver: Arc<dyn ArtifactResolver>,
    /// Who reports the Events (controller name, pod name).
    pub reporter: Reporter,
    /// Where `status.twins` lives (Device or DeviceStatus).
    pub status_location: StatusLocation,
    /// Requeue period of an active rollout (reports and timeouts are looked at this often).
    pub resync: Duration,
    /// The clock (Unix seconds); tests fix it.
    pub clock: fn() -> i64,
    /// Checks the pinned firmware against the namespace's signature policy before any Device is patched;
    /// `None`: every policy is `off`. (Each Device's own policy is checked again by the Device controller.)
    pub signatures: Option<Arc<SignatureGate>>,
}

impl RolloutContext {
    /// A context; `instance` names this replica in Events (the pod name).
    pub fn new(
        client: Client,
        resolver: Arc<dyn ArtifactResolver>,
        status_location: StatusLocation,
        resync: Duration,
        instance: Option<String>,
    ) -> RolloutContext {
        let reporter = Reporter {
            controller: ROLLOUT_MANAGER.to_owned(),
            instance,
        };
        RolloutContext {
            reporter,
            client,
            resolver,
            status_location,
            resync,
            clock: unix_now,
            signatures: None,
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The name of an older, still active rollout in `others` whose selector picks one of `devices`
/// (the Devices `me` selects). Older = earlier `creationTimestamp`, then smaller name.
pub fn find_conflict(
    me: &FirmwareRollout,
    others: &[FirmwareRollout],
    devices: &[Device],
) -> Option<String> {
    let key = |r: &FirmwareRollout| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.name_any(),
        )
    };
    let mine = key(me);
    others
        .iter()
        .filter(|o| o.namespace() == me.namespace() && o.name_any() != me.name_any())
        .filter(|o| !o.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
        .filter(|o| key(o) < mine)
        .find(|o| devices.iter().any(|d| o.spec.selector.matches(d.labels())))
        .map(ResourceExt::name_any)
}

fn kube_err(op: &'static str, object: String) -> impl FnOnce(kube::Error) -> RolloutError {
    move |source| RolloutError::Kube { op, object, source }
}

/// Whether the API server refused a patch because a `test` op failed (422) or the object is gone.
fn refused(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 || s.code == 404 || s.code == 409)
}

/// The firmware to pin ([`resolve_pin`]) once its signatures satisfy the namespace's policy: under `require`
/// an unsigned or badly signed artifact refuses the rollout before any Device is patched (`Ok(Err(message))`,
/// the message ending in `[unsigned]` or `[signature-invalid]`); a registry that cannot be asked is retried.
async fn pin(
    rollout: &FirmwareRollout,
    object: &str,
    ctx: &RolloutContext,
) -> Result<Result<String, String>, RolloutError> {
    let pinned = match resolve_pin(rollout, object, ctx).await? {
        Ok(p) => p,
        Err(m) => return Ok(Err(m)),
    };
    let (Some(gate), Some(ns)) = (ctx.signatures.as_ref(), rollout.namespace()) else {
        return Ok(Ok(pinned));
    };
    let Some(checked) = gate.check_namespace(&ns, &pinned).await else {
        return Ok(Ok(pinned));
    };
    let record = Record {
        generation: rollout.metadata.generation.unwrap_or(0),
        desired: rollout.spec.firmware.clone(),
        pinned: pinned.clone(),
        reason: Reason::IntentPublished,
        message: format!("rollout {object} pins {pinned}"),
    };
    match (judge_publication(record, "", &checked), checked.verdict) {
        (Decision::Reject(r), _) => Ok(Err(r.message)),
        (Decision::Retry { .. }, Err(source)) => Err(RolloutError::Pin {
            rollout: object.to_owned(),
            source,
        }),
        (Decision::Publish(r), _) => {
            info!(rollout = %object, "{}", r.message);
            Ok(Ok(pinned))
        }
        (other, _) => Ok(Err(format!(
            "signature check of {pinned} gave no usable answer: {other:?}"
        ))),
    }
}

/// Resolves the firmware to pin: a digest reference as is, a tag through the registry.
async fn resolve_pin(
    rollout: &FirmwareRollout,
    object: &str,
    ctx: &RolloutContext,
) -> Result<Result<String, String>, RolloutError> {
    let firmware = rollout.spec.firmware.as_str();
    match FirmwareRef::classify(firmware) {
        Err(e) => Ok(Err(format!(
            "firmware {firmware:?} is not a digest-pinnable OCI reference: {e}"
        ))),
        Ok(RefKind::Pinned(_)) => Ok(Ok(firmware.to_owned())),
        Ok(RefKind::Tag) => match ctx.resolver.resolve(firmware).await {
            Ok(a) if FirmwareRef::parse(&a.digest_ref).is_ok() => Ok(Ok(a.digest_ref)),
            Ok(a) => Ok(Err(format!(
                "the registry answered {:?} for {firmware}, not a digest reference",
                a.digest_ref
            ))),
            Err(e @ (ResolveError::NotFound { .. } | ResolveError::Unsupported { .. })) => {
                Ok(Err(e.to_string()))
            }
            Err(source) => Err(RolloutError::Pin {
                rollout: object.to_owned(),
                source,
            }),
        },
    }
}

/// The twins of every Device when they live in DeviceStatus objects (KubeEdge >= 1.23).
async fn twin_statuses(
    ns: &str,
    ctx: &RolloutContext,
) -> Result<BTreeMap<String, DeviceTwinStatus>, RolloutError> {
    if ctx.status_location == StatusLocation::Device {
        return Ok(BTreeMap::new());
    }
    let list = Api::<DeviceStatus>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list devicestatuses", ns.to_owned()))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|d| Some((d.metadata.name?, d.status?)))
        .collect())
}

/// The status as a JSON merge patch: every field present, emptied ones as `null` (a merge patch
/// keeps what it does not mention), guarded by the resourceVersion read at the start.
pub fn status_patch(
    status: &FirmwareRolloutStatus,
    resource_version: Option<&str>,
) -> Result<Value, RolloutError> {
    let mut v = serde_json::to_value(status).map_err(|source| RolloutError::Encode {
        what: "status",
        source,
    })?;
    if let Value::Object(m) = &mut v {
        for key in [
            "waveStartedAt",
            "waveFinishedAt",
            "inFlight",
            "failedDevices",
            "skippedDevices",
            "conditions",
            "message",
        ] {
            m.entry(key).or_insert(Value::Null);
        }
    }
    let mut patch = json!({ "status": v });
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    Ok(patch)
}

/// Reconciles one FirmwareRollout.
pub async fn reconcile(
    rollout: Arc<FirmwareRollout>,
    ctx: Arc<RolloutContext>,
) -> Result<Action, RolloutError> {
    let ns = rollout
        .namespace()
        .ok_or(RolloutError::MalformedObject { what: "namespace" })?;
    let name = rollout
        .meta()
        .name
        .clone()
        .ok_or(RolloutError::MalformedObject { what: "name" })?;
    let object = format!("{ns}/{name}");
    let rollouts: Api<FirmwareRollout> = Api::namespaced(ctx.client.clone(), &ns);
    // Fresh from the API server: a cached status could start a Device twice.
    let rollout = rollouts
        .get(&name)
        .await
        .map_err(kube_err("get firmwarerollout", object.clone()))?;
    let status = rollout.status.clone();
    let phase = status.as_ref().map(|s| s.phase).unwrap_or_default();
    if phase.is_terminal() && !(phase == Phase::Aborted && rollout.spec.rollback_on_abort) {
        return Ok(Action::await_change());
    }
    let started = status.as_ref().is_some_and(|s| s.current_wave > 0);
    let selector = rollout.spec.selector.to_selector();
    let devices: Vec<Device> = match &selector {
        Ok(sel) => Api::<Device>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default().labels(&sel.to_string()))
            .await
            .map_err(kube_err("list devices", object.clone()))?
            .items
            .into_iter()
            .filter(|d| rollout.spec.selector.matches(d.labels()))
            .collect(),
        Err(_) => Vec::new(),
    };
    let conflict = if started || selector.is_err() {
        None
    } else {
        let others = rollouts
            .list(&ListParams::default())
            .await
            .map_err(kube_err("list firmwarerollouts", object.clone()))?;
        find_conflict(&rollout, &others.items, &devices)
    };
    let twins = twin_statuses(&ns, &ctx).await?;
    let observed: Vec<ObservedDevice> = devices
        .iter()
        .map(|d| ObservedDevice::from_device(d, twins.get(&d.name_any())))
        .collect();
    let already = status
        .as_ref()
        .map(|s| s.pinned.clone())
        .unwrap_or_default();
    let pinned = if !already.is_empty() || conflict.is_some() || rollout.spec.validate().is_err() {
        None
    } else {
        Some(pin(&rollout, &object, &ctx).await?)
    };
    let pin_input = match &pinned {
        None => Pin::NotYet,
        Some(Ok(p)) => Pin::Ready(p),
        Some(Err(m)) => Pin::Failed(m),
    };
    let mut plan = plan(PlanInput {
        name: &name,
        generation: rollout.metadata.generation.unwrap_or(0),
        spec: &rollout.spec,
        status: status.as_ref(),
        devices: &observed,
        pin: pin_input,
        conflict: conflict.as_deref(),
        now: (ctx.clock)(),
    });
    apply(&mut plan, &ns, &object, &ctx).await?;
    if status.as_ref() != Some(&plan.status) {
        let patch = status_patch(&plan.status, rollout.resource_version().as_deref())?;
        rollouts
            .patch_status(&name, &patch_params(ROLLOUT_MANAGER), &Patch::Merge(&patch))
            .await
            .map_err(kube_err("patch firmwarerollout status", object.clone()))?;
    }
    for ev in &plan.events {
        publish(&rollout, ev, &ctx).await?;
    }
    Ok(if plan.status.phase.is_terminal() {
        Action::await_change()
    } else {
        Action::requeue(ctx.resync)
    })
}

/// Applies the Device patches of `plan`, recording refused starts in its status.
async fn apply(
    plan: &mut Plan,
    ns: &str,
    object: &str,
    ctx: &RolloutContext,
) -> Result<(), RolloutError> {
    let devices: Api<Device> = Api::namespaced(ctx.client.clone(), ns);
    for p in plan.patches.clone() {
        let body =
            serde_json::from_value(p.json_patch()).map_err(|source| RolloutError::Encode {
                what: "device",
                source,
            })?;
        let result = devices
            .patch(
                &p.device,
                &patch_params(ROLLOUT_MANAGER),
                &Patch::<()>::Json(body),
            )
            .await;
        match (result, p.kind) {
            (Ok(d), PatchKind::Start) => plan.applied(&p.device, d.metadata.generation),
            (Ok(_), PatchKind::Rollback) => {}
            (Err(e), kind) if refused(&e) => {
                warn!(rollout = object, device = %p.device, ?kind, error = %e, "device changed meanwhile; left alone");
                if kind == PatchKind::Start {
                    plan.applied(&p.device, None);
                }
            }
            (Err(e), _) => return Err(kube_err("patch device", format!("{ns}/{}", p.device))(e)),
        }
    }
    if !plan.patches.is_empty() {
        info!(
            rollout = object,
            patches = plan.patches.len(),
            phase = plan.status.phase.as_str(),
            "devices patched"
        );
    }
    Ok(())
}

async fn publish(
    rollout: &FirmwareRollout,
    ev: &super::plan::PlanEvent,
    ctx: &RolloutContext,
) -> Result<(), RolloutError> {
    let event = Event {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.clone(),
        note: Some(ev.note.clone()),
        action: "Rollout".to_owned(),
        secondary: None,
    };
    // A new Event each time: wave 2's start is its own Event, not a series count on wave 1's (crate::events).
    crate::events::publish(
        &ctx.client,
        &ctx.reporter,
        ROLLOUT_MANAGER,
        &event,
        &rollout.object_ref(&()),
    )
    .await
    .map_err(kube_err("create event", rollout.name_any()))
}

/// Retries after a failure (with the resync period; the plan is idempotent).
pub fn error_policy(
    rollout: Arc<FirmwareRollout>,
    error: &RolloutError,
    ctx: Arc<RolloutContext>,
) -> Action {
    warn!(rollout = %rollout.name_any(), code = %error.code(), error = %error, "rollout reconcile failed");
    Action::requeue(ctx.resync)
}

/// The active rollouts of `namespace` in `rollouts` (the controller's cache): what a change of a
/// `DeviceStatus` there may concern. A DeviceStatus carries no labels, so it cannot be matched
/// against selectors; every active rollout of its namespace looks again (a reconcile is idempotent).
pub fn active_in_namespace(
    rollouts: &[Arc<FirmwareRollout>],
    namespace: Option<&str>,
) -> Vec<ObjectRef<FirmwareRollout>> {
    rollouts
        .iter()
        .filter(|r| r.namespace().as_deref() == namespace)
        .filter(|r| {
            r.status.as_ref().is_none_or(|s| {
                !s.phase.is_terminal() || (s.phase == Phase::Aborted && r.spec.rollback_on_abort)
            })
        })
        .map(|r| ObjectRef::from_obj(&**r))
        .collect()
}

/// The rollout controller over `namespace` (every namespace when `None`): FirmwareRollouts, every Device change
/// mapped to the rollouts whose selector picks it and, when the twins live in `DeviceStatus` objects (KubeEdge >=
/// 1.23), every report there mapped to the active rollouts of its namespace (without it, reports would only be seen
/// at the resync period). Its store ([`Controller::store`]) holds the FirmwareRollouts.
pub fn controller(ctx: &RolloutContext, namespace: Option<&str>) -> Controller<FirmwareRollout> {
    let (rollouts, devices, statuses): (Api<FirmwareRollout>, Api<Device>, Api<DeviceStatus>) =
        match namespace {
            Some(ns) => (
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
            ),
            None => (
                Api::all(ctx.client.clone()),
                Api::all(ctx.client.clone()),
                Api::all(ctx.client.clone()),
            ),
        };
    let controller = Controller::new(rollouts, watcher::Config::default());
    let store = controller.store();
    let by_status = store.clone();
    let mut controller = controller.watches(
        devices,
        watcher::Config::default(),
        move |device: Device| {
            let ns = device.namespace();
            store
                .state()
                .into_iter()
                .filter(|r| r.namespace() == ns && r.spec.selector.matches(device.labels()))
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        },
    );
    if ctx.status_location == StatusLocation::DeviceStatus {
        controller = controller.watches(
            statuses,
            watcher::Config::default(),
            move |ds: DeviceStatus| {
                active_in_namespace(&by_status.state(), ds.namespace().as_deref())
            },
        );
    }
    controller
}

/// Runs `controller` (from [`controller`]) until `stop` fires; stopping drops the reconciles in flight at once.
pub async fn run_controller(
    ctx: Arc<RolloutContext>,
    controller: Controller<FirmwareRollout>,
    stop: CancellationToken,
) {
    let events = controller.run(reconcile, error_policy, ctx);
    crate::controller::drive(events, "rollout controller", stop).await;
}

/// Runs the rollout controller ([`controller`]) until a termination signal (SIGTERM, SIGINT).
pub async fn run(ctx: Arc<RolloutContext>, namespace: Option<&str>) {
    let events = controller(&ctx, namespace)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx);
    crate::controller::drive(events, "rollout controller", CancellationToken::new()).await;
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
