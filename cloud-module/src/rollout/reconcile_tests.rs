//! Reconcile paths of the rollout controller against a mocked API server: every request (method,
//! path, query, body) is asserted in order, as in `controller_tests.rs`.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use mqtt_schema::ErrorCode;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::api_verifier::{Expect as Exp, exp, ok, serve, status_err};
use crate::seams::{MemoryResolver, ResolvedArtifact};

const NS: &str = "fleet";
const NOW: i64 = 1_700_000_000;
const HEX1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const HEX2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const TAG: &str = "registry.local:5000/fw/blinky:2.0.0";

fn old() -> String {
    format!("registry.local:5000/fw/blinky:1.0.0@sha256:{HEX1}")
}
fn pinned() -> String {
    format!("{TAG}@sha256:{HEX2}")
}
fn fixed_clock() -> i64 {
    NOW
}

fn context(
    location: StatusLocation,
) -> (
    Arc<RolloutContext>,
    Handle<Request<Body>, Response<Body>>,
    MemoryResolver,
) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let resolver = MemoryResolver::default();
    let mut ctx = RolloutContext::new(
        client,
        Arc::new(resolver.clone()),
        location,
        Duration::from_secs(15),
        Some("test-pod".into()),
    );
    ctx.clock = fixed_clock;
    (Arc::new(ctx), handle, resolver)
}

fn rollout(name: &str, created: &str, status: Option<Value>, extra_spec: Value) -> Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"fleet": "blinky"}},
        "firmware": TAG,
        "strategy": {"waves": ["1", "100%"], "maxInFlight": 2,
                     "failureThreshold": {"maxFailures": 0}, "deviceTimeoutSeconds": 600}
    });
    if let (Value::Object(s), Value::Object(x)) = (&mut spec, extra_spec) {
        s.extend(x);
    }
    let mut r = json!({
        "apiVersion": "twinflash.io/v1alpha1", "kind": "FirmwareRollout",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1,
                     "resourceVersion": "500", "creationTimestamp": created},
        "spec": spec,
    });
    if let Some(s) = status {
        r["status"] = s;
    }
    r
}

fn device(name: &str, value: &str, metadata: Value, reported: Option<(&str, &str)>) -> Value {
    let mut d = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": name, "namespace": NS, "generation": 1, "resourceVersion": "7",
                     "labels": {"fleet": "blinky"}},
        "spec": {"properties": [
            {"name": "temperature", "desired": {"value": "20"}},
            {"name": "firmware", "desired": {"value": value, "metadata": metadata}},
            {"name": "firmware-state", "desired": {"value": ""}}
        ]}
    });
    if let Some((fw, state)) = reported {
        d["status"] = json!({"twins": [
            {"propertyName": "firmware", "reported": {"value": fw}},
            {"propertyName": "firmware-state", "reported": {"value": state,
             "metadata": {"timestamp": format!("{}", (NOW + 1) * 1000)}}}
        ]});
    }
    d
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "900"}, "items": items})
}

fn rollout_path(name: &str) -> String {
    format!("/apis/twinflash.io/v1alpha1/namespaces/{NS}/firmwarerollouts/{name}")
}
fn rollouts_path() -> String {
    format!("/apis/twinflash.io/v1alpha1/namespaces/{NS}/firmwarerollouts")
}
fn devices_path(tail: &str) -> String {
    format!("/apis/devices.kubeedge.io/v1beta1/namespaces/{NS}/{tail}")
}
fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

fn event(reason: &'static str, type_: &'static str) -> Exp {
    exp(Method::POST, &events_path(), ok(Value::Null)).check(move |ev| {
        assert_eq!(ev["reason"], reason, "{ev}");
        assert_eq!(ev["type"], type_, "{ev}");
        assert_eq!(ev["regarding"]["kind"], "FirmwareRollout");
        assert_eq!(ev["reportingController"], ROLLOUT_MANAGER);
        assert!(ev["note"].as_str().is_some_and(|n| !n.is_empty()));
    })
}

fn marker(wave: &str) -> Value {
    json!({"twinflash.io/rollout": "fw-2", "twinflash.io/previous": old(),
           "twinflash.io/wave": wave, "twinflash.io/started": NOW.to_string()})
}

/// The status patch of rollout `fw-2`, answered with `r`.
fn status_patch_of(r: &Value) -> Exp {
    exp(
        Method::PATCH,
        &format!("{}/status", rollout_path("fw-2")),
        ok(r.clone()),
    )
}

/// The resolver pins [`TAG`] to [`pinned`].
fn tag_resolves(resolver: &MemoryResolver) {
    resolver.insert(
        TAG,
        Ok(ResolvedArtifact {
            digest_ref: pinned(),
            chip: None,
            version: Some("2.0.0".into()),
        }),
    );
}

/// The reads a reconcile of the not yet started rollout `r` begins with: the rollout, its Devices `devs`,
/// the rollouts of the namespace (for conflicts).
fn start_reads(r: &Value, devs: Vec<Value>) -> Vec<Exp> {
    vec![
        exp(Method::GET, &rollout_path("fw-2"), ok(r.clone())),
        exp(
            Method::GET,
            &devices_path("devices"),
            ok(list("DeviceList", devs)),
        )
        .query("labelSelector=fleet=blinky"),
        exp(
            Method::GET,
            &rollouts_path(),
            ok(list("FirmwareRolloutList", vec![r.clone()])),
        ),
    ]
}

#[tokio::test]
async fn start_path_pins_the_tag_patches_the_canary_and_records_the_status() {
    let (ctx, handle, resolver) = context(StatusLocation::Device);
    tag_resolves(&resolver);
    let r = rollout("fw-2", "2026-01-01T00:00:00Z", None, json!({}));
    let devs = vec![
        device("dev-b", &old(), json!({}), None),
        device("dev-a", &old(), json!({}), None),
    ];
    let mut patched_a = device("dev-a", &pinned(), marker("1"), None);
    patched_a["metadata"]["generation"] = json!(2);
    let p = pinned();
    let server = serve(
        handle,
        vec![
            exp(Method::GET, &rollout_path("fw-2"), ok(r.clone())),
            exp(Method::GET, &devices_path("devices"), ok(list("DeviceList", devs)))
                .query("labelSelector=fleet=blinky"),
            exp(Method::GET, &rollouts_path(), ok(list("FirmwareRolloutList", vec![r.clone()]))),
            exp(Method::PATCH, &devices_path("devices/dev-a"), ok(patched_a)).check({
                let p = p.clone();
                move |b| {
                    assert_eq!(b[0], json!({"op": "test", "path": "/spec/properties/1/name", "value": "firmware"}));
                    assert_eq!(b[1], json!({"op": "test", "path": "/spec/properties/1/desired/value", "value": old()}));
                    assert_eq!(b[2]["op"], "replace");
                    assert_eq!(b[2]["path"], "/spec/properties/1/desired");
                    assert_eq!(b[2]["value"]["value"], p);
                    assert_eq!(b[2]["value"]["metadata"], marker("1"));
                }
            }),
            exp(Method::PATCH, &format!("{}/status", rollout_path("fw-2")), ok(r.clone())).check(move |b| {
                assert_eq!(b["metadata"]["resourceVersion"], "500", "optimistic concurrency");
                let s = &b["status"];
                assert_eq!(s["phase"], "Progressing");
                assert_eq!(s["pinned"], p);
                assert_eq!(s["currentWave"], 1);
                assert_eq!(s["waveProgress"], "1/2");
                assert_eq!(s["progress"], "0/2");
                assert_eq!((s["pending"].as_u64(), s["inProgress"].as_u64()), (Some(1), Some(1)));
                assert_eq!(s["inFlight"], json!([{"device": "dev-a", "wave": 1, "startedAt": NOW,
                                                  "previous": old(), "generation": 2}]));
                assert_eq!(s["waveFinishedAt"], Value::Null, "emptied fields are sent as null");
                assert_eq!(s["failedDevices"], Value::Null);
            }),
            event("Progressing", "Normal"),
            event("WaveStarted", "Normal"),
        ],
    );
    let action = reconcile(Arc::new(serde_json::from_value(r).unwrap()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    assert_eq!(resolver.calls(), vec![TAG.to_owned()], "pinned once");
    drop(ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn a_newer_overlapping_rollout_is_refused_naming_the_older_one() {
    let (ctx, handle, resolver) = context(StatusLocation::Device);
    let older = rollout(
        "fw-1",
        "2025-12-01T00:00:00Z",
        Some(json!({"phase": "Progressing", "currentWave": 1})),
        json!({}),
    );
    let done = rollout(
        "fw-0",
        "2025-11-01T00:00:00Z",
        Some(json!({"phase": "Completed"})),
        json!({}),
    );
    let r = rollout("fw-2", "2026-01-01T00:00:00Z", None, json!({}));
    let server = serve(
        handle,
        vec![
            exp(Method::GET, &rollout_path("fw-2"), ok(r.clone())),
            exp(
                Method::GET,
                &devices_path("devices"),
                ok(list(
                    "DeviceList",
                    vec![device("dev-a", &old(), json!({}), None)],
                )),
            ),
            exp(
                Method::GET,
                &rollouts_path(),
                ok(list("FirmwareRolloutList", vec![done, older, r.clone()])),
            ),
            status_patch_of(&r).check(|b| {
                let s = &b["status"];
                assert_eq!(s["phase"], "Pending");
                assert_eq!(s["pinned"], "", "not pinned while refused");
                let refused = s["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["type"] == "Refused")
                    .unwrap()
                    .clone();
                assert_eq!(refused["status"], "True");
                assert_eq!(refused["reason"], "ConflictingRollout");
                assert!(
                    refused["message"].as_str().unwrap().contains("fw-1"),
                    "{refused}"
                );
            }),
            event("Refused", "Warning"),
        ],
    );
    reconcile(Arc::new(serde_json::from_value(r).unwrap()), ctx.clone())
        .await
        .unwrap();
    assert!(
        resolver.calls().is_empty(),
        "no registry call while refused"
    );
    drop(ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn a_concurrent_hand_edit_fails_the_test_op_and_the_device_stays_pending() {
    let (ctx, handle, _) = context(StatusLocation::Device);
    let mut r = rollout("fw-2", "2026-01-01T00:00:00Z", None, json!({}));
    r["spec"]["firmware"] = json!(pinned()); // a digest: no registry call
    let server = serve(
        handle,
        vec![
            exp(Method::GET, &rollout_path("fw-2"), ok(r.clone())),
            exp(
                Method::GET,
                &devices_path("devices"),
                ok(list(
                    "DeviceList",
                    vec![device("dev-a", &old(), json!({}), None)],
                )),
            ),
            exp(
                Method::GET,
                &rollouts_path(),
                ok(list("FirmwareRolloutList", vec![r.clone()])),
            ),
            exp(
                Method::PATCH,
                &devices_path("devices/dev-a"),
                status_err(422, "Invalid"),
            ),
            status_patch_of(&r).check(|b| {
                let s = &b["status"];
                assert_eq!(
                    (s["pending"].as_u64(), s["inProgress"].as_u64()),
                    (Some(1), Some(0))
                );
                assert_eq!(s["inFlight"], Value::Null);
            }),
            event("Progressing", "Normal"),
            event("WaveStarted", "Normal"),
        ],
    );
    reconcile(Arc::new(serde_json::from_value(r).unwrap()), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn a_failure_report_aborts_and_rolls_back_from_device_status_objects() {
    let (ctx, handle, _) = context(StatusLocation::DeviceStatus);
    let status = json!({"phase": "Progressing", "pinned": pinned(), "currentWave": 2, "waves": 2,
        "inFlight": [{"device": "dev-a", "wave": 2, "startedAt": NOW - 30, "previous": old(), "generation": 2},
                     {"device": "dev-b", "wave": 2, "startedAt": NOW - 30, "previous": old(), "generation": 2}]});
    let r = rollout(
        "fw-2",
        "2026-01-01T00:00:00Z",
        Some(status),
        json!({"rollbackOnAbort": true}),
    );
    let mut a = device("dev-a", &pinned(), marker("2"), None);
    let mut b = device("dev-b", &pinned(), marker("2"), None);
    a["metadata"]["generation"] = json!(2);
    b["metadata"]["generation"] = json!(2);
    let ds = |name: &str, state: &str| {
        json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
               "metadata": {"name": name, "namespace": NS},
               "status": {"twins": [{"propertyName": "firmware-state",
                   "reported": {"value": state, "metadata": {"timestamp": format!("{}", NOW * 1000)}}}]}})
    };
    let rollback_check = |b: &Value| {
        assert_eq!(
            b[1],
            json!({"op": "test", "path": "/spec/properties/1/desired/value", "value": pinned()})
        );
        assert_eq!(
            b[2]["value"],
            json!({"value": old()}),
            "previous value, rollout keys removed"
        );
    };
    let server = serve(
        handle,
        vec![
            exp(Method::GET, &rollout_path("fw-2"), ok(r.clone())),
            exp(
                Method::GET,
                &devices_path("devices"),
                ok(list("DeviceList", vec![a, b])),
            ),
            exp(
                Method::GET,
                &devices_path("devicestatuses"),
                ok(list(
                    "DeviceStatusList",
                    vec![
                        ds("dev-a", "failed:flash-failed"),
                        ds("dev-b", "downloading:40"),
                    ],
                )),
            ),
            exp(
                Method::PATCH,
                &devices_path("devices/dev-a"),
                ok(device("dev-a", &old(), json!({}), None)),
            )
            .check(rollback_check),
            exp(
                Method::PATCH,
                &devices_path("devices/dev-b"),
                status_err(422, "Invalid"),
            )
            .check(rollback_check),
            status_patch_of(&r).check(|b| {
                let s = &b["status"];
                assert_eq!(s["phase"], "RolledBack");
                assert_eq!(
                    s["failedDevices"],
                    json!([{"device": "dev-a", "code": "flash-failed", "wave": 2}])
                );
                assert_eq!(s["failed"], 1);
                assert!(
                    s["message"].as_str().unwrap().contains("failure threshold"),
                    "{s}"
                );
            }),
            event("RolledBack", "Warning"),
        ],
    );
    let action = reconcile(Arc::new(serde_json::from_value(r).unwrap()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    drop(ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn terminal_rollouts_cost_one_get() {
    let (ctx, handle, _) = context(StatusLocation::Device);
    let r = rollout(
        "fw-2",
        "2026-01-01T00:00:00Z",
        Some(json!({"phase": "Completed"})),
        json!({}),
    );
    let server = serve(
        handle,
        vec![exp(Method::GET, &rollout_path("fw-2"), ok(r.clone()))],
    );
    let action = reconcile(Arc::new(serde_json::from_value(r).unwrap()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    drop(ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn registry_outage_and_status_conflict_are_retried() {
    let (ctx, handle, resolver) = context(StatusLocation::Device);
    resolver.insert(
        TAG,
        Err(ResolveError::Unreachable {
            reference: TAG.into(),
            detail: "connection refused".into(),
        }),
    );
    let r = rollout("fw-2", "2026-01-01T00:00:00Z", None, json!({}));
    let mut digest = r.clone();
    digest["spec"]["firmware"] = json!(pinned());
    let server = serve(
        handle,
        vec![
            exp(Method::GET, &rollout_path("fw-2"), ok(r.clone())),
            exp(
                Method::GET,
                &devices_path("devices"),
                ok(list("DeviceList", vec![])),
            ),
            exp(
                Method::GET,
                &rollouts_path(),
                ok(list("FirmwareRolloutList", vec![r.clone()])),
            ),
            // Second reconcile: nothing selected; the status patch meets a concurrent change.
            exp(Method::GET, &rollout_path("fw-2"), ok(digest.clone())),
            exp(
                Method::GET,
                &devices_path("devices"),
                ok(list("DeviceList", vec![])),
            ),
            exp(
                Method::GET,
                &rollouts_path(),
                ok(list("FirmwareRolloutList", vec![])),
            ),
            exp(
                Method::PATCH,
                &format!("{}/status", rollout_path("fw-2")),
                status_err(409, "Conflict"),
            ),
        ],
    );
    let arc = Arc::new(serde_json::from_value::<FirmwareRollout>(r).unwrap());
    let err = reconcile(arc.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryUnreachable);
    assert_eq!(
        error_policy(arc.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(15))
    );
    let err = reconcile(arc, ctx.clone()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::Kube {
                op: "patch firmwarerollout status",
                ..
            }
        ),
        "{err}"
    );
    drop(ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn an_unsigned_firmware_under_require_refuses_the_rollout_before_any_device_is_patched() {
    use crate::seams::MemorySignatures;
    use crate::signatures::{Policies, SignatureGate};
    use twinflash_artifact::signature::{Mode, Policy, SigningKey, TrustedKey, Verdict};

    let (ctx, handle, resolver) = context(StatusLocation::Device);
    tag_resolves(&resolver);
    let der = SigningKey::generate_p256_pkcs8().unwrap();
    let key = SigningKey::from_pkcs8_der(&der).unwrap().public().clone();
    let require = Policy {
        mode: Mode::Require,
        keys: vec![TrustedKey {
            name: "release".into(),
            key,
        }],
    };
    let signatures = MemorySignatures::default();
    signatures.insert(
        &pinned(),
        Ok(Verdict::Unsigned {
            looked_in: vec!["registry.local:5000".into()],
        }),
    );
    let gate = SignatureGate::new(
        Policies::new(Policy::default(), vec![(NS.into(), None, require)]),
        Arc::new(signatures.clone()),
    );
    let mut ctx = Arc::into_inner(ctx).unwrap();
    ctx.signatures = Some(Arc::new(gate));
    let ctx = Arc::new(ctx);
    let r = rollout("fw-2", "2026-01-01T00:00:00Z", None, json!({}));
    let devs = vec![device("dev-a", &old(), json!({}), None)];
    let mut expects = start_reads(&r, devs);
    expects.extend([
        // No Device patch: the status says why, and the rollout waits (pinned again at the next resync).
        status_patch_of(&r).check(|b| {
            let s = &b["status"];
            assert_eq!(s["phase"], "Pending", "{b}");
            assert_eq!(s["currentWave"], 0, "{b}");
            let m = s["message"].as_str().unwrap_or_default();
            assert!(
                m.contains("no signature found") && m.ends_with("[unsigned]"),
                "{m}"
            );
            assert!(
                m.contains(&format!("signature policy {NS} (require)")),
                "{m}"
            );
        }),
        event("Refused", "Warning"),
    ]);
    let server = serve(handle, expects);
    let action = reconcile(Arc::new(serde_json::from_value(r).unwrap()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    assert_eq!(signatures.calls(), vec![(pinned(), Mode::Require)]);
    drop(ctx);
    server.await.unwrap();
}

#[test]
fn conflicts_need_an_older_active_rollout_selecting_a_device() {
    let mk = |name: &str, created: &str, labels: Value, phase: Option<&str>| -> FirmwareRollout {
        let mut v = rollout(name, created, phase.map(|p| json!({"phase": p})), json!({}));
        v["spec"]["selector"] = json!({"matchLabels": labels});
        serde_json::from_value(v).unwrap()
    };
    let me = mk(
        "b",
        "2026-01-02T00:00:00Z",
        json!({"fleet": "blinky"}),
        None,
    );
    let devices: Vec<Device> =
        vec![serde_json::from_value(device("dev-a", &old(), json!({}), None)).unwrap()];
    let older_other_fleet = mk(
        "a1",
        "2026-01-01T00:00:00Z",
        json!({"fleet": "other"}),
        None,
    );
    let older_done = mk(
        "a2",
        "2026-01-01T00:00:00Z",
        json!({"fleet": "blinky"}),
        Some("RolledBack"),
    );
    let newer = mk(
        "c",
        "2026-01-03T00:00:00Z",
        json!({"fleet": "blinky"}),
        None,
    );
    let same_time_smaller_name = mk("a", "2026-01-02T00:00:00Z", json!({}), Some("Paused"));
    assert_eq!(
        find_conflict(
            &me,
            &[older_other_fleet.clone(), older_done, newer.clone()],
            &devices
        ),
        None
    );
    assert_eq!(
        find_conflict(&me, &[newer, same_time_smaller_name.clone()], &devices),
        Some("a".into())
    );
    assert_eq!(
        find_conflict(&same_time_smaller_name, std::slice::from_ref(&me), &devices),
        None,
        "the older one proceeds"
    );
}

#[test]
fn status_patch_nulls_emptied_fields() {
    let st = FirmwareRolloutStatus::default();
    let p = status_patch(&st, None).unwrap();
    assert!(p.get("metadata").is_none());
    for k in [
        "waveStartedAt",
        "waveFinishedAt",
        "inFlight",
        "failedDevices",
        "skippedDevices",
        "conditions",
        "message",
    ] {
        assert_eq!(p["status"][k], Value::Null, "{k}");
        assert!(p["status"].as_object().unwrap().contains_key(k));
    }
    assert_eq!(p["status"]["phase"], "Pending");
}

#[test]
fn a_device_status_change_concerns_the_active_rollouts_of_its_namespace() {
    // Found end to end (tests/rollout_e2e.rs, status_location = device-status): reports land in
    // DeviceStatus objects, which the controller did not watch, so a rollout only saw them at the
    // resync period (300 s by default) and stalled for minutes per step.
    let parse = |v: Value| Arc::new(serde_json::from_value::<FirmwareRollout>(v).unwrap());
    let with_ns = |mut v: Value, ns: &str| {
        v["metadata"]["namespace"] = json!(ns);
        v
    };
    let rollouts = vec![
        parse(rollout("active", "2026-01-01T00:00:00Z", None, json!({}))),
        parse(rollout(
            "done",
            "2026-01-01T00:00:00Z",
            Some(json!({"phase": "Completed"})),
            json!({}),
        )),
        parse(rollout(
            "to-roll-back",
            "2026-01-01T00:00:00Z",
            Some(json!({"phase": "Aborted"})),
            json!({"rollbackOnAbort": true}),
        )),
        parse(with_ns(
            rollout("elsewhere", "2026-01-01T00:00:00Z", None, json!({})),
            "other",
        )),
    ];
    let ns = rollouts[0].namespace();
    let names: Vec<String> = active_in_namespace(&rollouts, ns.as_deref())
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["active", "to-roll-back"]);
    assert!(active_in_namespace(&rollouts, Some("nowhere")).is_empty());
}
