//! `[devices.confirm]`: how a device proves that it runs a flashed firmware (docs/contract.md section 3,
//! docs/hardware.md "Confirmation"). One flat table for every kind (a Device's config data carries it as one JSON
//! object); the keys of the other kinds are refused by name.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use twinflash_flasher::FlasherConfig;

/// The placeholder of a serial `pattern`.
pub const VERSION_PLACEHOLDER: &str = "{version}";
/// Default `baud` of a serial check.
pub const DEFAULT_BAUD: u32 = 115_200;
/// Default `length` of a memory check: the bytes read, the version string ending at its first NUL.
pub const DEFAULT_MEMORY_LENGTH: u64 = 32;
/// Largest `length` of a memory check.
pub const MAX_MEMORY_LENGTH: u64 = 256;

/// `[devices.confirm]`: the check that a flashed firmware runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmConfig {
    /// How the check is made.
    pub kind: ConfirmKind,
    /// `kind = "command"`: the program and its arguments, run without a shell, with `{version}`, `{reference}` and
    /// `{device}` replaced. Exit 0 confirms; exit 3 says the device runs another version (`version-mismatch`);
    /// anything else means "not yet" and the check runs again until the timeout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// `kind = "serial"`: the device's UART (e.g. `/dev/ttyUSB0`), listened to from before the flash on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PathBuf>,
    /// `kind = "serial"`: its speed (default 115200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    /// `kind = "serial"`: the line the firmware prints at boot, with `{version}` where it prints its version, e.g.
    /// `"boot version={version}"` (see [`VersionPattern`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `kind = "memory"`: where the running firmware keeps its version string (an integer, or a `"0x..."` string).
    #[serde(
        default,
        deserialize_with = "address",
        skip_serializing_if = "Option::is_none"
    )]
    pub address: Option<u64>,
    /// `kind = "memory"`: the ELF symbol of that string, looked up in the flashed artifact (ELF artifacts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// `kind = "memory"`: bytes read (default 32, at most 256); the string ends at its first NUL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// `kind = "twin"`: the twin property the device's own application reports its running version in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// The device must pass the check within this many seconds of the end of its flash (default 60).
    #[serde(default = "default_confirm_timeout")]
    pub timeout_secs: u64,
    /// A check that fails is run again after this many milliseconds while time is left (default 1000).
    #[serde(default = "default_confirm_interval")]
    pub interval_ms: u64,
}

/// The kinds of confirmation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfirmKind {
    /// An external health check (`argv`).
    Command,
    /// A boot line on the device's UART (`port`, `baud`, `pattern`).
    Serial,
    /// A version string in the running device's memory, read through the flasher (`address` or `symbol`).
    Memory,
    /// A twin property the device's own application reports (`property`; MQTT mode only).
    Twin,
}

impl ConfirmKind {
    /// The name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfirmKind::Command => "command",
            ConfirmKind::Serial => "serial",
            ConfirmKind::Memory => "memory",
            ConfirmKind::Twin => "twin",
        }
    }

    /// The keys of this kind (besides `kind`, `timeout_secs`, `interval_ms`).
    fn keys(self) -> &'static [&'static str] {
        match self {
            ConfirmKind::Command => &["argv"],
            ConfirmKind::Serial => &["port", "baud", "pattern"],
            ConfirmKind::Memory => &["address", "symbol", "length"],
            ConfirmKind::Twin => &["property"],
        }
    }
}

fn default_confirm_timeout() -> u64 {
    60
}
fn default_confirm_interval() -> u64 {
    1000
}

/// An address as an integer or a `"0x..."` / decimal string.
fn address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    let parsed = match Raw::deserialize(d)? {
        Raw::Int(n) => Some(n),
        Raw::Text(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
    };
    parsed.map(Some).ok_or_else(|| {
        serde::de::Error::custom("an address is a non-negative integer or a \"0x...\" string")
    })
}

impl ConfirmConfig {
    /// `baud`, or its default.
    pub fn baud(&self) -> u32 {
        self.baud.unwrap_or(DEFAULT_BAUD)
    }

    /// `length`, or its default.
    pub fn length(&self) -> u64 {
        self.length.unwrap_or(DEFAULT_MEMORY_LENGTH)
    }

    /// What the config says, for `--check-config`.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            ConfirmKind::Command => format!("the command `{}`", self.argv.join(" ")),
            ConfirmKind::Serial => format!(
                "a line {:?} on {} at {} baud, listened to from before the flash on",
                self.pattern.as_deref().unwrap_or_default(),
                self.port
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display(),
                self.baud()
            ),
            ConfirmKind::Memory => format!(
                "the version string read through the flasher at {} ({} bytes)",
                match (&self.symbol, self.address) {
                    (Some(s), _) => format!("the ELF symbol `{s}`"),
                    (None, Some(a)) => format!("{a:#x}"),
                    (None, None) => "?".into(),
                },
                self.length()
            ),
            ConfirmKind::Twin => format!(
                "the device's own report of its version in the twin property `{}` (MQTT mode)",
                self.property.as_deref().unwrap_or_default()
            ),
        };
        format!(
            "confirmed by {what} within {} s (checked every {} ms), the previous firmware flashed back otherwise",
            self.timeout_secs, self.interval_ms
        )
    }

    /// The keys that are set.
    fn set_keys(&self) -> Vec<&'static str> {
        [
            ("argv", !self.argv.is_empty()),
            ("port", self.port.is_some()),
            ("baud", self.baud.is_some()),
            ("pattern", self.pattern.is_some()),
            ("address", self.address.is_some()),
            ("symbol", self.symbol.is_some()),
            ("length", self.length.is_some()),
            ("property", self.property.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// Checks what serde cannot, for a device flashed by `flasher`. Returns the key (relative to the device entry,
    /// e.g. `confirm.port`) and why.
    pub fn check(&self, flasher: &FlasherConfig) -> Result<(), (String, String)> {
        let fail = |key: &str, why: String| Err((format!("confirm.{key}"), why));
        if self.timeout_secs == 0 || self.timeout_secs > 86_400 {
            return fail(
                "timeout_secs",
                format!("{} is outside 1..=86400", self.timeout_secs),
            );
        }
        if self.interval_ms == 0 || self.interval_ms > 60_000 {
            return fail(
                "interval_ms",
                format!("{} is outside 1..=60000", self.interval_ms),
            );
        }
        let kind = self.kind.as_str();
        if let Some(stray) = self
            .set_keys()
            .into_iter()
            .find(|k| !self.kind.keys().contains(k))
        {
            return fail(
                stray,
                format!(
                    "is not a setting of kind = \"{kind}\" (its keys: {})",
                    self.kind.keys().join(", ")
                ),
            );
        }
        match self.kind {
            ConfirmKind::Command => {
                if self.argv.first().is_none_or(String::is_empty) {
                    return fail("argv", "must name a program (no shell is used)".into());
                }
            }
            ConfirmKind::Serial => {
                match &self.port {
                    Some(p) if p.is_absolute() => {}
                    Some(p) => {
                        return fail("port", format!("{} is not an absolute path", p.display()));
                    }
                    None => {
                        return fail(
                            "port",
                            "missing: the device's UART, e.g. /dev/ttyUSB0".into(),
                        );
                    }
                }
                if !(50..=12_000_000).contains(&self.baud()) {
                    return fail("baud", format!("{} is outside 50..=12000000", self.baud()));
                }
                let Some(pattern) = &self.pattern else {
                    return fail(
                        "pattern",
                        "missing: the boot line with {version}, e.g. \"boot version={version}\""
                            .into(),
                    );
                };
                if let Err(why) = VersionPattern::parse(pattern) {
                    return fail("pattern", why);
                }
            }
            ConfirmKind::Memory => {
                match (&self.address, &self.symbol) {
                    (Some(_), Some(_)) => {
                        return fail("symbol", "set `address` or `symbol`, not both".into());
                    }
                    (None, None) => {
                        return fail(
                            "address",
                            "missing: the address of the version string, or its ELF `symbol`"
                                .into(),
                        );
                    }
                    (None, Some(s))
                        if s.is_empty() || s.len() > 256 || s.contains(char::is_whitespace) =>
                    {
                        return fail("symbol", format!("{s:?} is not an ELF symbol name"));
                    }
                    _ => {}
                }
                if !(1..=MAX_MEMORY_LENGTH).contains(&self.length()) {
                    return fail(
                        "length",
                        format!("{} is outside 1..={MAX_MEMORY_LENGTH}", self.length()),
                    );
                }
                if !matches!(flasher, FlasherConfig::Gdb(_) | FlasherConfig::Simulated(_)) {
                    return fail(
                        "kind",
                        format!(
                            "\"memory\" reads through the flasher, and the {} backend cannot read a running device's memory (gdb and simulated can)",
                            flasher.kind()
                        ),
                    );
                }
            }
            ConfirmKind::Twin => match &self.property {
                Some(p) if mqtt_schema::validate::validate_twin_key(p) => {}
                Some(p) => {
                    return fail(
                        "property",
                        format!(
                            "{p:?} is not a twin property name (1-128 of a-z A-Z 0-9 - _ . , : / @ #)"
                        ),
                    );
                }
                None => {
                    return fail(
                        "property",
                        "missing: the twin property the device's application reports its version in"
                            .into(),
                    );
                }
            },
        }
        Ok(())
    }
}

/// A serial `pattern`: the text around its one `{version}`. A line matches when it contains the text before
/// `{version}`, then a version (no whitespace), then the text after it; the version is the longest such run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionPattern {
    prefix: String,
    suffix: String,
}

impl VersionPattern {
    /// Parses a pattern: exactly one `{version}`, text around it of printable characters, at most 256 bytes.
    pub fn parse(pattern: &str) -> Result<VersionPattern, String> {
        if pattern.len() > 256 || pattern.chars().any(char::is_control) {
            return Err(format!(
                "{pattern:?} must be at most 256 bytes of printable text"
            ));
        }
        let mut parts = pattern.split(VERSION_PLACEHOLDER);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(prefix), Some(suffix), None) if !(prefix.is_empty() && suffix.is_empty()) => {
                Ok(VersionPattern {
                    prefix: prefix.to_owned(),
                    suffix: suffix.to_owned(),
                })
            }
            (Some(_), Some(_), None) => Err(
                "\"{version}\" alone matches any word of any line: say what surrounds it, e.g. \"boot version={version}\"".into(),
            ),
            _ => Err(format!(
                "{pattern:?} must contain {VERSION_PLACEHOLDER} exactly once"
            )),
        }
    }

    /// The version `line` prints, if it matches (see the type's doc); the first match in the line.
    pub fn version_in<'l>(&self, line: &'l str) -> Option<&'l str> {
        let mut from = 0;
        while let Some(at) = line[from..].find(&self.prefix) {
            let start = from + at + self.prefix.len();
            let rest = &line[start..];
            let word = rest
                .find(char::is_whitespace)
                .map_or(rest, |end| &rest[..end]);
            // The longest run of the word followed by the suffix.
            let found = word
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .rev()
                .find(|&end| rest[end..].starts_with(&self.suffix));
            if let Some(end) = found {
                return Some(&rest[..end]);
            }
            if self.prefix.is_empty() {
                return None;
            }
            // Past the first byte of this occurrence, on a char boundary.
            from = start - self.prefix.len() + self.prefix.chars().next().map_or(1, char::len_utf8);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_in(pattern: &str, line: &str) -> Option<String> {
        VersionPattern::parse(pattern)
            .unwrap()
            .version_in(line)
            .map(str::to_owned)
    }

    #[test]
    fn a_pattern_finds_the_version_a_line_prints() {
        let p = "boot version={version}";
        assert_eq!(
            version_in(p, "boot version=1.0.0").as_deref(),
            Some("1.0.0")
        );
        assert_eq!(
            version_in(p, "[00:01] boot version=2.1.0-rc1 (built today)").as_deref(),
            Some("2.1.0-rc1")
        );
        assert_eq!(version_in(p, "boot version="), None);
        assert_eq!(version_in(p, "boot version= 1.0.0"), None);
        assert_eq!(version_in(p, "crash"), None);
        assert_eq!(version_in(p, "BOOT VERSION=1.0.0"), None);
        // A suffix: the longest version before it, so a suffix character inside the version is kept.
        let dotted = "fw v{version}. ok";
        assert_eq!(
            version_in(dotted, "fw v1.0.0. ok").as_deref(),
            Some("1.0.0")
        );
        assert_eq!(version_in(dotted, "fw v1.0.0 ok"), None);
        let bracketed = "<{version}>";
        assert_eq!(
            version_in(bracketed, "app <3.2.1> up").as_deref(),
            Some("3.2.1")
        );
        // The first occurrence of the prefix that is followed by a version.
        assert_eq!(
            version_in(p, "boot version= then boot version=4.0.0").as_deref(),
            Some("4.0.0")
        );
        // Non-ASCII text around it does not trip the search.
        assert_eq!(version_in("é={version}", "ééé=1.2").as_deref(), Some("1.2"));
        assert_eq!(
            version_in("{version} booted", "9.9.9 booted").as_deref(),
            Some("9.9.9")
        );
    }

    #[test]
    fn a_pattern_needs_one_placeholder_and_text_around_it() {
        for bad in [
            "boot version=",
            "{version}",
            "{version} and {version}",
            "line\nbreak {version}",
        ] {
            assert!(VersionPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(VersionPattern::parse(&"x".repeat(300)).is_err());
    }
}
