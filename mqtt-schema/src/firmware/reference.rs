//! Digest-pinned OCI references, the only values the `firmware` twin accepts:
//! `[registry[:port]/]repo/path[:tag]@sha256:<64 lowercase hex>`, within the twin value charset.

use std::fmt;
use std::str::FromStr;

use crate::ErrorCode;
use crate::validate::{MAX_TWIN_VALUE_LEN, validate_twin_value};

const SHA256_PREFIX: &str = "sha256:";

/// Why a string is not a usable firmware reference. Every variant has the code `invalid-reference`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareRefError {
    /// The reference is empty.
    #[error("empty firmware reference")]
    Empty,
    /// Longer than a twin value may be.
    #[error("firmware reference is {len} bytes, a twin value holds at most 512")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Holds a character outside the twin charset `[a-zA-Z0-9-_.,:/@#]` (e.g. `+`, a space).
    #[error(
        "firmware reference {reference:?} has characters outside the twin charset [a-zA-Z0-9-_.,:/@#]"
    )]
    Charset {
        /// The reference.
        reference: String,
    },
    /// No `@sha256:...` digest (tag-only references are not intents).
    #[error("firmware reference {reference:?} is not pinned to a digest (@sha256:<hex>)")]
    MissingDigest {
        /// The reference.
        reference: String,
    },
    /// A digest algorithm other than sha256.
    #[error("digest algorithm {algorithm:?} is not supported, only sha256")]
    UnsupportedAlgorithm {
        /// The algorithm named.
        algorithm: String,
    },
    /// The digest is not 64 lowercase hex characters.
    #[error("digest {digest:?} is not sha256:<64 lowercase hex>")]
    InvalidDigest {
        /// The digest part.
        digest: String,
    },
    /// The registry is not `host[:port]`.
    #[error("registry {registry:?} is not host[:port]")]
    InvalidRegistry {
        /// The registry part.
        registry: String,
    },
    /// The repository path is empty or not lowercase `[a-z0-9]` components joined by `.`, `_`,
    /// `__` or dashes.
    #[error("repository {repository:?} is not a valid OCI repository path")]
    InvalidRepository {
        /// The repository part.
        repository: String,
    },
    /// The tag is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("tag {tag:?} is not a valid OCI tag")]
    InvalidTag {
        /// The tag part.
        tag: String,
    },
}

impl FirmwareRefError {
    /// Always [`ErrorCode::InvalidReference`].
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidReference
    }
}

/// A digest-pinned OCI reference to a firmware artifact. `Display` gives back the parsed string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FirmwareRef {
    raw: String,
    registry: Option<String>,
    repository: String,
    tag: Option<String>,
    digest: String,
}

/// What a desired `firmware` value is (see [`FirmwareRef::classify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefKind {
    /// Carries a sha256 digest: an intent the edge can take as is.
    Pinned(FirmwareRef),
    /// A tag or a bare repository (`:latest` implied): to be pinned to a digest first.
    Tag,
}

/// `[registry/]repository[:tag]`, checked.
struct Name<'a> {
    registry: Option<&'a str>,
    repository: &'a str,
    tag: Option<&'a str>,
}

/// The twin value checks every reference passes first.
fn check_value(s: &str) -> Result<(), FirmwareRefError> {
    if s.is_empty() {
        return Err(FirmwareRefError::Empty);
    }
    if s.len() > MAX_TWIN_VALUE_LEN {
        return Err(FirmwareRefError::TooLong { len: s.len() });
    }
    if !validate_twin_value(s) {
        return Err(FirmwareRefError::Charset {
            reference: s.to_owned(),
        });
    }
    Ok(())
}

/// Checks `sha256:<64 lowercase hex>`.
fn check_digest(digest: &str) -> Result<(), FirmwareRefError> {
    let (algorithm, hex) =
        digest
            .split_once(':')
            .ok_or_else(|| FirmwareRefError::InvalidDigest {
                digest: digest.to_owned(),
            })?;
    if algorithm != "sha256" {
        return Err(FirmwareRefError::UnsupportedAlgorithm {
            algorithm: algorithm.to_owned(),
        });
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(FirmwareRefError::InvalidDigest {
            digest: digest.to_owned(),
        });
    }
    Ok(())
}

/// Splits and checks `[registry[:port]/]repo/path[:tag]`.
fn parse_name(name: &str) -> Result<Name<'_>, FirmwareRefError> {
    let last_slash = name.rfind('/');
    let (name, tag) = match name.rfind(':') {
        Some(colon) if last_slash.is_none_or(|sl| colon > sl) => {
            (name.get(..colon).unwrap_or(""), name.get(colon + 1..))
        }
        _ => (name, None),
    };
    if let Some(tag) = tag
        && !tag_ok(tag)
    {
        return Err(FirmwareRefError::InvalidTag {
            tag: tag.to_owned(),
        });
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    };
    if let Some(registry) = registry
        && !registry_ok(registry)
    {
        return Err(FirmwareRefError::InvalidRegistry {
            registry: registry.to_owned(),
        });
    }
    if repository.is_empty() || !repository.split('/').all(component_ok) {
        return Err(FirmwareRefError::InvalidRepository {
            repository: repository.to_owned(),
        });
    }
    Ok(Name {
        registry,
        repository,
        tag,
    })
}

impl FirmwareRef {
    /// Parses and checks a reference (see [`FirmwareRefError`] for what is refused).
    pub fn parse(s: &str) -> Result<Self, FirmwareRefError> {
        check_value(s)?;
        let (name, digest) = s
            .rsplit_once('@')
            .ok_or_else(|| FirmwareRefError::MissingDigest {
                reference: s.to_owned(),
            })?;
        check_digest(digest)?;
        let name = parse_name(name)?;
        Ok(FirmwareRef {
            raw: s.to_owned(),
            registry: name.registry.map(str::to_owned),
            repository: name.repository.to_owned(),
            tag: name.tag.map(str::to_owned),
            digest: digest.to_owned(),
        })
    }

    /// Classifies a desired `firmware` value: a digest-pinned reference ([`RefKind::Pinned`]),
    /// a tag-only reference to be pinned first ([`RefKind::Tag`]), or an invalid value (every
    /// error has the code `invalid-reference`). The grammar is the same as [`FirmwareRef::parse`].
    pub fn classify(s: &str) -> Result<RefKind, FirmwareRefError> {
        check_value(s)?;
        if s.contains('@') {
            FirmwareRef::parse(s).map(RefKind::Pinned)
        } else {
            parse_name(s).map(|_| RefKind::Tag)
        }
    }

    /// The reference as written (the same string `Display` gives).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The registry `host[:port]`, if the reference names one.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// The repository path, e.g. `fw/blinky`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (informative only: the digest is the identity).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The 64 hex characters of the digest.
    pub fn digest_hex(&self) -> &str {
        self.digest
            .strip_prefix(SHA256_PREFIX)
            .unwrap_or(&self.digest)
    }
}

impl fmt::Display for FirmwareRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for FirmwareRef {
    type Err = FirmwareRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FirmwareRef::parse(s)
    }
}

fn tag_ok(tag: &str) -> bool {
    let mut b = tag.bytes();
    let first_ok = b
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
    first_ok
        && tag.len() <= 128
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn registry_ok(registry: &str) -> bool {
    let (host, port) = match registry.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host.split('.').all(label_ok) && port_ok
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while b.get(i).is_some_and(alnum) {
            i += 1;
        }
        if i == start {
            return false;
        }
        match b.get(i) {
            None => return true,
            Some(b'.') => i += 1,
            Some(b'_') => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            Some(b'-') => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            Some(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";

    #[test]
    fn parses_the_spec_examples() {
        let r = FirmwareRef::parse(&format!("registry.local:5000/fw/blinky:1.4.2@sha256:{HEX}"))
            .unwrap();
        assert_eq!(r.registry(), Some("registry.local:5000"));
        assert_eq!(r.repository(), "fw/blinky");
        assert_eq!(r.tag(), Some("1.4.2"));
        assert_eq!(r.digest_hex(), HEX);
        assert_eq!(r.digest(), format!("sha256:{HEX}"));
        let r = FirmwareRef::parse(&format!("fw/blinky@sha256:{HEX}")).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            (None, "fw/blinky", None)
        );
        let r = FirmwareRef::parse(&format!("localhost/blinky@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry(), Some("localhost"));
    }

    #[test]
    fn names_what_is_wrong() {
        let e = |s: &str| FirmwareRef::parse(s).unwrap_err();
        assert_eq!(e(""), FirmwareRefError::Empty);
        assert!(matches!(
            e("registry.local:5000/fw/blinky:1.2.3"),
            FirmwareRefError::MissingDigest { .. }
        ));
        assert!(matches!(
            e("fw/b:1.2.3+b5"),
            FirmwareRefError::Charset { .. }
        ));
        assert!(matches!(
            e(&format!("fw/b@sha512:{HEX}")),
            FirmwareRefError::UnsupportedAlgorithm { .. }
        ));
        assert!(matches!(
            e(&format!("fw/b@sha256:{}", HEX.to_uppercase())),
            FirmwareRefError::InvalidDigest { .. }
        ));
        assert!(matches!(
            e("fw/b@sha256:abc"),
            FirmwareRefError::InvalidDigest { .. }
        ));
        assert!(matches!(
            e(&format!("fw/Blinky@sha256:{HEX}")),
            FirmwareRefError::InvalidRepository { .. }
        ));
        assert!(matches!(
            e(&format!("reg-.io/b@sha256:{HEX}")),
            FirmwareRefError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            e(&format!("fw/b:.x@sha256:{HEX}")),
            FirmwareRefError::InvalidTag { .. }
        ));
        assert!(matches!(
            e(&format!("oci://r.io/b@sha256:{HEX}")),
            FirmwareRefError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            e(&"a".repeat(513)),
            FirmwareRefError::TooLong { len: 513 }
        ));
        assert_eq!(e("x").code(), ErrorCode::InvalidReference);
    }

    #[test]
    fn displays_the_original_string() {
        for s in [
            format!("registry.local:5000/fw/blinky:1.4.2@sha256:{HEX}"),
            format!("fw/blinky@sha256:{HEX}"),
            format!("localhost/a_b__c-d--e/x.y@sha256:{HEX}"),
        ] {
            let r = FirmwareRef::parse(&s).unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(r.as_str(), s);
        }
    }

    /// The table of the controller's former `reference::classify` (cloud-module), minus its
    /// sha512 case: the edge takes sha256 only, so a sha512 pin is invalid here.
    #[test]
    fn classifies_pinned_tag_and_invalid() {
        let pinned = format!("registry.local:5000/fw/blinky@sha256:{HEX}");
        let pinned_tag = format!("registry.local:5000/fw/blinky:1.4.2@sha256:{HEX}");
        let kind = |s: &str| match FirmwareRef::classify(s) {
            Ok(RefKind::Pinned(r)) => {
                assert_eq!(r.as_str(), s);
                Ok("pinned")
            }
            Ok(RefKind::Tag) => Ok("tag"),
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::InvalidReference);
                Err(())
            }
        };
        let cases: Vec<(String, Result<&str, ()>)> = vec![
            (pinned, Ok("pinned")),
            (pinned_tag, Ok("pinned")),
            ("registry.local:5000/fw/blinky:1.4.2".into(), Ok("tag")),
            ("localhost/fw/a_b__c-d--e".into(), Ok("tag")),
            ("fw/blinky".into(), Ok("tag")),
            ("registry.local:5000/fw/blinky:1.4.2+b7".into(), Err(())),
            ("registry.local:5000/fw/Blinky:1".into(), Err(())),
            (format!("r.local/fw/b@sha256:{}", &HEX[1..]), Err(())),
            (format!("r.local/fw/b@md5:{HEX}"), Err(())),
            (format!("r.local/fw/b@sha512:{HEX}{HEX}"), Err(())),
            (
                format!("r.local/fw/b@sha256:{}", HEX.to_uppercase()),
                Err(()),
            ),
            ("r.local/fw/b:".into(), Err(())),
            ("r.local/fw/b:.x".into(), Err(())),
            ("r.local:port/fw/b".into(), Err(())),
            ("r.local/".into(), Err(())),
            ("r.local/fw//b".into(), Err(())),
            ("r.local/fw/b-".into(), Err(())),
            ("".into(), Err(())),
            ("has space".into(), Err(())),
            ("{\"json\":1}".into(), Err(())),
            ("a".repeat(513), Err(())),
        ];
        for (value, want) in cases {
            assert_eq!(kind(&value), want, "{value}");
        }
    }
}
