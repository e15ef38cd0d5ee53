//! Test fixtures: sample Devices and an `ApiServerVerifier` (the kube-rs controller-rs pattern) —
//! a mocked API server that answers and asserts every request of a reconcile, in order.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::config::StatusLocation;
use crate::controller::Context;
use crate::crd::{
    Device, DeviceProperty, DeviceSpec, DeviceTwinStatus, LocalObjectRef, TwinProperty,
};
use crate::seams::{MemoryResolver, MemorySink};
use crate::status_route::{Route, StatusRoute};
use mqtt_schema::firmware::{
    TWIN_FIRMWARE as FIRMWARE, TWIN_FIRMWARE_STATE as FIRMWARE_STATE,
    TWIN_FIRMWARE_VERSION as FIRMWARE_VERSION,
};

pub const NS: &str = "testns";
pub const NAME: &str = "blinky-1";
pub const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn pinned() -> String {
    format!("registry.local:5000/fw/blinky@sha256:{HEX}")
}

/// A Device declaring the three firmware twins with `desired` as the firmware value.
pub fn device(desired: &str, generation: i64) -> Device {
    let prop = |name: &str, value: &str| DeviceProperty {
        name: name.to_owned(),
        desired: TwinProperty {
            value: value.to_owned(),
            ..TwinProperty::default()
        },
    };
    let mut d = Device::new(
        NAME,
        DeviceSpec {
            device_model_ref: Some(LocalObjectRef {
                name: "blinky-model".into(),
            }),
            node_name: "edge-1".into(),
            properties: vec![
                prop(FIRMWARE, desired),
                prop(FIRMWARE_VERSION, ""),
                prop(FIRMWARE_STATE, ""),
            ],
        },
    );
    d.meta_mut().namespace = Some(NS.into());
    d.meta_mut().generation = Some(generation);
    d.meta_mut().resource_version = Some("100".into());
    d.meta_mut().uid = Some("uid-1".into());
    d
}

/// A check on a request body.
pub type BodyCheck = Box<dyn FnOnce(&Value) + Send>;

/// One expected API request and the answer to give.
pub struct Expect {
    pub method: Method,
    /// The path (query string ignored).
    pub path: String,
    /// Status and JSON body of the answer; `None` echoes the request body back.
    pub respond: Option<(StatusCode, Value)>,
    /// Checks on the request body, run before answering.
    pub check: Option<BodyCheck>,
}

impl Expect {
    pub fn get(path: String, status: StatusCode, body: Value) -> Expect {
        Expect {
            method: Method::GET,
            path,
            respond: Some((status, body)),
            check: None,
        }
    }

    pub fn patch_status(path: String, check: impl FnOnce(&Value) + Send + 'static) -> Expect {
        Expect {
            method: Method::PATCH,
            path,
            respond: None,
            check: Some(Box::new(check)),
        }
    }

    pub fn event(check: impl FnOnce(&Value) + Send + 'static) -> Expect {
        Expect {
            method: Method::POST,
            path: format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            respond: None,
            check: Some(Box::new(check)),
        }
    }
}

pub fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

pub fn devices_path(tail: &str) -> String {
    format!("/apis/devices.kubeedge.io/v1beta1/namespaces/{NS}/{tail}")
}

/// The mocked API server: answers the expected requests in order, then asserts there are no more.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Serves `expects` in order; the returned task panics on any deviation, and on any request
    /// after the last one (checked when every client is dropped).
    pub fn run(self, expects: Vec<Expect>) -> JoinHandle<Vec<String>> {
        let mut handle = self.0;
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for (i, exp) in expects.into_iter().enumerate() {
                let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                    panic!("request #{i} ({} {}) never came", exp.method, exp.path)
                });
                let line = format!("{} {}", request.method(), request.uri().path());
                assert_eq!(request.method(), exp.method, "request #{i}: {line}");
                assert_eq!(request.uri().path(), exp.path, "request #{i}: {line}");
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                if let Some(check) = exp.check {
                    check(&body);
                }
                let (status, answer) = exp.respond.unwrap_or((StatusCode::OK, body));
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
                seen.push(line);
            }
            if let Some((extra, _)) = handle.next_request().await {
                panic!("unexpected request {} {}", extra.method(), extra.uri());
            }
            seen
        })
    }
}

pub struct TestContext {
    pub ctx: Arc<Context>,
    pub verifier: ApiServerVerifier,
    pub sink: MemorySink,
    pub resolver: MemoryResolver,
}

impl Context {
    /// A context with a mocked API server and in-memory sink and resolver.
    pub fn test(status_location: StatusLocation) -> TestContext {
        let (mock_service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(mock_service, NS);
        let sink = MemorySink::default();
        let resolver = MemoryResolver::default();
        let ctx = Context::new(
            client,
            Arc::new(sink.clone()),
            Arc::new(resolver.clone()),
            status_location,
            Duration::from_secs(300),
            Some("test-pod".into()),
        );
        // These tests are about reconciles, not about finding the status route (status_route_tests.rs).
        let mut ctx = ctx;
        ctx.status_route = Arc::new(StatusRoute::known(Route::Subresource));
        TestContext {
            ctx: Arc::new(ctx),
            verifier: ApiServerVerifier(handle),
            sink,
            resolver,
        }
    }
}

/// A DeviceStatus object as the API server returns it.
pub fn device_status_object(status: Option<DeviceTwinStatus>) -> Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceStatus",
        "metadata": {"name": NAME, "namespace": NS, "resourceVersion": "200"},
        "status": status.unwrap_or_default(),
    })
}
