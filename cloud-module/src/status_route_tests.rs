//! The status route against a mocked API server: a CRD without a status subresource (KubeEdge's
//! Device) keeps the patch on the main resource; one with it makes the route fall back to
//! `/status` once and keep to it; errors are not mistaken for a missing subresource.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{Value, json};
use tower_test::mock;

use super::*;
use crate::crd::Device;
use crate::fixtures::{NAME, NS, device, devices_path};

/// Answers each request with `respond(method, path, body)`, recording `METHOD path`.
fn api(
    respond: impl Fn(&Method, &str, &Value) -> (StatusCode, Value) + Send + 'static,
) -> (Api<Device>, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            log.lock().unwrap().push(format!("{method} {path}"));
            let (status, answer) = respond(&method, &path, &body);
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Api::namespaced(Client::new(service, NS), NS), seen)
}

fn patch(value: &str) -> Value {
    json!({
        "metadata": {"resourceVersion": "100"},
        "status": {"twins": [{"propertyName": "firmware", "reported": {"value": value, "metadata": {"type": "string"}}}]},
    })
}

/// The stored Device after a merge patch: with the patch's status (`applied`) or without it.
fn answer(patch: &Value, applied: bool) -> Value {
    let mut d = serde_json::to_value(device("r@sha256:0", 1)).unwrap();
    if applied {
        d["status"] = patch["status"].clone();
    }
    d
}

#[tokio::test]
async fn without_a_status_subresource_the_main_resource_takes_the_status() {
    let (api, seen) = api(|m, _, body| {
        assert_eq!(m, Method::PATCH);
        (StatusCode::OK, answer(body, true))
    });
    let route = StatusRoute::default();
    route.patch(&api, NAME, &patch("a")).await.unwrap();
    assert_eq!(route.get(), Route::Main);
    route.patch(&api, NAME, &patch("b")).await.unwrap();
    let main = format!("PATCH {}", devices_path(&format!("devices/{NAME}")));
    assert_eq!(*seen.lock().unwrap(), vec![main.clone(), main]);
}

#[tokio::test]
async fn a_status_subresource_is_found_once_and_used_from_then_on() {
    // The main resource drops `.status`; `/status` applies it.
    let (api, seen) =
        api(|_, path, body| (StatusCode::OK, answer(body, path.ends_with("/status"))));
    let route = StatusRoute::default();
    let stored = route.patch(&api, NAME, &patch("a")).await.unwrap();
    assert_eq!(route.get(), Route::Subresource);
    let wanted: Vec<crate::crd::Twin> =
        serde_json::from_value(patch("a")["status"]["twins"].clone()).unwrap();
    assert_eq!(
        stored.status.unwrap().twins,
        wanted,
        "the answer of /status is returned"
    );
    route.patch(&api, NAME, &patch("b")).await.unwrap();
    let main = format!("PATCH {}", devices_path(&format!("devices/{NAME}")));
    let status = format!("PATCH {}", devices_path(&format!("devices/{NAME}/status")));
    assert_eq!(*seen.lock().unwrap(), vec![main, status.clone(), status]);
}

#[tokio::test]
async fn errors_of_the_main_resource_are_returned_not_taken_for_a_route() {
    let (api, seen) = api(|_, _, _| {
        (
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                   "message": "the object has been modified", "code": 409}),
        )
    });
    let route = StatusRoute::default();
    let err = route.patch(&api, NAME, &patch("a")).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    assert_eq!(route.get(), Route::Unknown);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "no fallback to /status on an error"
    );
}
