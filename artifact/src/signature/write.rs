//! Writing signatures (`twinflash sign`, `twinflash push --sign-key`), in the two places verifiers
//! look:
//! - [`SignFormat::Cosign`]: cosign's tag `sha256-<hex>.sig`, an image manifest with one
//!   simple-signing layer per signature. An existing `.sig` manifest keeps its layers and gets one
//!   more, as cosign does. `cosign verify --key` (legacy format), sigstore-rs and containers/image
//!   (skopeo, podman with `use-sigstore-attachments`) read this.
//! - [`SignFormat::Bundle`]: an OCI 1.1 referrer (`subject` = the artifact) holding a Sigstore
//!   bundle v0.3 whose DSSE envelope signs an in-toto statement about the digest. On a registry
//!   without the referrers API the referrer is also listed in the referrers tag schema index
//!   `sha256-<hex>`, as the distribution spec asks of clients.

use oci_client::Reference;
use serde_json::json;

use super::bundle::{BUNDLE_MEDIA_TYPE, Bundle, COSIGN_SIGN_PREDICATE};
use super::cosign::{
    Payload, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, referrers_tag, signature_tag,
};
use super::key::SigningKey;
use crate::auth::Credentials;
use crate::error::FetchError;
use crate::fetch::sha256_of;
use crate::format::MANIFEST_MEDIA_TYPE;
use crate::push::PushError;
use crate::registry::{TlsOptions, push_client};

/// OCI image manifest media type (signature manifests).
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type (the referrers tag schema).
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type (cosign's `.sig` manifests carry one).
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The OCI empty descriptor's media type, content `{}`.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// Where and how to write a signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SignFormat {
    /// cosign's `.sig` tag with a simple-signing payload (the default: every cosign-compatible
    /// verifier reads it, and every registry stores it).
    #[default]
    Cosign,
    /// A Sigstore bundle as an OCI 1.1 referrer.
    Bundle,
}

/// A signature written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `host/repo[:tag]@sha256:<hex>` of the signed artifact.
    pub pinned_reference: String,
    /// The signed manifest digest.
    pub digest: String,
    /// The signing key's id.
    pub key_id: String,
    /// The format.
    pub format: SignFormat,
    /// Where it was stored: `tag sha256-<hex>.sig`, or `referrer sha256:<digest>`.
    pub location: String,
}

/// Signs the firmware artifact at `reference` (a tag or a digest) with `key`.
pub async fn sign(
    tls: &TlsOptions,
    credentials: &Credentials,
    reference: &str,
    key: &SigningKey,
    format: SignFormat,
) -> Result<Signed, PushError> {
    let inspected = crate::inspect::inspect(tls, credentials, reference).await?;
    let parsed: Reference =
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| PushError::InvalidReference {
                reference: reference.to_owned(),
                reason: e.to_string(),
            })?;
    let registry = parsed.resolve_registry().to_owned();
    let repository = parsed.repository().to_owned();
    let digest = inspected.manifest_digest.clone();
    let auth = credentials.resolve().map_err(FetchError::from)?;
    let client = push_client(tls, &auth, &registry).await?;
    let w = Writer {
        client,
        auth: auth.for_registry(&registry),
        registry: registry.clone(),
        repository: repository.clone(),
    };
    let location = match format {
        SignFormat::Cosign => {
            let payload =
                Payload::new(&format!("{}/{repository}", parsed.registry()), &digest).to_bytes();
            w.cosign(&digest, &payload, key).await?
        }
        SignFormat::Bundle => {
            w.bundle(
                &digest,
                inspected.manifest.len(),
                key,
                &format!("{}/{repository}", parsed.registry()),
            )
            .await?
        }
    };
    Ok(Signed {
        pinned_reference: inspected.pinned_reference,
        digest,
        key_id: key.public().key_id(),
        format,
        location,
    })
}

struct Writer {
    client: oci_client::Client,
    auth: oci_client::secrets::RegistryAuth,
    registry: String,
    repository: String,
}

impl Writer {
    fn at(&self, tag_or_digest: &str) -> Reference {
        if tag_or_digest.starts_with("sha256:") {
            Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                tag_or_digest.to_owned(),
            )
        } else {
            Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag_or_digest.to_owned(),
            )
        }
    }

    fn oci(&self, e: oci_client::errors::OciDistributionError) -> PushError {
        PushError::Registry(FetchError::from_oci(&self.registry, e))
    }

    async fn blob(&self, bytes: &[u8]) -> Result<String, PushError> {
        let digest = sha256_of(bytes);
        let at = self.at(&digest);
        if !self
            .client
            .blob_exists(&at, &digest)
            .await
            .map_err(|e| self.oci(e))?
        {
            self.client
                .push_blob(&at, bytes.to_vec(), &digest)
                .await
                .map_err(|e| self.oci(e))?;
        }
        Ok(digest)
    }

    /// The manifest at a tag, if there is one.
    async fn existing(
        &self,
        tag: &str,
        accept: &str,
    ) -> Result<Option<serde_json::Value>, PushError> {
        match self
            .client
            .pull_manifest_raw(&self.at(tag), &self.auth, &[accept])
            .await
        {
            Ok((bytes, _)) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) => match FetchError::from_oci(&self.registry, e) {
                FetchError::NotFound { .. } => Ok(None),
                e => Err(PushError::Registry(e)),
            },
        }
    }

    async fn put(
        &self,
        tag_or_digest: &str,
        body: &serde_json::Value,
        media_type: &'static str,
    ) -> Result<String, PushError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| PushError::Registry(FetchError::Config(e.to_string())))?;
        self.client
            .push_manifest_raw(
                &self.at(tag_or_digest),
                bytes.clone(),
                http::HeaderValue::from_static(media_type),
            )
            .await
            .map_err(|e| self.oci(e))?;
        Ok(sha256_of(&bytes))
    }

    async fn cosign(
        &self,
        digest: &str,
        payload: &[u8],
        key: &SigningKey,
    ) -> Result<String, PushError> {
        use base64::Engine;
        let signature = base64::engine::general_purpose::STANDARD.encode(
            key.sign(payload)
                .map_err(|e| PushError::Registry(FetchError::Config(e.0)))?,
        );
        let payload_digest = self.blob(payload).await?;
        let tag = signature_tag(digest);
        let mut layers: Vec<serde_json::Value> = match self.existing(&tag, OCI_MANIFEST).await? {
            Some(m) => m["layers"].as_array().cloned().unwrap_or_default(),
            None => Vec::new(),
        };
        let layer = json!({
            "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
            "size": payload.len(),
            "digest": payload_digest,
            "annotations": { SIGNATURE_ANNOTATION: signature },
        });
        layers.retain(|l| l != &layer);
        layers.push(layer);
        // cosign's config: an image config listing the payloads as the layers' diff ids.
        let diff_ids: Vec<_> = layers.iter().map(|l| l["digest"].clone()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }))
        .unwrap_or_default();
        let config_digest = self.blob(&config).await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": config.len(), "digest": config_digest},
            "layers": layers,
        });
        self.put(&tag, &manifest, OCI_MANIFEST).await?;
        Ok(format!("tag {tag}"))
    }

    async fn bundle(
        &self,
        digest: &str,
        manifest_size: usize,
        key: &SigningKey,
        name: &str,
    ) -> Result<String, PushError> {
        let bundle = Bundle::sign_dsse(key, name, digest)
            .map_err(|e| PushError::Registry(FetchError::Config(e)))?;
        let bytes = serde_json::to_vec(&bundle)
            .map_err(|e| PushError::Registry(FetchError::Config(e.to_string())))?;
        let bundle_digest = self.blob(&bytes).await?;
        let empty_digest = self.blob(b"{}").await?;
        let annotations = json!({
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": COSIGN_SIGN_PREDICATE,
            "org.opencontainers.image.created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE_MEDIA_TYPE,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "size": 2, "digest": empty_digest},
            "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "size": bytes.len(), "digest": bundle_digest}],
            "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "size": manifest_size, "digest": digest},
            "annotations": annotations,
        });
        let own = sha256_of(&serde_json::to_vec(&manifest).unwrap_or_default());
        self.put(&own, &manifest, OCI_MANIFEST).await?;
        // A registry with the referrers API lists it now; one without needs the tag schema index.
        let listed = self
            .client
            .pull_referrers(&self.at(digest), Some(BUNDLE_MEDIA_TYPE))
            .await
            .is_ok_and(|index| index.manifests.iter().any(|d| d.digest == own));
        if !listed {
            let tag = referrers_tag(digest);
            let mut manifests: Vec<serde_json::Value> = match self.existing(&tag, OCI_INDEX).await?
            {
                Some(i) => i["manifests"].as_array().cloned().unwrap_or_default(),
                None => Vec::new(),
            };
            let size = serde_json::to_vec(&manifest)
                .map(|b| b.len())
                .unwrap_or_default();
            manifests.retain(|d| d["digest"] != own.as_str());
            manifests.push(json!({
                "mediaType": OCI_MANIFEST,
                "size": size,
                "digest": own,
                "artifactType": BUNDLE_MEDIA_TYPE,
                "annotations": annotations,
            }));
            let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
            self.put(&tag, &index, OCI_INDEX).await?;
        }
        Ok(format!("referrer {own}"))
    }
}
