//! A mocked API server for the rollout reconciler tests (the controller-rs `ApiServerVerifier`
//! pattern): answers the expected requests in order and asserts method, path, query, content
//! type and body of each; any other or extra request fails the test.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::Handle;

pub type Check = Box<dyn FnOnce(&Value) + Send>;

pub struct Exp {
    method: Method,
    path: String,
    query: Option<String>,
    respond: (StatusCode, Value),
    check: Option<Check>,
}

pub fn exp(method: Method, path: &str, respond: (StatusCode, Value)) -> Exp {
    Exp {
        method,
        path: path.to_owned(),
        query: None,
        respond,
        check: None,
    }
}

impl Exp {
    pub fn query(mut self, q: &str) -> Exp {
        self.query = Some(q.to_owned());
        self
    }
    pub fn check(mut self, f: impl FnOnce(&Value) + Send + 'static) -> Exp {
        self.check = Some(Box::new(f));
        self
    }
}

pub fn ok(v: Value) -> (StatusCode, Value) {
    (StatusCode::OK, v)
}

pub fn status_err(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": reason, "code": code}),
    )
}

/// Serves `expects` in order and panics on any deviation or extra request.
pub fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    expects: Vec<Exp>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for (i, e) in expects.into_iter().enumerate() {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request #{i} ({} {}) never came", e.method, e.path));
            let line = format!("{} {}", req.method(), req.uri());
            assert_eq!(req.method(), e.method, "request #{i}: {line}");
            assert_eq!(req.uri().path(), e.path, "request #{i}: {line}");
            if let Some(q) = &e.query {
                let got = req.uri().query().unwrap_or("");
                let got = form_decode(got);
                assert!(
                    got.contains(q.as_str()),
                    "request #{i}: query {got:?} lacks {q:?}"
                );
            }
            let content_type = req
                .headers()
                .get("content-type")
                .map(|h| h.to_str().unwrap().to_owned());
            if e.method == Method::PATCH && e.path.contains("/devices/") {
                assert_eq!(
                    content_type.as_deref(),
                    Some("application/json-patch+json"),
                    "{line}"
                );
            }
            if e.method == Method::PATCH && e.path.ends_with("/status") {
                assert_eq!(
                    content_type.as_deref(),
                    Some("application/merge-patch+json"),
                    "{line}"
                );
            }
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            if let Some(c) = e.check {
                c(&body);
            }
            let (status, answer) = e.respond;
            let answer = if answer.is_null() { body } else { answer };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
        if let Some((extra, _)) = handle.next_request().await {
            panic!("unexpected request {} {}", extra.method(), extra.uri());
        }
    })
}

fn form_decode(q: &str) -> String {
    q.replace("%3D", "=").replace("%2C", ",").replace('+', " ")
}
