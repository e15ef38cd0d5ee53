//! Unit tests of the formats, sniffing and the parser.

use super::*;
use crate::fixtures;

fn parse_err(bytes: &[u8], format: FirmwareFormat, base: Option<u64>) -> ImageError {
    match parse(bytes, format, base) {
        Ok(img) => panic!(
            "parsed: {} segment(s), {} bytes",
            img.segments.len(),
            img.len()
        ),
        Err(e) => e,
    }
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

/// Issue 23: 65,534 headers naming the same 4 MiB asked for 256 GiB, and the agent aborted (`memory allocation of
/// 4194304 bytes failed`). Refused from the headers, before a segment is copied.
#[test]
fn the_elf_program_header_bomb_is_refused_before_copying() {
    let bomb = fixtures::elf32_header_bomb();
    assert_eq!(bomb.len(), 4 << 20);
    let err = parse_err(&bomb, FirmwareFormat::Elf, None);
    assert_eq!(
        err,
        ImageError::DataExceedsFile {
            format: FirmwareFormat::Elf,
            file: 4 << 20
        }
    );
    assert_eq!(err.code().as_str(), "unsupported-artifact");
}

#[test]
fn elf_segments_that_share_file_bytes_are_refused_even_at_distinct_addresses() {
    // Four 1 KiB segments, all from file offset 0, side by side in memory: 4 KiB of data from a 1 KiB file.
    let elf = fixtures::elf32_loads(
        1024,
        &[
            (0, 0, 1024),
            (0, 1024, 1024),
            (0, 2048, 1024),
            (0, 3072, 1024),
        ],
    );
    let err = parse_err(&elf, FirmwareFormat::Elf, None);
    assert!(
        matches!(err, ImageError::DataExceedsFile { file: 1024, .. }),
        "{err}"
    );
    // The same layout from distinct file bytes is a firmware.
    let elf = fixtures::elf32_loads(
        8192,
        &[(4096, 0, 1024), (5120, 1024, 1024), (6144, 2048, 1024)],
    );
    let img = parse(&elf, FirmwareFormat::Elf, None).unwrap();
    assert_eq!((img.segments.len(), img.len()), (1, 3072));
}

#[test]
fn overlapping_elf_segments_are_refused() {
    let elf = fixtures::elf32_loads(8192, &[(4096, 0x100, 512), (6144, 0x200, 512)]);
    assert_eq!(
        parse_err(&elf, FirmwareFormat::Elf, None),
        ImageError::Overlap {
            format: FirmwareFormat::Elf,
            at: 0x200,
            previous_end: 0x300
        }
    );
}

#[test]
fn elf_segment_count_is_bounded() {
    // One byte each, a gap between them: nothing joins them.
    let loads =
        |n: u32| -> Vec<(u32, u32, u32)> { (0..n).map(|i| (0x10_0000 + i, 2 * i, 1)).collect() };
    let max = MAX_SEGMENTS as u32;
    let img = parse(
        &fixtures::elf32_loads(2 << 20, &loads(max)),
        FirmwareFormat::Elf,
        None,
    )
    .unwrap();
    assert_eq!(img.segments.len(), MAX_SEGMENTS);
    let err = parse_err(
        &fixtures::elf32_loads(2 << 20, &loads(max + 1)),
        FirmwareFormat::Elf,
        None,
    );
    assert_eq!(
        err,
        ImageError::TooManySegments {
            format: FirmwareFormat::Elf,
            max: MAX_SEGMENTS
        }
    );
}

/// Issue 23: a million one-byte records peaked at 121 MB for a 14 MB file, one allocation per record. Records that
/// continue each other now cost one piece between them.
#[test]
fn contiguous_hex_records_become_one_piece_while_parsing() {
    let data = fixtures::pattern(1_000_000, 7);
    let hex = fixtures::ihex_pieces(
        data.iter()
            .enumerate()
            .map(|(i, b)| (0x0800_0000 + i as u32, std::slice::from_ref(b))),
    );
    let pieces = crate::parse::parse_ihex(hex.as_bytes()).unwrap();
    assert_eq!(
        pieces.len(),
        1,
        "one allocation for the run, not one per record"
    );
    let img = parse(hex.as_bytes(), FirmwareFormat::Ihex, None).unwrap();
    assert_eq!(
        img.segments,
        vec![Segment {
            address: 0x0800_0000,
            data
        }]
    );
}

#[test]
fn hex_runs_are_bounded() {
    let one = [0xAA_u8];
    let hex = |n: u32| fixtures::ihex_pieces((0..n).map(|i| (2 * i, &one[..])));
    let img = parse(
        hex(MAX_SEGMENTS as u32).as_bytes(),
        FirmwareFormat::Ihex,
        None,
    )
    .unwrap();
    assert_eq!(img.segments.len(), MAX_SEGMENTS);
    let err = parse_err(hex(1_000_000).as_bytes(), FirmwareFormat::Ihex, None);
    assert_eq!(
        err,
        ImageError::TooManySegments {
            format: FirmwareFormat::Ihex,
            max: MAX_SEGMENTS
        }
    );
    assert_eq!(err.code().as_str(), "unsupported-artifact");
}

#[test]
fn uf2_blocks_are_joined_while_parsing_and_bounded() {
    let data = fixtures::pattern(64 * 1024, 9);
    let pieces = crate::uf2::parse(&fixtures::uf2(0x2000, &data, 256)).unwrap();
    assert_eq!(pieces.len(), 1);
    // One byte per block, every other address: each block its own piece.
    let mut sparse = Vec::new();
    for i in 0..=MAX_SEGMENTS as u32 {
        sparse.extend(fixtures::uf2(2 * i, &[1], 1));
    }
    assert!(matches!(
        parse_err(&sparse, FirmwareFormat::Uf2, None),
        ImageError::TooManySegments { .. }
    ));
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
