//! The DMI journal: every Device and DeviceModel edgecore handed over, written durably before the call is
//! answered, so an agent restart loses no device and no intent. One file per object under `<state_dir>/dmi/`,
//! holding the protobuf bytes as edgecore sent them (`devices/<namespace>__<name>.pb`, `models/...`; a hashed name for a long one, [`crate::file_name`]); names are
//! checked Kubernetes names ([`super::spec::valid_name`]), so they cannot leave that directory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use twinflash_dmi::pb;

/// The journal could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("DMI journal {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    source: io::Error,
}

impl StoreError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        if crate::journal::is_disk_full(&self.source) {
            mqtt_schema::ErrorCode::DiskFull
        } else {
            mqtt_schema::ErrorCode::Internal
        }
    }
}

/// Which kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Device.
    Device,
    /// A DeviceModel.
    Model,
}

/// Most Devices the journal keeps (a Device is at most the mapper's decoding limit: `limits.max_message_bytes`, at
/// most 512 KiB).
pub const MAX_DEVICES: usize = 4096;
/// Most DeviceModels the journal keeps.
pub const MAX_MODELS: usize = 1024;

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The journal under `state_dir` (created if missing).
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join("dmi");
        for sub in ["devices", "models"] {
            let d = dir.join(sub);
            crate::state_dir::private_dir(&d).map_err(|source| StoreError { path: d, source })?;
        }
        Ok(Store { dir })
    }

    /// The journal under `state_dir`, for reading only (nothing is created; `--check-config`).
    pub fn read_only(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("dmi"),
        }
    }

    fn path(&self, kind: Kind, namespace: &str, name: &str) -> PathBuf {
        let sub = match kind {
            Kind::Device => "devices",
            Kind::Model => "models",
        };
        self.dir.join(sub).join(crate::file_name::for_id(
            &format!("{namespace}/{name}"),
            "pb",
        ))
    }

    /// False when `namespace/name` is new and the journal already holds [`MAX_DEVICES`] Devices (or
    /// [`MAX_MODELS`] models): the call is refused (`dmi-store-full`) and nothing is written.
    pub fn admits(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let max = match kind {
            Kind::Device => MAX_DEVICES,
            Kind::Model => MAX_MODELS,
        };
        let path = self.path(kind, namespace, name);
        path.exists()
            || path
                .parent()
                .and_then(|d| fs::read_dir(d).ok())
                .is_none_or(|entries| entries.take(max).count() < max)
    }

    /// Stores `msg` (a `pb::Device` or `pb::DeviceModel`) durably, replacing the previous one.
    pub fn put(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        msg: &impl Message,
    ) -> Result<(), StoreError> {
        let path = self.path(kind, namespace, name);
        let err = |source| StoreError {
            path: path.clone(),
            source,
        };
        let mut f = crate::state_dir::atomic_file(&path).map_err(err)?;
        f.write_all(&msg.encode_to_vec()).map_err(err)?;
        f.commit().map_err(err)
    }

    /// Forgets an object (durably: the directory is synced).
    pub fn remove(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), StoreError> {
        let path = self.path(kind, namespace, name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError { path, source }),
        }
        if let Some(dir) = path.parent()
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The stored Device `namespace/name`, if any.
    pub fn device(&self, namespace: &str, name: &str) -> Option<pb::Device> {
        let bytes = fs::read(self.path(Kind::Device, namespace, name)).ok()?;
        pb::Device::decode(bytes.as_slice()).ok()
    }

    /// Every stored Device. An unreadable file is skipped with a warning (edgecore hands the Device over again at
    /// the next registration).
    pub fn devices(&self) -> Vec<pb::Device> {
        let dir = self.dir.join("devices");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pb") {
                continue;
            }
            match fs::read(&path).map(|b| pb::Device::decode(b.as_slice())) {
                Ok(Ok(d)) => out.push(d),
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable DMI journal file")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable DMI journal file")
                }
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_survives_a_reopen_and_a_removal_is_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let dev = pb::Device {
            name: "d-1".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        store.put(Kind::Device, "default", "d-1", &dev).unwrap();
        let again = Store::open(tmp.path()).unwrap();
        assert_eq!(again.devices(), vec![dev.clone()]);
        assert_eq!(again.device("default", "d-1"), Some(dev));
        again.remove(Kind::Device, "default", "d-1").unwrap();
        again.remove(Kind::Device, "default", "d-1").unwrap();
        assert!(Store::open(tmp.path()).unwrap().devices().is_empty());
        std::fs::write(tmp.path().join("dmi/devices/x__y.pb"), b"\xff\xff").unwrap();
        assert!(store.devices().is_empty(), "garbage is skipped");
    }
}
