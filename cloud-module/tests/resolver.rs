//! `RegistryResolver` against a real registry (docker-registry from the harness): a tag is pinned
//! to the manifest digest and the chip and version annotations are read; a missing artifact is
//! `NotFound`, an unreachable registry `Unreachable`.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use twinflash_cloud::resolver::RegistryResolver;
use twinflash_cloud::seams::{ArtifactResolver, ResolveError};
use twinflash_harness::Registry;
use twinflash_testkit::{image, init, push};

#[tokio::test]
async fn tags_pin_to_digests_and_annotations_are_read() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let pinned = push(
        &registry,
        dir.path(),
        "fw/blinky:1.4.2",
        &image(3, 2048),
        "1.4.2+b7",
        "nRF52840_xxAA",
    )
    .await;
    let resolver = RegistryResolver::with_plain_http(vec![host.clone()]);

    let r = resolver
        .resolve(&format!("{host}/fw/blinky:1.4.2"))
        .await
        .unwrap();
    assert_eq!(r.digest_ref, pinned);
    assert!(r.digest_ref.contains("@sha256:"));
    // The chip the artifact declares (the controller compares it with the Device's).
    assert_eq!(r.chip.as_deref(), Some("nRF52840_xxAA"));
    assert_eq!(r.version.as_deref(), Some("1.4.2+b7"));

    // A digest reference resolves to itself.
    let again = resolver.resolve(&pinned).await.unwrap();
    assert_eq!(again.digest_ref, pinned);

    let missing = resolver
        .resolve(&format!("{host}/fw/blinky:9.9.9"))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ResolveError::NotFound { .. }),
        "{missing:?}"
    );
    assert_eq!(missing.code(), mqtt_schema::ErrorCode::NotFound);
    let no_repo = resolver
        .resolve(&format!("{host}/fw/nothing:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(no_repo, ResolveError::NotFound { .. }),
        "{no_repo:?}"
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_transient() {
    init();
    let port = twinflash_harness::free_port();
    let host = format!("127.0.0.1:{port}");
    let resolver = RegistryResolver::with_plain_http(vec![host.clone()]);
    let err = resolver
        .resolve(&format!("{host}/fw/blinky:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.code(), mqtt_schema::ErrorCode::RegistryUnreachable);
}
