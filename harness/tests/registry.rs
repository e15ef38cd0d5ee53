//! Real docker-registry: readiness, basic auth, stop and start again on the same storage.
// Test code: unwrap/expect on setup steps is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;

use twinflash_harness::{Registry, RegistryOptions, http};

#[test]
fn answers_v2_anonymously() {
    let registry = Registry::start().unwrap();
    assert!(registry.is_running());
    assert_eq!(registry.host(), format!("127.0.0.1:{}", registry.port()));
    assert_eq!(
        registry.url(),
        format!("http://127.0.0.1:{}", registry.port())
    );
    assert_eq!(registry.addr().port(), registry.port());
    let head = http::get(registry.addr(), "/v2/", None).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Docker-Distribution-Api-Version"),
        Some("registry/2.0")
    );
    assert!(registry.root_dir().is_dir());
    let missing = http::get(registry.addr(), "/v2/none/manifests/latest", None).unwrap();
    assert_eq!(missing.status, 404);
}

#[test]
fn basic_auth_requires_the_right_password() {
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some(("alice".into(), "s3cret".into())),
        ..RegistryOptions::default()
    })
    .unwrap();
    let anonymous = http::get(registry.addr(), "/v2/", None).unwrap();
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .header("Www-Authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "{anonymous:?}"
    );
    let wrong = http::get(registry.addr(), "/v2/", Some(("alice", "nope"))).unwrap();
    assert_eq!(wrong.status, 401);
    let right = http::get(registry.addr(), "/v2/", Some(("alice", "s3cret"))).unwrap();
    assert_eq!(right.status, 200);
}

#[test]
fn stop_keeps_storage_and_start_again_serves_it_on_the_same_port() {
    let mut registry = Registry::start().unwrap();
    let port = registry.port();
    let marker = registry.root_dir().join("marker");
    std::fs::write(&marker, b"kept").unwrap();

    registry.stop();
    assert!(!registry.is_running());
    assert!(TcpStream::connect(registry.addr()).is_err());
    assert!(marker.is_file());

    registry.start_again().unwrap();
    assert!(registry.is_running());
    assert_eq!(registry.port(), port);
    assert_eq!(
        http::get(registry.addr(), "/v2/", None).unwrap().status,
        200
    );
    assert!(marker.is_file());
}

#[test]
fn drop_kills_the_process_and_removes_storage() {
    let registry = Registry::start().unwrap();
    let pid = registry.pid();
    let root = registry.root_dir().to_path_buf();
    let addr = registry.addr();
    drop(registry);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!root.exists());
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn start_again_on_a_port_taken_meanwhile_reports_port_and_log() {
    let mut registry = Registry::start().unwrap();
    registry.stop();
    let _squatter = TcpListener::bind(registry.addr()).unwrap();
    let err = registry.start_again().unwrap_err();
    assert!(err.is_port_taken(), "{err}");
    assert!(
        err.to_string().contains(&registry.port().to_string()),
        "{err}"
    );
    assert_eq!(err.code(), mqtt_schema::ErrorCode::RegistryUnreachable);
}
