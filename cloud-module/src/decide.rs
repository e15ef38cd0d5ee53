//! The controller's pure decision: given what a Device asks for, what was already done for it and
//! (in a second step) what the registry said, publish an intent, reject it, resolve it first,
//! retry later or do nothing. No I/O here; `controller.rs` gathers the input and applies the result.

use mqtt_schema::{ErrorCode, FirmwareRef, RefKind};

use crate::seams::{ResolveError, ResolvedArtifact};

/// Where a device declares its chip: this annotation on the Device, else on its DeviceModel.
pub const CHIP_ANNOTATION: &str = "twinflash.io/chip";

/// The outcome twinflash recorded for one intent: the condition shown on the Device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The intent was published to the edge.
    IntentPublished,
    /// The desired value is not a valid OCI reference or fails the twin value check.
    InvalidReference,
    /// The registry has no such artifact (re-checked at every resync).
    ArtifactNotFound,
    /// The artifact is not a twinflash firmware artifact (or has no chip annotation).
    UnsupportedArtifact,
    /// The artifact's chip differs from the chip the Device (or its DeviceModel) declares.
    ChipMismatch,
    /// The Device's signature policy requires a trusted signature and the artifact has none (re-checked at
    /// every resync: a signature may be pushed later).
    Unsigned,
    /// The Device's signature policy requires a trusted signature and none of the artifact's verifies
    /// (re-checked at every resync: a good signature may be pushed later).
    SignatureInvalid,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 7] = [
        Reason::IntentPublished,
        Reason::InvalidReference,
        Reason::ArtifactNotFound,
        Reason::UnsupportedArtifact,
        Reason::ChipMismatch,
        Reason::Unsigned,
        Reason::SignatureInvalid,
    ];

    /// The Event reason / condition reason string (PascalCase).
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::IntentPublished => "IntentPublished",
            Reason::InvalidReference => "InvalidReference",
            Reason::ArtifactNotFound => "ArtifactNotFound",
            Reason::UnsupportedArtifact => "UnsupportedArtifact",
            Reason::ChipMismatch => "ChipMismatch",
            Reason::Unsigned => "Unsigned",
            Reason::SignatureInvalid => "SignatureInvalid",
        }
    }

    /// Parses [`Reason::as_str`].
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The stable error code of a rejection (`None` for a publication).
    pub const fn code(self) -> Option<ErrorCode> {
        match self {
            Reason::IntentPublished => None,
            Reason::InvalidReference => Some(ErrorCode::InvalidReference),
            Reason::ArtifactNotFound => Some(ErrorCode::NotFound),
            Reason::UnsupportedArtifact => Some(ErrorCode::UnsupportedArtifact),
            Reason::ChipMismatch => Some(ErrorCode::ChipMismatch),
            Reason::Unsigned => Some(ErrorCode::Unsigned),
            Reason::SignatureInvalid => Some(ErrorCode::SignatureInvalid),
        }
    }

    /// Whether the outcome stands until the intent changes (so the same intent is not redone).
    /// A missing artifact is re-checked: it may be pushed after the Device was edited. So is a missing or bad
    /// signature: the artifact may be signed later, without any change to the Device.
    pub const fn is_final(self) -> bool {
        !matches!(
            self,
            Reason::ArtifactNotFound | Reason::Unsigned | Reason::SignatureInvalid
        )
    }
}

/// What twinflash did for one Device generation. Kept in memory and in the status (see
/// `status.rs`) so a restart or a stale cache never redoes or rolls back an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `metadata.generation` of the Device the decision was made for.
    pub generation: i64,
    /// The desired `firmware` value as written in the Device spec.
    pub desired: String,
    /// The digest-pinned reference the edge has been sent (empty when none yet).
    pub pinned: String,
    /// The outcome.
    pub reason: Reason,
    /// A human readable explanation (Event note, condition message).
    pub message: String,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `metadata.generation` of the Device (0 when the API server gave none).
    pub generation: i64,
    /// The desired `firmware` value; `None` when the Device has no `firmware` property.
    pub desired: Option<&'a str>,
    /// The chip the Device (annotation) or its DeviceModel declares.
    pub device_chip: Option<&'a str>,
    /// The newest record known (in memory or from the status).
    pub last: Option<&'a Record>,
    /// The registry's answer for `desired`, once [`Decision::Resolve`] was acted on.
    pub resolution: Option<&'a Result<ResolvedArtifact, ResolveError>>,
}

/// Why nothing is to be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noop {
    /// The Device has no `firmware` property.
    NoFirmwareProperty,
    /// The desired value is empty (no intent).
    EmptyDesired,
    /// This intent was already handled (published or finally rejected).
    AlreadyDone,
    /// The Device seen is older than the one already acted on (stale cache).
    Stale,
}

/// What the controller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing.
    Nothing(Noop),
    /// Ask the resolver about `reference`, then decide again with its answer.
    Resolve {
        /// The desired value to pin and inspect.
        reference: String,
    },
    /// Publish `record.pinned`, then record it (status, Event `IntentPublished`).
    Publish(Record),
    /// Do not publish; record the rejection (status, Warning Event `record.reason`).
    Reject(Record),
    /// A transient failure: return an error so the controller backs off and retries.
    Retry {
        /// The stable code (metric label).
        code: ErrorCode,
        /// What failed.
        message: String,
    },
}

/// What a registry error decides: a missing artifact (re-checked at resync) or one that is not a twinflash
/// artifact is rejected through `reject`; a transient error (registry down, credentials refused) is retried with
/// `retry_message`.
pub fn registry_error(
    e: &ResolveError,
    reject: impl FnOnce(Reason, String) -> Decision,
    retry_message: String,
) -> Decision {
    match e {
        ResolveError::NotFound { .. } => reject(Reason::ArtifactNotFound, e.to_string()),
        ResolveError::Unsupported { .. } => reject(Reason::UnsupportedArtifact, e.to_string()),
        ResolveError::Auth { .. } | ResolveError::Unreachable { .. } => Decision::Retry {
            code: e.code(),
            message: retry_message,
        },
    }
}

/// The pure decision. Called once without a resolution, and again with the resolver's answer
/// when the first call returned [`Decision::Resolve`].
pub fn decide(input: Input<'_>) -> Decision {
    let Some(desired) = input.desired else {
        return Decision::Nothing(Noop::NoFirmwareProperty);
    };
    if desired.is_empty() {
        return Decision::Nothing(Noop::EmptyDesired);
    }
    if let Some(last) = input.last {
        if input.generation < last.generation {
            return Decision::Nothing(Noop::Stale);
        }
        if last.desired == desired && last.reason.is_final() {
            return Decision::Nothing(Noop::AlreadyDone);
        }
    }
    let previous_pin = input.last.map(|l| l.pinned.clone()).unwrap_or_default();
    let reject = |reason: Reason, message: String| {
        Decision::Reject(Record {
            generation: input.generation,
            desired: desired.to_owned(),
            pinned: previous_pin.clone(),
            reason,
            message,
        })
    };
    let kind = match FirmwareRef::classify(desired) {
        Ok(kind) => kind,
        Err(e) => {
            return reject(
                Reason::InvalidReference,
                format!("firmware {desired:?} is not a digest-pinnable OCI reference: {e}"),
            );
        }
    };
    let Some(resolution) = input.resolution else {
        return Decision::Resolve {
            reference: desired.to_owned(),
        };
    };
    let artifact = match resolution {
        Ok(a) => a,
        Err(e) => return registry_error(e, reject, e.to_string()),
    };
    let pinned = match kind {
        RefKind::Pinned(_) => desired.to_owned(),
        RefKind::Tag => artifact.digest_ref.clone(),
    };
    if FirmwareRef::parse(&pinned).is_err() {
        return Decision::Retry {
            code: ErrorCode::Internal,
            message: format!(
                "resolver returned {pinned:?} for {desired:?}, not a digest reference"
            ),
        };
    }
    if let Some(want) = input.device_chip {
        match artifact.chip.as_deref() {
            None => {
                return reject(
                    Reason::UnsupportedArtifact,
                    format!(
                        "{pinned} has no io.twinflash.firmware.chip annotation; the device declares {want}"
                    ),
                );
            }
            Some(have) if !have.eq_ignore_ascii_case(want) => {
                return reject(
                    Reason::ChipMismatch,
                    format!("{pinned} is built for chip {have}; the device declares {want}"),
                );
            }
            Some(_) => {}
        }
    }
    let version = artifact
        .version
        .as_deref()
        .map(|v| format!(" (version {v})"))
        .unwrap_or_default();
    Decision::Publish(Record {
        generation: input.generation,
        desired: desired.to_owned(),
        message: format!("published {pinned}{version} to the edge"),
        pinned,
        reason: Reason::IntentPublished,
    })
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
