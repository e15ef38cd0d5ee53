//! cosign's signature format ("simple signing"): what it stores, and the payload it signs.
//!
//! cosign stores the signatures of `repo@sha256:<hex>` in the same repository under the tag
//! `sha256-<hex>.sig`: an OCI image manifest whose layers each hold one signed payload, media
//! type [`SIMPLE_SIGNING_MEDIA_TYPE`], with the base64 signature in the layer annotation
//! [`SIGNATURE_ANNOTATION`]. The payload names the manifest digest it signs; a verifier checks
//! that digest (cosign, sigstore-rs and containers/image all do). The `docker-reference` it also
//! names is recorded, not enforced, as cosign does: a mirror or an OCI layout serves the same
//! digest under another name. Facts and sources: docs/firmware-artifacts.md, "Signatures".

use serde::{Deserialize, Serialize};

/// Media type of a layer holding a simple-signing payload.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation with the base64 (standard alphabet) signature of the layer's payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Layer annotation with a Rekor bundle (keyless or transparency-logged signatures).
pub const REKOR_BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// Layer annotation with a Fulcio certificate (keyless signatures).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// The `critical.type` of every cosign image signature.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// cosign's tag for the signatures of `digest` (`sha256:<hex>` -> `sha256-<hex>.sig`).
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// The OCI 1.1 referrers tag schema fallback (`sha256:<hex>` -> `sha256-<hex>`): an image index of
/// the referrers, for registries without the referrers API.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// A simple-signing payload as cosign writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// What is signed.
    pub critical: Critical,
    /// Free annotations (`cosign sign -a`); cosign writes `null` when there are none.
    pub optional: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The part of the payload a verifier checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Critical {
    /// The repository the signer named.
    pub identity: Identity,
    /// The manifest digest signed.
    pub image: Image,
    /// Always [`SIGNATURE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
}

/// `critical.identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `registry/repository` as the signer named it.
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

/// `critical.image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the signed manifest.
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

impl Payload {
    /// The payload for `docker_reference` (`host[:port]/repo`) at `digest`.
    pub fn new(docker_reference: &str, digest: &str) -> Self {
        Self {
            critical: Critical {
                identity: Identity {
                    docker_reference: docker_reference.to_owned(),
                },
                image: Image {
                    docker_manifest_digest: digest.to_owned(),
                },
                kind: SIGNATURE_TYPE.to_owned(),
            },
            optional: None,
        }
    }

    /// The bytes cosign signs: compact JSON in this field order, no trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a payload; checks its type.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let p: Self = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a simple-signing payload: {e}"))?;
        if p.critical.kind != SIGNATURE_TYPE {
            return Err(format!(
                "payload type {:?} is not {SIGNATURE_TYPE:?}",
                p.critical.kind
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_are_cosigns() {
        let p = Payload::new("registry.example/fw/sensor", "sha256:ab");
        assert_eq!(
            String::from_utf8(p.to_bytes()).unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"registry.example/fw/sensor"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"cosign container image signature"},"optional":null}"#
        );
        assert_eq!(Payload::parse(&p.to_bytes()).unwrap(), p);
        assert!(
            Payload::parse(br#"{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"other"},"optional":null}"#).is_err()
        );
    }

    #[test]
    fn tags_follow_cosign_and_the_referrers_schema() {
        assert_eq!(signature_tag("sha256:abc"), "sha256-abc.sig");
        assert_eq!(referrers_tag("sha256:abc"), "sha256-abc");
    }
}
