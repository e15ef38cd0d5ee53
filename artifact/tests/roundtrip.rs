//! Push and fetch every format against a real registry; cache hits and LRU eviction with pins.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use common::*;
use twinflash_artifact::{FetchEvent, FirmwareFormat};
use twinflash_harness::Registry;

#[tokio::test]
async fn push_then_fetch_round_trips_every_format() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let cache = tempfile::tempdir().unwrap();
    for (file, format, base) in [
        ("blinky.elf", FirmwareFormat::Elf, None),
        ("blinky.hex", FirmwareFormat::Ihex, None),
        ("blinky.bin", FirmwareFormat::Bin, Some(0x0800_0000)),
        ("blinky.uf2", FirmwareFormat::Uf2, None),
    ] {
        let path = fixture(file);
        let pushed = push_file(&host, &format!("fw/{}", format.as_str()), &path).await;
        assert!(
            pushed
                .pinned_reference
                .starts_with(&format!("{host}/fw/{format}:1.4.2@sha256:"))
        );
        assert_eq!(pushed.artifact.format, format, "{file}: detected format");

        let inspected = twinflash_artifact::inspect(
            &tls(&host),
            &Default::default(),
            &format!("{host}/fw/{format}:1.4.2"),
        )
        .await
        .unwrap();
        assert_eq!(inspected.pinned_reference, pushed.pinned_reference);

        let (result, events) = fetch(config(cache.path(), &host), &pushed.pinned_reference).await;
        let fetched = result.unwrap();
        assert_eq!(
            std::fs::read(&fetched.path).unwrap(),
            std::fs::read(&path).unwrap()
        );
        let a = &fetched.artifact;
        assert_eq!((a.format, a.base_address), (format, base));
        assert_eq!(a.version, "1.4.2");
        assert_eq!(a.chip, "nRF52840_xxAA");
        assert_eq!(a.title.as_deref(), Some(file));
        assert_eq!(a.layer_digest, sha256_file(&path));
        assert_eq!(fetched.source, host);
        let size = a.size;
        assert!(events.contains(&FetchEvent::Progress {
            done: size,
            total: size
        }));

        // Second fetch: served from the cache, nothing downloaded.
        let (again, _) = fetch(config(cache.path(), &host), &pushed.pinned_reference).await;
        let again = again.unwrap();
        assert_eq!(again.bytes_received, 0);
        assert_eq!(again.source, "cache");
    }
    assert!(half_written(cache.path()).is_empty());
}

#[tokio::test]
async fn the_cache_evicts_least_recently_used_but_never_pinned() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut refs = Vec::new();
    for i in 0..3 {
        let file = random_file(dir.path(), &format!("fw{i}.bin"), 100_000);
        refs.push(push_file(&host, &format!("fw/lru{i}"), &file).await);
    }
    let mut cfg = config(cache.path(), &host);
    cfg.cache_max_bytes = Some(250_000);
    let fetcher = twinflash_artifact::Fetcher::new(cfg).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    // fw0 is "installed": pinned. fw1 then fw2 are fetched; fw2 needs room, fw1 is older
    // than fw0 in use but fw0 is pinned, so fw1 goes.
    fetcher
        .fetch(&refs[0].pinned_reference.parse().unwrap(), |_| {}, &cancel)
        .await
        .unwrap();
    fetcher.pin(&refs[0].pinned_reference).unwrap();
    fetcher
        .fetch(&refs[1].pinned_reference.parse().unwrap(), |_| {}, &cancel)
        .await
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f2 = fetcher
        .fetch(&refs[2].pinned_reference.parse().unwrap(), |_| {}, &cancel)
        .await
        .unwrap();
    let cache_has = |p: &twinflash_artifact::Pushed| {
        fetcher
            .cache()
            .verified_blob(&p.artifact.layer_digest, p.artifact.size)
    };
    assert!(cache_has(&refs[0]), "pinned firmware evicted");
    assert!(!cache_has(&refs[1]), "least recently used not evicted");
    assert!(
        cache_has(&refs[2]) && f2.path.exists(),
        "wanted firmware evicted"
    );
    assert!(fetcher.cache().used_bytes() <= 250_000);
}

#[tokio::test]
async fn rate_limit_is_respected() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", 600_000);
    let pushed = push_file(&host, "fw/slow", &file).await;
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.rate_limit_bps = Some(1_000_000);
    let started = std::time::Instant::now();
    let (result, _) = fetch(cfg, &pushed.pinned_reference).await;
    result.unwrap();
    // 600 kB at 1 MB/s cannot take less than about 0.6 s (a lower bound, not a timing goal).
    assert!(started.elapsed() >= std::time::Duration::from_millis(550));
}
