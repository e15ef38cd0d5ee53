//! HTTPS against a real docker-registry: an extra CA is trusted only when configured, and a
//! registry that requires client certificates (mutual TLS) serves only a fetcher that has one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use common::*;
use mqtt_schema::ErrorCode;
use twinflash_artifact::{Credentials, TlsOptions};
use twinflash_harness::{Certs, Registry, RegistryOptions, RegistryTls, make_certs};

fn https(certs: &Certs, client_cas: Vec<std::path::PathBuf>) -> RegistryOptions {
    RegistryOptions {
        tls: Some(RegistryTls {
            cert_file: certs.server_cert.clone(),
            key_file: certs.server_key.clone(),
            client_cas,
        }),
        ..RegistryOptions::default()
    }
}

/// A fetcher config for an HTTPS registry trusting `ca`.
fn https_config(cache: &std::path::Path, ca: &std::path::Path) -> twinflash_artifact::FetchConfig {
    let mut cfg = config(cache, "none");
    cfg.plain_http.clear();
    cfg.ca_file = Some(ca.to_owned());
    cfg.retry.max_attempts = Some(1);
    cfg
}

/// An HTTPS registry holding `blinky.hex` pushed as `fw/tls:1`, and its pinned reference.
async fn registry_with_push(certs: &Certs) -> (Registry, String) {
    let registry = Registry::start_with(https(certs, Vec::new())).unwrap();
    let tls = TlsOptions {
        ca_file: Some(certs.ca.clone()),
        ..TlsOptions::default()
    };
    let req = request(
        &format!("{}/fw/tls:1", registry.host()),
        &fixture("blinky.hex"),
        None,
    );
    let pushed = twinflash_artifact::push(&tls, &Credentials::default(), &req, |_, _| {})
        .await
        .unwrap();
    (registry, pushed.pinned_reference)
}

#[tokio::test]
async fn https_with_an_extra_ca_is_trusted_and_without_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path()).unwrap();
    let (_registry, reference) = registry_with_push(&certs).await;

    let cache = tempfile::tempdir().unwrap();
    let cfg = https_config(cache.path(), &certs.ca);
    let fetched = fetch(cfg.clone(), &reference).await.0.unwrap();
    assert_eq!(
        sha256_file(&fetched.path),
        sha256_file(&fixture("blinky.hex"))
    );

    let cache = tempfile::tempdir().unwrap();
    let mut cfg = https_config(cache.path(), &certs.ca);
    cfg.ca_file = None;
    let err = fetch(cfg, &reference).await.0.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryUnreachable, "{err}");
}

#[tokio::test]
async fn a_registry_requiring_client_certificates_serves_only_a_trusted_one() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path()).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = make_certs(other_dir.path()).unwrap();
    let (mut registry, reference) = registry_with_push(&certs).await;
    registry
        .restart_with(https(&certs, vec![certs.ca.clone()]))
        .unwrap();

    // With the client certificate: fetched and verified.
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = https_config(cache.path(), &certs.ca);
    cfg.client_cert = Some(certs.client_cert.clone());
    cfg.client_key = Some(certs.client_key.clone());
    let fetched = fetch(cfg.clone(), &reference).await.0.unwrap();
    assert_eq!(
        sha256_file(&fetched.path),
        sha256_file(&fixture("blinky.hex"))
    );
    assert!(half_written(cache.path()).is_empty());

    // Without one, or with one from another CA: registry-auth at once, nothing written.
    for (name, cert) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some(&stranger)),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let mut cfg = https_config(cache.path(), &certs.ca);
        cfg.retry.max_attempts = Some(5);
        cfg.client_cert = cert.map(|c| c.client_cert.clone());
        cfg.client_key = cert.map(|c| c.client_key.clone());
        let (result, events) = fetch(cfg, &reference).await;
        let err = result.unwrap_err();
        assert_eq!(err.code(), ErrorCode::RegistryAuth, "{name}: {err}");
        assert!(
            err.to_string().contains("client certificate"),
            "{name}: {err}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, twinflash_artifact::FetchEvent::Waiting { .. })),
            "{name}: not retried: {events:?}"
        );
        assert_eq!(
            files_under(&cache.path().join("blobs/sha256")),
            Vec::<String>::new(),
            "{name}"
        );
    }

    // inspect resolves a tag over mutual TLS; push cannot present a certificate and says so.
    let tls = TlsOptions {
        ca_file: Some(certs.ca.clone()),
        client_cert: Some(certs.client_cert.clone()),
        client_key: Some(certs.client_key.clone()),
        ..TlsOptions::default()
    };
    let tag = format!("{}/fw/tls:1", registry.host());
    let inspected = twinflash_artifact::inspect(&tls, &Credentials::default(), &tag)
        .await
        .unwrap();
    assert_eq!(inspected.pinned_reference, reference);
    let req = request(&tag, &fixture("blinky.hex"), None);
    let err = twinflash_artifact::push(&tls, &Credentials::default(), &req, |_, _| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("push does not support client certificates"),
        "{err}"
    );
}

#[tokio::test]
async fn a_certificate_without_its_key_or_an_unreadable_one_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = https_config(cache.path(), &certs.ca);
    cfg.client_cert = Some(certs.client_cert.clone());
    let err = twinflash_artifact::Fetcher::new(cfg.clone()).unwrap_err();
    assert!(err.to_string().contains("needs its key"), "{err}");
    cfg.client_key = Some(certs.ca.clone()); // a certificate where the key should be
    let err = twinflash_artifact::Fetcher::new(cfg.clone()).unwrap_err();
    assert!(err.to_string().contains("client certificate"), "{err}");
    cfg.client_key = Some(dir.path().join("missing.key"));
    let err = twinflash_artifact::Fetcher::new(cfg).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal, "{err}");
}
