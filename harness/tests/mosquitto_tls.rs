//! Mosquitto with a TLS listener (certificates made with the `openssl` CLI), and the error a
//! broker that cannot start gives.
// Test code: unwrap/expect on setup steps is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use mqtt_schema::ErrorCode;
use twinflash_harness::{
    HarnessError, Mosquitto, MosquittoOptions, TlsFiles, make_certs, tool_available,
};

fn mosquitto_pub(broker: &Mosquitto, extra: &[&str]) -> bool {
    let port = broker.port().to_string();
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "tf/tls",
            "-m",
            "x",
            "-q",
            "1",
        ])
        .args(extra)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn tls_listener_accepts_clients_that_trust_the_ca() {
    if !twinflash_harness::needs(
        tool_available("openssl") && tool_available("mosquitto_pub"),
        "openssl or mosquitto_pub",
    ) {
        return;
    }
    let certs_dir = tempfile::tempdir().unwrap();
    let tls = make_certs(certs_dir.path()).unwrap().server_files();
    let ca = tls.ca_file.display().to_string();
    let broker = Mosquitto::start_with(MosquittoOptions {
        tls: Some(tls),
        ..MosquittoOptions::default()
    })
    .unwrap();
    assert_eq!(broker.url(), format!("mqtts://127.0.0.1:{}", broker.port()));
    assert!(mosquitto_pub(&broker, &["--cafile", &ca]));
    // Plain MQTT against the TLS listener fails.
    assert!(!mosquitto_pub(&broker, &[]));
}

#[test]
fn mutual_tls_and_passwords_refuse_clients_without_them() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = make_certs(certs_dir.path()).unwrap();
    let ca = certs.ca.display().to_string();
    let (cert, key) = (
        certs.client_cert.display().to_string(),
        certs.client_key.display().to_string(),
    );
    let broker = Mosquitto::start_with(MosquittoOptions {
        tls: Some(certs.server_files()),
        require_client_cert: true,
        users: vec![("edge".into(), "s3cret".into())],
        ..MosquittoOptions::default()
    })
    .unwrap();
    let with_cert = [
        "--cafile",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    assert!(mosquitto_pub(
        &broker,
        &[&with_cert[..], &["-u", "edge", "-P", "s3cret"]].concat()
    ));
    assert!(
        !mosquitto_pub(&broker, &["--cafile", &ca, "-u", "edge", "-P", "s3cret"]),
        "no client certificate"
    );
    assert!(
        !mosquitto_pub(
            &broker,
            &[&with_cert[..], &["-u", "edge", "-P", "wrong"]].concat()
        ),
        "bad password"
    );
    assert!(!mosquitto_pub(&broker, &with_cert), "anonymous");
}

#[test]
fn missing_tls_files_are_reported_before_starting() {
    let err = Mosquitto::start_with(MosquittoOptions {
        tls: Some(TlsFiles {
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: "/nonexistent/server.pem".into(),
            key_file: "/nonexistent/server.key".into(),
        }),
        ..MosquittoOptions::default()
    })
    .unwrap_err();
    assert!(matches!(err, HarnessError::MissingFile { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::Internal);
}

#[test]
fn a_broker_that_exits_at_start_reports_its_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ca.pem", "server.pem", "server.key"] {
        std::fs::write(dir.path().join(name), "not a pem file\n").unwrap();
    }
    let err = Mosquitto::start_with(MosquittoOptions {
        tls: Some(TlsFiles {
            ca_file: dir.path().join("ca.pem"),
            cert_file: dir.path().join("server.pem"),
            key_file: dir.path().join("server.key"),
        }),
        ..MosquittoOptions::default()
    })
    .unwrap_err();
    let HarnessError::Exited {
        binary, log_tail, ..
    } = &err
    else {
        panic!("expected Exited, got {err}");
    };
    assert_eq!(*binary, "mosquitto");
    assert!(log_tail.contains("Error"), "{log_tail}");
    assert_eq!(err.code(), ErrorCode::BrokerUnreachable);
}
