//! The controller's signature policy (`[signatures]` in its config): before an intent is published (or, in mode
//! `dmi`, a tag's pin written), the digest-pinned reference is verified against the policy of its Device, so
//! under `require` an unsigned or badly signed artifact never leaves the cloud. The edge agent checks again with
//! its own policy; this check stops the intent at its source and tells the operator why, on the Device.
//!
//! Every path to the edge goes through the Device controller's publication: a hand-set `firmware` value, a
//! FirmwareRollout step (the rollout writes the Device's desired value; the Device controller publishes it), and
//! mode `dmi`'s pin of a tag. A FirmwareRollout also checks its pinned reference once, against its namespace's
//! policy, so a rollout of unsigned firmware fails before it patches any Device.
//!
//! Three pieces: [`Policies`] (which policy a Device has), [`SignatureGate`] (the checker behind a verdict
//! cache, so a rollout over 1000 Devices verifies once per TTL, not 1000 times) and the pure
//! [`judge_publication`], which turns a verdict into a publication or a rejection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mqtt_schema::{DeviceId, FirmwareRef};
use twinflash_artifact::FetchConfig;
use twinflash_artifact::signature::{Mode, Policy, Verdict, Verifier};

use crate::config::{ConfigError, SignaturesConfig};
use crate::decide::{Decision, Reason, Record, registry_error};
use crate::resolver::map_error;
use crate::seams::{ResolveError, SignatureChecker};

/// How long a verdict is kept: long enough that a rollout's Devices share one verification, short enough that
/// a revoked key or a newly pushed signature is seen within a minute (well inside a resync period).
pub const VERDICT_TTL: Duration = Duration::from_secs(60);

/// Verdicts a [`SignatureGate`] keeps (all are dropped when full, as in `resolver::PinnedCache`).
pub const VERDICT_CACHE_ENTRIES: usize = 4096;

/// The name of the default policy in messages.
pub const DEFAULT_SCOPE: &str = "default";

/// A policy and where it comes from (`default`, `<namespace>` or `<namespace>/<device>`), for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedPolicy {
    /// Where the policy is configured.
    pub scope: String,
    /// The policy.
    pub policy: Arc<Policy>,
}

/// Every Device's policy: the most specific one wins (namespace + device, then namespace, then the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    default: ScopedPolicy,
    namespaces: HashMap<String, ScopedPolicy>,
    devices: HashMap<(String, String), ScopedPolicy>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies::new(Policy::default(), Vec::new())
    }
}

impl Policies {
    /// The default policy and the overrides `(namespace, device, policy)`; a later override of the same scope
    /// replaces an earlier one (the config refuses duplicates before this).
    pub fn new(default: Policy, overrides: Vec<(String, Option<String>, Policy)>) -> Policies {
        let mut p = Policies {
            default: ScopedPolicy {
                scope: DEFAULT_SCOPE.to_owned(),
                policy: Arc::new(default),
            },
            namespaces: HashMap::new(),
            devices: HashMap::new(),
        };
        for (namespace, device, policy) in overrides {
            let policy = Arc::new(policy);
            match device {
                Some(d) => {
                    let scope = format!("{namespace}/{d}");
                    p.devices
                        .insert((namespace, d), ScopedPolicy { scope, policy });
                }
                None => {
                    let scope = namespace.clone();
                    p.namespaces
                        .insert(namespace, ScopedPolicy { scope, policy });
                }
            }
        }
        p
    }

    /// Reads every key file of `cfg` (once per policy). An override without keys trusts the default's. A file
    /// that cannot be read or parsed, or a policy that verifies without a key, is refused with the file or the
    /// override named: the controller does not start.
    pub fn load(cfg: &SignaturesConfig) -> Result<Policies, ConfigError> {
        let default = Policy::load(cfg.mode, &cfg.keys).map_err(|e| ConfigError::Invalid {
            key: "signatures.keys",
            reason: e.to_string(),
        })?;
        let mut overrides = Vec::with_capacity(cfg.overrides.len());
        for o in &cfg.overrides {
            let refuse = |reason: String| ConfigError::Invalid {
                key: "signatures.overrides",
                reason: format!("{}: {reason}", o.scope()),
            };
            let policy = if o.keys.is_empty() {
                let p = Policy {
                    mode: o.mode,
                    keys: default.keys.clone(),
                };
                p.check().map_err(|e| refuse(e.to_string()))?;
                p
            } else {
                Policy::load(o.mode, &o.keys).map_err(|e| refuse(e.to_string()))?
            };
            overrides.push((o.namespace.clone(), o.device.clone(), policy));
        }
        Ok(Policies::new(default, overrides))
    }

    /// The policy of Device `id`.
    pub fn for_device(&self, id: &DeviceId) -> &ScopedPolicy {
        let namespace = crate::seams::namespace_of(id);
        self.devices
            .get(&(namespace.to_owned(), id.name().to_owned()))
            .unwrap_or_else(|| self.for_namespace(namespace))
    }

    /// The policy of the Devices of `namespace` that have no override of their own.
    pub fn for_namespace(&self, namespace: &str) -> &ScopedPolicy {
        self.namespaces.get(namespace).unwrap_or(&self.default)
    }

    /// Whether any policy looks at signatures.
    pub fn any_enabled(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.namespaces.values())
            .chain(self.devices.values())
            .any(|p| p.policy.mode != Mode::Off)
    }
}

/// What the gate found for one reference under one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The policy's scope.
    pub scope: String,
    /// The policy's mode (never `off`: an `off` policy is not checked).
    pub mode: Mode,
    /// The verdict, or why there is none yet.
    pub verdict: Result<Verdict, ResolveError>,
}

/// Verdicts by (pinned reference, policy scope), with when they were made.
type VerdictCache = HashMap<(String, String), (Instant, Verdict)>;

/// A [`SignatureChecker`] behind the Devices' [`Policies`] and a verdict cache.
///
/// Verdicts (verified, unsigned, invalid) are kept for a TTL per (pinned reference, policy): the bytes behind a
/// digest never change, but its signatures do (one pushed later) and so do the keys' standing (a key revoked by
/// a config change restarts the controller; a signature deleted from the registry is seen after the TTL).
/// Lookup failures are never kept: a registry that comes back is asked at the next retry.
pub struct SignatureGate {
    policies: Policies,
    checker: Arc<dyn SignatureChecker>,
    ttl: Duration,
    verdicts: Mutex<VerdictCache>,
}

impl std::fmt::Debug for SignatureGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureGate")
            .field("policies", &self.policies)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SignatureGate {
    /// A gate over `checker` with [`VERDICT_TTL`].
    pub fn new(policies: Policies, checker: Arc<dyn SignatureChecker>) -> SignatureGate {
        SignatureGate {
            policies,
            checker,
            ttl: VERDICT_TTL,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// The same gate keeping verdicts for `ttl` (zero: never kept).
    pub fn with_ttl(mut self, ttl: Duration) -> SignatureGate {
        self.ttl = ttl;
        self
    }

    /// The policies.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The verdict of Device `device`'s policy on `pinned`; `None` when its policy is `off`.
    pub async fn check_device(&self, device: &DeviceId, pinned: &str) -> Option<Checked> {
        self.check(self.policies.for_device(device), pinned).await
    }

    /// The verdict of `namespace`'s policy on `pinned` (a FirmwareRollout's check); `None` when it is `off`.
    pub async fn check_namespace(&self, namespace: &str, pinned: &str) -> Option<Checked> {
        self.check(self.policies.for_namespace(namespace), pinned)
            .await
    }

    async fn check(&self, scoped: &ScopedPolicy, pinned: &str) -> Option<Checked> {
        let mode = scoped.policy.mode;
        if mode == Mode::Off {
            return None;
        }
        let key = (pinned.to_owned(), scoped.scope.clone());
        let verdict = match self.cached(&key) {
            Some(v) => Ok(v),
            None => {
                let answer = match FirmwareRef::parse(pinned) {
                    Ok(r) => self.checker.verify(&r, &scoped.policy).await,
                    Err(e) => Err(ResolveError::Unsupported {
                        reference: pinned.to_owned(),
                        detail: format!("not a digest reference: {e}"),
                    }),
                };
                if let Ok(v) = &answer {
                    self.keep(key, v);
                }
                answer
            }
        };
        Some(Checked {
            scope: scoped.scope.clone(),
            mode,
            verdict,
        })
    }

    fn cached(&self, key: &(String, String)) -> Option<Verdict> {
        let m = self.verdicts.lock().ok()?;
        let (at, v) = m.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    fn keep(&self, key: (String, String), verdict: &Verdict) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut m) = self.verdicts.lock() {
            if m.len() >= VERDICT_CACHE_ENTRIES {
                m.clear();
            }
            m.insert(key, (Instant::now(), verdict.clone()));
        }
    }
}

/// The real [`SignatureChecker`]: twinflash-artifact's [`Verifier`] with the controller's registry options.
#[derive(Debug)]
pub struct RegistrySignatures {
    verifier: Verifier,
}

impl RegistrySignatures {
    /// A checker speaking plain HTTP to `plain_http` hosts and HTTPS elsewhere, with the credentials
    /// twinflash-artifact finds (as `resolver::RegistryResolver` does, so both see the same registry).
    pub fn with_plain_http(
        plain_http: Vec<String>,
    ) -> Result<RegistrySignatures, twinflash_artifact::error::FetchError> {
        // The verifier uses the registry options only; its cache directory is never touched.
        let mut cfg = FetchConfig::new(std::env::temp_dir());
        cfg.plain_http = plain_http;
        Ok(RegistrySignatures {
            verifier: Verifier::new(&cfg)?,
        })
    }
}

impl SignatureChecker for RegistrySignatures {
    fn verify<'a>(
        &'a self,
        reference: &'a FirmwareRef,
        policy: &'a Policy,
    ) -> BoxFuture<'a, Result<Verdict, ResolveError>> {
        Box::pin(async move {
            self.verifier
                .verify(reference, policy)
                .await
                .map_err(|e| map_error(reference.as_str(), e))
        })
    }
}

/// The decision on `publish` (what [`crate::decide::decide`] would publish) once its signatures are checked:
///
/// - verified: published, its message naming the signer (`signed by release (sha256:…)`);
/// - unsigned or invalid under `warn`: published, its message carrying the warning;
/// - unsigned or invalid under `require`: rejected ([`Reason::Unsigned`], [`Reason::SignatureInvalid`]) with the
///   verdict's description, keeping `previous_pin` (what the edge was last sent) as the record's pin;
/// - no verdict: a missing or unsupported artifact is rejected as the resolver's answer would be, anything
///   else (registry down) retried with backoff.
pub fn judge_publication(publish: Record, previous_pin: &str, checked: &Checked) -> Decision {
    let pinned = publish.pinned.clone();
    let reject = |reason: Reason, message: String| {
        Decision::Reject(Record {
            pinned: previous_pin.to_owned(),
            reason,
            message,
            ..publish.clone()
        })
    };
    let verdict = match &checked.verdict {
        Ok(v) => v,
        Err(e) => return registry_error(e, reject, format!("signatures of {pinned}: {e}")),
    };
    if let Verdict::Verified(v) = verdict {
        return Decision::Publish(Record {
            message: format!("{}, signed by {} ({})", publish.message, v.signer, v.key_id),
            ..publish
        });
    }
    let (reason, code) = match verdict.code() {
        Some(c @ mqtt_schema::ErrorCode::SignatureInvalid) => (Reason::SignatureInvalid, c),
        Some(c) => (Reason::Unsigned, c),
        None => (Reason::Unsigned, mqtt_schema::ErrorCode::Unsigned),
    };
    let policy = format!(
        "signature policy {} ({})",
        checked.scope,
        checked.mode.as_str()
    );
    match checked.mode {
        Mode::Require => reject(
            reason,
            format!(
                "{pinned} not published: {policy} needs a trusted signature: {} [{code}]",
                verdict.describe()
            ),
        ),
        Mode::Warn | Mode::Off => Decision::Publish(Record {
            message: format!(
                "{}; warning, {policy}: {} [{code}]",
                publish.message,
                verdict.describe()
            ),
            ..publish
        }),
    }
}

#[cfg(test)]
#[path = "signatures_tests.rs"]
mod tests;
