//! Test fixtures: sample Devices and a [`TestContext`] whose client talks to the mocked API
//! server of `api_verifier.rs`.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};

pub use crate::api_verifier::{Expect, serve};
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

impl Expect {
    pub fn get(path: String, status: StatusCode, body: Value) -> Expect {
        Expect {
            method: Method::GET,
            path,
            query: None,
            respond: Some((status, body)),
            check: None,
        }
    }

    pub fn patch_status(path: String, check: impl FnOnce(&Value) + Send + 'static) -> Expect {
        Expect {
            method: Method::PATCH,
            path,
            query: None,
            respond: None,
            check: Some(Box::new(check)),
        }
    }

    /// The merge patch of the record into the Device's annotations.
    pub fn record(check: impl FnOnce(&Value) + Send + 'static) -> Expect {
        Expect::patch_status(devices_path(&format!("devices/{NAME}")), check)
    }

    pub fn event(check: impl FnOnce(&Value) + Send + 'static) -> Expect {
        Expect {
            method: Method::POST,
            path: format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            query: None,
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

/// The mocked API server of a [`TestContext`].
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Serves `expects` in order (see [`serve`]).
    pub fn run(self, expects: Vec<Expect>) -> JoinHandle<Vec<String>> {
        serve(self.0, expects)
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
        Context::test_in(status_location, crate::config::Mode::Edgecore)
    }

    /// [`Context::test`] in delivery mode `mode`.
    pub fn test_in(status_location: StatusLocation, mode: crate::config::Mode) -> TestContext {
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
        ctx.mode = mode;
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
