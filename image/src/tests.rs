//! Unit tests of the formats, sniffing and the parser.

use super::*;
use crate::fixtures;

fn parse_err(bytes: &[u8], format: FirmwareFormat, base: Option<u64>) -> ImageError {
    parse(bytes, format, base).unwrap_err()
}

#[test]
fn format_strings_round_trip() {
    for f in FirmwareFormat::ALL {
        assert_eq!(f.as_str().parse::<FirmwareFormat>(), Ok(f));
        assert_eq!(f.media_type().parse::<FirmwareFormat>(), Ok(f));
        assert_eq!(FirmwareFormat::from_media_type(f.media_type()), Some(f));
    }
    assert_eq!("HEX".parse::<FirmwareFormat>(), Ok(FirmwareFormat::Ihex));
    assert!("srec".parse::<FirmwareFormat>().is_err());
    assert_eq!(
        FirmwareFormat::from_media_type("application/octet-stream"),
        None
    );
}

#[test]
fn sniffs_each_format_from_content() {
    let data = fixtures::pattern(600, 1);
    assert_eq!(
        sniff(&fixtures::elf32(&[(0, &data)], 0)),
        Some(FirmwareFormat::Elf)
    );
    assert_eq!(
        sniff(fixtures::ihex(0x1000, &data).as_bytes()),
        Some(FirmwareFormat::Ihex)
    );
    assert_eq!(
        sniff(&fixtures::uf2(0x2000, &data, 256)),
        Some(FirmwareFormat::Uf2)
    );
    assert_eq!(sniff(&data), None);
    assert_eq!(sniff(b""), None);
}

#[test]
fn bin_is_placed_at_base_and_needs_one() {
    let img = parse(&[1, 2, 3], FirmwareFormat::Bin, Some(0x1000)).unwrap();
    assert_eq!(
        img.segments,
        vec![Segment {
            address: 0x1000,
            data: vec![1, 2, 3]
        }]
    );
    assert_eq!(
        parse_err(&[1, 2, 3], FirmwareFormat::Bin, None),
        ImageError::MissingBaseAddress
    );
    assert!(matches!(
        parse_err(&[1, 2, 3], FirmwareFormat::Bin, Some(u64::MAX - 1)),
        ImageError::Wraps { .. }
    ));
    assert_eq!(check_bin(3, Some(0x1000)), Ok(0x1000));
}

#[test]
fn empty_is_refused_for_every_format() {
    for f in FirmwareFormat::ALL {
        assert_eq!(parse_err(&[], f, Some(0)), ImageError::Empty);
    }
}

#[test]
fn elf_uses_physical_addresses_of_load_segments() {
    let a = fixtures::pattern(100, 1);
    let b = fixtures::pattern(30, 2);
    // .data is loaded from flash (paddr) but runs from RAM (vaddr): the loader must use paddr.
    let elf = fixtures::elf32(
        &[(0x0800_0000, &a), (0x0800_0064, &b), (0x0800_1000, &b)],
        0x1000_0000,
    );
    let img = parse(&elf, FirmwareFormat::Elf, None).unwrap();
    let mut merged = a.clone();
    merged.extend_from_slice(&b);
    assert_eq!(
        img.segments,
        vec![
            Segment {
                address: 0x0800_0000,
                data: merged
            },
            Segment {
                address: 0x0800_1000,
                data: b.clone()
            },
        ]
    );
    assert_eq!(img.len(), 160);
}

#[test]
fn malformed_or_empty_inputs_are_unsupported_artifacts() {
    let not_main_flash = {
        let mut uf2 = fixtures::uf2(0, &[1; 10], 256);
        uf2[8] |= 1;
        uf2
    };
    let cases: Vec<(FirmwareFormat, Vec<u8>, &str)> = vec![
        (
            FirmwareFormat::Elf,
            b"not an elf at all".to_vec(),
            "no ELF magic",
        ),
        (FirmwareFormat::Elf, fixtures::elf32(&[], 0), "no data"),
        (
            FirmwareFormat::Elf,
            fixtures::elf32(&[(0, &[1, 2])], 0)[..60].to_vec(),
            "ELF",
        ),
        (FirmwareFormat::Ihex, b":00000001FF\n".to_vec(), "no data"),
        (FirmwareFormat::Ihex, b":10000000zz\n".to_vec(), "line 1"),
        (FirmwareFormat::Ihex, b":0100000000FF\n".to_vec(), "line 1"),
        (FirmwareFormat::Ihex, vec![0xff, 0xfe], "not ASCII"),
        (FirmwareFormat::Uf2, vec![0u8; 100], "multiple of 512"),
        (FirmwareFormat::Uf2, vec![0u8; 512], "start magic"),
        (FirmwareFormat::Uf2, not_main_flash, "no data"),
    ];
    for (fmt, bytes, needle) in cases {
        let err = parse_err(&bytes, fmt, None);
        assert_eq!(err.code().as_str(), "unsupported-artifact", "{fmt}: {err}");
        assert!(err.to_string().contains(needle), "{fmt}: {err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}

#[test]
fn hex_without_eof_or_with_trailing_data_is_refused() {
    let text = fixtures::ihex(0x100, &fixtures::pattern(64, 1));
    let without_eof: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    assert!(
        parse_err(without_eof.as_bytes(), FirmwareFormat::Ihex, None)
            .to_string()
            .contains("no end-of-file")
    );
    let trailing = format!("{text}{}", fixtures::ihex(0x1000, &[1]));
    let err = parse_err(trailing.as_bytes(), FirmwareFormat::Ihex, None);
    assert!(err.to_string().contains("after the end-of-file"), "{err}");
}

#[test]
fn a_bad_hex_checksum_names_the_line() {
    let text = fixtures::ihex(0x100, &fixtures::pattern(64, 1));
    let lines: Vec<&str> = text.lines().collect();
    let bad = format!("{}00", &lines[2][..lines[2].len() - 2]);
    let text = text.replace(lines[2], &bad);
    let err = parse_err(text.as_bytes(), FirmwareFormat::Ihex, None);
    assert!(matches!(err, ImageError::Ihex { line: 3, .. }), "{err}");
}

#[test]
fn overlapping_segments_are_rejected() {
    let hex = format!(
        "{}{}",
        fixtures::ihex(0x100, &[1; 32]).replace(":00000001FF\n", ""),
        fixtures::ihex(0x110, &[2; 4])
    );
    let err = parse_err(hex.as_bytes(), FirmwareFormat::Ihex, None);
    assert!(err.to_string().contains("overlapping"), "{err}");
}

#[test]
fn ihex_with_extended_linear_address() {
    let data = fixtures::pattern(300, 3);
    let hex = fixtures::ihex(0x0800_FFF0, &data);
    let img = parse(hex.as_bytes(), FirmwareFormat::Ihex, None).unwrap();
    assert_eq!(
        img.segments,
        vec![Segment {
            address: 0x0800_FFF0,
            data
        }]
    );
}

#[test]
fn uf2_blocks_and_non_flash_blocks() {
    let data = fixtures::pattern(1000, 4);
    let mut uf2 = fixtures::uf2(0x2000, &data, 256);
    let img = parse(&uf2, FirmwareFormat::Uf2, None).unwrap();
    assert_eq!(
        img.segments,
        vec![Segment {
            address: 0x2000,
            data: data.clone()
        }]
    );
    // Mark the last block "not main flash": its payload is skipped.
    let last = uf2.len() - 512;
    uf2[last + 8] |= 1;
    let img = parse(&uf2, FirmwareFormat::Uf2, None).unwrap();
    assert_eq!(img.len(), 768);
    // A broken end magic names its block.
    let mut broken = uf2.clone();
    broken[512 + 508] ^= 0xff;
    let err = parse_err(&broken, FirmwareFormat::Uf2, None);
    assert!(matches!(err, ImageError::Uf2 { block: 1, .. }), "{err}");
    // A payload size over 476 is malformed.
    uf2[16..20].copy_from_slice(&477u32.to_le_bytes());
    assert!(parse(&uf2, FirmwareFormat::Uf2, None).is_err());
}

#[test]
fn base_addresses_parse_as_hex() {
    assert_eq!(parse_base_address("0x08000000"), Ok(0x0800_0000));
    assert_eq!(parse_base_address("1000"), Ok(0x1000));
    assert!(parse_base_address("0x").is_err());
    assert!(parse_base_address("zz").is_err());
    assert!(parse_base_address("0x11112222333344445").is_err());
    assert_eq!(format_base_address(0x1000), "0x00001000");
}

proptest::proptest! {
    #[test]
    fn sniff_and_parse_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        let _ = sniff(&bytes);
        for f in FirmwareFormat::ALL {
            let _ = parse(&bytes, f, Some(0));
        }
    }

    #[test]
    fn ihex_round_trip(addr in 0u32..0xFFFF_0000, len in 1usize..600, seed in 0u8..255) {
        let data = fixtures::pattern(len, seed);
        let img = parse(fixtures::ihex(addr, &data).as_bytes(), FirmwareFormat::Ihex, None).unwrap();
        proptest::prop_assert_eq!(img.segments, vec![Segment { address: u64::from(addr), data }]);
    }
}
