//! The content-addressed cache `blobs/sha256/<hex>` (manifests and layers alike), with a size cap
//! and least-recently-used eviction that never removes pinned content (installed or wanted).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::FetchError;
use crate::fetch::resume::write_atomic;
use crate::manifest::Manifest;

/// The on-disk cache.
#[derive(Debug, Clone)]
pub struct Cache {
    blobs: PathBuf,
    /// Verified signatures, `<hex>.json` per manifest digest (re-verified at each use).
    signatures: PathBuf,
}

/// `sha256:<hex>` of a file's content, read in blocks.
pub(crate) fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// `sha256:<hex>` -> `<hex>`, for digests already validated.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl Cache {
    /// Opens (creating) the cache under `root`.
    pub fn open(root: &Path) -> Result<Self, FetchError> {
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| FetchError::io("create cache", &blobs, e))?;
        Ok(Self {
            blobs,
            signatures: root.join("signatures"),
        })
    }

    /// The signatures that verified for `digest` last time, if any (unverified now: the caller
    /// checks them with the keys it trusts today).
    pub fn signatures(&self, digest: &str) -> Option<Vec<crate::signature::Found>> {
        let bytes = std::fs::read(self.signatures.join(format!("{}.json", hex_of(digest)))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps the signatures that verified for `digest`.
    pub fn put_signatures(
        &self,
        digest: &str,
        found: &[crate::signature::Found],
    ) -> Result<(), FetchError> {
        std::fs::create_dir_all(&self.signatures)
            .map_err(|e| FetchError::io("create cache", &self.signatures, e))?;
        let bytes = serde_json::to_vec(found)
            .map_err(|e| FetchError::Config(format!("signature cache: {e}")))?;
        write_atomic(
            &self.signatures.join(format!("{}.json", hex_of(digest))),
            &bytes,
        )
    }

    /// The directory holding blobs and partials.
    pub fn blob_dir(&self) -> &Path {
        &self.blobs
    }

    /// Path of a complete blob.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs.join(hex_of(digest))
    }

    /// Whether a complete blob of this size is present **and its bytes still hash to `digest`**. The cache does not
    /// trust its own bytes: a blob that changed on disk (a flipped bit, an edit) is removed, so the caller fetches it
    /// again, and a blob that cannot be read counts as absent. Reads the whole blob (cost: docs/benchmarks.md,
    /// "cache re-hash"); blocking, so async callers run it on a blocking thread.
    pub fn verified_blob(&self, digest: &str, size: u64) -> bool {
        let path = self.blob_path(digest);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => {}
            _ => return false,
        }
        match file_sha256(&path) {
            Ok(actual) if actual == digest => true,
            Ok(actual) => {
                tracing::warn!(path = %path.display(), expected = %digest, %actual, "cached blob does not match its digest: removed, fetching it again");
                let _ = std::fs::remove_file(&path);
                false
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached blob cannot be read: fetching it again");
                false
            }
        }
    }

    /// Reads a cached manifest, checking its digest (a damaged one is removed).
    pub fn manifest(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).ok()?;
        if format!("sha256:{}", hex::encode(Sha256::digest(&bytes))) == digest {
            Some(bytes)
        } else {
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Stores verified manifest bytes atomically.
    pub fn put_manifest(&self, digest: &str, bytes: &[u8]) -> Result<(), FetchError> {
        write_atomic(&self.blob_path(digest), bytes)
    }

    /// Marks a blob as just used (its mtime is the LRU clock).
    pub fn touch(&self, digest: &str) {
        if let Ok(f) = std::fs::File::options()
            .write(true)
            .open(self.blob_path(digest))
        {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Expands pinned digests with the layers of pinned manifests found in the cache.
    pub fn protected(&self, pins: &HashSet<String>) -> HashSet<String> {
        let mut out: HashSet<String> = pins.iter().map(|d| hex_of(d).to_owned()).collect();
        for pin in pins {
            if let Some(bytes) = self.manifest(pin)
                && let Ok(m) = serde_json::from_slice::<Manifest>(&bytes)
            {
                out.extend(m.layers.iter().map(|l| hex_of(&l.digest).to_owned()));
            }
        }
        out
    }

    /// Complete blobs: (hex, size, last use).
    fn entries(&self) -> Vec<(String, u64, SystemTime)> {
        let Ok(dir) = std::fs::read_dir(&self.blobs) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        name,
                        meta.len(),
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    )
                })
            })
            .collect()
    }

    /// Bytes held by complete blobs.
    pub fn used_bytes(&self) -> u64 {
        self.entries().iter().map(|(_, size, _)| size).sum()
    }

    /// Evicts least-recently-used unprotected blobs until `incoming` more bytes fit under `cap`.
    /// Returns the evicted hex digests. Protected blobs are kept even when the cap is exceeded.
    pub fn evict(&self, cap: u64, incoming: u64, pins: &HashSet<String>) -> Vec<String> {
        let protected = self.protected(pins);
        let mut entries = self.entries();
        let mut used: u64 = entries.iter().map(|(_, size, _)| size).sum();
        entries.sort_by_key(|(_, _, used_at)| *used_at);
        let mut evicted = Vec::new();
        for (hex, size, _) in entries {
            if used.saturating_add(incoming) <= cap {
                break;
            }
            if protected.contains(&hex) {
                continue;
            }
            if std::fs::remove_file(self.blobs.join(&hex)).is_ok() {
                used = used.saturating_sub(size);
                tracing::info!(digest = %hex, size, "evicted from the firmware cache");
                evicted.push(hex);
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn put(cache: &Cache, data: &[u8], age_secs: u64) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        std::fs::write(cache.blob_path(&digest), data).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(cache.blob_path(&digest))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_secs))
            .unwrap();
        digest
    }

    #[test]
    fn evicts_oldest_first_but_never_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let oldest = put(&cache, &[1; 100], 300);
        let old = put(&cache, &[2; 100], 200);
        let newer = put(&cache, &[3; 100], 100);
        std::fs::write(cache.blob_dir().join("ab.partial"), [0; 1000]).unwrap();
        assert_eq!(cache.used_bytes(), 300);

        let pins = HashSet::from([oldest.clone()]);
        let evicted = cache.evict(250, 50, &pins);
        assert_eq!(evicted, vec![hex_of(&old).to_owned()]);
        assert!(cache.verified_blob(&oldest, 100));
        assert!(cache.verified_blob(&newer, 100));

        cache.touch(&oldest);
        let evicted = cache.evict(100, 100, &pins);
        assert_eq!(evicted, vec![hex_of(&newer).to_owned()]);
        assert!(
            cache.verified_blob(&oldest, 100),
            "pinned stays over the cap"
        );
        assert!(cache.blob_dir().join("ab.partial").exists());
    }

    #[test]
    fn a_pinned_manifest_protects_its_layer() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let layer = put(&cache, &[9; 10], 500);
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"sha256:00","size":0}},"layers":[{{"mediaType":"y","digest":"{layer}","size":10}}]}}"#
        );
        let mdigest = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(manifest.as_bytes()))
        );
        cache.put_manifest(&mdigest, manifest.as_bytes()).unwrap();
        assert!(cache.manifest(&mdigest).is_some());
        let evicted = cache.evict(0, 0, &HashSet::from([mdigest.clone()]));
        assert!(evicted.is_empty(), "{evicted:?}");
        assert!(cache.evict(0, 0, &HashSet::new()).len() == 2);
    }
}
