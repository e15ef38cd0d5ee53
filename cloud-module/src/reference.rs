//! Classifies a `firmware` desired value: a digest-pinned OCI reference (an intent the edge can
//! take), a tag-only reference (to be pinned first) or an invalid value. Pure; a local copy of
//! the rules so this crate does not depend on `mqtt-schema`'s unfinished `FirmwareRef`.

/// KubeEdge's twin value check (`dtcommon/util.go`): `^[a-zA-Z0-9-_.,:/@#]{1,512}$`.
pub fn is_valid_twin_value(value: &str) -> bool {
    (1..=512).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:/@#".contains(&b))
}

/// What a desired `firmware` value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefKind {
    /// Carries a digest (`...@sha256:<64 hex>`): publishable as is.
    Pinned,
    /// A tag or a bare repository (`:latest` implied): must be pinned to a digest first.
    Tag,
}

/// Why a value is not an OCI reference twinflash accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRef(pub String);

/// Classifies `value`: twin charset first, then the OCI reference grammar
/// (`[host[:port]/]path[:tag][@algo:hex]`, distribution's reference grammar, lowercase paths).
pub fn classify(value: &str) -> Result<RefKind, InvalidRef> {
    if !is_valid_twin_value(value) {
        return Err(InvalidRef(
            "value fails the KubeEdge twin value check ^[a-zA-Z0-9-_.,:/@#]{1,512}$".into(),
        ));
    }
    let (name_tag, digest) = match value.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (value, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    check_name(name)?;
    Ok(if digest.is_some() {
        RefKind::Pinned
    } else {
        RefKind::Tag
    })
}

fn check_digest(d: &str) -> Result<(), InvalidRef> {
    let (algo, hex) = d
        .split_once(':')
        .ok_or_else(|| InvalidRef(format!("digest {d:?} has no algorithm")))?;
    let want = match algo {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(InvalidRef(format!("unsupported digest algorithm {algo:?}"))),
    };
    if hex.len() != want
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(InvalidRef(format!(
            "digest must be {algo}:<{want} lowercase hex digits>"
        )));
    }
    Ok(())
}

fn check_tag(t: &str) -> Result<(), InvalidRef> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(InvalidRef(format!("invalid tag {t:?}")))
    }
}

fn check_name(name: &str) -> Result<(), InvalidRef> {
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            check_host(first)?;
            parts.remove(0);
        }
    }
    if parts.is_empty() {
        return Err(InvalidRef(
            "reference has a registry but no repository".into(),
        ));
    }
    for p in parts {
        check_path_component(p)?;
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), InvalidRef> {
    let (h, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    let host_ok = !h.is_empty()
        && h.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(InvalidRef(format!("invalid registry host {host:?}")))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(p: &str) -> Result<(), InvalidRef> {
    let bytes = p.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut ok = !bytes.is_empty() && alnum(bytes[0]) && bytes.last().is_some_and(|b| alnum(*b));
    let mut i = 0;
    while ok && i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or "-"+
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
    }
    if ok {
        Ok(())
    } else {
        Err(InvalidRef(format!(
            "invalid repository path component {p:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn table() {
        let pinned = format!("registry.local:5000/fw/blinky@sha256:{HEX}");
        let pinned_tag = format!("registry.local:5000/fw/blinky:1.4.2@sha256:{HEX}");
        let cases: Vec<(String, Result<RefKind, ()>)> = vec![
            (pinned, Ok(RefKind::Pinned)),
            (pinned_tag, Ok(RefKind::Pinned)),
            (
                "registry.local:5000/fw/blinky:1.4.2".into(),
                Ok(RefKind::Tag),
            ),
            ("localhost/fw/a_b__c-d--e".into(), Ok(RefKind::Tag)),
            ("fw/blinky".into(), Ok(RefKind::Tag)),
            ("registry.local:5000/fw/blinky:1.4.2+b7".into(), Err(())),
            ("registry.local:5000/fw/Blinky:1".into(), Err(())),
            (format!("r.local/fw/b@sha256:{}", &HEX[1..]), Err(())),
            (format!("r.local/fw/b@md5:{HEX}"), Err(())),
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
            let got = classify(&value).map_err(|_| ());
            assert_eq!(got, want, "{value}");
        }
    }

    #[test]
    fn twin_value_charset() {
        assert!(is_valid_twin_value("a-_.,:/@#Z9"));
        assert!(!is_valid_twin_value(""));
        assert!(!is_valid_twin_value("a+b"));
        assert!(is_valid_twin_value(&"a".repeat(512)));
    }
}
