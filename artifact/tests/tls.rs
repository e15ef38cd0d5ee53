//! HTTPS with an extra CA: a docker-registry serving a certificate from a test CA is trusted only
//! when `ca_file` names that CA.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use twinflash_artifact::{Credentials, TlsOptions};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=twinflash test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn start_tls_registry(dir: &Path) -> (Killed, String) {
    let port = twinflash_harness::free_port();
    let host = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
         http:\n  addr: {host}\n  secret: test\n  tls:\n    certificate: {cert}\n    key: {key}\n",
        root = dir.join("storage").display(),
        cert = dir.join("server.pem").display(),
        key = dir.join("server.key").display(),
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&host).is_err() {
        assert!(Instant::now() < deadline, "the TLS registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (guard, host)
}

#[tokio::test]
async fn https_with_an_extra_ca_is_trusted_and_without_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let (_registry, host) = start_tls_registry(dir.path());
    let ca = dir.path().join("ca.pem");
    let tls = TlsOptions {
        ca_file: Some(ca.clone()),
        ..TlsOptions::default()
    };
    let req = request(&format!("{host}/fw/tls:1"), &fixture("blinky.hex"), None);
    let pushed = twinflash_artifact::push(&tls, &Credentials::default(), &req, |_, _| {})
        .await
        .unwrap();

    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), "none");
    cfg.plain_http.clear();
    cfg.ca_file = Some(ca);
    let fetched = fetch(cfg.clone(), &pushed.pinned_reference)
        .await
        .0
        .unwrap();
    assert_eq!(
        sha256_file(&fetched.path),
        sha256_file(&fixture("blinky.hex"))
    );

    let cache = tempfile::tempdir().unwrap();
    cfg.cache_dir = cache.path().to_owned();
    cfg.ca_file = None;
    cfg.retry.max_attempts = Some(1);
    let err = fetch(cfg.clone(), &pushed.pinned_reference)
        .await
        .0
        .unwrap_err();
    assert_eq!(
        err.code(),
        mqtt_schema::ErrorCode::RegistryUnreachable,
        "{err}"
    );

    cfg.client_cert = Some(dir.path().join("server.pem"));
    let err = twinflash_artifact::Fetcher::new(cfg).unwrap_err();
    assert!(err.to_string().contains("client certificates"), "{err}");
}
