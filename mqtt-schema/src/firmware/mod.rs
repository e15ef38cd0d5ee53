//! twinflash's firmware twin conventions (docs/contract.md sections 1 and 3): the
//! three twin names, digest-pinned OCI references, version strings and the `firmware-state` values.

mod reference;
mod state;

pub use reference::{FirmwareRef, FirmwareRefError, RefKind};
pub use state::{FirmwareState, FirmwareStateError, StateCode};

use crate::types::TwinMap;
use crate::validate::{MAX_TWIN_VALUE_LEN, is_twin_char, validate_twin_key};

/// Twin holding the firmware reference: `expected` written by the cloud, `actual` by the edge.
pub const TWIN_FIRMWARE: &str = "firmware";
/// Twin holding the installed firmware version (edge `actual`).
pub const TWIN_FIRMWARE_VERSION: &str = "firmware-version";
/// Twin holding the firmware state machine's state (edge `actual`).
pub const TWIN_FIRMWARE_STATE: &str = "firmware-state";
/// The `metadata.type` twinflash gives its twins.
pub const TWIN_TYPE_STRING: &str = "string";

/// The names of a device's three firmware twins (default names, or with a per-device prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TwinNames {
    /// Name of the reference twin (default `firmware`).
    pub firmware: String,
    /// Name of the version twin (default `firmware-version`).
    pub version: String,
    /// Name of the state twin (default `firmware-state`).
    pub state: String,
}

impl Default for TwinNames {
    fn default() -> Self {
        TwinNames {
            firmware: TWIN_FIRMWARE.to_owned(),
            version: TWIN_FIRMWARE_VERSION.to_owned(),
            state: TWIN_FIRMWARE_STATE.to_owned(),
        }
    }
}

/// A twin-name prefix that would make an invalid twin key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "twin name prefix {prefix:?} makes an invalid twin key (charset [a-zA-Z0-9-_.,:/@#], at most 128 bytes)"
)]
pub struct InvalidTwinPrefix {
    /// The refused prefix.
    pub prefix: String,
}

impl InvalidTwinPrefix {
    /// The stable code: a configuration error, reported as `internal`.
    pub fn code(&self) -> crate::ErrorCode {
        crate::ErrorCode::Internal
    }
}

impl TwinNames {
    /// The names with `prefix` prepended (e.g. `main-` gives `main-firmware`); `""` gives the
    /// defaults. Fails when a name would not pass edgecore's twin key check.
    pub fn with_prefix(prefix: &str) -> Result<Self, InvalidTwinPrefix> {
        let names = TwinNames {
            firmware: format!("{prefix}{TWIN_FIRMWARE}"),
            version: format!("{prefix}{TWIN_FIRMWARE_VERSION}"),
            state: format!("{prefix}{TWIN_FIRMWARE_STATE}"),
        };
        if [&names.firmware, &names.version, &names.state]
            .iter()
            .all(|n| validate_twin_key(n))
        {
            Ok(names)
        } else {
            Err(InvalidTwinPrefix {
                prefix: prefix.to_owned(),
            })
        }
    }
}

/// The firmware intent in a twin map (a delta's or a get result's `twin`): the `expected` value
/// of the firmware twin, parsed. `None` when there is no non-empty expected value (no intent);
/// `Some(Err)` when the intent is not a usable reference (report `rejected:invalid-reference`).
pub fn firmware_intent(
    names: &TwinNames,
    twins: &TwinMap,
) -> Option<Result<FirmwareRef, FirmwareRefError>> {
    let twin = twins.get(&names.firmware)?.as_ref()?;
    if twin.is_deleted() || twin.expected_value().is_empty() {
        return None;
    }
    Some(FirmwareRef::parse(twin.expected_value()))
}

/// A firmware version as a twin value: every character outside the twin charset becomes `_`
/// (`1.4.2+b7` -> `1.4.2_b7`), cut to 512 characters. An empty version stays empty.
pub fn version_to_twin(version: &str) -> String {
    version
        .chars()
        .take(MAX_TWIN_VALUE_LEN)
        .map(|c| if is_twin_char(c) { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_fit_the_twin_charset() {
        assert_eq!(version_to_twin("1.4.2+b7"), "1.4.2_b7");
        assert_eq!(version_to_twin("v1 é"), "v1__");
        assert_eq!(version_to_twin(&"9".repeat(600)).len(), 512);
    }

    #[test]
    fn intent_is_the_expected_firmware() {
        use crate::types::{MsgTwin, TwinValue};
        let names = TwinNames::default();
        let hex = "5d46f53d9fa65c9b2ea381117133b7bb9cfde3905da307dad7d4576efc76859f";
        let twin = |expected: &str| MsgTwin {
            expected: Some(TwinValue::new(expected)),
            ..MsgTwin::default()
        };
        let mut twins = TwinMap::new();
        assert!(firmware_intent(&names, &twins).is_none());
        twins.insert("firmware".into(), Some(twin("")));
        assert!(firmware_intent(&names, &twins).is_none());
        twins.insert("firmware".into(), Some(twin("fw/b:1.0")));
        assert!(matches!(
            firmware_intent(&names, &twins),
            Some(Err(FirmwareRefError::MissingDigest { .. }))
        ));
        twins.insert("firmware".into(), Some(twin(&format!("fw/b@sha256:{hex}"))));
        assert_eq!(
            firmware_intent(&names, &twins)
                .unwrap()
                .unwrap()
                .digest_hex(),
            hex
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(TwinNames::with_prefix("").unwrap(), TwinNames::default());
        assert_eq!(
            TwinNames::with_prefix("m2-").unwrap().state,
            "m2-firmware-state"
        );
        assert!(TwinNames::with_prefix("a b").is_err());
        assert!(TwinNames::with_prefix(&"p".repeat(120)).is_err());
    }
}
