//! The gdb backend's paths QEMU cannot show: a server with a memory map (what OpenOCD, pyOCD, J-Link and the Black
//! Magic Probe offer: `vFlashErase`/`vFlashWrite`/`vFlashDone`), no-ack mode, run-length encoded replies, a
//! read-back that differs, a server that stops answering. The stand-in below speaks the GDB remote protocol as the
//! GDB manual ("Remote Protocol": Overview, Packets, General Query Packets, Memory Map Format) describes the
//! server's side, written here without the backend's code. The success path against a real server is
//! tests/gdb_qemu.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use twinflash_flasher::gdb::GdbFlasher;
use twinflash_flasher::{CancellationToken, FirmwareFormat, Flasher, GdbConfig, Phase};

/// How the stand-in behaves.
#[derive(Debug, Clone, Default)]
struct Behaviour {
    /// Offered as `qXfer:memory-map:read`.
    memory_map: Option<String>,
    /// Offer `QStartNoAckMode+`.
    no_ack: bool,
    /// Run-length encode `m` replies.
    rle: bool,
    /// `m` reads this address with its bits flipped.
    corrupt_at: Option<u64>,
    /// Never answer a packet starting with this.
    silent_on: Option<&'static str>,
}

/// What the stand-in saw.
#[derive(Debug, Default)]
struct Seen {
    packets: Vec<String>,
    memory: BTreeMap<u64, u8>,
    erased: Vec<(u64, u64)>,
    /// Protocol violations: a `+` in no-ack mode, a flash write outside an erased range, a bad checksum.
    violations: Vec<String>,
}

struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl FakeServer {
    fn start(behaviour: Behaviour) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                serve(stream, &behaviour, &s);
            }
        });
        FakeServer { addr, seen }
    }

    fn packets(&self) -> Vec<String> {
        self.seen.lock().unwrap().packets.clone()
    }
}

fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn send(stream: &mut TcpStream, data: &[u8]) {
    let mut frame = vec![b'$'];
    frame.extend_from_slice(data);
    frame.extend_from_slice(format!("#{:02x}", checksum(data)).as_bytes());
    let _ = stream.write_all(&frame);
}

fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'}' {
            out.push(data[i + 1] ^ 0x20);
            i += 2;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// `c` repeated: `c*<n+29>` for 3..=97 more copies, never the counts that would encode as `#` or `$`.
fn rle(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        let mut run = 1;
        while i + run < text.len() && text[i + run] == c {
            run += 1;
        }
        out.push(c);
        let mut rest = run - 1;
        while rest > 0 {
            let mut k = rest.min(97);
            if k == 6 || k == 7 {
                k = 5;
            }
            if k < 3 {
                out.extend(std::iter::repeat_n(c, k));
            } else {
                out.push(b'*');
                out.push(29 + k as u8);
            }
            rest -= k;
        }
        i += run;
    }
    out
}

fn hex_u64(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

/// `addr,len` of a memory packet.
fn range(args: &str) -> (u64, u64) {
    let (a, l) = args.split_once(',').unwrap();
    (hex_u64(a), hex_u64(l))
}

fn serve(mut stream: TcpStream, b: &Behaviour, seen: &Mutex<Seen>) {
    let mut ack = true;
    // The manual: the client still acks the `OK` to QStartNoAckMode; the stub may ignore that one `+`.
    let mut last_ack_allowed = false;
    let mut byte = [0u8; 1];
    loop {
        // Up to the next packet; a `+` here is the client's ack of our last reply.
        loop {
            if stream.read_exact(&mut byte).is_err() {
                return;
            }
            match byte[0] {
                b'$' => break,
                b'+' if !ack && last_ack_allowed => last_ack_allowed = false,
                b'+' if !ack => seen
                    .lock()
                    .unwrap()
                    .violations
                    .push("+ in no-ack mode".into()),
                _ => {}
            }
        }
        let mut raw = Vec::new();
        loop {
            if stream.read_exact(&mut byte).is_err() {
                return;
            }
            if byte[0] == b'#' {
                break;
            }
            raw.push(byte[0]);
        }
        let mut cs = [0u8; 2];
        if stream.read_exact(&mut cs).is_err() {
            return;
        }
        if std::str::from_utf8(&cs)
            .ok()
            .and_then(|c| u8::from_str_radix(c, 16).ok())
            != Some(checksum(&raw))
        {
            seen.lock().unwrap().violations.push("bad checksum".into());
            let _ = stream.write_all(b"-");
            continue;
        }
        if ack {
            let _ = stream.write_all(b"+");
        }
        last_ack_allowed = false;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let head: String = text.chars().take(40).collect();
        seen.lock().unwrap().packets.push(head);
        if b.silent_on.is_some_and(|p| text.starts_with(p)) {
            continue;
        }
        let reply: Vec<u8> = if text.starts_with("qSupported") {
            let mut r = "PacketSize=200".to_owned();
            if b.memory_map.is_some() {
                r.push_str(";qXfer:memory-map:read+");
            }
            if b.no_ack {
                r.push_str(";QStartNoAckMode+");
            }
            r.into_bytes()
        } else if text == "QStartNoAckMode" && b.no_ack {
            send(&mut stream, b"OK");
            ack = false;
            last_ack_allowed = true;
            continue;
        } else if text == "?" {
            b"S05".to_vec()
        } else if let Some(args) = text.strip_prefix("qXfer:memory-map:read::") {
            let (off, len) = range(args);
            let xml = b.memory_map.clone().unwrap_or_default().into_bytes();
            let start = (off as usize).min(xml.len());
            let end = (start + len as usize).min(xml.len());
            let mut r = vec![if end < xml.len() { b'm' } else { b'l' }];
            r.extend_from_slice(&xml[start..end]);
            r
        } else if let Some(args) = text.strip_prefix("vFlashErase:") {
            let (addr, len) = range(args);
            let mut s = seen.lock().unwrap();
            s.erased.push((addr, addr + len));
            for a in addr..addr + len {
                s.memory.insert(a, 0xff);
            }
            b"OK".to_vec()
        } else if raw.starts_with(b"vFlashWrite:") {
            let rest = &raw[b"vFlashWrite:".len()..];
            let colon = rest.iter().position(|c| *c == b':').unwrap();
            let addr = hex_u64(std::str::from_utf8(&rest[..colon]).unwrap());
            let data = unescape(&rest[colon + 1..]);
            let mut s = seen.lock().unwrap();
            let end = addr + data.len() as u64;
            if !s.erased.iter().any(|(lo, hi)| *lo <= addr && end <= *hi) {
                s.violations
                    .push(format!("vFlashWrite {addr:#x}..{end:#x} not erased"));
            }
            for (i, d) in data.into_iter().enumerate() {
                s.memory.insert(addr + i as u64, d);
            }
            b"OK".to_vec()
        } else if text == "vFlashDone" {
            b"OK".to_vec()
        } else if raw.starts_with(b"X") {
            let colon = raw.iter().position(|c| *c == b':').unwrap();
            let (addr, len) = range(std::str::from_utf8(&raw[1..colon]).unwrap());
            let data = unescape(&raw[colon + 1..]);
            assert_eq!(data.len() as u64, len, "X length");
            let mut s = seen.lock().unwrap();
            for (i, d) in data.into_iter().enumerate() {
                s.memory.insert(addr + i as u64, d);
            }
            b"OK".to_vec()
        } else if let Some(args) = text.strip_prefix('m') {
            let (addr, len) = range(args);
            let s = seen.lock().unwrap();
            let mut hex = String::new();
            for a in addr..addr + len {
                let mut v = s.memory.get(&a).copied().unwrap_or(0);
                if b.corrupt_at == Some(a) {
                    v ^= 0xff;
                }
                hex.push_str(&format!("{v:02x}"));
            }
            if b.rle {
                rle(hex.as_bytes())
            } else {
                hex.into_bytes()
            }
        } else if text == format!("qRcmd,{}", hex_of("flood")) {
            // A monitor command whose output never ends: console packets every 50 ms, no result.
            loop {
                send(
                    &mut stream,
                    format!("O{}", hex_of("still busy\n")).as_bytes(),
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
                if stream.peer_addr().is_err() {
                    return;
                }
            }
        } else if text.starts_with("qRcmd,") {
            // Console output first, as OpenOCD sends it, then the result.
            send(
                &mut stream,
                format!("O{}", hex_of("resetting target\n")).as_bytes(),
            );
            b"OK".to_vec()
        } else if text == "vAttach;1" {
            b"T05thread:01;".to_vec()
        } else if text.starts_with("vAttach;") {
            b"E01".to_vec()
        } else if text == "D" {
            b"OK".to_vec()
        } else {
            Vec::new()
        };
        send(&mut stream, &reply);
    }
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

const MAP: &str = r#"<?xml version="1.0"?>
<!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD GDB Memory Map V1.0//EN" "http://sourceware.org/gdb/gdb-memory-map.dtd">
<memory-map>
<memory type="flash" start="0x08000000" length="0x10000">
<property name="blocksize">0x1000</property>
</memory>
<memory type="ram" start="0x20000000" length="0x20000"/>
</memory-map>"#;

/// 5000 bytes with every byte value, so the escaped ones (`#`, `$`, `}`, `*`) and runs for RLE occur.
fn image_bytes() -> Vec<u8> {
    let mut data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    data[100..300].fill(0);
    data
}

fn flasher(addr: SocketAddr, reply_timeout_secs: u64) -> GdbFlasher {
    let cfg = GdbConfig {
        reset: Some("reset".into()),
        reply_timeout_secs,
        ..GdbConfig::new(addr.to_string())
    };
    GdbFlasher::new(cfg, "STM32F405RG").unwrap()
}

fn bin_request(dir: &std::path::Path, base: u64) -> twinflash_flasher::FlashRequest {
    let path = common::write(dir, "fw.bin", &image_bytes());
    common::request(
        path,
        FirmwareFormat::Bin,
        Some(base),
        "STM32F405RG",
        "1.0.0",
    )
}

#[tokio::test]
async fn flash_regions_of_the_memory_map_go_through_vflash() {
    let server = FakeServer::start(Behaviour {
        memory_map: Some(MAP.into()),
        no_ack: true,
        rle: true,
        ..Behaviour::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let req = bin_request(tmp.path(), 0x0800_0100);
    let (tx, mut rx) = common::progress();
    // Set up as for a Black Magic Probe: scan, attach to target 1.
    let bmp = GdbConfig {
        init: vec!["swdp_scan".into()],
        attach: Some(1),
        reset: Some("reset".into()),
        ..GdbConfig::new(server.addr.to_string())
    };
    let out = GdbFlasher::new(bmp, "STM32F405RG")
        .unwrap()
        .flash(&req, tx, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.bytes, 5000);
    let seen = server.seen.lock().unwrap();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    // 0x100..0x100+5000 widened to the 4 KiB blocks: 0x0..0x2000, in one erase.
    assert_eq!(seen.erased, vec![(0x0800_0000, 0x0800_2000)]);
    let written: Vec<u8> = (0..5000u64)
        .map(|i| seen.memory[&(0x0800_0100 + i)])
        .collect();
    assert_eq!(written, image_bytes());
    let packets = &seen.packets;
    let writes = packets
        .iter()
        .filter(|p| p.starts_with("vFlashWrite:"))
        .count();
    // PacketSize 0x200: at most ~480 data bytes a packet, so 5000 bytes take more than 10 writes.
    assert!(writes > 10, "{writes} writes");
    assert!(
        !packets
            .iter()
            .any(|p| p.starts_with('X') || p.starts_with('M'))
    );
    let order: Vec<&str> = packets
        .iter()
        .map(|p| p.split([':', ',']).next().unwrap())
        .filter(|p| ["vAttach;1", "vFlashErase", "vFlashDone", "qRcmd", "D"].contains(p))
        .collect();
    assert_eq!(
        order,
        [
            "qRcmd",
            "vAttach;1",
            "vFlashErase",
            "vFlashDone",
            "qRcmd",
            "D"
        ]
    );
    assert!(packets.contains(&format!("qRcmd,{}", hex_of("swdp_scan"))));
    assert!(packets.contains(&format!("qRcmd,{}", hex_of("reset"))));
    let events = common::drain(&mut rx);
    assert!(
        events
            .iter()
            .any(|p| p.phase == Phase::Erasing && p.percent == 10),
        "{events:?}"
    );
    assert_eq!(events.last().map(|p| p.percent), Some(100));
}

#[tokio::test]
async fn without_a_memory_map_plain_memory_writes_are_used() {
    let server = FakeServer::start(Behaviour::default());
    let tmp = tempfile::tempdir().unwrap();
    let req = bin_request(tmp.path(), 0x2000_0000);
    flasher(server.addr, 10)
        .flash(&req, common::progress().0, CancellationToken::new())
        .await
        .unwrap();
    let seen = server.seen.lock().unwrap();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert!(seen.erased.is_empty());
    let written: Vec<u8> = (0..5000u64)
        .map(|i| seen.memory[&(0x2000_0000 + i)])
        .collect();
    assert_eq!(written, image_bytes());
    assert!(seen.packets.iter().any(|p| p.starts_with('X')));
}

#[tokio::test]
async fn a_read_back_that_differs_is_verify_failed() {
    let server = FakeServer::start(Behaviour {
        memory_map: Some(MAP.into()),
        corrupt_at: Some(0x0800_0100 + 4321),
        ..Behaviour::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let req = bin_request(tmp.path(), 0x0800_0100);
    let err = flasher(server.addr, 10)
        .flash(&req, common::progress().0, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "verify-failed", "{err}");
    assert!(err.to_string().contains("0x80011e1 reads"), "{err}");
    // A target whose flash does not verify is neither reset nor let run.
    let packets = server.packets();
    assert!(
        !packets.iter().any(|p| p.starts_with("qRcmd") || p == "D"),
        "{packets:?}"
    );
}

#[tokio::test]
async fn a_server_that_stops_answering_is_timeout() {
    let server = FakeServer::start(Behaviour {
        memory_map: Some(MAP.into()),
        silent_on: Some("vFlashErase"),
        ..Behaviour::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let req = bin_request(tmp.path(), 0x0800_0100);
    let err = flasher(server.addr, 1)
        .flash(&req, common::progress().0, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "timeout", "{err}");
    assert!(err.to_string().contains("vFlashErase"), "{err}");
}

#[tokio::test]
async fn a_target_the_server_cannot_attach_is_probe_not_found() {
    let server = FakeServer::start(Behaviour::default());
    let tmp = tempfile::tempdir().unwrap();
    let req = bin_request(tmp.path(), 0x2000_0000);
    let cfg = GdbConfig {
        attach: Some(2),
        ..GdbConfig::new(server.addr.to_string())
    };
    let err = GdbFlasher::new(cfg, "STM32F405RG")
        .unwrap()
        .flash(&req, common::progress().0, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "probe-not-found", "{err}");
    assert!(err.to_string().contains("target 2"), "{err}");
    assert!(server.seen.lock().unwrap().memory.is_empty());
}

#[tokio::test]
async fn console_output_without_end_still_times_out() {
    let server = FakeServer::start(Behaviour::default());
    let tmp = tempfile::tempdir().unwrap();
    let req = bin_request(tmp.path(), 0x2000_0000);
    let cfg = GdbConfig {
        reset: Some("flood".into()),
        reply_timeout_secs: 1,
        ..GdbConfig::new(server.addr.to_string())
    };
    let flasher = GdbFlasher::new(cfg, "STM32F405RG").unwrap();
    let flash = flasher.flash(&req, common::progress().0, CancellationToken::new());
    let err = tokio::time::timeout(std::time::Duration::from_secs(15), flash)
        .await
        .expect("the flash never ended: each console packet restarted the reply timeout")
        .unwrap_err();
    assert_eq!(err.code().as_str(), "timeout", "{err}");
    assert!(err.to_string().contains("qRcmd"), "{err}");
}

#[tokio::test]
async fn a_cancelled_flash_writes_nothing() {
    let server = FakeServer::start(Behaviour::default());
    let tmp = tempfile::tempdir().unwrap();
    let req = bin_request(tmp.path(), 0x2000_0000);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = flasher(server.addr, 10)
        .flash(&req, common::progress().0, cancel)
        .await
        .unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(server.seen.lock().unwrap().memory.is_empty());
}

#[tokio::test]
async fn a_bin_is_judged_as_push_judges_it_before_anything_is_sent() {
    let server = FakeServer::start(Behaviour::default());
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes, base) in [
        ("no-base.bin", vec![1u8; 16], None),
        ("empty.bin", vec![], Some(0x2000_0000)),
        ("wraps.bin", vec![1u8; 16], Some(u64::MAX - 4)),
    ] {
        let push = twinflash_image::parse(&bytes, FirmwareFormat::Bin, base).unwrap_err();
        let path = common::write(tmp.path(), name, &bytes);
        let req = common::request(path, FirmwareFormat::Bin, base, "STM32F405RG", "1.0.0");
        let err = flasher(server.addr, 10)
            .flash(&req, common::progress().0, CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), push.code(), "{name}: {err} vs push's {push}");
    }
    assert!(server.packets().is_empty(), "nothing was sent");
}
