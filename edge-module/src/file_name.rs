//! The file name a device's files are kept under (its journal, its outbox, its DMI Device): bounded, whatever the
//! id. A Kubernetes namespace (63) and name (253) make ids of up to 317 bytes, longer than a file name may be (255
//! on Linux, and the atomic writes add a temporary suffix). Short ids keep the readable name they always had
//! (`<namespace>__<name>.<ext>`); a longer one is named by its start and a hash of the whole id
//! (`<first 48 bytes>~<32 hex digits of its SHA-256>.<ext>`), and the file itself holds the id. `~` never occurs in
//! a valid id, so the two forms cannot collide.

use sha2::{Digest, Sha256};

/// The longest file name used as is (well below 255, leaving room for temporary suffixes).
pub const MAX_PLAIN: usize = 128;

/// The file name of `id` with extension `ext` (see the module doc).
pub fn for_id(id: &str, ext: &str) -> String {
    let plain = id.replace('/', "__");
    if plain.len() + 1 + ext.len() <= MAX_PLAIN {
        return format!("{plain}.{ext}");
    }
    let head: String = plain.chars().take(48).collect();
    let digest = Sha256::digest(id.as_bytes());
    format!("{head}~{}.{ext}", hex::encode(&digest[..16]))
}

/// The id a plain file name stands for (`None` for a hashed one: its id is inside the file).
pub fn plain_id(stem: &str) -> Option<String> {
    (!stem.contains('~')).then(|| stem.replace("__", "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_keep_their_name_and_long_ones_are_bounded_and_distinct() {
        assert_eq!(for_id("default/sim-00", "jsonl"), "default__sim-00.jsonl");
        assert_eq!(
            plain_id("default__sim-00").as_deref(),
            Some("default/sim-00")
        );
        let ns = "n".repeat(63);
        let a = for_id(&format!("{ns}/{}", "a".repeat(253)), "jsonl");
        let b = for_id(&format!("{ns}/{}a", "a".repeat(252)), "jsonl");
        let c = for_id(&format!("{ns}/{}b", "a".repeat(252)), "jsonl");
        assert!(a.len() <= MAX_PLAIN && a.contains('~'), "{a}");
        assert_eq!(a, b);
        assert_ne!(b, c);
        assert_eq!(plain_id(a.trim_end_matches(".jsonl")), None);
    }
}
