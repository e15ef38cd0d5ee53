use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(path).unwrap()
}

#[test]
fn sniffs_each_fixture_and_validates_it() {
    for (name, format) in [
        ("blinky.elf", Some(FirmwareFormat::Elf)),
        ("blinky.hex", Some(FirmwareFormat::Ihex)),
        ("blinky.uf2", Some(FirmwareFormat::Uf2)),
        ("blinky.bin", None),
    ] {
        let data = fixture(name);
        assert_eq!(sniff(&data), format, "{name}");
        validate(format.unwrap_or(FirmwareFormat::Bin), &data).unwrap();
    }
}

#[test]
fn a_bad_hex_checksum_names_the_line() {
    let mut text = String::from_utf8(fixture("blinky.hex")).unwrap();
    // Corrupt the checksum of line 3.
    let lines: Vec<&str> = text.lines().collect();
    let bad = format!("{}00", &lines[2][..lines[2].len() - 2]);
    text = text.replace(lines[2], &bad);
    let err = validate(FirmwareFormat::Ihex, text.as_bytes()).unwrap_err();
    assert!(matches!(err, FormatError::Ihex { line: 3, .. }), "{err}");
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn hex_without_eof_or_with_trailing_data_is_refused() {
    let text = String::from_utf8(fixture("blinky.hex")).unwrap();
    let without_eof: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    assert!(validate(FirmwareFormat::Ihex, without_eof.as_bytes()).is_err());
    let trailing = format!("{text}:00000001FF\n");
    assert!(validate(FirmwareFormat::Ihex, trailing.as_bytes()).is_err());
}

#[test]
fn uf2_with_a_broken_block_or_odd_length_is_refused() {
    let mut data = fixture("blinky.uf2");
    data[512 + 508] ^= 0xff;
    let err = validate(FirmwareFormat::Uf2, &data).unwrap_err();
    assert!(matches!(err, FormatError::Uf2 { block: 1, .. }), "{err}");
    let data = fixture("blinky.uf2");
    assert!(validate(FirmwareFormat::Uf2, &data[..700]).is_err());
}

#[test]
fn truncated_elf_is_refused() {
    let data = fixture("blinky.elf");
    assert!(validate(FirmwareFormat::Elf, &data[..60]).is_err());
    assert!(validate(FirmwareFormat::Elf, &data[..100]).is_err());
    assert!(validate(FirmwareFormat::Elf, b"not an elf").is_err());
}

#[test]
fn empty_is_refused_for_every_format() {
    for f in FirmwareFormat::ALL {
        assert_eq!(validate(f, &[]), Err(FormatError::Empty));
    }
}

#[test]
fn names_and_media_types_round_trip() {
    for f in FirmwareFormat::ALL {
        assert_eq!(f.as_str().parse::<FirmwareFormat>(), Ok(f));
        assert_eq!(FirmwareFormat::from_media_type(f.media_type()), Some(f));
    }
    assert!("exe".parse::<FirmwareFormat>().is_err());
    assert_eq!(
        FirmwareFormat::from_media_type("application/octet-stream"),
        None
    );
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
    fn sniff_and_validate_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
        let _ = sniff(&data);
        for f in FirmwareFormat::ALL {
            let _ = validate(f, &data);
        }
    }
}
