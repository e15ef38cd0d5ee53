//! Signatures of firmware artifacts: cosign-compatible, verified offline against configured keys,
//! in one place the edge agent, the controller and the CLI share.
//!
//! A signature signs the artifact's *manifest digest*. It is found where cosign and the OCI 1.1
//! ecosystem put it, in every source the fetcher uses (mirrors, OCI layouts, the origin):
//! - an OCI 1.1 referrer of the manifest (the referrers API, or the referrers tag schema
//!   `sha256-<hex>` on registries without it) holding a Sigstore bundle or a simple-signing payload;
//! - cosign's tag `sha256-<hex>.sig` holding simple-signing payloads.
//!
//! [`judge`] turns what was found into a [`Verdict`]; [`Policy`] says what a verdict means.
//! docs/firmware-artifacts.md describes the formats, docs/security.md what each policy stops.

pub mod bundle;
pub mod cosign;
#[cfg(feature = "cosign-keys")]
pub mod cosign_key;
pub(crate) mod discover;
pub mod key;

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

pub use key::{KeyError, KeyKind, PublicKey, SigningKey};

/// What a policy does with an artifact's signatures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Signatures are not looked up.
    #[default]
    Off,
    /// Signatures are checked; an unsigned or badly signed artifact is logged and still used.
    Warn,
    /// Only an artifact with a signature by a trusted key is used: otherwise `rejected:unsigned`
    /// or `rejected:signature-invalid`.
    Require,
}

impl Mode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Warn => "warn",
            Self::Require => "require",
        }
    }
}

/// A trusted key and the name signers are reported by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The name in logs, twin messages and Events (the key file's name by default).
    pub name: String,
    /// The key.
    pub key: PublicKey,
}

impl TrustedKey {
    /// Reads a PEM public key file; its name is the file name without extension.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let pem = mqtt_schema::small_file::read_small_file(path)
            .map_err(|e| KeyError(format!("read key {}: {e}", path.display())))?;
        let key = PublicKey::from_pem(&pem)
            .map_err(|e| KeyError(format!("key {}: {}", path.display(), e.0)))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| key.key_id());
        Ok(Self { name, key })
    }
}

/// A signature policy: a mode and the keys it trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// What to do.
    pub mode: Mode,
    /// Keys whose signatures are accepted (any one suffices).
    pub keys: Vec<TrustedKey>,
}

impl Policy {
    /// `mode` with the PEM public keys in `key_files`. `warn` and `require` need at least one key.
    pub fn load(mode: Mode, key_files: &[PathBuf]) -> Result<Self, KeyError> {
        let keys = key_files
            .iter()
            .map(|p| TrustedKey::from_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        let policy = Self { mode, keys };
        policy.check()?;
        Ok(policy)
    }

    /// `warn` and `require` without a key cannot verify anything.
    pub fn check(&self) -> Result<(), KeyError> {
        if self.mode != Mode::Off && self.keys.is_empty() {
            return Err(KeyError(format!(
                "signatures = \"{}\" needs at least one trusted key",
                self.mode.as_str()
            )));
        }
        Ok(())
    }
}

/// The two formats a signature comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// cosign's simple-signing payload with its signature annotation.
    CosignSimpleSigning,
    /// A Sigstore bundle.
    SigstoreBundle,
}

impl Format {
    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CosignSimpleSigning => "cosign simple signing",
            Self::SigstoreBundle => "sigstore bundle",
        }
    }
}

/// One signature found for a manifest digest, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// Where: `<source> tag sha256-<hex>.sig`, `<source> referrer sha256:<digest>`.
    pub location: String,
    /// The signature.
    pub body: Body,
}

/// The bytes of a found signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "format")]
pub enum Body {
    /// A simple-signing payload and the base64 signature annotation of its layer.
    Simple {
        /// The payload bytes (the layer blob), as UTF-8 JSON.
        payload: String,
        /// The annotation value (base64).
        signature: String,
        /// Whether the layer carries a Fulcio certificate (keyless).
        #[serde(default)]
        keyless: bool,
    },
    /// A Sigstore bundle (the layer blob), as UTF-8 JSON.
    Bundle {
        /// The bundle JSON.
        json: String,
    },
}

impl Found {
    /// The format.
    pub fn format(&self) -> Format {
        match self.body {
            Body::Simple { .. } => Format::CosignSimpleSigning,
            Body::Bundle { .. } => Format::SigstoreBundle,
        }
    }
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The trusted key's name.
    pub signer: String,
    /// The key's id (`sha256:<hex>` of its SubjectPublicKeyInfo).
    pub key_id: String,
    /// The format.
    pub format: Format,
    /// Where it was found.
    pub location: String,
    /// The repository the payload names (simple signing), for the record; not enforced.
    pub claimed_reference: Option<String>,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "signed by {} ({}, {}) at {}",
            self.signer,
            self.key_id,
            self.format.as_str(),
            self.location
        )
    }
}

/// Checks one found signature of `digest` (whose manifest bytes are `manifest`) against `keys`.
pub fn check(
    digest: &str,
    manifest: &[u8],
    found: &Found,
    keys: &[TrustedKey],
) -> Result<Verified, String> {
    let verified = |k: &TrustedKey, claimed: Option<String>| Verified {
        signer: k.name.clone(),
        key_id: k.key.key_id(),
        format: found.format(),
        location: found.location.clone(),
        claimed_reference: claimed,
    };
    match &found.body {
        Body::Simple {
            payload,
            signature,
            keyless,
        } => {
            let sig = base64::engine::general_purpose::STANDARD
                .decode(signature.trim())
                .map_err(|e| format!("signature annotation is not base64: {e}"))?;
            let Some(k) = keys
                .iter()
                .find(|k| k.key.verifies(payload.as_bytes(), &sig))
            else {
                return Err(if *keyless {
                    "keyless signature (certificate): not verifiable with the trusted keys"
                        .to_owned()
                } else {
                    "signature does not verify with any trusted key".to_owned()
                });
            };
            // Only a verified payload is read: the digest it names must be this one.
            let p = cosign::Payload::parse(payload.as_bytes())?;
            if p.critical.image.docker_manifest_digest != digest {
                return Err(format!(
                    "signature of another digest ({})",
                    p.critical.image.docker_manifest_digest
                ));
            }
            Ok(verified(k, Some(p.critical.identity.docker_reference)))
        }
        Body::Bundle { json } => {
            let b = bundle::Bundle::parse(json.as_bytes())?;
            let mut reasons = Vec::new();
            for k in keys {
                match b.verify(digest, manifest, &k.key) {
                    Ok(()) => return Ok(verified(k, None)),
                    Err(e) => reasons.push(e),
                }
            }
            if b.is_keyless() {
                reasons.insert(
                    0,
                    "keyless bundle (certificate): not verifiable with the trusted keys".to_owned(),
                );
            }
            reasons.dedup();
            Err(reasons.join("; "))
        }
    }
}

/// What the signatures of one artifact add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A signature by a trusted key.
    Verified(Verified),
    /// No signature anywhere.
    Unsigned {
        /// Where signatures were looked for.
        looked_in: Vec<String>,
    },
    /// Signatures, none good: each with why.
    Invalid {
        /// `<location>: <reason>`.
        reasons: Vec<String>,
    },
}

impl Verdict {
    /// The stable code of a verdict that is not [`Verdict::Verified`].
    pub fn code(&self) -> Option<mqtt_schema::ErrorCode> {
        match self {
            Self::Verified(_) => None,
            Self::Unsigned { .. } => Some(mqtt_schema::ErrorCode::Unsigned),
            Self::Invalid { .. } => Some(mqtt_schema::ErrorCode::SignatureInvalid),
        }
    }

    /// One line for logs and `firmware-state` details.
    pub fn describe(&self) -> String {
        match self {
            Self::Verified(v) => v.to_string(),
            Self::Unsigned { looked_in } => {
                format!("no signature found (looked in {})", looked_in.join(", "))
            }
            Self::Invalid { reasons } => {
                format!("no signature verifies: {}", reasons.join("; "))
            }
        }
    }
}

/// The verdict on every signature found for `digest`: the first that verifies wins.
pub fn judge(
    digest: &str,
    manifest: &[u8],
    found: &[Found],
    keys: &[TrustedKey],
    looked_in: Vec<String>,
) -> Verdict {
    let mut reasons = Vec::new();
    for f in found {
        match check(digest, manifest, f, keys) {
            Ok(v) => return Verdict::Verified(v),
            Err(e) => reasons.push(format!("{}: {e}", f.location)),
        }
    }
    if reasons.is_empty() {
        Verdict::Unsigned { looked_in }
    } else {
        Verdict::Invalid { reasons }
    }
}

/// Every signature found for one manifest digest across the sources.
#[derive(Debug, Default)]
pub struct Discovery {
    /// The manifest bytes (digest-checked).
    pub manifest: Vec<u8>,
    /// Signatures found, unverified, in source order.
    pub found: Vec<Found>,
    /// The sources asked.
    pub looked_in: Vec<String>,
    /// Lookups that failed for good (a 403, a malformed index), for the message.
    pub problems: Vec<String>,
    /// Lookups that may succeed later (a source down).
    pub transient: Vec<crate::FetchError>,
}

impl Discovery {
    /// The verdict with `keys`.
    pub fn judge(&self, digest: &str, keys: &[TrustedKey]) -> Verdict {
        let mut verdict = judge(
            digest,
            &self.manifest,
            &self.found,
            keys,
            self.looked_in.clone(),
        );
        if let Verdict::Invalid { reasons } = &mut verdict {
            reasons.extend(self.problems.iter().cloned());
        }
        verdict
    }
}

/// Looks up the signatures of `digest` in every source.
pub(crate) async fn discover_all(
    sources: &[crate::fetch::Source],
    digest: &str,
    manifest: &[u8],
    limits: LookupLimits,
) -> Discovery {
    let mut out = Discovery {
        manifest: manifest.to_vec(),
        ..Discovery::default()
    };
    // Every source at once, all within one deadline: a source that hangs neither delays nor hides the others, and
    // what each one yielded before the deadline still counts.
    let mut parts: Vec<[discover::Lookup; 2]> =
        sources.iter().map(|_| Default::default()).collect();
    let mut complete = vec![false; sources.len()];
    let lookups = sources
        .iter()
        .zip(parts.iter_mut().zip(complete.iter_mut()))
        .map(|(source, (part, done))| async move {
            discover::in_source(source, digest, limits.max_referrers, part).await;
            *done = true;
        });
    let _ = tokio::time::timeout(limits.deadline, futures_util::future::join_all(lookups)).await;
    for ((source, part), done) in sources.iter().zip(parts).zip(complete) {
        out.looked_in.push(source.name());
        for l in part {
            out.found.extend(l.found);
            out.transient.extend(l.transient);
            out.problems.extend(l.problems);
        }
        if !done {
            out.transient.push(crate::FetchError::Unreachable {
                source_name: source.name(),
                detail: format!(
                    "signature lookup not complete within its deadline of {:?}",
                    limits.deadline
                ),
            });
        }
    }
    out
}

/// Bounds of one signature lookup (docs/security.md, "Limits and deadlines"): a source that lists many referrers, or
/// whose requests each hang until their own deadline, holds a device in `pending` (and `twinflash verify`) for at
/// most [`LookupLimits::deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupLimits {
    /// Total deadline of one lookup, every source asked at once (default 2 min). When it passes, what was found
    /// counts; a source not done is a transient failure (`registry-unreachable`): under `require` the device waits
    /// and retries unless a signature already verified.
    pub deadline: std::time::Duration,
    /// Referrers examined per source (default 32; those listed with a signature type first). The others are named
    /// in the verdict's reasons.
    pub max_referrers: usize,
}

impl Default for LookupLimits {
    fn default() -> Self {
        Self {
            deadline: std::time::Duration::from_secs(120),
            max_referrers: 32,
        }
    }
}

mod verifier;
pub mod write;
pub use verifier::Verifier;

#[cfg(test)]
mod tests;
