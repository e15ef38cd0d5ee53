//! The watchdog against a mocked API server that serves the Lease as a test scripts it: renewed,
//! held by another replica, or unreachable.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::json;
use tower_test::mock;

use super::*;

const ME: &str = "replica-a";

fn timing(duration_ms: u64, skew_ms: u64) -> LeaseTiming {
    LeaseTiming {
        duration: Duration::from_millis(duration_ms),
        skew: Duration::from_millis(skew_ms),
        poll: Duration::from_millis(50),
    }
}

fn lease(holder: &str, renewed: Timestamp, secs: Option<i32>) -> Lease {
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("twinflash-cloud".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: secs,
            ..Default::default()
        }),
    }
}

#[test]
fn valid_until_is_renewal_plus_duration_minus_skew_for_the_holder_only() {
    let t = timing(15_000, 2_000);
    let renewed = Timestamp::from_second(1_000_000).unwrap();
    let until = valid_until(&lease(ME, renewed, Some(15)), ME, &t).unwrap();
    assert_eq!(until, Timestamp::from_second(1_000_013).unwrap());
    // The Lease's own duration wins over the configured one.
    let until = valid_until(&lease(ME, renewed, Some(30)), ME, &t).unwrap();
    assert_eq!(until, Timestamp::from_second(1_000_028).unwrap());
    let until = valid_until(&lease(ME, renewed, None), ME, &t).unwrap();
    assert_eq!(until, Timestamp::from_second(1_000_013).unwrap());
    assert_eq!(
        valid_until(&lease("replica-b", renewed, Some(15)), ME, &t),
        None
    );
    let mut no_renewal = lease(ME, renewed, Some(15));
    if let Some(spec) = no_renewal.spec.as_mut() {
        spec.renew_time = None;
    }
    assert_eq!(valid_until(&no_renewal, ME, &t), None);
    assert_eq!(valid_until(&Lease::default(), ME, &t), None);
}

#[test]
fn may_lead_needs_both_the_manager_and_a_fresh_reading() {
    let now = Timestamp::from_second(100).unwrap();
    let later = Timestamp::from_second(101).unwrap();
    let earlier = Timestamp::from_second(99).unwrap();
    assert!(may_lead(true, Some(later), now));
    assert!(
        !may_lead(false, Some(later), now),
        "the manager has the last word"
    );
    assert!(!may_lead(true, Some(earlier), now), "an expired reading");
    assert!(!may_lead(true, Some(now), now), "expiry is exclusive");
    assert!(!may_lead(true, None, now), "never read, or another holder");
}

/// What the mocked API server answers to `GET` of the Lease.
#[derive(Clone, Copy)]
enum Serve {
    /// The Lease held by `holder`, renewed just now (the holder's manager keeps renewing).
    Renewed(&'static str),
    /// The API server is unreachable (503 for every request).
    Down,
}

/// Starts the mocked API server; returns the client and the switch for what it serves.
fn api() -> (Api<Lease>, Arc<Mutex<Serve>>, Arc<Mutex<usize>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let serve = Arc::new(Mutex::new(Serve::Renewed(ME)));
    let reads = Arc::new(Mutex::new(0usize));
    let (s, r) = (serve.clone(), reads.clone());
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            assert_eq!(request.method(), http::Method::GET);
            assert_eq!(
                request.uri().path(),
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/twinflash-cloud"
            );
            *r.lock().unwrap() += 1;
            let mode = *s.lock().unwrap();
            let (status, body) = match mode {
                Serve::Renewed(holder) => (
                    StatusCode::OK,
                    serde_json::to_value(lease(holder, Timestamp::now(), Some(2))).unwrap(),
                ),
                Serve::Down => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": "unavailable", "reason": "ServiceUnavailable", "code": 503}),
                ),
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    (
        Api::namespaced(Client::new(service, "ns"), "ns"),
        serve,
        reads,
    )
}

/// The watchdog under test on `leases`, with a 2 s lease and 500 ms skew allowance.
fn start(
    leases: Api<Lease>,
    manager: watch::Receiver<bool>,
    cancel: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    guard(
        manager,
        leases,
        "twinflash-cloud".into(),
        ME.into(),
        timing(2_000, 500),
        cancel,
    )
}

async fn wait_for(rx: &mut watch::Receiver<bool>, want: bool) {
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("leadership never became {want}"))
        .unwrap();
}

#[tokio::test]
async fn leads_while_renewed_and_stops_before_the_lease_expires_when_cut_off() {
    // The Lease says 2 s; the skew allowance is 500 ms, so a cut-off leader must stop within
    // 1.5 s of its last renewal.
    let (leases, serve, _) = api();
    let (manager_tx, manager_rx) = watch::channel(true);
    let cancel = CancellationToken::new();
    let (mut rx, task) = start(leases, manager_rx, cancel.clone());
    wait_for(&mut rx, true).await;

    // Renewals keep it leading over several lease durations: no flapping.
    let mut flips = 0;
    let stable = tokio::time::timeout(Duration::from_millis(4_000), async {
        loop {
            rx.changed().await.unwrap();
            flips += 1;
        }
    })
    .await;
    assert!(
        stable.is_err() && flips == 0,
        "leadership flapped {flips} times while renewed"
    );

    // Cut off: the manager still says "leader", as kube-lease-manager does when renewals fail.
    *serve.lock().unwrap() = Serve::Down;
    let cut = Timestamp::now();
    wait_for(&mut rx, false).await;
    let stopped = Timestamp::now();
    assert!(*manager_tx.borrow(), "the manager never noticed");
    // The last renewal the watchdog saw was before the cut, so the lease (2 s) expires by
    // cut + 2 s at the latest, as a challenger sees it; the watchdog stopped before that.
    assert!(
        stopped < cut.checked_add(SignedDuration::from_millis(2_000)).unwrap(),
        "stopped {:?} after the cut, past the lease's expiry",
        stopped.duration_since(cut)
    );

    // The API server is back and the lease is still ours: leading again.
    *serve.lock().unwrap() = Serve::Renewed(ME);
    wait_for(&mut rx, true).await;
    cancel.cancel();
    task.await.unwrap();
    assert!(
        !*rx.borrow(),
        "a stopped watchdog never leaves `true` behind"
    );
}

#[tokio::test]
async fn never_leads_on_a_lease_held_by_another_replica_or_never_read() {
    let (leases, serve, reads) = api();
    *serve.lock().unwrap() = Serve::Renewed("replica-b");
    let (_manager_tx, manager_rx) = watch::channel(true);
    let cancel = CancellationToken::new();
    let (mut rx, task) = start(leases, manager_rx, cancel.clone());
    // Several readings, all naming the other replica.
    while *reads.lock().unwrap() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!*rx.borrow_and_update());
    // Unreadable from the start: no reading, no leadership.
    *serve.lock().unwrap() = Serve::Down;
    let seen = *reads.lock().unwrap();
    while *reads.lock().unwrap() < seen + 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!rx.has_changed().unwrap(), "never turned true");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn follows_the_manager_and_closes_when_the_manager_is_gone() {
    let (leases, _, _) = api();
    let (manager_tx, manager_rx) = watch::channel(false);
    let cancel = CancellationToken::new();
    let (mut rx, task) = start(leases, manager_rx, cancel);
    manager_tx.send(true).unwrap();
    wait_for(&mut rx, true).await;
    manager_tx.send(false).unwrap();
    wait_for(&mut rx, false).await;
    manager_tx.send(true).unwrap();
    wait_for(&mut rx, true).await;
    drop(manager_tx);
    task.await.unwrap();
    assert!(!*rx.borrow_and_update(), "false once the manager is gone");
    assert!(rx.changed().await.is_err(), "and the channel is closed");
}
