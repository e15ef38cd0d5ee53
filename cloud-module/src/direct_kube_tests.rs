//! `KubeStatusWriter` against a mocked API server: the report lands in `status.twins[].reported`
//! of the Device or the DeviceStatus, with the resourceVersion; a conflict is retried.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::fixtures::*;

/// A writer on the controller's mocked API server (the context itself is dropped at once, so
/// the verifier's "no further request" check only waits for the writer).
fn writer(location: StatusLocation) -> (KubeStatusWriter, ApiServerVerifier) {
    let tc = crate::controller::Context::test(location);
    (
        KubeStatusWriter::new(tc.ctx.client.clone(), location)
            .with_route(tc.ctx.status_route.clone()),
        tc.verifier,
    )
}

fn key() -> DeviceId {
    DeviceId::namespaced(NS, NAME).unwrap()
}

fn actual() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("firmware".to_owned(), pinned()),
        ("firmware-state".to_owned(), "installed".to_owned()),
        ("not-declared".to_owned(), "x".to_owned()),
    ])
}

fn reported(patch: &Value, twin: &str) -> Value {
    patch["status"]["twins"]
        .as_array()
        .expect("twins")
        .iter()
        .find(|t| t["propertyName"] == twin)
        .map(|t| t["reported"].clone())
        .unwrap_or(Value::Null)
}

fn conflict() -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "the object has been modified", "reason": "Conflict", "code": 409}),
    )
}

#[tokio::test]
async fn report_is_patched_into_the_device_status_like_cloudcore() {
    let (w, verifier) = writer(StatusLocation::Device);
    let dev = serde_json::to_value(device(&pinned(), 3)).unwrap();
    let server = verifier.run(vec![
        Expect::get(
            devices_path(&format!("devices/{NAME}")),
            StatusCode::OK,
            dev.clone(),
        ),
        Expect {
            respond: Some((StatusCode::OK, dev)),
            ..Expect::patch_status(devices_path(&format!("devices/{NAME}/status")), |p| {
                assert_eq!(p["metadata"]["resourceVersion"], "100", "{p}");
                let fw = reported(p, "firmware");
                assert_eq!(fw["value"], pinned());
                assert_eq!(fw["metadata"]["timestamp"], "1723000000123");
                assert_eq!(fw["metadata"]["type"], "string");
                assert_eq!(reported(p, "firmware-state")["value"], "installed");
                assert_eq!(
                    reported(p, "not-declared"),
                    Value::Null,
                    "undeclared twin dropped"
                );
            })
        },
    ]);
    w.write_actual(&key(), &actual(), 1_723_000_000_123)
        .await
        .unwrap();
    drop(w);
    server.await.unwrap();
}

#[tokio::test]
async fn a_conflict_on_the_device_status_object_is_read_again_and_retried() {
    let (w, verifier) = writer(StatusLocation::DeviceStatus);
    let dev = serde_json::to_value(device(&pinned(), 3)).unwrap();
    let ds_path = devices_path(&format!("devicestatuses/{NAME}"));
    let server = verifier.run(vec![
        Expect::get(
            devices_path(&format!("devices/{NAME}")),
            StatusCode::OK,
            dev.clone(),
        ),
        Expect::get(ds_path.clone(), StatusCode::OK, device_status_object(None)),
        Expect {
            method: Method::PATCH,
            path: format!("{ds_path}/status"),
            query: None,
            respond: Some(conflict()),
            check: None,
        },
        Expect::get(
            devices_path(&format!("devices/{NAME}")),
            StatusCode::OK,
            dev,
        ),
        Expect::get(ds_path.clone(), StatusCode::OK, device_status_object(None)),
        Expect::patch_status(format!("{ds_path}/status"), |p| {
            assert_eq!(p["metadata"]["resourceVersion"], "200", "{p}");
            assert_eq!(reported(p, "firmware")["value"], pinned());
        }),
    ]);
    w.write_actual(&key(), &actual(), 5).await.unwrap();
    drop(w);
    server.await.unwrap();
}

#[tokio::test]
async fn a_missing_device_is_not_found() {
    let (w, verifier) = writer(StatusLocation::Device);
    let (code, body) = not_found();
    let server = verifier.run(vec![Expect::get(
        devices_path(&format!("devices/{NAME}")),
        code,
        body,
    )]);
    let err = w.write_actual(&key(), &actual(), 5).await.unwrap_err();
    assert!(matches!(err, StatusError::NotFound { .. }), "{err:?}");
    assert_eq!(err.code(), mqtt_schema::ErrorCode::NotFound);
    drop(w);
    server.await.unwrap();
}
