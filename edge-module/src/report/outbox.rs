//! The on-disk outbox of twin reports, cleared only when the report is acknowledged: by edgecore's
//! `twin/update/result` carrying the report's `event_id` (a PUBACK only says the broker has it; a broker with no
//! edgecore subscribed PUBACKs and drops it, docs/kubeedge.md section 8), or by the PUBACK where
//! `twin.acknowledgement = "broker"`.
//!
//! rumqttc keeps nothing on disk and drops unsent publishes when the broker kept no session, so every report goes
//! through here. Per device the outbox is a short queue: the front report, which the publisher may have in flight
//! and which is never changed, and the reports behind it. A state change (pending, verifying, installed, ...) gets
//! its own entry, so it is reported even when the one before it is slow to be acknowledged; progress of the same
//! stage (`downloading:40` after `downloading:20`) merges into the entry behind the front, and past
//! [`MAX_QUEUE`] entries everything merges into the last one (every report carries all twins, so the latest wins),
//! so a storm of intents costs bounded memory and bounded messages. A settled report (idle, or one that ends an intent: installed, failed,
//! rejected) is kept on disk until acknowledged or replaced; when it is the first report acknowledged since the agent
//! started it is sent once more ([`Pending::confirm`]: cloudcore drops the first value of a twin its DeviceStatus
//! does not hold yet, section 8, so a final value is never the only write). Progress lives in memory only: after a crash the job re-derives its
//! state from the journal and reports it again, and an old `downloading:40` is never replayed. So a progress report
//! costs no disk sync, except when it replaces a stored terminal report.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Twin name to reported (`actual`) value.
pub type TwinValues = BTreeMap<String, String>;

/// Most reports queued per device; past it, a new report merges into the last one.
pub const MAX_QUEUE: usize = 8;
/// Largest outbox file read at start: a full queue of reports of three twin values of at most 512 bytes each is
/// about 15 KiB. A longer file was not written by this agent and is skipped like an unreadable one.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// One report waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Increases with every change of this device's queue; identifies what an acknowledgement is for (it is in the
    /// report's `event_id`).
    pub seq: u64,
    /// The values to report.
    pub twins: TwinValues,
    /// True when the report ends an intent: kept on disk until acknowledged.
    pub terminal: bool,
    /// The progress stage (`downloading`, `flashing`) a later report of the same stage merges into; None for a state.
    #[serde(default)]
    pub merge: Option<String>,
    /// Send the same values once more after the acknowledgement (terminal reports; see the module doc).
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DeviceQueue {
    /// The device's id (its file name is a hash for a long id: [`crate::file_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    next_seq: u64,
    queue: Vec<Pending>,
    /// Reports acknowledged since the agent started.
    #[serde(skip)]
    acked: u64,
}

/// The outbox of every device of this agent.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    devices: HashMap<String, DeviceQueue>,
    /// Whether the first acknowledged settled report after a start is queued once more ([`Outbox::acked`]); the DMI
    /// mode confirms every settled state itself, later (docs/operations.md section 9.4).
    confirm_first: bool,
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
        crate::state_dir::private_dir(&dir).map_err(|source| OutboxError {
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
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            match crate::state_dir::read_bounded(&path, MAX_FILE_BYTES)
                .map(|b| serde_json::from_slice::<DeviceQueue>(&b))
            {
                Ok(Ok(mut q)) => {
                    q.queue.retain(|p| p.terminal);
                    let Some(id) = q.id.clone().or_else(|| crate::file_name::plain_id(stem)) else {
                        tracing::warn!(path = %path.display(), "skipping an outbox file that names no device");
                        continue;
                    };
                    q.id = Some(id.clone());
                    devices.insert(id, q);
                }
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable outbox file")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable outbox file")
                }
            }
        }
        Ok(Outbox {
            dir,
            devices,
            confirm_first: true,
        })
    }

    /// Turns the confirmation of the first settled report after a start on or off (on by default).
    pub fn set_first_confirmation(&mut self, on: bool) {
        self.confirm_first = on;
    }

    fn file(&self, device: &str) -> PathBuf {
        self.dir.join(crate::file_name::for_id(device, "json"))
    }

    /// Queues a report of `device` (stored durably when it is terminal); `merge` is its progress stage, None for a
    /// state. The front report is never changed; a report equal to the last queued one changes nothing; progress
    /// merges into a last entry of the same stage behind the front; past [`MAX_QUEUE`] entries any report merges
    /// into the last one. Returns the sequence number of the entry that holds it.
    pub fn put(
        &mut self,
        device: &str,
        twins: TwinValues,
        terminal: bool,
        merge: Option<&str>,
    ) -> Result<u64, OutboxError> {
        let q = self.devices.entry(device.to_owned()).or_default();
        q.id.get_or_insert_with(|| device.to_owned());
        if let Some(last) = q.queue.last()
            && last.twins == twins
        {
            return Ok(last.seq);
        }
        q.next_seq += 1;
        let seq = q.next_seq;
        let entry = Pending {
            seq,
            twins,
            terminal,
            merge: merge.map(str::to_owned),
            confirm: terminal,
        };
        let behind_front = q.queue.len() >= 2;
        let full = q.queue.len() >= MAX_QUEUE;
        let same_stage =
            merge.is_some() && q.queue.last().and_then(|l| l.merge.as_deref()) == merge;
        let mut replaced_terminal = false;
        match q.queue.last_mut() {
            Some(last) if behind_front && (same_stage || full) => {
                replaced_terminal = last.terminal;
                *last = entry;
            }
            _ => q.queue.push(entry),
        }
        if terminal || replaced_terminal {
            self.persist(device)?;
        }
        Ok(seq)
    }

    /// Report `seq` of `device` was acknowledged: forget it. A stale seq (the report was replaced by a newer one
    /// meanwhile) changes nothing. When it is the device's first acknowledged report since the agent started, asked
    /// for a confirmation, and nothing newer is queued, the same values are queued once more: every value then reaches
    /// edgecore at least twice after a start, so cloudcore's loss of a twin's first value cannot leave a final state
    /// unreported (any other report is followed by more). True when a report was forgotten.
    pub fn acked(&mut self, device: &str, seq: u64) -> Result<bool, OutboxError> {
        let Some(q) = self.devices.get_mut(device) else {
            return Ok(false);
        };
        let Some(pos) = q.queue.iter().position(|p| p.seq == seq) else {
            return Ok(false);
        };
        let done = q.queue.remove(pos);
        let first = q.acked == 0;
        q.acked += 1;
        if done.confirm && first && q.queue.is_empty() && self.confirm_first {
            q.next_seq += 1;
            q.queue.push(Pending {
                seq: q.next_seq,
                confirm: false,
                ..done.clone()
            });
        }
        if done.terminal {
            self.persist(device)?;
        }
        Ok(true)
    }

    /// The front report of `device` went unanswered: drop every entry but the newest, so the retry carries the
    /// latest state (nothing older is sent after something newer). True when something was dropped.
    pub fn collapse(&mut self, device: &str) -> Result<bool, OutboxError> {
        let Some(q) = self.devices.get_mut(device) else {
            return Ok(false);
        };
        if q.queue.len() < 2 {
            return Ok(false);
        }
        let dropped_terminal = q.queue[..q.queue.len() - 1].iter().any(|p| p.terminal);
        let keep = q.queue.split_off(q.queue.len() - 1);
        q.queue = keep;
        if dropped_terminal {
            self.persist(device)?;
        }
        Ok(true)
    }

    /// [`Outbox::collapse`] for every device whose queue holds a settled report behind its front (nothing is in
    /// flight): an older report never delays a settled state. Returns the devices collapsed.
    pub fn collapse_before_settled(&mut self) -> Result<usize, OutboxError> {
        let due: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, q)| q.queue.iter().skip(1).any(|p| p.terminal))
            .map(|(d, _)| d.clone())
            .collect();
        for d in &due {
            self.collapse(d)?;
        }
        Ok(due.len())
    }

    /// [`Outbox::collapse`] for every device (nothing is in flight): after an outage each device reports its newest
    /// state first, never the progress it made meanwhile. Returns the devices collapsed.
    pub fn collapse_all(&mut self) -> Result<usize, OutboxError> {
        let devices: Vec<String> = self.devices.keys().cloned().collect();
        let mut n = 0;
        for d in &devices {
            if self.collapse(d)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Forgets every report of `device` (a device no longer managed), on disk too.
    pub fn forget(&mut self, device: &str) -> Result<(), OutboxError> {
        if self.devices.remove(device).is_none() {
            return Ok(());
        }
        let path = self.file(device);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(OutboxError { path, source }),
        }
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
        let mut f = crate::state_dir::atomic_file(&path).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.commit().map_err(err)
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
