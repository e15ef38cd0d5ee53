//! The mocked API server of the controller and rollout tests (the kube-rs controller-rs
//! `ApiServerVerifier` pattern, on `tower-test`): answers the expected requests in order and
//! asserts method, path, query, patch content type, body and (for writes) the field manager of each; any other or
//! extra request fails the test.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::Handle;

/// A check on a request body.
pub type BodyCheck = Box<dyn FnOnce(&Value) + Send>;

/// One expected API request and the answer to give.
pub struct Expect {
    pub method: Method,
    /// The path (the query is checked by `query` only).
    pub path: String,
    /// A `key=value` the decoded query must contain.
    pub query: Option<String>,
    /// Status and JSON body of the answer; `None`, or a `null` body, echoes the request body back.
    pub respond: Option<(StatusCode, Value)>,
    /// Checks on the request body, run before answering.
    pub check: Option<BodyCheck>,
}

/// An expected request answered with `respond`.
pub fn exp(method: Method, path: &str, respond: (StatusCode, Value)) -> Expect {
    Expect {
        method,
        path: path.to_owned(),
        query: None,
        respond: Some(respond),
        check: None,
    }
}

impl Expect {
    /// Also asserts that the query contains `q`.
    pub fn query(mut self, q: &str) -> Expect {
        self.query = Some(q.to_owned());
        self
    }

    /// Also runs `f` on the request body.
    pub fn check(mut self, f: impl FnOnce(&Value) + Send + 'static) -> Expect {
        self.check = Some(Box::new(f));
        self
    }
}

/// `200 OK` with `v`.
pub fn ok(v: Value) -> (StatusCode, Value) {
    (StatusCode::OK, v)
}

/// A Kubernetes `Status` failure with `code` and `reason`.
pub fn status_err(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": reason, "code": code}),
    )
}

/// Serves `expects` in order; the returned task panics on any deviation, and on any request
/// after the last one (checked when every client is dropped). It gives the requests seen.
pub fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    expects: Vec<Expect>,
) -> JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, e) in expects.into_iter().enumerate() {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request #{i} ({} {}) never came", e.method, e.path));
            let line = format!("{} {}", req.method(), req.uri().path());
            assert_eq!(req.method(), e.method, "request #{i}: {line}");
            assert_eq!(req.uri().path(), e.path, "request #{i}: {line}");
            if let Some(q) = &e.query {
                let got = form_decode(req.uri().query().unwrap_or(""));
                assert!(
                    got.contains(q.as_str()),
                    "request #{i}: query {got:?} lacks {q:?}"
                );
            }
            check_content_type(&req, &e, &line);
            check_field_manager(&req, &line);
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            if let Some(c) = e.check {
                c(&body);
            }
            let (status, answer) = e.respond.unwrap_or((StatusCode::OK, Value::Null));
            let answer = if answer.is_null() { body } else { answer };
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

/// Patches: a JSON patch on a Device (not its status), a merge patch on a rollout's status.
fn check_content_type(req: &Request<Body>, e: &Expect, line: &str) {
    let content_type = req
        .headers()
        .get("content-type")
        .map(|h| h.to_str().unwrap().to_owned());
    if e.method == Method::PATCH
        && e.path.contains("/firmwarerollouts/")
        && e.path.ends_with("/status")
    {
        assert_eq!(
            content_type.as_deref(),
            Some("application/merge-patch+json"),
            "{line}"
        );
    }
    // A Device's spec is changed with JSON patches (rollouts); the controller's record, in the
    // annotations, is a merge patch of twinflash's keys (checked by the tests' body checks).
    if e.method == Method::PATCH && e.path.contains("/devices/") && !e.path.ends_with("/status") {
        assert!(
            matches!(
                content_type.as_deref(),
                Some("application/json-patch+json" | "application/merge-patch+json")
            ),
            "{line}: {content_type:?}"
        );
    }
}

/// Every write names its field manager (issue 22, F3): the Device controller's or the rollout controller's.
fn check_field_manager(req: &Request<Body>, line: &str) {
    if matches!(*req.method(), Method::GET) {
        return;
    }
    let query = form_decode(req.uri().query().unwrap_or(""));
    let manager = query
        .split('&')
        .find_map(|p| p.strip_prefix("fieldManager="));
    assert!(
        matches!(
            manager,
            Some(crate::controller::MANAGER | crate::rollout::ROLLOUT_MANAGER)
        ),
        "{line}: a write without twinflash's fieldManager (query {query:?})"
    );
}

fn form_decode(q: &str) -> String {
    q.replace("%3D", "=").replace("%2C", ",").replace('+', " ")
}
