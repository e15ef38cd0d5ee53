//! Signature verification without a fetch: the controller checks an intent before it publishes it,
//! `twinflash verify` and `twinflash inspect` show what a reference carries.

use std::sync::Arc;

use super::{Discovery, LookupLimits, Mode, Policy, Verdict, discover_all};
use crate::error::FetchError;
use crate::fetch::{FetchConfig, Mirror, manifest_from, pinned, sources};
use crate::http::RegistryClient;

/// Looks up and verifies the signatures of digest-pinned references, in the mirrors then the
/// origin, with the registry options of a [`FetchConfig`] (its cache is not used).
pub struct Verifier {
    client: Arc<RegistryClient>,
    mirrors: Vec<Mirror>,
    limits: LookupLimits,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("mirrors", &self.mirrors)
            .finish()
    }
}

impl Verifier {
    /// Builds the registry client of `cfg` (TLS, credentials, plain-HTTP hosts, mirrors).
    pub fn new(cfg: &FetchConfig) -> Result<Self, FetchError> {
        let creds = Arc::new(cfg.credentials.resolve()?);
        Ok(Self {
            client: Arc::new(RegistryClient::new(&cfg.tls(), creds)?),
            mirrors: cfg.mirrors.clone(),
            limits: cfg.signature_lookup,
        })
    }

    /// The manifest of `reference` (digest-checked) and every signature found for it.
    pub async fn discover(
        &self,
        reference: &mqtt_schema::FirmwareRef,
    ) -> Result<Discovery, FetchError> {
        let pinned = pinned(reference)?;
        let sources = sources(&self.client, &self.mirrors, &pinned);
        let (manifest, _) = manifest_from(&sources, &pinned.digest).await?;
        Ok(discover_all(&sources, &pinned.digest, &manifest, self.limits).await)
    }

    /// The verdict of `policy` on `reference`. A source that could not be asked, when nothing
    /// verified, is an error (transient: ask again later), not a verdict.
    pub async fn verify(
        &self,
        reference: &mqtt_schema::FirmwareRef,
        policy: &Policy,
    ) -> Result<Verdict, FetchError> {
        if policy.mode == Mode::Off {
            return Err(FetchError::Config(
                "signature policy is off: nothing to verify".to_owned(),
            ));
        }
        let discovery = self.discover(reference).await?;
        let verdict = discovery.judge(reference.digest(), &policy.keys);
        match (&verdict, discovery.transient.into_iter().next()) {
            (Verdict::Verified(_), _) | (_, None) => Ok(verdict),
            (_, Some(e)) => Err(e),
        }
    }
}
