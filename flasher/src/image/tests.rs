use super::*;
use crate::fixtures;

#[test]
fn format_strings_round_trip() {
    for f in FirmwareFormat::ALL {
        assert_eq!(f.as_str().parse::<FirmwareFormat>(), Ok(f));
        assert_eq!(f.media_type().parse::<FirmwareFormat>(), Ok(f));
    }
    assert_eq!("HEX".parse::<FirmwareFormat>(), Ok(FirmwareFormat::Ihex));
    assert!("srec".parse::<FirmwareFormat>().is_err());
}

#[test]
fn bin_is_placed_at_base() {
    let img = parse(&[1, 2, 3], FirmwareFormat::Bin, 0x1000).unwrap();
    assert_eq!(
        img.segments,
        vec![Segment {
            address: 0x1000,
            data: vec![1, 2, 3]
        }]
    );
    assert!(parse(&[], FirmwareFormat::Bin, 0).is_err());
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
    let img = parse(&elf, FirmwareFormat::Elf, 0).unwrap();
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
fn malformed_inputs_are_unsupported_artifacts() {
    let cases: Vec<(FirmwareFormat, Vec<u8>)> = vec![
        (FirmwareFormat::Elf, b"not an elf at all".to_vec()),
        (FirmwareFormat::Elf, fixtures::elf32(&[], 0)),
        (
            FirmwareFormat::Elf,
            fixtures::elf32(&[(0, &[1, 2])], 0)[..60].to_vec(),
        ),
        (FirmwareFormat::Ihex, b":00000001FE\n".to_vec()), // only EOF: no data
        (FirmwareFormat::Ihex, b":10000000zz\n".to_vec()),
        (FirmwareFormat::Ihex, vec![0xff, 0xfe]),
        (FirmwareFormat::Uf2, vec![0u8; 100]),
        (FirmwareFormat::Uf2, vec![0u8; 512]),
    ];
    for (fmt, bytes) in cases {
        let err = parse(&bytes, fmt, 0).unwrap_err();
        assert_eq!(err.code().as_str(), "unsupported-artifact", "{fmt}: {err}");
    }
}

#[test]
fn overlapping_segments_are_rejected() {
    let hex = format!(
        "{}{}",
        fixtures::ihex(0x100, &[1; 32]).replace(":00000001FF\n", ""),
        fixtures::ihex(0x110, &[2; 4])
    );
    let err = parse(hex.as_bytes(), FirmwareFormat::Ihex, 0).unwrap_err();
    assert!(err.to_string().contains("overlapping"), "{err}");
}

#[test]
fn ihex_with_extended_linear_address() {
    let data = fixtures::pattern(300, 3);
    let hex = fixtures::ihex(0x0800_FFF0, &data);
    let img = parse(hex.as_bytes(), FirmwareFormat::Ihex, 0).unwrap();
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
    let img = parse(&uf2, FirmwareFormat::Uf2, 0).unwrap();
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
    let img = parse(&uf2, FirmwareFormat::Uf2, 0).unwrap();
    assert_eq!(img.len(), 768);
    // A payload size over 476 is malformed.
    uf2[16..20].copy_from_slice(&477u32.to_le_bytes());
    assert!(parse(&uf2, FirmwareFormat::Uf2, 0).is_err());
}

proptest::proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        for f in FirmwareFormat::ALL {
            let _ = parse(&bytes, f, 0);
        }
    }

    #[test]
    fn ihex_round_trip(addr in 0u32..0xFFFF_0000, len in 1usize..600, seed in 0u8..255) {
        let data = fixtures::pattern(len, seed);
        let img = parse(fixtures::ihex(addr, &data).as_bytes(), FirmwareFormat::Ihex, 0).unwrap();
        proptest::prop_assert_eq!(img.segments, vec![Segment { address: u64::from(addr), data }]);
    }
}
