//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`, and the `+json;version=0.x`
//! media types before it) verified against a configured public key, offline.
//!
//! A bundle signs either a message (`messageSignature`: a signature over the message, with its
//! SHA-256) or a DSSE envelope (`dsseEnvelope`: an in-toto statement signed over DSSE's
//! pre-authentication encoding). For a firmware artifact the signed thing must be bound to the
//! manifest digest: the message is the manifest itself (its SHA-256 is the digest), or the
//! statement's `subject` lists the digest. Certificates (keyless signing) and transparency-log
//! entries are read but not verified: docs/security.md, "Keyless".

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::key::{PublicKey, SigningKey};

/// The v0.3 bundle media type (an OCI referrer's `artifactType` and layer media type).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto statement type (v1).
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// Whether `media_type` is a Sigstore bundle (v0.1 to v0.3, both spellings).
pub fn is_bundle_media_type(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.dev.sigstore.bundle")
}

/// A Sigstore bundle, the fields twinflash reads (protobuf-specs JSON names).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// The bundle media type.
    pub media_type: String,
    /// Key hint, certificate, transparency-log entries.
    #[serde(default)]
    pub verification_material: VerificationMaterial,
    /// A signature over a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_signature: Option<MessageSignature>,
    /// A DSSE envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsse_envelope: Option<Envelope>,
}

/// `verificationMaterial`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    /// A key hint (key-based signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<KeyHint>,
    /// A leaf certificate (keyless, v0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<serde_json::Value>,
    /// A certificate chain (keyless, v0.1/v0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_certificate_chain: Option<serde_json::Value>,
    /// Transparency-log entries (kept, not verified offline).
    #[serde(default)]
    pub tlog_entries: Vec<serde_json::Value>,
}

/// `publicKey`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyHint {
    /// Free text naming the key.
    #[serde(default)]
    pub hint: String,
}

/// `messageSignature`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSignature {
    /// The message's digest.
    pub message_digest: MessageDigest,
    /// base64 signature over the message.
    pub signature: String,
}

/// `messageDigest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageDigest {
    /// `SHA2_256`.
    pub algorithm: String,
    /// base64 digest.
    pub digest: String,
}

/// A DSSE envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// base64 payload.
    pub payload: String,
    /// The payload type (in-toto).
    pub payload_type: String,
    /// Signatures over the PAE.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// base64 signature.
    pub sig: String,
    /// Key id (free text).
    #[serde(default)]
    pub keyid: String,
}

/// DSSE's pre-authentication encoding: `DSSEv1 <len> <type> <len> <body>`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("bad base64: {e}"))
}

/// `sha256:<hex>` -> the 32 digest bytes.
fn digest_bytes(digest: &str) -> Result<Vec<u8>, String> {
    digest
        .strip_prefix("sha256:")
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| format!("{digest} is not a sha256 digest"))
}

impl Bundle {
    /// Reads a bundle.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let b: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("not a Sigstore bundle: {e}"))?;
        if !is_bundle_media_type(&b.media_type) {
            return Err(format!(
                "media type {:?} is not a Sigstore bundle",
                b.media_type
            ));
        }
        Ok(b)
    }

    /// Whether the bundle carries a certificate (keyless signing).
    pub fn is_keyless(&self) -> bool {
        self.verification_material.certificate.is_some()
            || self.verification_material.x509_certificate_chain.is_some()
    }

    /// Checks that the bundle signs `digest` (the manifest, `manifest` its bytes) with `key`.
    pub fn verify(&self, digest: &str, manifest: &[u8], key: &PublicKey) -> Result<(), String> {
        let want = digest_bytes(digest)?;
        if let Some(m) = &self.message_signature {
            if m.message_digest.algorithm != "SHA2_256" {
                return Err(format!(
                    "message digest algorithm {} is not SHA2_256",
                    m.message_digest.algorithm
                ));
            }
            if b64(&m.message_digest.digest)? != want {
                return Err("the bundle signs another message than this manifest".to_owned());
            }
            if !key.verifies(manifest, &b64(&m.signature)?) {
                return Err(format!(
                    "signature does not verify with key {}",
                    key.key_id()
                ));
            }
            return Ok(());
        }
        let Some(env) = &self.dsse_envelope else {
            return Err("bundle has neither messageSignature nor dsseEnvelope".to_owned());
        };
        let payload = b64(&env.payload)?;
        let signed = pae(&env.payload_type, &payload);
        let mut verified = false;
        for s in &env.signatures {
            if key.verifies(&signed, &b64(&s.sig)?) {
                verified = true;
                break;
            }
        }
        if !verified {
            return Err(format!(
                "no DSSE signature verifies with key {}",
                key.key_id()
            ));
        }
        if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(format!(
                "DSSE payload type {:?} is not an in-toto statement",
                env.payload_type
            ));
        }
        let statement: Statement = serde_json::from_slice(&payload)
            .map_err(|e| format!("DSSE payload is not an in-toto statement: {e}"))?;
        // An attestation (SBOM, provenance) signed by the same key is not a release signature.
        if statement.predicate_type != COSIGN_SIGN_PREDICATE {
            return Err(format!(
                "the statement is a {:?} attestation, not a signature ({COSIGN_SIGN_PREDICATE})",
                statement.predicate_type
            ));
        }
        let hex = hex::encode(&want);
        if statement.subject.iter().any(|s| {
            s.digest
                .get("sha256")
                .is_some_and(|d| d.eq_ignore_ascii_case(&hex))
        }) {
            Ok(())
        } else {
            Err("the statement's subject names other digests than this manifest".to_owned())
        }
    }

    /// A key-based bundle whose DSSE envelope signs a statement about `digest` (`name` is the
    /// repository), with cosign's signing predicate type.
    pub fn sign_dsse(key: &SigningKey, name: &str, digest: &str) -> Result<Self, String> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("{digest} is not a sha256 digest"))?;
        let statement = serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": name, "digest": {"sha256": hex}}],
            "predicateType": COSIGN_SIGN_PREDICATE,
            "predicate": {},
        });
        let payload = serde_json::to_vec(&statement).map_err(|e| e.to_string())?;
        let sig = key
            .sign(&pae(IN_TOTO_PAYLOAD_TYPE, &payload))
            .map_err(|e| e.to_string())?;
        let enc = base64::engine::general_purpose::STANDARD;
        Ok(Self {
            media_type: BUNDLE_MEDIA_TYPE.to_owned(),
            verification_material: VerificationMaterial {
                // cosign's hint: base64 of the SHA-256 of the public key's DER.
                public_key: Some(KeyHint {
                    hint: enc.encode(key.public().spki_sha256()),
                }),
                ..VerificationMaterial::default()
            },
            message_signature: None,
            dsse_envelope: Some(Envelope {
                payload: enc.encode(&payload),
                payload_type: IN_TOTO_PAYLOAD_TYPE.to_owned(),
                signatures: vec![EnvelopeSignature {
                    sig: enc.encode(sig),
                    keyid: String::new(),
                }],
            }),
        })
    }
}

/// The predicate type cosign gives the statement of an image signature in a bundle.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(default)]
    subject: Vec<Subject>,
    #[serde(default)]
    predicate_type: String,
}

#[derive(Debug, Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8_der(&SigningKey::generate_p256_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab");
    }

    #[test]
    fn dsse_bundles_bind_the_digest() {
        let k = key();
        let d = format!("sha256:{}", "ab".repeat(32));
        let b = Bundle::sign_dsse(&k, "r/x", &d).unwrap();
        let b = Bundle::parse(&serde_json::to_vec(&b).unwrap()).unwrap();
        b.verify(&d, b"", k.public()).unwrap();
        let other = format!("sha256:{}", "cd".repeat(32));
        assert!(
            b.verify(&other, b"", k.public())
                .unwrap_err()
                .contains("other digests")
        );
        assert!(b.verify(&d, b"", key().public()).is_err());
    }

    #[test]
    fn message_bundles_sign_the_manifest_itself() {
        use sha2::Digest;
        let k = key();
        let manifest = br#"{"schemaVersion":2}"#;
        let sum = sha2::Sha256::digest(manifest);
        let d = format!("sha256:{}", hex::encode(sum));
        let enc = base64::engine::general_purpose::STANDARD;
        let b = Bundle {
            media_type: BUNDLE_MEDIA_TYPE.to_owned(),
            verification_material: VerificationMaterial::default(),
            message_signature: Some(MessageSignature {
                message_digest: MessageDigest {
                    algorithm: "SHA2_256".to_owned(),
                    digest: enc.encode(sum),
                },
                signature: enc.encode(k.sign(manifest).unwrap()),
            }),
            dsse_envelope: None,
        };
        b.verify(&d, manifest, k.public()).unwrap();
        assert!(b.verify(&d, b"{}", k.public()).is_err());
    }
}
