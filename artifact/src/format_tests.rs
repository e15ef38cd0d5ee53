//! The shared parser on the toolchain-built fixture files that push and the round-trip tests use.
//! (The parser's own cases are tested in `twinflash-image`.)

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(path).unwrap()
}

#[test]
fn sniffs_each_fixture_and_parses_it() {
    for (name, format) in [
        ("blinky.elf", Some(FirmwareFormat::Elf)),
        ("blinky.hex", Some(FirmwareFormat::Ihex)),
        ("blinky.uf2", Some(FirmwareFormat::Uf2)),
        ("blinky.bin", None),
    ] {
        let data = fixture(name);
        assert_eq!(sniff(&data), format, "{name}");
        let image = parse(
            &data,
            format.unwrap_or(FirmwareFormat::Bin),
            Some(0x0800_0000),
        )
        .unwrap();
        assert!(!image.is_empty(), "{name}");
    }
}

#[test]
fn truncated_or_corrupt_fixtures_are_refused() {
    let elf = fixture("blinky.elf");
    for bytes in [&elf[..60], &elf[..100], b"not an elf".as_slice()] {
        let err = parse(bytes, FirmwareFormat::Elf, None).unwrap_err();
        assert_eq!(err.code().as_str(), "unsupported-artifact", "{err}");
    }
    let mut uf2 = fixture("blinky.uf2");
    assert!(parse(&uf2[..700], FirmwareFormat::Uf2, None).is_err());
    uf2[512 + 508] ^= 0xff;
    let err = parse(&uf2, FirmwareFormat::Uf2, None).unwrap_err();
    assert!(matches!(err, ImageError::Uf2 { block: 1, .. }), "{err}");
}
