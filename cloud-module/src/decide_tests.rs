//! Table tests of [`decide`].

use super::*;

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const HEX2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn pinned() -> String {
    format!("registry.local:5000/fw/blinky@sha256:{HEX}")
}
fn tag() -> String {
    "registry.local:5000/fw/blinky:1.4.2".to_owned()
}
fn tag_pinned() -> String {
    format!("registry.local:5000/fw/blinky:1.4.2@sha256:{HEX2}")
}
fn art(digest_ref: &str, chip: Option<&str>) -> Result<ResolvedArtifact, ResolveError> {
    Ok(ResolvedArtifact {
        digest_ref: digest_ref.to_owned(),
        chip: chip.map(str::to_owned),
        version: Some("1.4.2".into()),
    })
}
fn record(generation: i64, desired: &str, pinned: &str, reason: Reason) -> Record {
    Record {
        generation,
        desired: desired.to_owned(),
        pinned: pinned.to_owned(),
        reason,
        message: String::new(),
    }
}

/// What a row expects, without messages.
#[derive(Debug, PartialEq)]
enum Want {
    Nothing(Noop),
    Resolve(String),
    Publish { generation: i64, pinned: String },
    Reject { reason: Reason, pinned: String },
    Retry(ErrorCode),
}

fn summarize(d: Decision) -> Want {
    match d {
        Decision::Nothing(n) => Want::Nothing(n),
        Decision::Resolve { reference } => Want::Resolve(reference),
        Decision::Publish(r) => {
            assert_eq!(r.reason, Reason::IntentPublished);
            assert!(!r.message.is_empty());
            Want::Publish {
                generation: r.generation,
                pinned: r.pinned,
            }
        }
        Decision::Reject(r) => {
            assert!(!r.message.is_empty(), "a rejection explains itself");
            Want::Reject {
                reason: r.reason,
                pinned: r.pinned,
            }
        }
        Decision::Retry { code, message } => {
            assert!(!message.is_empty());
            Want::Retry(code)
        }
    }
}

struct Row {
    name: &'static str,
    generation: i64,
    desired: Option<String>,
    chip: Option<&'static str>,
    last: Option<Record>,
    resolution: Option<Result<ResolvedArtifact, ResolveError>>,
    want: Want,
}

fn row(name: &'static str, desired: Option<String>, want: Want) -> Row {
    Row {
        name,
        generation: 2,
        desired,
        chip: None,
        last: None,
        resolution: None,
        want,
    }
}

#[test]
fn decision_table() {
    let p = pinned();
    let rows = vec![
        row(
            "no firmware property",
            None,
            Want::Nothing(Noop::NoFirmwareProperty),
        ),
        row(
            "empty desired",
            Some(String::new()),
            Want::Nothing(Noop::EmptyDesired),
        ),
        row(
            "new pinned intent: resolve first",
            Some(p.clone()),
            Want::Resolve(p.clone()),
        ),
        Row {
            resolution: Some(art(&p, None)),
            ..row(
                "new pinned intent, resolved: publish as written",
                Some(p.clone()),
                Want::Publish {
                    generation: 2,
                    pinned: p.clone(),
                },
            )
        },
        row("tag: resolve first", Some(tag()), Want::Resolve(tag())),
        Row {
            resolution: Some(art(&tag_pinned(), None)),
            ..row(
                "tag, resolved: publish the pinned reference",
                Some(tag()),
                Want::Publish {
                    generation: 2,
                    pinned: tag_pinned(),
                },
            )
        },
        Row {
            resolution: Some(art(&tag(), None)),
            ..row(
                "tag, resolver gave no digest: retry, never publish a tag",
                Some(tag()),
                Want::Retry(ErrorCode::Internal),
            )
        },
        Row {
            last: Some(record(2, &p, &p, Reason::IntentPublished)),
            ..row(
                "same intent already published: nothing",
                Some(p.clone()),
                Want::Nothing(Noop::AlreadyDone),
            )
        },
        Row {
            generation: 5,
            last: Some(record(2, &p, &p, Reason::IntentPublished)),
            ..row(
                "same intent, newer generation (other spec edit): nothing",
                Some(p.clone()),
                Want::Nothing(Noop::AlreadyDone),
            )
        },
        Row {
            generation: 1,
            last: Some(record(2, &tag(), &tag_pinned(), Reason::IntentPublished)),
            ..row(
                "older generation than the record (stale cache): nothing",
                Some(p.clone()),
                Want::Nothing(Noop::Stale),
            )
        },
        Row {
            generation: 3,
            last: Some(record(2, &tag(), &tag_pinned(), Reason::IntentPublished)),
            ..row(
                "newer intent: resolve",
                Some(p.clone()),
                Want::Resolve(p.clone()),
            )
        },
        row(
            "tag with '+': invalid reference",
            Some("registry.local:5000/fw/blinky:1.4.2+b7".into()),
            Want::Reject {
                reason: Reason::InvalidReference,
                pinned: String::new(),
            },
        ),
        row(
            "sha512 pin: invalid, the edge takes sha256 only (never resolved nor published)",
            Some(format!("registry.local:5000/fw/blinky@sha512:{HEX}{HEX2}")),
            Want::Reject {
                reason: Reason::InvalidReference,
                pinned: String::new(),
            },
        ),
        Row {
            last: Some(record(1, &tag(), &tag_pinned(), Reason::IntentPublished)),
            ..row(
                "not an OCI reference: invalid, edge keeps the previous pin",
                Some("Not A Reference".into()),
                Want::Reject {
                    reason: Reason::InvalidReference,
                    pinned: tag_pinned(),
                },
            )
        },
        Row {
            last: Some(record(2, "bad ref", "", Reason::InvalidReference)),
            ..row(
                "same invalid intent already rejected: nothing",
                Some("bad ref".into()),
                Want::Nothing(Noop::AlreadyDone),
            )
        },
        Row {
            resolution: Some(Err(ResolveError::NotFound {
                reference: p.clone(),
            })),
            ..row(
                "artifact missing",
                Some(p.clone()),
                Want::Reject {
                    reason: Reason::ArtifactNotFound,
                    pinned: String::new(),
                },
            )
        },
        Row {
            last: Some(record(2, &p, "", Reason::ArtifactNotFound)),
            ..row(
                "artifact was missing: check again (it may have been pushed since)",
                Some(p.clone()),
                Want::Resolve(p.clone()),
            )
        },
        Row {
            resolution: Some(Err(ResolveError::Unsupported {
                reference: p.clone(),
                detail: "artifactType".into(),
            })),
            ..row(
                "not a firmware artifact",
                Some(p.clone()),
                Want::Reject {
                    reason: Reason::UnsupportedArtifact,
                    pinned: String::new(),
                },
            )
        },
        Row {
            resolution: Some(Err(ResolveError::Unreachable {
                reference: p.clone(),
                detail: "503".into(),
            })),
            ..row(
                "registry down: retry",
                Some(p.clone()),
                Want::Retry(ErrorCode::RegistryUnreachable),
            )
        },
        Row {
            resolution: Some(Err(ResolveError::Auth {
                reference: p.clone(),
            })),
            ..row(
                "registry auth: retry",
                Some(p.clone()),
                Want::Retry(ErrorCode::RegistryAuth),
            )
        },
        Row {
            chip: Some("nRF52840_xxAA"),
            resolution: Some(art(&p, Some("STM32F411RETx"))),
            ..row(
                "chip mismatch",
                Some(p.clone()),
                Want::Reject {
                    reason: Reason::ChipMismatch,
                    pinned: String::new(),
                },
            )
        },
        Row {
            chip: Some("nrf52840_xxaa"),
            resolution: Some(art(&p, Some("nRF52840_xxAA"))),
            ..row(
                "chip matches (case-insensitive)",
                Some(p.clone()),
                Want::Publish {
                    generation: 2,
                    pinned: p.clone(),
                },
            )
        },
        Row {
            chip: Some("nRF52840_xxAA"),
            resolution: Some(art(&p, None)),
            ..row(
                "device declares a chip, artifact has none",
                Some(p.clone()),
                Want::Reject {
                    reason: Reason::UnsupportedArtifact,
                    pinned: String::new(),
                },
            )
        },
        Row {
            resolution: Some(art(&p, Some("STM32F411RETx"))),
            ..row(
                "no chip declared: any chip goes",
                Some(p.clone()),
                Want::Publish {
                    generation: 2,
                    pinned: p.clone(),
                },
            )
        },
    ];
    for r in rows {
        let got = decide(Input {
            generation: r.generation,
            desired: r.desired.as_deref(),
            device_chip: r.chip,
            last: r.last.as_ref(),
            resolution: r.resolution.as_ref(),
        });
        assert_eq!(summarize(got), r.want, "row: {}", r.name);
    }
}

#[test]
fn reasons_round_trip_and_rejections_have_codes() {
    for r in Reason::ALL {
        assert_eq!(Reason::parse(r.as_str()), Some(r));
        assert_eq!(r.code().is_none(), r == Reason::IntentPublished);
    }
    assert_eq!(Reason::parse("Nope"), None);
    assert_eq!(Reason::ChipMismatch.code(), Some(ErrorCode::ChipMismatch));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Well-formed references (tags and digests) mixed with arbitrary strings.
    fn reference() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => ".{0,40}",
            3 =>
            "[a-z]{1,6}\\.local(:[0-9]{2,4})?/[a-z0-9]{1,8}(/[a-z0-9]{1,8})?(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,8})?(@sha256:[0-9a-f]{64})?",
        ]
    }

    fn resolution() -> impl Strategy<Value = Option<Result<ResolvedArtifact, ResolveError>>> {
        let art = (
            reference(),
            proptest::option::of("(nrf|NRF|stm)"),
            proptest::option::of("[0-9.]{1,6}"),
        )
            .prop_map(|(digest_ref, chip, version)| {
                Ok(ResolvedArtifact {
                    digest_ref,
                    chip,
                    version,
                })
            });
        let err = "[a-z]{0,8}".prop_flat_map(|reference| {
            prop_oneof![
                Just(Err(ResolveError::NotFound {
                    reference: reference.clone()
                })),
                Just(Err(ResolveError::Auth {
                    reference: reference.clone()
                })),
                Just(Err(ResolveError::Unreachable {
                    reference: reference.clone(),
                    detail: "x".into()
                })),
                Just(Err(ResolveError::Unsupported {
                    reference,
                    detail: "y".into()
                })),
            ]
        });
        proptest::option::weighted(0.8, prop_oneof![3 => art, 1 => err])
    }

    proptest! {
        #[test]
        fn only_digest_references_within_the_twin_charset_are_ever_published(
            desired in proptest::option::of(reference()),
            generation in 0i64..6,
            chip in proptest::option::of("(nrf|stm)"),
            last in proptest::option::weighted(0.3, (0i64..6, reference(), 0usize..5)),
            resolution in resolution(),
        ) {
            let last = last.map(|(g, d, r)| record(g, &d, "", Reason::ALL[r]));
            let d = decide(Input {
                generation,
                desired: desired.as_deref(),
                device_chip: chip.as_deref(),
                last: last.as_ref(),
                resolution: resolution.as_ref(),
            });
            match &d {
                Decision::Publish(r) => {
                    prop_assert!(mqtt_schema::FirmwareRef::parse(&r.pinned).is_ok());
                    prop_assert_eq!(r.generation, generation);
                    prop_assert!(resolution.as_ref().is_some_and(Result::is_ok), "publish only after a resolution");
                    if let (Some(want), Ok(a)) = (chip.as_deref(), resolution.as_ref().unwrap()) {
                        prop_assert!(a.chip.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(want)));
                    }
                }
                Decision::Reject(r) => prop_assert!(r.reason.code().is_some()),
                _ => {}
            }
            if let Some(l) = &last
                && generation < l.generation
                && desired.as_deref().is_some_and(|s| !s.is_empty())
            {
                prop_assert_eq!(d, Decision::Nothing(Noop::Stale));
            }
        }
    }
}
