use super::*;

fn unreachable() -> FetchError {
    FetchError::Unreachable {
        source_name: "m".into(),
        detail: String::new(),
    }
}

fn not_found(name: &str) -> FetchError {
    FetchError::NotFound {
        source_name: name.into(),
        what: String::new(),
    }
}

#[test]
fn a_transient_error_wins_else_the_origins() {
    let e = pick_error(vec![
        not_found("mirror"),
        unreachable(),
        not_found("origin"),
    ]);
    assert!(e.is_transient());
    let e = pick_error(vec![not_found("mirror"), not_found("origin")]);
    assert!(matches!(e, FetchError::NotFound { source_name, .. } if source_name == "origin"));
    assert!(!pick_error(Vec::new()).is_transient());
}

#[test]
fn only_digest_pinned_references_are_fetched() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let ok = parse_pinned(&format!("reg.local:5000/fw/blinky:1.4.2@{digest}")).unwrap();
    assert_eq!(ok.digest, digest);
    assert_eq!(ok.reference.repository(), "fw/blinky");
    for bad in [
        "reg.local:5000/fw/blinky:1.4.2".to_owned(),
        format!("reg.local:5000/fw/blinky@sha256:{}", "A".repeat(64)),
        format!("reg.local:5000/fw/blinky@sha512:{}", "a".repeat(128)),
        format!("reg.local:5000/fw/bl inky@{digest}"),
        String::new(),
    ] {
        let err = parse_pinned(&bad).unwrap_err();
        assert_eq!(
            err.code(),
            mqtt_schema::ErrorCode::InvalidReference,
            "{bad}"
        );
    }
}

#[test]
fn pinned_references_are_the_ones_oci_spec_parses() {
    let d = format!("sha256:{}", "ab".repeat(32));
    for s in [
        format!("127.0.0.1:5000/fw/blinky:1.4.2@{d}"),
        format!("registry.example/fw/blinky@{d}"),
        format!("localhost/blinky@{d}"),
        format!("blinky@{d}"),
        format!("fw/blinky:1.0@{d}"),
        format!("docker.io/fw/blinky@{d}"),
    ] {
        let ours = parse_pinned(&s).unwrap().reference;
        let theirs: Reference = s.parse().unwrap();
        assert_eq!(
            (
                ours.registry(),
                ours.repository(),
                ours.tag(),
                ours.digest()
            ),
            (
                theirs.registry(),
                theirs.repository(),
                theirs.tag(),
                theirs.digest()
            ),
            "{s}"
        );
        assert_eq!(ours.resolve_registry(), theirs.resolve_registry(), "{s}");
    }
}
