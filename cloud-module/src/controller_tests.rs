//! Reconcile tests against a mocked API server (`ApiServerVerifier`): every API call of the
//! publish, pin, reject, event and status-patch paths is asserted in order.

use std::sync::Arc;

use http::StatusCode;
use kube::Resource;
use mqtt_schema::ErrorCode;
use serde_json::{Value, json};

use super::*;
use crate::config::Mode;
use crate::crd::Device;
use crate::decide::Reason;
use crate::fixtures::*;
use crate::seams::{ResolveError, ResolvedArtifact, SinkError};
use crate::status::{
    META_DESIRED, META_GENERATION, META_MESSAGE, META_PINNED, META_REASON, record_annotations,
    with_observed_desired,
};

fn key() -> DeviceId {
    DeviceId::namespaced(NS, NAME).unwrap()
}

fn artifact(digest_ref: &str, chip: Option<&str>) -> Result<ResolvedArtifact, ResolveError> {
    Ok(ResolvedArtifact {
        digest_ref: digest_ref.to_owned(),
        chip: chip.map(str::to_owned),
        version: Some("1.4.2".into()),
    })
}

fn firmware_twin(patch: &Value) -> Value {
    patch["status"]["twins"]
        .as_array()
        .expect("twins array")
        .iter()
        .find(|t| t["propertyName"] == "firmware")
        .expect("firmware twin")
        .clone()
}

/// Asserts the record in an annotations patch of the Device (and that it writes nothing else).
fn assert_record(patch: &Value, pinned: &str, desired: &str, generation: &str, reason: Reason) {
    assert_eq!(
        patch.as_object().map(|m| m.keys().collect::<Vec<_>>()),
        Some(vec![&"metadata".to_owned()]),
        "metadata only, never status.twins: {patch}"
    );
    let a = &patch["metadata"]["annotations"];
    assert!(patch["metadata"]["resourceVersion"].is_null(), "{patch}");
    assert_eq!(a[META_PINNED], pinned, "{patch}");
    assert_eq!(a[META_DESIRED], desired);
    assert_eq!(a[META_GENERATION], generation);
    assert_eq!(a[META_REASON], reason.as_str());
}

/// The annotations of a patch.
fn annotations(patch: &Value) -> Value {
    patch["metadata"]["annotations"].clone()
}

fn assert_event(ev: &Value, type_: &str, reason: Reason) {
    assert_eq!(ev["type"], type_, "{ev}");
    assert_eq!(ev["reason"], reason.as_str(), "{ev}");
    assert_eq!(ev["regarding"]["name"], NAME);
    assert_eq!(ev["regarding"]["kind"], "Device");
    assert_eq!(ev["reportingController"], "twinflash-cloud");
    assert!(ev["note"].as_str().is_some_and(|n| !n.is_empty()), "{ev}");
}

fn device_json(d: &Device) -> Value {
    serde_json::to_value(d).unwrap()
}

fn model(chip: Option<&str>) -> Value {
    let mut m = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "blinky-model", "namespace": NS},
        "spec": {"properties": [{"name": "firmware", "type": "STRING", "accessMode": "ReadWrite"}]}
    });
    if let Some(c) = chip {
        m["metadata"]["annotations"] = json!({ "twinflash.io/chip": c });
    }
    m
}

#[tokio::test]
async fn publish_path_device_status_object_then_idempotent() {
    let t = Context::test(StatusLocation::DeviceStatus);
    let p = pinned();
    t.resolver.insert(&p, artifact(&p, Some("nRF52840_xxAA")));
    let dev = Arc::new(device(&p, 2));
    let p1 = p.clone();
    let record = Record {
        generation: 2,
        desired: p.clone(),
        pinned: p.clone(),
        reason: Reason::IntentPublished,
        message: "m".into(),
    };
    // What the watch shows after the record patch: the Device with its annotations.
    let mut annotated = device(&p, 2);
    annotated
        .meta_mut()
        .annotations
        .get_or_insert_default()
        .extend(record_annotations(&record));
    let annotated = Arc::new(annotated);
    let server = t.verifier.run(vec![
        Expect::get(
            devices_path(&format!("devicestatuses/{NAME}")),
            StatusCode::OK,
            device_status_object(None),
        ),
        Expect::get(
            devices_path("devicemodels/blinky-model"),
            StatusCode::OK,
            model(Some("nRF52840_xxAA")),
        ),
        // The record goes into the Device's annotations; DeviceStatus (cloudcore's) is not written.
        Expect {
            respond: Some((StatusCode::OK, device_json(&annotated))),
            ..Expect::record(move |b| assert_record(b, &p1, &p1, "2", Reason::IntentPublished))
        },
        Expect::event(|ev| assert_event(ev, "Normal", Reason::IntentPublished)),
        // A restarted controller, before edgecore synced: cloudcore's observedDesired is empty.
        Expect::get(
            devices_path(&format!("devicestatuses/{NAME}")),
            StatusCode::OK,
            device_status_object(None),
        ),
        // Again, after edgecore synced its expected: cloudcore's observedDesired is the intent.
        Expect::get(
            devices_path(&format!("devicestatuses/{NAME}")),
            StatusCode::OK,
            device_status_object(Some(with_observed_desired(None, &p, 1))),
        ),
    ]);
    let action = reconcile(dev.clone(), t.ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(t.sink.published(), vec![(key(), p.clone())]);

    // A restarted controller (fresh memory) finds the record in the annotations: nothing is redone.
    let restarted = Arc::new(Context::new(
        t.ctx.client.clone(),
        Arc::new(t.sink.clone()),
        Arc::new(t.resolver.clone()),
        StatusLocation::DeviceStatus,
        Duration::from_secs(300),
        None,
    ));
    reconcile(annotated.clone(), restarted.clone())
        .await
        .unwrap();
    assert_eq!(t.sink.published().len(), 1, "same intent published once");
    // edgecore is not known to hold it yet: the sink may deliver it again after a reconnect...
    assert_eq!(t.sink.restored(), vec![(key(), p.clone())]);
    // ...and once cloudcore's observedDesired shows edgecore's expected, it need not.
    reconcile(annotated, restarted).await.unwrap();
    assert_eq!(t.sink.delivered(), vec![(key(), p.clone())]);
    assert_eq!(t.sink.restored().len(), 1);
    assert_eq!(t.sink.published().len(), 1);
    assert_eq!(t.resolver.calls(), vec![p]);
    assert_eq!(t.ctx.metrics.intents_published(), 1);
    drop(t.ctx);
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 6);
}

#[tokio::test]
async fn pin_path_tag_is_resolved_and_the_digest_published_device_status_in_device() {
    let t = Context::test(StatusLocation::Device);
    let tag = "registry.local:5000/fw/blinky:1.4.2";
    let tag_pinned = format!("{tag}@sha256:{HEX}");
    t.resolver
        .insert(tag, artifact(&tag_pinned, Some("nRF52840_xxAA")));
    let mut d = device(tag, 4);
    d.meta_mut()
        .annotations
        .get_or_insert_default()
        .insert("twinflash.io/chip".into(), "nRF52840_xxAA".into());
    let dev = Arc::new(d);
    let tp = tag_pinned.clone();
    let server = t.verifier.run(vec![
        // No DeviceModel GET: the Device's own annotation declares the chip.
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(move |b| assert_record(b, &tp, tag, "4", Reason::IntentPublished))
        },
        Expect::event(|ev| assert_event(ev, "Normal", Reason::IntentPublished)),
    ]);
    reconcile(dev, t.ctx.clone()).await.unwrap();
    assert_eq!(
        t.sink.published(),
        vec![(key(), tag_pinned)],
        "the edge only sees digests"
    );
    assert_eq!(t.resolver.calls(), vec![tag.to_owned()]);
    drop(t.ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn each_new_intent_on_a_device_gets_its_own_event_with_its_own_note() {
    let t = Context::test(StatusLocation::Device);
    let v1 = pinned();
    let v2 = format!("registry.local:5000/fw/blinky@sha256:{}", "b".repeat(64));
    for p in [&v1, &v2] {
        t.resolver.insert(p, artifact(p, Some("nRF52840_xxAA")));
    }
    let with_chip = |desired: &str, generation| {
        let mut d = device(desired, generation);
        d.meta_mut()
            .annotations
            .get_or_insert_default()
            .insert("twinflash.io/chip".into(), "nRF52840_xxAA".into());
        Arc::new(d)
    };
    let (d1, d2) = (with_chip(&v1, 1), with_chip(&v2, 2));
    let (n1, n2) = (v1.clone(), v2.clone());
    let server = t.verifier.run(vec![
        Expect {
            respond: Some((StatusCode::OK, device_json(&d1))),
            ..Expect::record(|_| {})
        },
        Expect::event(move |ev| {
            assert_event(ev, "Normal", Reason::IntentPublished);
            assert!(ev["note"].as_str().unwrap().contains(&n1), "{ev}");
        }),
        Expect {
            respond: Some((StatusCode::OK, device_json(&d2))),
            ..Expect::record(|_| {})
        },
        // A new Event (POST), not a series patch of the first one that would keep its note.
        Expect::event(move |ev| {
            assert_event(ev, "Normal", Reason::IntentPublished);
            assert!(ev["note"].as_str().unwrap().contains(&n2), "{ev}");
            assert!(ev["series"].is_null(), "{ev}");
        }),
    ]);
    reconcile(d1, t.ctx.clone()).await.unwrap();
    reconcile(d2, t.ctx.clone()).await.unwrap();
    assert_eq!(t.sink.published(), vec![(key(), v1), (key(), v2)]);
    drop(t.ctx);
    assert_eq!(server.await.unwrap().len(), 4);
}

#[tokio::test]
async fn invalid_reference_gets_condition_and_warning_event_without_publish() {
    let t = Context::test(StatusLocation::Device);
    let bad = "registry.local:5000/fw/blinky:1.4.2+b7";
    let dev = Arc::new(device(bad, 3));
    let server = t.verifier.run(vec![
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(move |b| assert_record(b, "", bad, "3", Reason::InvalidReference))
        },
        Expect::event(|ev| assert_event(ev, "Warning", Reason::InvalidReference)),
    ]);
    reconcile(dev, t.ctx.clone()).await.unwrap();
    assert!(t.sink.published().is_empty());
    assert!(
        t.resolver.calls().is_empty(),
        "an invalid reference never reaches the registry"
    );
    assert!(
        t.ctx
            .metrics
            .render()
            .contains("reason=\"InvalidReference\"} 1")
    );
    drop(t.ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn artifact_not_found_without_device_status_object_still_emits_the_event() {
    let t = Context::test(StatusLocation::DeviceStatus);
    let dev = Arc::new(device(&pinned(), 1));
    let server = t.verifier.run(vec![
        Expect::get(
            devices_path(&format!("devicestatuses/{NAME}")),
            not_found().0,
            not_found().1,
        ),
        Expect::get(
            devices_path("devicemodels/blinky-model"),
            not_found().0,
            not_found().1,
        ),
        // The record needs no DeviceStatus object: it lives on the Device.
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(|b| assert_eq!(annotations(b)[META_REASON], "ArtifactNotFound"))
        },
        Expect::event(|ev| assert_event(ev, "Warning", Reason::ArtifactNotFound)),
    ]);
    reconcile(dev, t.ctx.clone()).await.unwrap();
    assert!(t.sink.published().is_empty());
    drop(t.ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn chip_mismatch_from_the_device_model() {
    let t = Context::test(StatusLocation::Device);
    let p = pinned();
    t.resolver.insert(&p, artifact(&p, Some("STM32F411RETx")));
    let dev = Arc::new(device(&p, 6));
    let server = t.verifier.run(vec![
        Expect::get(
            devices_path("devicemodels/blinky-model"),
            StatusCode::OK,
            model(Some("nRF52840_xxAA")),
        ),
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(|b| {
                let a = annotations(b);
                assert_eq!(a[META_REASON], "ChipMismatch");
                assert!(a[META_MESSAGE].as_str().unwrap().contains("STM32F411RETx"));
            })
        },
        Expect::event(|ev| assert_event(ev, "Warning", Reason::ChipMismatch)),
    ]);
    reconcile(dev, t.ctx.clone()).await.unwrap();
    assert!(t.sink.published().is_empty());
    drop(t.ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn broker_failure_backs_off_then_publishes_once_healed() {
    let t = Context::test(StatusLocation::Device);
    let p = pinned();
    t.resolver.insert(&p, artifact(&p, None));
    t.sink.fail_with(Some(SinkError::BrokerUnreachable {
        device: key().to_string(),
        detail: "connection refused".into(),
    }));
    let mut d = device(&p, 2);
    d.spec.device_model_ref = None; // no chip anywhere: no API call before the publish
    let dev = Arc::new(d);
    let server = t.verifier.run(vec![
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(|_| {})
        },
        Expect::event(|ev| assert_event(ev, "Normal", Reason::IntentPublished)),
    ]);
    for want in [5, 10, 20] {
        let err = reconcile(dev.clone(), t.ctx.clone()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::BrokerUnreachable);
        let action = error_policy(dev.clone(), &err, t.ctx.clone());
        assert_eq!(action, Action::requeue(Duration::from_secs(want)));
    }
    assert_eq!(t.ctx.metrics.failures(ErrorCode::BrokerUnreachable), 3);
    t.sink.fail_with(None);
    reconcile(dev.clone(), t.ctx.clone()).await.unwrap();
    assert_eq!(t.sink.published(), vec![(key(), p)]);
    // Success resets the backoff.
    assert_eq!(t.ctx.next_backoff(&key()), Duration::from_secs(5));
    drop(t.ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn failed_status_patch_is_retried_without_republishing_and_stale_cache_is_ignored() {
    let t = Context::test(StatusLocation::Device);
    let p = pinned();
    t.resolver.insert(&p, artifact(&p, None));
    let mut d = device(&p, 3);
    d.spec.device_model_ref = None;
    let dev = Arc::new(d);
    let unavailable = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                             "reason": "ServiceUnavailable", "message": "etcd is away", "code": 503});
    let p1 = p.clone();
    let server = t.verifier.run(vec![
        Expect {
            respond: Some((StatusCode::SERVICE_UNAVAILABLE, unavailable)),
            ..Expect::record(|_| {})
        },
        // Retry: status catch-up only, no second publish, no event.
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(move |b| assert_record(b, &p1, &p1, "3", Reason::IntentPublished))
        },
    ]);
    let err = reconcile(dev.clone(), t.ctx.clone()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Kube {
                op: "patch device annotations",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(t.sink.published().len(), 1);
    reconcile(dev.clone(), t.ctx.clone()).await.unwrap();
    assert_eq!(t.sink.published().len(), 1, "never republished");

    // A stale cached Device (generation 2, an older intent) must not overwrite generation 3.
    let stale = Arc::new(device("registry.local:5000/fw/blinky:0.9.0", 2));
    reconcile(stale, t.ctx.clone()).await.unwrap();
    assert_eq!(t.sink.published().len(), 1);
    assert_eq!(t.resolver.calls().len(), 1);
    drop(t.ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn direct_mode_writes_observed_desired_rereads_on_conflict_and_still_emits_the_event() {
    // Found end to end (tests/rollout_e2e.rs): in direct mode the relay writes the agent's reports
    // into the same status; the observedDesired patch carrying the cached resourceVersion then
    // conflicts. It used to fail the reconcile, and the retry took the "already done" path: no Event.
    let t = Context::test_in(StatusLocation::Device, Mode::Direct);
    let p = pinned();
    t.resolver.insert(&p, artifact(&p, None));
    let mut d = device(&p, 3);
    d.spec.device_model_ref = None;
    let dev = Arc::new(d);
    let conflict = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "reason": "Conflict", "message": "the object has been modified", "code": 409});
    // What the API server holds now: a report arrived (resourceVersion 101).
    let mut fresh = device_json(&dev);
    fresh["metadata"]["resourceVersion"] = json!("101");
    fresh["status"] = json!({"twins": [{"propertyName": "firmware-state",
                                        "reported": {"value": "idle"}, "observedDesired": {}}]});
    let (p1, p2) = (p.clone(), p.clone());
    let status_path = devices_path(&format!("devices/{NAME}/status"));
    let server = t.verifier.run(vec![
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(move |b| assert_record(b, &p1, &p1, "3", Reason::IntentPublished))
        },
        Expect {
            respond: Some((StatusCode::CONFLICT, conflict)),
            ..Expect::patch_status(status_path.clone(), |b| {
                assert_eq!(b["metadata"]["resourceVersion"], "100", "{b}");
            })
        },
        Expect::get(
            devices_path(&format!("devices/{NAME}")),
            StatusCode::OK,
            fresh,
        ),
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::patch_status(status_path, move |b| {
                assert_eq!(b["metadata"]["resourceVersion"], "101", "{b}");
                let twins = b["status"]["twins"].as_array().unwrap();
                assert!(
                    twins.iter().any(|t| t["propertyName"] == "firmware-state"
                        && t["reported"]["value"] == "idle"),
                    "the concurrent report is kept: {b}"
                );
                let od = &firmware_twin(b)["observedDesired"];
                assert_eq!(od["value"], p2.as_str());
                assert_eq!(od["metadata"]["type"], "string");
                assert_eq!(
                    od["metadata"].as_object().unwrap().len(),
                    2,
                    "as cloudcore: {od}"
                );
            })
        },
        Expect::event(|ev| assert_event(ev, "Normal", Reason::IntentPublished)),
    ]);
    reconcile(dev, t.ctx.clone()).await.unwrap();
    assert_eq!(t.sink.published().len(), 1);
    drop(t.ctx);
    server.await.unwrap();
}

#[tokio::test]
async fn devices_without_firmware_cost_no_api_call() {
    let t = Context::test(StatusLocation::DeviceStatus);
    let mut d = device("", 1);
    let server = t.verifier.run(vec![]);
    reconcile(Arc::new(d.clone()), t.ctx.clone()).await.unwrap();
    d.spec.properties.clear();
    reconcile(Arc::new(d), t.ctx.clone()).await.unwrap();
    assert_eq!(t.ctx.metrics.reconciles(), 2);
    assert!(t.sink.published().is_empty());
    drop(t.ctx);
    server.await.unwrap();
}

#[test]
fn event_notes_are_cut_at_a_char_boundary() {
    use crate::events::truncate;
    assert_eq!(truncate("abc", 10), "abc");
    assert_eq!(truncate("héllo", 2), "h");
    assert_eq!(truncate("héllo", 3), "hé");
    assert_eq!(truncate(&"x".repeat(2000), 1000).len(), 1000);
}

#[tokio::test]
async fn a_missing_artifact_is_rechecked_but_reported_once() {
    let t = Context::test(StatusLocation::Device);
    let p = pinned();
    let mut d = device(&p, 2);
    d.meta_mut()
        .annotations
        .get_or_insert_default()
        .insert("twinflash.io/chip".into(), "nRF52840_xxAA".into());
    let dev = Arc::new(d);
    let server = t.verifier.run(vec![
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(|b| {
                assert_eq!(annotations(b)[META_REASON], "ArtifactNotFound");
            })
        },
        Expect::event(|ev| assert_event(ev, "Warning", Reason::ArtifactNotFound)),
        // Pushed meanwhile: the next resync finds it and publishes.
        Expect {
            respond: Some((StatusCode::OK, device_json(&dev))),
            ..Expect::record(|_| {})
        },
        Expect::event(|ev| assert_event(ev, "Normal", Reason::IntentPublished)),
    ]);
    reconcile(dev.clone(), t.ctx.clone()).await.unwrap();
    reconcile(dev.clone(), t.ctx.clone()).await.unwrap();
    assert_eq!(t.resolver.calls().len(), 2, "re-checked");
    t.resolver.insert(&p, artifact(&p, Some("nRF52840_xxAA")));
    reconcile(dev, t.ctx.clone()).await.unwrap();
    assert_eq!(t.sink.published(), vec![(key(), p)]);
    drop(t.ctx);
    server.await.unwrap();
}
