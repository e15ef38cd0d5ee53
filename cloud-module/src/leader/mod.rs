//! Leader election: a Kubernetes Lease held through kube-lease-manager, guarded by a
//! [`watchdog`] that reads the Lease itself, and [`run_as_leader`], which runs the work
//! (controllers + delivery) only while this replica holds the lease and cancels it as soon as
//! the lease is lost or cannot be renewed in time, so two replicas never publish at once.
//! Every task of a term is started and stopped through [`tasks::LeaderTasks`].

pub mod tasks;
pub mod watchdog;

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Name of the Lease object (in the controller's own namespace).
pub const LEASE_NAME: &str = "twinflash-cloud";
/// Validity of the lock after its last renewal, seconds.
pub const LEASE_DURATION_SECS: u64 = 15;
/// The holder renews this long before expiry, seconds.
pub const LEASE_GRACE_SECS: u64 = 5;
/// The clock skew between replicas that is tolerated, seconds: a holder that cannot renew stops
/// leading this long before its lease expires (below the grace, so renewals never interrupt).
pub const LEASE_SKEW_SECS: u64 = 2;

/// The lease timing the watchdog enforces.
pub const TIMING: watchdog::LeaseTiming = watchdog::LeaseTiming {
    duration: std::time::Duration::from_secs(LEASE_DURATION_SECS),
    skew: std::time::Duration::from_secs(LEASE_SKEW_SECS),
    poll: std::time::Duration::from_secs(1),
};

/// The lease could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// kube-lease-manager could not read or create the Lease.
    #[error("cannot set up the lease {namespace}/{name}: {source}")]
    Lease {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What the lease manager said.
        #[source]
        source: LeaseManagerError,
    },
}

impl LeaderError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        mqtt_schema::ErrorCode::Internal
    }
}

/// The task that keeps the lease and its state channel (`true` while this replica leads).
pub type LeaseWatch = (
    watch::Receiver<bool>,
    JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
);

/// Starts competing for the Lease `name` in `namespace` as `identity` (the pod name).
pub async fn watch_lease(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<LeaseWatch, LeaderError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION_SECS)
        .with_grace(LEASE_GRACE_SECS)
        .build()
        .await
        .map_err(|source| LeaderError::Lease {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    Ok(manager.watch().await)
}

/// Runs `work` each time `leader` turns `true`, cancelling its token as soon as it turns `false`
/// (or the channel closes) and waiting for it to finish before waiting for the lease again.
/// Returns when `cancel` fires (after the work stopped) or when the work ends by itself.
pub async fn run_as_leader<F, Fut>(
    mut leader: watch::Receiver<bool>,
    cancel: CancellationToken,
    mut work: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        // Wait to lead.
        while !*leader.borrow_and_update() {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = leader.changed() => if changed.is_err() {
                    warn!("lease task ended; not leading");
                    cancel.cancelled().await;
                    return;
                },
            }
        }
        info!("leading: starting the controllers and the delivery");
        let term = cancel.child_token();
        let job = work(term.clone());
        tokio::pin!(job);
        // Some(true): lease lost; Some(false): lease task gone; None: shutdown.
        let stop = loop {
            tokio::select! {
                () = &mut job => return,
                () = cancel.cancelled() => break None,
                changed = leader.changed() => match changed {
                    Ok(()) if *leader.borrow_and_update() => {}
                    Ok(()) => break Some(true),
                    Err(_) => break Some(false),
                },
            }
        };
        term.cancel();
        job.await;
        match stop {
            None => return,
            Some(true) => warn!("lease lost: controllers and delivery stopped"),
            Some(false) => {
                warn!("lease task ended: controllers and delivery stopped");
                cancel.cancelled().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Counts starts and stops of the work, and how many run at once (never more than one).
    #[derive(Default)]
    struct Probe {
        started: AtomicUsize,
        stopped: AtomicUsize,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }

    async fn until(cond: impl Fn() -> bool) {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn work_runs_only_while_leading_and_stops_on_loss_and_on_shutdown() {
        let (tx, rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let probe = Arc::new(Probe::default());
        let p = probe.clone();
        let task = tokio::spawn(run_as_leader(rx, cancel.clone(), move |term| {
            let p = p.clone();
            async move {
                p.started.fetch_add(1, Ordering::SeqCst);
                let now = p.running.fetch_add(1, Ordering::SeqCst) + 1;
                p.max_running.fetch_max(now, Ordering::SeqCst);
                term.cancelled().await;
                p.running.fetch_sub(1, Ordering::SeqCst);
                p.stopped.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::task::yield_now().await;
        assert_eq!(probe.started.load(Ordering::SeqCst), 0, "not leading yet");

        tx.send(true).unwrap();
        until(|| probe.started.load(Ordering::SeqCst) == 1).await;
        tx.send(true).unwrap(); // a renewal changes nothing
        tx.send(false).unwrap();
        until(|| probe.stopped.load(Ordering::SeqCst) == 1).await;
        assert_eq!(probe.running.load(Ordering::SeqCst), 0);

        tx.send(true).unwrap();
        until(|| probe.started.load(Ordering::SeqCst) == 2).await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(probe.stopped.load(Ordering::SeqCst), 2);
        assert_eq!(probe.max_running.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closed_lease_channel_stops_the_work() {
        let (tx, rx) = watch::channel(true);
        let cancel = CancellationToken::new();
        let stopped = Arc::new(AtomicUsize::new(0));
        let s = stopped.clone();
        let task = tokio::spawn(run_as_leader(rx, cancel.clone(), move |term| {
            let s = s.clone();
            async move {
                term.cancelled().await;
                s.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::task::yield_now().await;
        drop(tx);
        until(|| stopped.load(Ordering::SeqCst) == 1).await;
        assert!(!task.is_finished(), "waits for shutdown, never leads again");
        cancel.cancel();
        task.await.unwrap();
    }
}
