//! `twinflash push` and the flasher accept and refuse the same files: one table of good and bad
//! firmware files, judged by push's `check_file`, by a real simulated flasher and by
//! `twinflash_image::parse`, with the same verdict, code and message; and every bad file pushed to a
//! real registry is refused before anything is uploaded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use std::path::{Path, PathBuf};

use common::{request, tls};
use twinflash_artifact::push::check_file;
use twinflash_artifact::{FirmwareFormat, PushError};
use twinflash_flasher::simulated::SimulatedFlasher;
use twinflash_flasher::{CancellationToken, FlashError, FlashRequest, Flasher, SimulatedConfig};
use twinflash_harness::Registry;
use twinflash_image::fixtures;

const ORIGIN: u64 = 0x0800_0000;
const CHIP: &str = "nRF52840_xxAA";

/// One file: its name, bytes, the `--format` given (None: sniffed), the base address, and the
/// expected verdict (`ok` or the error code).
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    format: Option<FirmwareFormat>,
    base: Option<u64>,
    expected: &'static str,
}

fn case(
    name: &'static str,
    bytes: Vec<u8>,
    format: Option<FirmwareFormat>,
    base: Option<u64>,
    expected: &'static str,
) -> Case {
    Case {
        name,
        bytes,
        format,
        base,
        expected,
    }
}

fn cases() -> Vec<Case> {
    let code = fixtures::pattern(1500, 7);
    let at = ORIGIN as u32;
    let hex = fixtures::ihex(at, &code);
    let uf2 = fixtures::uf2(at, &code, 256);
    let mut uf2_bad_end = uf2.clone();
    uf2_bad_end[512 + 508] ^= 0xff;
    let mut uf2_big_payload = uf2.clone();
    uf2_big_payload[16..20].copy_from_slice(&477u32.to_le_bytes());
    let mut uf2_no_main_flash = uf2.clone();
    for block in uf2_no_main_flash.chunks_exact_mut(512) {
        block[8] |= 1; // "not main flash"
    }
    let mut hex_bad_sum = hex.clone().into_bytes();
    let eol = hex_bad_sum.iter().position(|b| *b == b'\n').unwrap();
    hex_bad_sum[eol - 1] ^= 0x01; // the checksum digit of line 1
    let overlapping = format!(
        "{}{}",
        fixtures::ihex(at, &[1; 32]).replace(":00000001FF\n", ""),
        fixtures::ihex(at + 0x10, &[2; 4])
    );
    let elf = fixtures::elf32(&[(at, &code)], 0x1000_0000);
    let u = "unsupported-artifact";
    vec![
        case("good.elf", elf.clone(), None, None, "ok"),
        case("good.hex", hex.clone().into_bytes(), None, None, "ok"),
        case("good.uf2", uf2.clone(), None, None, "ok"),
        case("good.bin", code.clone(), None, Some(ORIGIN), "ok"),
        case("no-load.elf", fixtures::elf32(&[], 0), None, None, u),
        case("truncated.elf", elf[..100].to_vec(), None, None, u),
        case("eof-only.hex", b":00000001FF\n".to_vec(), None, None, u),
        case("bad-sum.hex", hex_bad_sum, None, None, u),
        case(
            "no-eof.hex",
            hex.replace(":00000001FF\n", "").into_bytes(),
            None,
            None,
            u,
        ),
        case(
            "trailing.hex",
            format!("{hex}{hex}").into_bytes(),
            None,
            None,
            u,
        ),
        case("overlap.hex", overlapping.into_bytes(), None, None, u),
        case("bad-end.uf2", uf2_bad_end, None, None, u),
        case("big-payload.uf2", uf2_big_payload, None, None, u),
        case("odd-size.uf2", uf2[..700].to_vec(), None, None, u),
        case("no-main-flash.uf2", uf2_no_main_flash, None, None, u),
        case("no-base.bin", code.clone(), None, None, u),
        case(
            "no-base-declared.bin",
            code,
            Some(FirmwareFormat::Bin),
            None,
            u,
        ),
        case("empty.hex", Vec::new(), Some(FirmwareFormat::Ihex), None, u),
        case(
            "not-elf.elf",
            b"firmware?".to_vec(),
            Some(FirmwareFormat::Elf),
            None,
            u,
        ),
    ]
}

/// `ok`, or `<code>: <message>`.
fn verdict<E: std::fmt::Display>(result: Result<(), (mqtt_schema::ErrorCode, E)>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err((code, e)) => format!("{code}: {e}"),
    }
}

fn push_verdict(path: &Path, c: &Case) -> String {
    verdict(
        check_file(path, c.format, c.base)
            .map(|_| ())
            .map_err(|e| match e {
                PushError::Format { source, .. } => (source.code(), source.to_string()),
                other => (other.code(), other.to_string()),
            }),
    )
}

async fn flasher_verdict(dir: &Path, path: PathBuf, format: FirmwareFormat, c: &Case) -> String {
    let flasher = SimulatedFlasher::new(
        SimulatedConfig {
            origin: ORIGIN,
            ..SimulatedConfig::new(dir, 64 * 1024)
        },
        CHIP,
    )
    .unwrap();
    let req = FlashRequest {
        image: path,
        format,
        base_address: c.base,
        chip: CHIP.to_owned(),
        reference: format!("registry.local/fw@sha256:{:0>64}", 1),
        version: "1.0.0".to_owned(),
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let result = flasher.flash(&req, tx, CancellationToken::new()).await;
    verdict(
        result
            .map(|_| ())
            .map_err(|e: FlashError| (e.code(), e.to_string())),
    )
}

#[tokio::test]
async fn push_and_the_flasher_give_one_verdict_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, c) in cases().into_iter().enumerate() {
        let path = tmp.path().join(c.name);
        std::fs::write(&path, &c.bytes).unwrap();
        // What the agent would hand the flasher: the declared format, else the sniffed one.
        let format = c
            .format
            .or_else(|| twinflash_image::sniff(&c.bytes))
            .unwrap_or(FirmwareFormat::Bin);
        let shared = verdict(
            twinflash_image::parse(&c.bytes, format, c.base)
                .map(|_| ())
                .map_err(|e| (e.code(), e)),
        );
        let pushed = push_verdict(&path, &c);
        let flashed = flasher_verdict(&tmp.path().join(format!("dev{i}")), path, format, &c).await;
        assert!(
            shared == c.expected || shared.starts_with(&format!("{}: ", c.expected)),
            "{}: expected {}, the parser says {shared}",
            c.name,
            c.expected
        );
        assert_eq!(pushed, shared, "{}: push disagrees with the parser", c.name);
        assert_eq!(
            flashed, shared,
            "{}: the flasher disagrees with the parser",
            c.name
        );
    }
}

#[tokio::test]
async fn push_refuses_each_bad_file_before_uploading_it() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let tmp = tempfile::tempdir().unwrap();
    for c in cases() {
        let path = tmp.path().join(c.name);
        std::fs::write(&path, &c.bytes).unwrap();
        let repo = format!("{host}/fw/{}:1.0.0", c.name.replace('.', "-"));
        let mut req = request(&repo, &path, c.format);
        req.base_address = c.base;
        let result =
            twinflash_artifact::push(&tls(&host), &Default::default(), &req, |_, _| {}).await;
        if c.expected == "ok" {
            let pushed = result.unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert!(pushed.pinned_reference.starts_with(&repo), "{}", c.name);
            continue;
        }
        let err = result
            .err()
            .unwrap_or_else(|| panic!("{}: push accepted it", c.name));
        assert_eq!(err.code().as_str(), c.expected, "{}: {err}", c.name);
        assert!(err.to_string().contains(c.name), "{}: {err}", c.name);
        // Nothing was written: the tag does not exist in the registry.
        let inspected = twinflash_artifact::inspect(&tls(&host), &Default::default(), &repo).await;
        let gone = inspected
            .err()
            .unwrap_or_else(|| panic!("{}: the registry has it", c.name));
        assert_eq!(gone.code().as_str(), "not-found", "{}: {gone}", c.name);
    }
}
