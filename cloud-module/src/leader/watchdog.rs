//! The lease watchdog: this replica leads only while the Lease itself, read from the API server,
//! names it as holder and its last renewal is recent enough. kube-lease-manager keeps saying
//! "leader" when its renewals fail, so without this a replica cut off from the API server would go
//! on publishing after another replica took the expired lease over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The timing of the lease as this replica keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Validity of the lock after its last renewal (`leaseDurationSeconds`), used when the Lease
    /// does not say.
    pub duration: Duration,
    /// How much the holder's clock may be behind a challenger's. The holder stops leading this
    /// long before the lease would expire by its own clock. Must stay below the lease manager's
    /// grace (the holder renews `grace` before expiry), or leadership flaps at every renewal.
    pub skew: Duration,
    /// How often the Lease is read.
    pub poll: Duration,
}

/// Until when the Lease lets `identity` lead: its renewal time plus its duration, minus the skew
/// allowance. `None` when the Lease names another holder or no renewal time.
pub fn valid_until(lease: &Lease, identity: &str, timing: &LeaseTiming) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map_or(timing.duration, |s| {
            Duration::from_secs(s.unsigned_abs().into())
        });
    let keep = duration.saturating_sub(timing.skew);
    let keep = SignedDuration::try_from(keep).ok()?;
    renewed.checked_add(keep).ok()
}

/// Whether this replica may lead now: the lease manager says so and the last reading of the Lease
/// is still valid at `now`.
pub fn may_lead(manager_says: bool, valid_until: Option<Timestamp>, now: Timestamp) -> bool {
    manager_says && valid_until.is_some_and(|until| now < until)
}

/// Guards the lease manager's `leader` channel: the returned channel is `true` only while
/// [`may_lead`] holds. The Lease `name` is read through `leases` every `timing.poll` (and at once
/// when the manager reports leadership); when readings fail, the last good one counts until it
/// runs out, and the channel turns `false` at that instant, not at the next poll.
/// The task ends (closing the channel) when `cancel` fires or the manager's channel closes.
pub fn guard(
    mut manager: watch::Receiver<bool>,
    leases: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    cancel: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut says = *manager.borrow_and_update();
        let mut until: Option<Timestamp> = None;
        let mut failing = false;
        let mut poll = tokio::time::interval(timing.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let leading = may_lead(says, until, Timestamp::now());
            tx.send_if_modified(|v| {
                let changed = *v != leading;
                *v = leading;
                changed
            });
            // Wake exactly when the last good reading runs out.
            let expiry = match until {
                Some(t) if leading => {
                    let left = t.duration_since(Timestamp::now());
                    if left.is_negative() {
                        Duration::ZERO
                    } else {
                        left.unsigned_abs()
                    }
                }
                _ => Duration::MAX,
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = manager.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    says = *manager.borrow_and_update();
                    if says {
                        poll.reset_immediately();
                    }
                }
                _ = poll.tick() => {
                    let reading = tokio::time::timeout(timing.poll, leases.get_opt(&name)).await;
                    match reading {
                        Ok(Ok(lease)) => {
                            if failing {
                                info!(lease = %name, "lease readable again");
                                failing = false;
                            }
                            until = lease.as_ref().and_then(|l| valid_until(l, &identity, &timing));
                        }
                        Ok(Err(e)) => {
                            if !failing {
                                warn!(lease = %name, error = %e, "cannot read the lease; leading only until it expires");
                                failing = true;
                            }
                        }
                        Err(_) => {
                            if !failing {
                                warn!(lease = %name, "reading the lease timed out; leading only until it expires");
                                failing = true;
                            }
                        }
                    }
                }
                () = sleep_for(expiry) => {}
            }
        }
        tx.send_replace(false);
    });
    (rx, task)
}

async fn sleep_for(d: Duration) {
    if d == Duration::MAX {
        std::future::pending::<()>().await;
    } else {
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
#[path = "watchdog_tests.rs"]
mod tests;
