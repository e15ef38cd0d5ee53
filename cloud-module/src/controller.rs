//! The kube-runtime controller over KubeEdge Devices: `reconcile` fetches what [`decide`] needs,
//! calls it, and applies the decision (publish through the [`IntentSink`], record the outcome in
//! the Device's `twinflash.io/*` annotations, emit an Event). Errors back off exponentially per
//! Device.
//!
//! `status.twins` belongs to cloudcore (it merge-patches the whole list on every edge sync): in
//! `edgecore` mode the controller only reads it, in `direct` mode (no cloudcore) it writes the
//! `firmware` twin's `observedDesired` as cloudcore would, with a resourceVersion. In `dmi` mode
//! it publishes nothing: KubeEdge delivers the spec, and the controller writes a tag's pin next to
//! the desired value ([`crate::dmi`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Mode, StatusLocation};
use crate::crd::{Device, DeviceModel, DeviceStatus, DeviceTwinStatus};
use mqtt_schema::firmware::TWIN_FIRMWARE as FIRMWARE;

use crate::anti_entropy::{Caches, Nudger};
use crate::decide::{CHIP_ANNOTATION, Decision, Input, Noop, Record, decide};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::seams::{ArtifactResolver, IntentSink, namespace_of};
use crate::signatures::{SignatureGate, judge_publication};
use crate::status::{
    newest, observed_desired, record_annotations, record_from_annotations, record_from_status,
    with_observed_desired,
};
use crate::status_route::StatusRoute;
use mqtt_schema::DeviceId;

/// The field manager of the Device controller's writes and the reporting controller of its Events.
pub const MANAGER: &str = "twinflash-cloud";
/// First retry delay after a failure; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Reconciles running at once. kube-runtime's default is unbounded: 10,000 Devices changed at
/// once started 10,000 reconciles together, each with its own registry and API server
/// connections, which starved the lease watchdog and the MQTT keep-alive (`bench_controller_api`).
pub const CONCURRENCY: u16 = 32;

/// Every Kubernetes API access of the controller: (API group, resource, verbs). The RBAC in
/// `manifests/cloud/rbac.yaml` grants exactly this (checked by `tests/manifests.rs`); leases are
/// for the leader election (namespaced Role), events for [`crate::events`].
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    // `patch`: status lives in the main resource where the CRD has no status subresource.
    (
        "devices.kubeedge.io",
        "devices",
        &["get", "list", "watch", "patch"],
    ),
    (
        "devices.kubeedge.io",
        "devicemodels",
        &["get", "list", "watch"],
    ),
    // `list`, `watch`: the anti-entropy scan reads DeviceStatus from a watch cache, never by a LIST per period.
    (
        "devices.kubeedge.io",
        "devicestatuses",
        &["get", "list", "watch", "patch"],
    ),
    ("devices.kubeedge.io", "devices/status", &["patch"]),
    ("devices.kubeedge.io", "devicestatuses/status", &["patch"]),
    // `create` only: every Event is a new one (crate::events); nothing patches a series.
    ("events.k8s.io", "events", &["create"]),
];

/// The leader-election access, granted in the controller's own namespace only.
pub const LEASE_ACCESS: (&str, &str, &[&str]) =
    ("coordination.k8s.io", "leases", &["get", "create", "patch"]);

/// Shared state of the reconcilers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Where intents go.
    pub sink: Arc<dyn IntentSink>,
    /// Pins tags and reads artifact annotations.
    pub resolver: Arc<dyn ArtifactResolver>,
    /// Who reports the Events (controller name, pod name).
    pub reporter: Reporter,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where `status.twins` lives.
    pub status_location: StatusLocation,
    /// `edgecore` (cloudcore owns `status.twins`: never written), `direct` (written here) or `dmi`
    /// (nothing published; tags pinned in the Device's `desired.metadata`).
    pub mode: Mode,
    /// How status patches reach it (learnt on the first write).
    pub status_route: Arc<StatusRoute>,
    /// Requeue period of a healthy Device.
    pub resync: Duration,
    /// The anti-entropy period (`anti_entropy.period_secs`; zero: off).
    pub anti_entropy: Duration,
    /// Who nudges stale Devices (the MQTT sink, or `dmi::KubeNudger`); `None`: no anti-entropy loop.
    pub nudger: Option<Arc<dyn Nudger>>,
    /// Verifies an intent's signatures before it is published, per the Device's policy; `None`: every policy is
    /// `off` (`[signatures]` in the config).
    pub signatures: Option<Arc<SignatureGate>>,
    /// Newest record per Device, so a stale cache or a lagging status never redoes an intent.
    records: Mutex<HashMap<DeviceId, Record>>,
    /// Consecutive failures per Device (backoff).
    failures: Mutex<HashMap<DeviceId, u32>>,
}

impl Context {
    /// A context; `instance` names this replica in Events (the pod name).
    pub fn new(
        client: Client,
        sink: Arc<dyn IntentSink>,
        resolver: Arc<dyn ArtifactResolver>,
        status_location: StatusLocation,
        resync: Duration,
        instance: Option<String>,
    ) -> Context {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance,
        };
        Context {
            reporter,
            client,
            sink,
            resolver,
            metrics: Arc::new(Metrics::default()),
            status_location,
            mode: Mode::Edgecore,
            status_route: Arc::new(StatusRoute::default()),
            resync,
            anti_entropy: Duration::ZERO,
            nudger: None,
            signatures: None,
            records: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn memory_record(&self, key: &DeviceId) -> Option<Record> {
        self.records.lock().ok().and_then(|m| m.get(key).cloned())
    }

    fn remember(&self, key: &DeviceId, record: &Record) {
        if let Ok(mut m) = self.records.lock() {
            m.insert(key.clone(), record.clone());
        }
    }

    /// The delay before retrying `key` after one more failure.
    pub fn next_backoff(&self, key: &DeviceId) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut m| {
                let n = m.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
    }

    fn reset_backoff(&self, key: &DeviceId) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }
}

fn key_of(device: &Device) -> Result<DeviceId, Error> {
    let namespace = device
        .namespace()
        .ok_or(Error::MalformedObject { what: "namespace" })?;
    let name = device
        .meta()
        .name
        .clone()
        .ok_or(Error::MalformedObject { what: "name" })?;
    DeviceId::namespaced(namespace, name).map_err(|_| Error::MalformedObject {
        what: "namespace or name usable in a topic",
    })
}

/// The stored status and its resourceVersion (for an optimistic-concurrency patch).
struct Stored {
    status: Option<DeviceTwinStatus>,
    resource_version: Option<String>,
    /// Whether an object to patch exists (a DeviceStatus may not be created yet).
    exists: bool,
}

async fn load_status(device: &Device, key: &DeviceId, ctx: &Context) -> Result<Stored, Error> {
    match ctx.status_location {
        StatusLocation::Device => Ok(Stored {
            status: device.status.clone(),
            resource_version: device.resource_version(),
            exists: true,
        }),
        StatusLocation::DeviceStatus => {
            let api: Api<DeviceStatus> = Api::namespaced(ctx.client.clone(), namespace_of(key));
            let found = api
                .get_opt(key.name())
                .await
                .map_err(|source| Error::Kube {
                    op: "get devicestatus",
                    object: key.to_string(),
                    source,
                })?;
            Ok(match found {
                Some(ds) => Stored {
                    resource_version: ds.resource_version(),
                    status: ds.status,
                    exists: true,
                },
                None => Stored {
                    status: None,
                    resource_version: None,
                    exists: false,
                },
            })
        }
    }
}

/// The chip the Device declares: its `twinflash.io/chip` annotation, else its DeviceModel's.
async fn device_chip(
    device: &Device,
    key: &DeviceId,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    if let Some(chip) = device.annotations().get(CHIP_ANNOTATION) {
        return Ok(Some(chip.clone()));
    }
    let Some(model) = device
        .spec
        .device_model_ref
        .as_ref()
        .filter(|m| !m.name.is_empty())
    else {
        return Ok(None);
    };
    let api: Api<DeviceModel> = Api::namespaced(ctx.client.clone(), namespace_of(key));
    let found = api
        .get_opt(&model.name)
        .await
        .map_err(|source| Error::Kube {
            op: "get devicemodel",
            object: format!("{}/{}", namespace_of(key), model.name),
            source,
        })?;
    Ok(found.and_then(|m| m.annotations().get(CHIP_ANNOTATION).cloned()))
}

/// Writes `record` into the Device's annotations: a merge patch of twinflash's keys only, so no
/// resourceVersion is needed and no other writer's change is lost.
async fn write_record(key: &DeviceId, record: &Record, ctx: &Context) -> Result<(), Error> {
    let patch = json!({ "metadata": { "annotations": record_annotations(record) } });
    Api::<Device>::namespaced(ctx.client.clone(), namespace_of(key))
        .patch(
            key.name(),
            &crate::identity::patch_params(MANAGER),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|source| Error::Kube {
            op: "patch device annotations",
            object: key.to_string(),
            source,
        })
}

/// `dmi` mode: writes `record`'s pin into the `firmware` property's `desired.metadata` when the Device's desired
/// value is tag-only and the pin is not there yet ([`crate::dmi::pin_patch`]); nothing otherwise.
async fn write_pin(
    device: &Device,
    key: &DeviceId,
    record: &Record,
    ctx: &Context,
) -> Result<(), Error> {
    let Some(patch) = crate::dmi::pin_patch(device, record) else {
        return Ok(());
    };
    crate::dmi::patch_device(&ctx.client, key, patch)
        .await
        .map(|_| info!(device = %key, pinned = %record.pinned, "tag pinned in desired.metadata"))
        .map_err(|source| Error::Kube {
            op: "patch device pin",
            object: key.to_string(),
            source,
        })
}

/// `direct` mode only: the `firmware` twin's `observedDesired` set to `pinned`, as cloudcore
/// writes it from edgecore's `expected` (the relay plays edgecore, and there is no cloudcore).
async fn write_status(
    key: &DeviceId,
    stored: &Stored,
    pinned: &str,
    ctx: &Context,
) -> Result<(), Error> {
    if !stored.exists {
        warn!(device = %key, "no DeviceStatus object yet; observedDesired not written");
        return Ok(());
    }
    let status = with_observed_desired(stored.status.as_ref(), pinned, now_ms());
    let mut patch = json!({ "status": { "twins": status.twins } });
    if let Some(rv) = &stored.resource_version {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    let route = &ctx.status_route;
    let result = match ctx.status_location {
        StatusLocation::Device => {
            let api = Api::<Device>::namespaced(ctx.client.clone(), namespace_of(key));
            route.patch(&api, key.name(), &patch).await.map(|_| ())
        }
        StatusLocation::DeviceStatus => {
            let api = Api::<DeviceStatus>::namespaced(ctx.client.clone(), namespace_of(key));
            route.patch(&api, key.name(), &patch).await.map(|_| ())
        }
    };
    result.map_err(|source| Error::Kube {
        op: "patch status",
        object: key.to_string(),
        source,
    })
}

/// Attempts of a status patch that meets a concurrent writer (in direct mode the relay writes the
/// agent's reports into the same status): each conflict reads the status again and re-applies.
pub const STATUS_CONFLICT_ATTEMPTS: usize = 3;

/// The stored status read again from the API server (the cached Device may be stale).
async fn reload_status(device: &Device, key: &DeviceId, ctx: &Context) -> Result<Stored, Error> {
    match ctx.status_location {
        StatusLocation::Device => {
            let fresh = Api::<Device>::namespaced(ctx.client.clone(), namespace_of(key))
                .get(key.name())
                .await
                .map_err(|source| Error::Kube {
                    op: "get device",
                    object: key.to_string(),
                    source,
                })?;
            load_status(&fresh, key, ctx).await
        }
        StatusLocation::DeviceStatus => load_status(device, key, ctx).await,
    }
}

/// [`write_status`], reading the status again after a 409 Conflict: a concurrent report must not
/// turn a published intent into a failed reconcile (which would retry later and lose the Event).
async fn write_status_fresh(
    device: &Device,
    key: &DeviceId,
    stored: Stored,
    pinned: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let mut stored = stored;
    let mut attempt = 1;
    loop {
        match write_status(key, &stored, pinned, ctx).await {
            Err(Error::Kube {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 409 && attempt < STATUS_CONFLICT_ATTEMPTS => {
                attempt += 1;
                stored = reload_status(device, key, ctx).await?;
            }
            other => return other,
        }
    }
}

/// Creates the Event of `record` on `device`: a new Event per decision ([`crate::events`]).
async fn publish_event(device: &Device, record: &Record, ctx: &Context) -> Result<(), Error> {
    let (type_, action) = match record.reason.code() {
        None => (EventType::Normal, "PublishIntent"),
        Some(_) => (EventType::Warning, "RejectIntent"),
    };
    let ev = Event {
        type_,
        reason: record.reason.as_str().to_owned(),
        note: Some(record.message.clone()),
        action: action.to_owned(),
        secondary: None,
    };
    crate::events::publish(
        &ctx.client,
        &ctx.reporter,
        MANAGER,
        &ev,
        &device.object_ref(&()),
    )
    .await
    .map_err(|source| Error::Kube {
        op: "create event",
        object: device.name_any(),
        source,
    })
}

/// The decision on `record` (about to be published) after its signatures are checked against `key`'s policy
/// ([`judge_publication`]); `None` when the policy is `off`. Every path to the edge passes here: a hand-set value,
/// a rollout's (which writes the desired value), mode `dmi`'s pin.
async fn check_signatures(
    record: &Record,
    last: Option<&Record>,
    key: &DeviceId,
    ctx: &Context,
) -> Option<Decision> {
    let checked = ctx
        .signatures
        .as_ref()?
        .check_device(key, &record.pinned)
        .await?;
    let previous = last.map(|l| l.pinned.as_str()).unwrap_or_default();
    let decision = judge_publication(record.clone(), previous, &checked);
    if let (Decision::Publish(r), Ok(v)) = (&decision, &checked.verdict)
        && v.code().is_some()
    {
        warn!(device = %key, policy = %checked.scope, reference = %r.pinned, verdict = %v.describe(), "publishing an intent whose signatures do not verify (policy warn)");
    }
    Some(decision)
}

/// Reconciles one Device.
pub async fn reconcile(device: Arc<Device>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconcile();
    let key = key_of(&device)?;
    let desired = device.desired(FIRMWARE);
    if desired.is_none_or(str::is_empty) {
        ctx.reset_backoff(&key);
        return Ok(Action::requeue(ctx.resync));
    }
    let stored = load_status(&device, &key, &ctx).await?;
    let memory = ctx.memory_record(&key);
    let annotated = record_from_annotations(device.annotations());
    let kept = annotated
        .clone()
        .or_else(|| record_from_status(stored.status.as_ref()));
    let last = newest(memory.clone(), kept);
    let input = Input {
        generation: device.metadata.generation.unwrap_or(0),
        desired,
        device_chip: None,
        last: last.as_ref(),
        resolution: None,
    };
    let mut decision = decide(input);
    if let Decision::Resolve { reference } = &decision {
        let chip = device_chip(&device, &key, &ctx).await?;
        let resolution = ctx.resolver.resolve(reference).await;
        decision = decide(Input {
            device_chip: chip.as_deref(),
            resolution: Some(&resolution),
            ..input
        });
    }
    if let Decision::Publish(record) = &decision {
        decision = check_signatures(record, last.as_ref(), &key, &ctx)
            .await
            .unwrap_or(decision);
    }
    match decision {
        Decision::Nothing(Noop::AlreadyDone) if ctx.mode == Mode::Dmi => {
            // A `kubectl apply` of the Device's manifest replaces the properties list and drops the pin with
            // it: write it again (nothing when it is there).
            if let Some(l) = last.as_ref() {
                write_pin(&device, &key, l, &ctx).await?;
            }
            if let Some(m) = memory.filter(|m| annotated.as_ref() != Some(m)) {
                write_record(&key, &m, &ctx).await?;
            }
        }
        Decision::Nothing(Noop::AlreadyDone) => {
            let held = observed_desired(stored.status.as_ref(), FIRMWARE);
            if let Some(l) = last.as_ref().filter(|l| !l.pinned.is_empty()) {
                if ctx.mode == Mode::Edgecore && held == l.pinned {
                    // cloudcore's observedDesired is edgecore's expected: edgecore stores the
                    // intent (and keeps it across restarts). Nothing to republish.
                    ctx.sink.delivered(&key, &l.pinned);
                } else {
                    // Not known to be held (or direct mode, whose relay lives in this
                    // process): let the sink deliver it again at the next reconnect or resync.
                    ctx.sink.restore_intent(&key, &l.pinned);
                }
            }
            // Make sure the record caught up (a previous patch may have failed after the publish).
            if let Some(m) = memory.filter(|m| annotated.as_ref() != Some(m)) {
                write_record(&key, &m, &ctx).await?;
                if ctx.mode == Mode::Direct && !m.pinned.is_empty() && held != m.pinned {
                    write_status_fresh(&device, &key, stored, &m.pinned, &ctx).await?;
                }
            }
        }
        Decision::Nothing(_) => {}
        Decision::Resolve { reference } => {
            return Err(Error::Retry {
                device: key.to_string(),
                code: mqtt_schema::ErrorCode::Internal,
                message: format!("decide asked to resolve {reference} twice"),
            });
        }
        Decision::Publish(record) => {
            if ctx.mode == Mode::Dmi {
                // KubeEdge delivers the spec; a tag-only value needs its pin next to it.
                write_pin(&device, &key, &record, &ctx).await?;
            } else {
                ctx.sink.publish_intent(&key, &record.pinned).await?;
            }
            ctx.remember(&key, &record);
            ctx.metrics.published();
            info!(device = %key, reference = %record.pinned, generation = record.generation, "intent published");
            write_record(&key, &record, &ctx).await?;
            if ctx.mode == Mode::Direct {
                write_status_fresh(&device, &key, stored, &record.pinned, &ctx).await?;
            }
            publish_event(&device, &record, &ctx).await?;
        }
        Decision::Reject(record) if last.as_ref() == Some(&record) => {
            // The same rejection again (a missing artifact re-checked at resync): already
            // recorded and reported.
        }
        Decision::Reject(record) => {
            ctx.remember(&key, &record);
            ctx.metrics.rejected(record.reason);
            warn!(device = %key, reason = record.reason.as_str(), message = %record.message, "intent rejected");
            write_record(&key, &record, &ctx).await?;
            publish_event(&device, &record, &ctx).await?;
        }
        Decision::Retry { code, message } => {
            return Err(Error::Retry {
                device: key.to_string(),
                code,
                message,
            });
        }
    }
    ctx.reset_backoff(&key);
    Ok(Action::requeue(ctx.resync))
}

/// Counts the failure by code and retries with exponential backoff.
pub fn error_policy(device: Arc<Device>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.code());
    let delay = match key_of(&device) {
        Ok(key) => ctx.next_backoff(&key),
        Err(_) => BACKOFF_MAX,
    };
    warn!(device = %device.name_any(), code = %error.code(), error = %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The Device controller over `namespace` (every namespace when `None`), restricted to `label_selector`; its store
/// ([`Controller::store`]) is what [`anti_entropy`] and the readiness check read.
pub fn device_controller(
    ctx: &Context,
    namespace: Option<&str>,
    label_selector: Option<&str>,
) -> Controller<Device> {
    let devices: Api<Device> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut wc = watcher::Config::default();
    if let Some(sel) = label_selector.filter(|s| !s.is_empty()) {
        wc = wc.labels(sel);
    }
    Controller::new(devices, wc).with_config(ControllerConfig::default().concurrency(CONCURRENCY))
}

/// Runs `controller` (from [`device_controller`]) until `stop` fires. Stopping drops the reconciles in flight at
/// once: a replica that lost its lease must not write any more (crate::leader).
pub async fn run_controller(
    ctx: Arc<Context>,
    controller: Controller<Device>,
    stop: CancellationToken,
) {
    let events = controller.run(reconcile, error_policy, ctx);
    drive(events, "Device controller", stop).await;
}

/// Polls a kube-runtime controller's stream `events`, logging its errors, until it ends or `stop` fires (which
/// drops it, and with it the reconciles in flight).
pub async fn drive<T, E>(
    events: impl futures::Stream<Item = Result<T, E>>,
    what: &'static str,
    stop: CancellationToken,
) where
    E: std::fmt::Display,
{
    let run = events.for_each(|res| async move {
        if let Err(e) = res {
            warn!(error = %e, controller = what, "controller event");
        }
    });
    tokio::select! {
        () = run => warn!(controller = what, "the controller stopped"),
        () = stop.cancelled() => {}
    }
}

/// The anti-entropy loop ([`crate::anti_entropy::run`]) over the Device controller's store `devices` and, where the
/// status lives in DeviceStatus objects, a reflector on `devicestatuses` (driven inside this future: nothing is
/// spawned, so it ends with it). `None` when the context has no nudger or the period is zero.
pub fn anti_entropy(
    ctx: &Context,
    devices: Store<Device>,
    namespace: Option<&str>,
    stop: CancellationToken,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let nudger = ctx.nudger.clone().filter(|_| !ctx.anti_entropy.is_zero())?;
    let reflector = match ctx.status_location {
        StatusLocation::Device => None,
        StatusLocation::DeviceStatus => {
            use kube::runtime::WatchStreamExt;
            let api: Api<DeviceStatus> = match namespace {
                Some(ns) => Api::namespaced(ctx.client.clone(), ns),
                None => Api::all(ctx.client.clone()),
            };
            let (reader, writer) = kube::runtime::reflector::store();
            let stream = kube::runtime::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .applied_objects()
                .for_each(|r| async move {
                    if let Err(e) = r {
                        warn!(error = %e, "devicestatuses watch");
                    }
                });
            Some((reader, stream))
        }
    };
    let (statuses, watch) = match reflector {
        Some((reader, stream)) => (Some(reader), Some(stream)),
        None => (None, None),
    };
    let (period, metrics) = (ctx.anti_entropy, ctx.metrics.clone());
    Some(async move {
        let scans = async {
            // An empty DeviceStatus cache would make every Device look stale: scan only once both caches are filled.
            until_ready(&devices).await;
            if let Some(s) = &statuses {
                until_ready(s).await;
            }
            let caches = Caches { devices, statuses };
            crate::anti_entropy::run(caches, nudger, period, metrics, stop.clone()).await;
        };
        let watch = async {
            match watch {
                Some(w) => w.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = scans => {}
            () = watch => warn!("the devicestatuses watch ended"),
            () = stop.cancelled() => {}
        }
    })
}

/// Runs the Device controller and its anti-entropy loop ([`anti_entropy`]) as one future until a termination
/// signal (SIGTERM, SIGINT); nothing outlives it. The binary starts the same parts as separate leader tasks instead
/// (`crate::leader::tasks`).
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>, label_selector: Option<&str>) {
    let controller = device_controller(&ctx, namespace, label_selector).shutdown_on_signal();
    let stop = CancellationToken::new();
    let background = anti_entropy(&ctx, controller.store(), namespace, stop.clone());
    let run = async {
        // Ends on SIGTERM/SIGINT (`shutdown_on_signal`); then the anti-entropy loop stops too.
        let events = controller.run(reconcile, error_policy, ctx.clone());
        drive(events, "Device controller", CancellationToken::new()).await;
        stop.cancel();
    };
    match background {
        Some(b) => {
            tokio::join!(run, b);
        }
        None => run.await,
    }
}

/// Waits until `store` holds its first full list. Asked again every 200 ms: a single `wait_until_ready` that
/// started before the list arrived was seen never to return (kube-runtime 5.0, against FakeApi), while a new call
/// made after it returns at once.
pub async fn until_ready<K>(store: &kube::runtime::reflector::Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// Milliseconds since the epoch (0 before it, saturating far after).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
