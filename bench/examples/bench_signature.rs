//! Signature verification cost (issue 15), run by scripts/bench.sh; prints markdown table rows.
//!
//! `cargo run --release -p twinflash-bench --example bench_signature -- [MiB]`
//! Against a real registry on loopback: the time to check one signature (the cryptography alone), to look up and
//! verify the signatures of one artifact (`Verifier::verify`: the registry requests included), and a whole fetch of a
//! `MiB` artifact with the policy off and with `require`, each from an empty cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

use std::time::{Duration, Instant};

use twinflash_artifact::signature::write::{SignFormat, sign};
use twinflash_artifact::signature::{Mode, Policy, SigningKey, TrustedKey, Verdict, Verifier};
use twinflash_artifact::{Credentials, FetchConfig, Fetcher, TlsOptions};
use twinflash_harness::Registry;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn pushed(registry: &Registry, dir: &std::path::Path, tag: &str, mib: usize) -> String {
    use rand::RngExt;
    let mut data = vec![0u8; mib * 1024 * 1024];
    rand::rng().fill(&mut data[..]);
    twinflash_testkit::push(
        registry,
        dir,
        &format!("fw/bench:{tag}"),
        &data,
        "1.0.0",
        twinflash_testkit::CHIP,
    )
    .await
}

fn tls(host: &str) -> TlsOptions {
    TlsOptions {
        plain_http: vec![host.to_owned()],
        ..TlsOptions::default()
    }
}

fn config(cache: &std::path::Path, host: &str, policy: &Policy) -> FetchConfig {
    let mut cfg = FetchConfig::new(cache);
    cfg.plain_http = vec![host.to_owned()];
    cfg.signatures = policy.clone();
    cfg
}

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_pkcs8_der(&SigningKey::generate_p256_pkcs8().unwrap()).unwrap();
    let policy = Policy {
        mode: Mode::Require,
        keys: vec![TrustedKey {
            name: "release".to_owned(),
            key: key.public().clone(),
        }],
    };
    let simple = pushed(&registry, dir.path(), "simple", 1).await;
    let bundled = pushed(&registry, dir.path(), "bundle", 1).await;
    let big = pushed(&registry, dir.path(), "big", mib).await;
    for (r, f) in [
        (&simple, SignFormat::Cosign),
        (&bundled, SignFormat::Bundle),
        (&big, SignFormat::Cosign),
    ] {
        sign(&tls(&host), &Credentials::default(), r, &key, f)
            .await
            .unwrap();
    }
    let cfg = config(dir.path(), &host, &policy);
    let verifier = Verifier::new(&cfg).unwrap();

    for (name, reference) in [
        ("cosign simple signing (`.sig` tag)", &simple),
        (
            "Sigstore bundle (referrer via the referrers tag schema)",
            &bundled,
        ),
    ] {
        let r = reference.parse().unwrap();
        let discovery = verifier.discover(&r).await.unwrap();
        let digest = r.digest().to_owned();
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            assert!(matches!(
                discovery.judge(&digest, &policy.keys),
                Verdict::Verified(_)
            ));
        }
        let crypto = t.elapsed() / n;
        let rounds = 50;
        let t = Instant::now();
        for _ in 0..rounds {
            assert!(matches!(
                verifier.verify(&r, &policy).await.unwrap(),
                Verdict::Verified(_)
            ));
        }
        let lookup = t.elapsed() / rounds;
        println!(
            "| Verify one {name}: the signature check alone (mean of {n}) | - | {:.1} µs | - |",
            crypto.as_secs_f64() * 1e6
        );
        println!(
            "| Look up and verify the signatures of one artifact, {name}, loopback registry (mean of {rounds}) | small beside the fetch | {} | - |",
            ms(lookup)
        );
    }

    let off = Policy::default();
    let mut times = [Duration::ZERO; 2];
    let rounds = 5u32;
    for _ in 0..rounds {
        for (i, p) in [&off, &policy].into_iter().enumerate() {
            let cache = tempfile::tempdir().unwrap();
            let fetcher = Fetcher::new(config(cache.path(), &host, p)).unwrap();
            let cancel = tokio_util::sync::CancellationToken::new();
            let t = Instant::now();
            let fetched = fetcher
                .fetch(&big.parse().unwrap(), |_| {}, &cancel)
                .await
                .unwrap();
            times[i] += t.elapsed();
            assert_eq!(fetched.signature.is_some(), i == 1);
        }
    }
    let (off_t, req_t) = (times[0] / rounds, times[1] / rounds);
    println!(
        "| Fetch of a {mib} MiB artifact into an empty cache, policy off / require (mean of {rounds}) | - | {} / {} | signatures add {} ({:+.1} %) |",
        ms(off_t),
        ms(req_t),
        ms(req_t.saturating_sub(off_t)),
        (req_t.as_secs_f64() / off_t.as_secs_f64() - 1.0) * 100.0
    );
}
