//! In-memory fakes of the seams (feature `test-support`, and the crate's own tests): a sink that
//! remembers what was published, a resolver answering from a table, a status writer keeping the
//! latest reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use mqtt_schema::{DeviceId, FirmwareRef};
use twinflash_artifact::signature::{Policy, Verdict};

use super::{
    ArtifactResolver, IntentSink, ResolveError, ResolvedArtifact, SignatureChecker, SinkError,
    StatusError, StatusWriter,
};

/// A status writer that keeps the latest reported value of every twin per device (tests).
#[derive(Debug, Clone, Default)]
pub struct MemoryStatusWriter {
    reported: Arc<Mutex<BTreeMap<DeviceId, BTreeMap<String, String>>>>,
    writes: Arc<Mutex<usize>>,
    fail_with: Arc<Mutex<Option<StatusError>>>,
}

impl MemoryStatusWriter {
    /// The latest reported values of `device`.
    pub fn reported(&self, device: &DeviceId) -> BTreeMap<String, String> {
        self.reported
            .lock()
            .ok()
            .and_then(|m| m.get(device).cloned())
            .unwrap_or_default()
    }

    /// How many reports were written.
    pub fn writes(&self) -> usize {
        self.writes.lock().map(|n| *n).unwrap_or(0)
    }

    /// Every write fails with `err` from now on (`None`: writes succeed again), as an API server outage would.
    pub fn fail_with(&self, err: Option<StatusError>) {
        if let Ok(mut f) = self.fail_with.lock() {
            *f = err;
        }
    }
}

impl StatusWriter for MemoryStatusWriter {
    fn write_actual<'a>(
        &'a self,
        device: &'a DeviceId,
        actual: &'a BTreeMap<String, String>,
        _timestamp_ms: i64,
    ) -> BoxFuture<'a, Result<(), StatusError>> {
        Box::pin(async move {
            if let Some(err) = self.fail_with.lock().ok().and_then(|f| f.clone()) {
                return Err(err);
            }
            if let Ok(mut m) = self.reported.lock() {
                m.entry(device.clone())
                    .or_default()
                    .extend(actual.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            if let Ok(mut n) = self.writes.lock() {
                *n += 1;
            }
            Ok(())
        })
    }
}

/// A sink that remembers what was published, in order (for tests and dry runs).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    published: Arc<Mutex<Vec<(DeviceId, String)>>>,
    restored: Arc<Mutex<Vec<(DeviceId, String)>>>,
    delivered: Arc<Mutex<Vec<(DeviceId, String)>>>,
    fail_with: Arc<Mutex<Option<SinkError>>>,
}

impl MemorySink {
    /// Everything published so far.
    pub fn published(&self) -> Vec<(DeviceId, String)> {
        self.published.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Every intent restored from a status record (never published by the sink itself).
    pub fn restored(&self) -> Vec<(DeviceId, String)> {
        self.restored.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Every intent the controller found held by the edge ([`IntentSink::delivered`]).
    pub fn delivered(&self) -> Vec<(DeviceId, String)> {
        self.delivered.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Makes every following publish fail with `err` (`None` heals it).
    pub fn fail_with(&self, err: Option<SinkError>) {
        if let Ok(mut f) = self.fail_with.lock() {
            *f = err;
        }
    }
}

impl IntentSink for MemorySink {
    fn publish_intent<'a>(
        &'a self,
        device: &'a DeviceId,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some(err) = self.fail_with.lock().ok().and_then(|f| f.clone()) {
                return Err(err);
            }
            if let Ok(mut p) = self.published.lock() {
                p.push((device.clone(), reference.to_owned()));
            }
            Ok(())
        })
    }

    fn restore_intent(&self, device: &DeviceId, reference: &str) {
        if let Ok(mut r) = self.restored.lock() {
            r.push((device.clone(), reference.to_owned()));
        }
    }

    fn delivered(&self, device: &DeviceId, reference: &str) {
        if let Ok(mut r) = self.delivered.lock() {
            r.push((device.clone(), reference.to_owned()));
        }
    }
}

/// A resolver answering from a table (reference -> answer); unknown references are `NotFound`.
#[derive(Debug, Clone, Default)]
pub struct MemoryResolver {
    table: Arc<Mutex<BTreeMap<String, Result<ResolvedArtifact, ResolveError>>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl MemoryResolver {
    /// Sets the answer for `reference`.
    pub fn insert(&self, reference: &str, answer: Result<ResolvedArtifact, ResolveError>) {
        if let Ok(mut t) = self.table.lock() {
            t.insert(reference.to_owned(), answer);
        }
    }

    /// Every reference asked for, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl ArtifactResolver for MemoryResolver {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ResolvedArtifact, ResolveError>> {
        Box::pin(async move {
            if let Ok(mut c) = self.calls.lock() {
                c.push(reference.to_owned());
            }
            self.table
                .lock()
                .ok()
                .and_then(|t| t.get(reference).cloned())
                .unwrap_or_else(|| {
                    Err(ResolveError::NotFound {
                        reference: reference.to_owned(),
                    })
                })
        })
    }
}

/// A signature checker answering from a table (pinned reference -> verdict); unknown references are
/// unsigned. The policy is ignored except for being recorded: tests set the verdict the policy would give.
#[derive(Debug, Clone, Default)]
pub struct MemorySignatures {
    table: Arc<Mutex<BTreeMap<String, Result<Verdict, ResolveError>>>>,
    calls: Arc<Mutex<Vec<(String, SignatureMode)>>>,
}

use twinflash_artifact::signature::Mode as SignatureMode;

impl MemorySignatures {
    /// Sets the answer for `reference`.
    pub fn insert(&self, reference: &str, answer: Result<Verdict, ResolveError>) {
        if let Ok(mut t) = self.table.lock() {
            t.insert(reference.to_owned(), answer);
        }
    }

    /// Every (reference, policy mode) asked about, in order.
    pub fn calls(&self) -> Vec<(String, SignatureMode)> {
        self.calls.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl SignatureChecker for MemorySignatures {
    fn verify<'a>(
        &'a self,
        reference: &'a FirmwareRef,
        policy: &'a Policy,
    ) -> BoxFuture<'a, Result<Verdict, ResolveError>> {
        Box::pin(async move {
            let reference = reference.to_string();
            if let Ok(mut c) = self.calls.lock() {
                c.push((reference.clone(), policy.mode));
            }
            self.table
                .lock()
                .ok()
                .and_then(|t| t.get(&reference).cloned())
                .unwrap_or_else(|| {
                    Ok(Verdict::Unsigned {
                        looked_in: vec!["memory".to_owned()],
                    })
                })
        })
    }
}
