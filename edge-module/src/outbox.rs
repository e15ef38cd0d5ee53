//! The on-disk outbox of twin reports, cleared only when the broker acknowledges them (PUBACK).
//!
//! rumqttc keeps nothing on disk and drops unsent publishes when the broker kept no session, so every report goes
//! through here. Per device the outbox holds at most two reports: the front one, which the publisher may have in
//! flight, and one waiting behind it, into which every later report merges (the latest value of each twin wins), so
//! a storm of intents costs bounded memory and bounded messages. A report that ends an intent (installed, failed,
//! rejected) is kept on disk until acknowledged or replaced; progress lives in memory only: after a crash the job
//! re-derives its state from the journal and reports it again, and an old `downloading:40` is never replayed. So a
//! progress report costs no disk sync, except when it replaces a stored terminal report.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Twin name to reported (`actual`) value.
pub type TwinValues = BTreeMap<String, String>;

/// One report waiting for its PUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Increases with every change of this device's queue; identifies what a PUBACK acknowledged.
    pub seq: u64,
    /// The values to report.
    pub twins: TwinValues,
    /// True when the report ends an intent: it is never replaced, only acknowledged.
    pub terminal: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DeviceQueue {
    next_seq: u64,
    queue: Vec<Pending>,
}

/// The outbox of every device of this agent.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    devices: HashMap<String, DeviceQueue>,
}

/// An outbox file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {source}")]
pub struct OutboxError {
    path: PathBuf,
    source: io::Error,
}

impl OutboxError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        if crate::journal::is_disk_full(&self.source) {
            mqtt_schema::ErrorCode::DiskFull
        } else {
            mqtt_schema::ErrorCode::Internal
        }
    }
}

impl Outbox {
    /// Opens the outbox under `state_dir`, loading every report still owed. Unreadable files are skipped with a
    /// warning: a report is re-made from the journal after a restart anyway.
    pub fn open(state_dir: &Path) -> Result<Outbox, OutboxError> {
        let dir = state_dir.join("outbox");
        fs::create_dir_all(&dir).map_err(|source| OutboxError {
            path: dir.clone(),
            source,
        })?;
        let mut devices = HashMap::new();
        let entries = fs::read_dir(&dir).map_err(|source| OutboxError {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            match fs::read(&path).map(|b| serde_json::from_slice::<DeviceQueue>(&b)) {
                Ok(Ok(mut q)) => {
                    q.queue.retain(|p| p.terminal);
                    devices.insert(id.replace("__", "/"), q);
                }
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable outbox file")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable outbox file")
                }
            }
        }
        Ok(Outbox { dir, devices })
    }

    fn file(&self, device: &str) -> PathBuf {
        self.dir.join(format!("{}.json", device.replace('/', "__")))
    }

    /// Queues a report of `device` (stored durably when it is terminal). It merges into the report waiting behind
    /// the front one, or into a front progress report (its values win, it takes a new sequence number); a terminal
    /// front report is never replaced before its acknowledgement. Returns the report's sequence number.
    pub fn put(
        &mut self,
        device: &str,
        twins: TwinValues,
        terminal: bool,
    ) -> Result<u64, OutboxError> {
        let q = self.devices.entry(device.to_owned()).or_default();
        q.next_seq += 1;
        let seq = q.next_seq;
        let mergeable = match q.queue.as_slice() {
            [] => false,
            [front] => !front.terminal,
            _ => true,
        };
        let mut replaced_terminal = false;
        match q.queue.last_mut() {
            Some(last) if mergeable => {
                replaced_terminal = last.terminal;
                last.twins.extend(twins);
                last.seq = seq;
                last.terminal = terminal;
            }
            _ => q.queue.push(Pending {
                seq,
                twins,
                terminal,
            }),
        }
        if terminal || replaced_terminal {
            self.persist(device)?;
        }
        Ok(seq)
    }

    /// The broker acknowledged report `seq` of `device`: forget it. A stale seq (the report was replaced by a newer
    /// one meanwhile) changes nothing.
    pub fn acked(&mut self, device: &str, seq: u64) -> Result<(), OutboxError> {
        let Some(q) = self.devices.get_mut(device) else {
            return Ok(());
        };
        let Some(pos) = q.queue.iter().position(|p| p.seq == seq) else {
            return Ok(());
        };
        if q.queue.remove(pos).terminal {
            self.persist(device)?;
        }
        Ok(())
    }

    /// Every report still owed, per device in queue order.
    pub fn pending(&self) -> impl Iterator<Item = (&str, &Pending)> {
        self.devices
            .iter()
            .flat_map(|(d, q)| q.queue.iter().map(move |p| (d.as_str(), p)))
    }

    /// The next report owed by each device (the one the publisher sends; the one behind it waits for its ack).
    pub fn fronts(&self) -> impl Iterator<Item = (&str, &Pending)> {
        self.devices
            .iter()
            .filter_map(|(d, q)| q.queue.first().map(|p| (d.as_str(), p)))
    }

    /// The reports still owed by one device, in order.
    pub fn pending_for(&self, device: &str) -> &[Pending] {
        self.devices.get(device).map_or(&[], |q| q.queue.as_slice())
    }

    /// Number of reports still owed (the `outbox depth` metric).
    pub fn depth(&self) -> usize {
        self.devices.values().map(|q| q.queue.len()).sum()
    }

    fn persist(&self, device: &str) -> Result<(), OutboxError> {
        let path = self.file(device);
        let err = |source| OutboxError {
            path: path.clone(),
            source,
        };
        // An empty queue is written too: it keeps the sequence counter, so seqs never repeat after a restart.
        let Some(q) = self.devices.get(device) else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(q)
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let mut f = atomic_write_file::AtomicWriteFile::open(&path).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.commit().map_err(err)
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
