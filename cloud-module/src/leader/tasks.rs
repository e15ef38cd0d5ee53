//! The leader tasks: the one owner of everything that runs only while this replica leads (the controllers, the
//! anti-entropy loop and its DeviceStatus watch, the MQTT delivery, the readiness of the term). A leadership term
//! ([`super::run_as_leader`] calls the binary's `lead`) spawns each of them here; when the term ends, [`LeaderTasks::stop`]
//! cancels the term's token and joins every one of them, aborting whatever has not ended within the grace, so no
//! task of a term outlives it and the next term starts each of them exactly once again.
//!
//! Issue 22, F1: the anti-entropy loop and its DeviceStatus watch used to be spawned from inside the Device
//! controller's future; a lost lease dropped that future but not the spawned tasks, so a follower went on nudging
//! Devices through the API server, and a re-elected replica ran two nudgers and two watches.
//!
//! A task must end soon after the token fires (the controllers drop their reconciles in flight at once). Dropping a
//! [`LeaderTasks`] without [`stop`](LeaderTasks::stop) aborts every task.

use std::future::Future;
use std::time::Duration;

use futures::future::select_all;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long [`LeaderTasks::stop`] waits for the tasks to end by themselves before aborting them. Below the lease
/// watchdog's skew allowance (2 s): the MQTT delivery's clean disconnect fits, a stuck task does not hold a term open.
pub const STOP_GRACE: Duration = Duration::from_millis(1500);

/// The tasks of one leadership term.
#[derive(Debug)]
pub struct LeaderTasks {
    term: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl LeaderTasks {
    /// The tasks of the term that `term` ends.
    pub fn new(term: CancellationToken) -> LeaderTasks {
        LeaderTasks {
            term,
            tasks: Vec::new(),
        }
    }

    /// The term's token: a task stops when it fires.
    pub fn token(&self) -> CancellationToken {
        self.term.clone()
    }

    /// Spawns `task` as `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Takes over a task spawned elsewhere (it must end when [`Self::token`] fires, or be aborted by `stop`).
    pub fn adopt(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.tasks.push((name, task));
    }

    /// The names of the tasks, in start order.
    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|(n, _)| *n).collect()
    }

    /// Waits until the term's token fires (`None`) or a task ends by itself first (`Some(its name)`, taken out of
    /// the set; a task must not end while the term lasts, so the caller ends the term).
    pub async fn until_term_ends(&mut self) -> Option<&'static str> {
        if self.tasks.is_empty() {
            self.term.cancelled().await;
            return None;
        }
        let ended = {
            let any = select_all(self.tasks.iter_mut().map(|(_, h)| h));
            tokio::select! {
                () = self.term.cancelled() => None,
                (result, index, _) = any => Some((index, result)),
            }
        };
        let (index, result) = ended?;
        let (name, _) = self.tasks.remove(index);
        match result {
            Ok(()) => warn!(task = name, "a leader task ended by itself"),
            Err(e) => warn!(task = name, error = %e, "a leader task failed"),
        }
        Some(name)
    }

    /// Ends the term: cancels its token, waits up to `grace` for every task to end, aborts the others, and returns
    /// once every task is gone.
    pub async fn stop(mut self, grace: Duration) {
        self.term.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut handle) in std::mem::take(&mut self.tasks) {
            let result = match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(r) => r,
                Err(_) => {
                    warn!(
                        task = name,
                        "leader task still running after the grace: aborted"
                    );
                    handle.abort();
                    handle.await
                }
            };
            match result {
                Ok(()) => info!(task = name, "leader task stopped"),
                Err(e) if e.is_cancelled() => {}
                Err(e) => warn!(task = name, error = %e, "leader task failed"),
            }
        }
    }
}

impl Drop for LeaderTasks {
    fn drop(&mut self) {
        for (_, handle) in &self.tasks {
            handle.abort();
        }
    }
}

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
