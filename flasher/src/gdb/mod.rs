//! The gdb backend: flashes ELF, Intel HEX and BIN through any GDB server (QEMU, OpenOCD, pyOCD, SEGGER's J-Link GDB
//! server, a Black Magic Probe's serial port) by speaking the GDB remote serial protocol itself (ADR 0006).
//!
//! One flash: connect, `qSupported`, `?`; with a memory map (`qXfer:memory-map:read`, OpenOCD/pyOCD/J-Link/BMP) the
//! bytes in flash go through `vFlashErase`/`vFlashWrite`/`vFlashDone` and the rest through `X`; without one (QEMU)
//! everything goes through `X` (or `M` where `X` is not supported). Every written range is read back with `m` and
//! compared; then the configured monitor command resets the target, and `D` detaches so that it runs.
//!
//! Errors: a server that cannot be reached is `probe-not-found` (transient: the server may come back), a write the
//! server refuses is `flash-failed`, a read-back that differs (or is refused) is `verify-failed`, a server that does
//! not answer within `reply_timeout_secs` is `timeout`.

mod memory_map;
mod rsp;
mod running;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::image::Source;
use crate::progress::{Phase, Reporter};
use crate::{
    BoxFuture, CancellationToken, FlashError, FlashOutcome, FlashRequest, Flasher, GdbConfig,
    ProgressSender,
};
use memory_map::FlashRegion;
use rsp::Client;

/// Bytes of a packet kept free for the command and its arguments (`vFlashWrite:ffffffff:`, `Xffffffff,ffff:`).
const HEADER_ROOM: usize = 32;

/// Flashes through a GDB server. Operations on one flasher are serialised.
#[derive(Debug, Clone)]
pub struct GdbFlasher {
    cfg: GdbConfig,
    chip: String,
    lock: Arc<Mutex<()>>,
}

impl GdbFlasher {
    /// Validate the settings: a `host:port` or an absolute device path, a printable reset command, timeouts > 0.
    pub fn new(cfg: GdbConfig, chip: &str) -> Result<Self, FlashError> {
        let bad = |detail: String| Err(FlashError::Config { detail });
        let t = cfg.target.as_str();
        if t.starts_with('/') {
            // A serial device (Black Magic Probe); it may appear only when the probe is plugged in.
        } else {
            match t.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty()
                        && !host.contains(char::is_whitespace)
                        && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => {
                    return bad(format!(
                        "gdb target {t:?} is neither host:port (e.g. 127.0.0.1:3333) nor the path of a serial device"
                    ));
                }
            }
        }
        for (key, cmd) in cfg
            .reset
            .iter()
            .map(|r| ("reset", r))
            .chain(cfg.init.iter().map(|c| ("init", c)))
        {
            if cmd.trim().is_empty() || !cmd.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                return bad(format!(
                    "gdb {key} {cmd:?} must be a monitor command of printable ASCII (e.g. \"reset\", \"swdp_scan\")"
                ));
            }
        }
        if cfg.connect_timeout_secs == 0 || cfg.reply_timeout_secs == 0 {
            return bad("gdb connect_timeout_secs and reply_timeout_secs must be > 0".into());
        }
        Ok(GdbFlasher {
            cfg,
            chip: chip.to_owned(),
            lock: Arc::new(Mutex::new(())),
        })
    }

    async fn run_flash(
        &self,
        req: &FlashRequest,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> Result<FlashOutcome, FlashError> {
        self.check_chip(&req.chip)?;
        let _guard = self.lock.lock().await;
        let (path, format, base) = (req.image.clone(), req.format, req.base_address);
        let source = tokio::task::spawn_blocking(move || Source::open(&path, format, base))
            .await
            .map_err(|e| FlashError::Internal {
                detail: format!("image loader: {e}"),
            })??;
        if cancel.is_cancelled() {
            return Err(FlashError::Cancelled);
        }
        let (mut client, features) = self.open().await?;
        let regions = if features.memory_map {
            let xml = read_memory_map(&mut client).await?;
            memory_map::flash_regions(&xml).map_err(|detail| FlashError::FlashFailed {
                detail: format!("GDB server {}: memory map: {detail}", self.cfg.target),
            })?
        } else {
            Vec::new()
        };
        tracing::info!(
            target = %self.cfg.target,
            packet_size = features.packet_size,
            flash_regions = regions.len(),
            bytes = source.len(),
            "flashing through GDB server"
        );
        if cancel.is_cancelled() {
            let _ = client.request(b"D").await;
            return Err(FlashError::Cancelled);
        }
        let mut session = Session {
            client,
            target: &self.cfg.target,
            packet_size: features.packet_size,
            reporter: Reporter::new(progress),
            total: source.len(),
            memory_writes: MemoryWrite::Binary,
        };
        session.program(&source, &regions).await?;
        session.verify(&source).await?;
        if let Some(cmd) = &self.cfg.reset {
            session.monitor(cmd).await?;
        }
        session.detach().await;
        Ok(FlashOutcome {
            bytes: source.len(),
            unchanged: false,
        })
    }
}

impl GdbFlasher {
    /// Connects, negotiates and attaches: a session ready for requests (the target halted, by most servers).
    async fn open(&self) -> Result<(Client, rsp::Features), FlashError> {
        let mut client = Client::connect(
            &self.cfg.target,
            Duration::from_secs(self.cfg.connect_timeout_secs),
            Duration::from_secs(self.cfg.reply_timeout_secs),
        )
        .await?;
        let features = client.handshake().await?;
        // The stop reason: every server answers it once attached (and OpenOCD/pyOCD halt the target on attach).
        client.request(b"?").await?;
        self.attach(&mut client).await?;
        Ok((client, features))
    }

    /// The `init` monitor commands, then `vAttach` when configured. A target the server cannot find or attach to (a
    /// Black Magic Probe whose board is unpowered) is `probe-not-found`, like an unplugged probe.
    async fn attach(&self, client: &mut Client) -> Result<(), FlashError> {
        for cmd in &self.cfg.init {
            let reply = client.monitor(cmd).await?;
            if reply != b"OK" {
                return Err(refused(&self.cfg.target, &format!("monitor {cmd}"), &reply));
            }
        }
        if let Some(n) = self.cfg.attach {
            let reply = client.request(format!("vAttach;{n:x}").as_bytes()).await?;
            if !matches!(reply.first(), Some(b'T' | b'S')) {
                return Err(FlashError::ProbeNotFound {
                    selector: format!("GDB server {} target {n}", self.cfg.target),
                    detail: format!(
                        "vAttach;{n:x} answered {:?}",
                        String::from_utf8_lossy(&reply[..reply.len().min(64)])
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Which packet writes plain memory: `X` (binary) unless the server answers it with an empty reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemoryWrite {
    Binary,
    Hex,
}

/// One flash over one connection.
struct Session<'a> {
    client: Client,
    target: &'a str,
    packet_size: usize,
    reporter: Reporter,
    total: u64,
    memory_writes: MemoryWrite,
}

/// A part of a segment, in flash (with its region) or not.
struct Piece {
    address: u64,
    len: u64,
    /// Which segment, and where in it the piece starts.
    seg: usize,
    offset: u64,
    region: Option<FlashRegion>,
}

/// Splits the segments (address, length) at flash region boundaries.
fn pieces(segments: &[(u64, u64)], regions: &[FlashRegion]) -> Vec<Piece> {
    let mut out = Vec::new();
    for (seg, &(address, len)) in segments.iter().enumerate() {
        let mut offset = 0;
        while offset < len {
            let addr = address.saturating_add(offset);
            let inside = regions.iter().find(|r| r.start <= addr && addr < r.end());
            let limit = match inside {
                Some(r) => r.end(),
                // Up to the next region that starts inside the rest of the segment.
                None => regions
                    .iter()
                    .map(|r| r.start)
                    .filter(|s| *s > addr)
                    .min()
                    .unwrap_or(u64::MAX),
            };
            let n = limit.saturating_sub(addr).min(len - offset);
            out.push(Piece {
                address: addr,
                len: n,
                seg,
                offset,
                region: inside.copied(),
            });
            offset += n;
        }
    }
    out
}

/// The erase ranges for the flash pieces: each widened to its region's blocks, overlaps merged.
fn erase_ranges(pieces: &[Piece]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = pieces
        .iter()
        .filter_map(|p| {
            let r = p.region?;
            let offset = p.address - r.start;
            let start = r.start + offset / r.blocksize * r.blocksize;
            let end_offset = offset + p.len;
            let end = (r.start + end_offset.div_ceil(r.blocksize) * r.blocksize).min(r.end());
            Some((start, end))
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

impl Session<'_> {
    async fn program(
        &mut self,
        source: &Source,
        regions: &[FlashRegion],
    ) -> Result<(), FlashError> {
        let pieces = pieces(&source.segments(), regions);
        let erases = erase_ranges(&pieces);
        let erase_total: u64 = erases.iter().map(|(s, e)| e - s).sum();
        self.reporter.report(Phase::Erasing, 0, erase_total);
        let mut erased = 0;
        for (start, end) in &erases {
            let cmd = format!("vFlashErase:{start:x},{:x}", end - start);
            let reply = self.client.request(cmd.as_bytes()).await?;
            if reply != b"OK" {
                return Err(self.refused(&cmd, &reply));
            }
            erased += end - start;
            self.reporter.report(Phase::Erasing, erased, erase_total);
        }
        let mut buf = vec![0u8; self.data_room()];
        let mut written = 0u64;
        for piece in &pieces {
            let mut done = 0u64;
            while done < piece.len {
                let want = usize::try_from(piece.len - done)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let chunk = &mut buf[..want];
                // A positional read of a local file (the artifact cache): microseconds, not worth a blocking thread.
                source.read(piece.seg, piece.offset + done, chunk)?;
                let addr = piece.address + done;
                // A packet may take fewer bytes than read (escapes); the rest is read again for the next one.
                let n = if piece.region.is_some() {
                    self.flash_write(addr, chunk).await?
                } else {
                    self.memory_write(addr, chunk).await?
                };
                done += n as u64;
                written += n as u64;
                self.reporter
                    .report(Phase::Programming, written, self.total);
            }
        }
        if !erases.is_empty() {
            let reply = self.client.request(b"vFlashDone").await?;
            if reply != b"OK" {
                return Err(self.refused("vFlashDone", &reply));
            }
        }
        Ok(())
    }

    /// One `vFlashWrite` of as many bytes of `data` as fit in a packet; returns how many.
    async fn flash_write(&mut self, addr: u64, data: &[u8]) -> Result<usize, FlashError> {
        let mut packet = format!("vFlashWrite:{addr:x}:").into_bytes();
        let n = self.fill_binary(&mut packet, data);
        let reply = self.client.request(&packet).await?;
        if reply != b"OK" {
            return Err(self.refused(&rsp::name(&packet), &reply));
        }
        Ok(n)
    }

    /// One `X` (or `M`) write of as many bytes of `data` as fit in a packet; returns how many.
    async fn memory_write(&mut self, addr: u64, data: &[u8]) -> Result<usize, FlashError> {
        if self.memory_writes == MemoryWrite::Binary {
            let mut body = Vec::new();
            let n = self.fill_binary(&mut body, data);
            let mut packet = format!("X{addr:x},{n:x}:").into_bytes();
            packet.extend_from_slice(&body);
            let reply = self.client.request(&packet).await?;
            if reply == b"OK" {
                return Ok(n);
            }
            if !reply.is_empty() {
                return Err(self.refused(&rsp::name(&packet), &reply));
            }
            tracing::info!(target = %self.target, "GDB server has no X packet; writing with M");
            self.memory_writes = MemoryWrite::Hex;
        }
        let n = data.len().min(self.data_room() / 2);
        let mut packet = format!("M{addr:x},{n:x}:").into_bytes();
        packet.extend_from_slice(hex::encode(&data[..n]).as_bytes());
        let reply = self.client.request(&packet).await?;
        if reply != b"OK" {
            return Err(self.refused(&rsp::name(&packet), &reply));
        }
        Ok(n)
    }

    /// Bytes of data a packet may carry after its header.
    fn data_room(&self) -> usize {
        self.packet_size.saturating_sub(HEADER_ROOM).max(16)
    }

    /// Appends escaped bytes of `data` to `packet` while they fit; returns how many bytes of `data` went in.
    fn fill_binary(&self, packet: &mut Vec<u8>, data: &[u8]) -> usize {
        let room = self.data_room();
        let mut used = 0;
        let mut n = 0;
        for &b in data {
            let cost = if matches!(b, b'#' | b'$' | b'}' | b'*') {
                2
            } else {
                1
            };
            if used + cost > room {
                break;
            }
            used += cost;
            n += 1;
        }
        rsp::escape_into(packet, &data[..n]);
        n
    }

    /// Reads every segment back with `m` and compares.
    async fn verify(&mut self, source: &Source) -> Result<(), FlashError> {
        let chunk = (self.packet_size / 2).saturating_sub(8).max(8);
        let mut want_buf = vec![0u8; chunk];
        let mut done = 0u64;
        for (seg, (address, len)) in source.segments().into_iter().enumerate() {
            let mut offset = 0u64;
            while offset < len {
                let n = usize::try_from(len - offset)
                    .unwrap_or(usize::MAX)
                    .min(chunk);
                let want = &mut want_buf[..n];
                source.read(seg, offset, want)?;
                let addr = address + offset;
                let cmd = format!("m{addr:x},{n:x}");
                let reply = self.client.request(cmd.as_bytes()).await?;
                let got = hex::decode(&reply).map_err(|_| FlashError::VerifyFailed {
                    detail: format!(
                        "GDB server {} answered {cmd} with {:?}",
                        self.target,
                        String::from_utf8_lossy(&reply[..reply.len().min(16)])
                    ),
                })?;
                if got.len() != n {
                    return Err(FlashError::VerifyFailed {
                        detail: format!(
                            "GDB server {} returned {} bytes for {cmd}",
                            self.target,
                            got.len()
                        ),
                    });
                }
                if let Some(off) = got.iter().zip(want.iter()).position(|(g, w)| g != w) {
                    let differ = got.iter().zip(want.iter()).filter(|(g, w)| g != w).count();
                    return Err(FlashError::VerifyFailed {
                        detail: format!(
                            "{:#x} reads {:#04x}, the image has {:#04x} ({differ} of {n} bytes read at {addr:#x} differ)",
                            addr + off as u64,
                            got[off],
                            want[off],
                        ),
                    });
                }
                offset += n as u64;
                done += n as u64;
                self.reporter.report(Phase::Verifying, done, self.total);
            }
        }
        self.reporter
            .report(Phase::Verifying, self.total, self.total);
        Ok(())
    }

    /// `monitor <cmd>`: `flash-failed` unless the server answers `OK`.
    async fn monitor(&mut self, cmd: &str) -> Result<(), FlashError> {
        let reply = self.client.monitor(cmd).await?;
        if reply != b"OK" {
            return Err(self.refused(&format!("monitor {cmd}"), &reply));
        }
        Ok(())
    }

    /// `D`: the target runs on. The image is verified by now, so a server that closes without `OK` is only logged.
    async fn detach(&mut self) {
        detach(&mut self.client, self.target).await;
    }

    fn refused(&self, what: &str, reply: &[u8]) -> FlashError {
        refused(self.target, what, reply)
    }
}

/// `D`: the target runs on. Whatever was asked of it is done by now, so a server that closes without `OK` is only
/// logged.
async fn detach(client: &mut Client, target: &str) {
    match client.request(b"D").await {
        Ok(reply) if reply == b"OK" => {}
        Ok(reply) => {
            tracing::warn!(target = %target, reply = %String::from_utf8_lossy(&reply), "GDB server refused detach")
        }
        Err(e) => tracing::warn!(target = %target, error = %e, "detach from GDB server"),
    }
}

/// `flash-failed`: the server at `target` answered `what` with an error (or did not support it).
fn refused(target: &str, what: &str, reply: &[u8]) -> FlashError {
    let why = if reply.is_empty() {
        "an empty reply (not supported)".to_owned()
    } else {
        format!(
            "{:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(64)])
        )
    };
    FlashError::FlashFailed {
        detail: format!("GDB server {target} refused {what}: {why}"),
    }
}

/// The whole `qXfer:memory-map:read` document (`m` chunks until `l`).
async fn read_memory_map(client: &mut Client) -> Result<String, FlashError> {
    let mut xml = Vec::new();
    loop {
        let cmd = format!("qXfer:memory-map:read::{:x},{:x}", xml.len(), 0x800);
        let reply = client.request(cmd.as_bytes()).await?;
        let (more, data) = match reply.split_first() {
            Some((b'm', d)) => (true, d),
            Some((b'l', d)) => (false, d),
            _ => {
                return Err(FlashError::FlashFailed {
                    detail: format!(
                        "GDB server offered a memory map but answered {:?}",
                        String::from_utf8_lossy(&reply[..reply.len().min(16)])
                    ),
                });
            }
        };
        xml.extend(rsp::unescape(data));
        if !more || data.is_empty() || xml.len() > (1 << 20) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&xml).into_owned())
}

impl Flasher for GdbFlasher {
    fn kind(&self) -> &'static str {
        "gdb"
    }

    fn chip(&self) -> &str {
        &self.chip
    }

    fn flash<'a>(
        &'a self,
        req: &'a FlashRequest,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<FlashOutcome, FlashError>> {
        Box::pin(self.run_flash(req, progress, cancel))
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), FlashError>> {
        Box::pin(self.run_reset())
    }

    fn read_memory(&self, address: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>, FlashError>> {
        Box::pin(self.run_read_memory(address, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(target: &str) -> GdbConfig {
        GdbConfig::new(target)
    }

    #[test]
    fn settings_are_validated() {
        assert!(GdbFlasher::new(cfg("127.0.0.1:3333"), "c").is_ok());
        assert!(GdbFlasher::new(cfg("localhost:2331"), "c").is_ok());
        assert!(GdbFlasher::new(cfg("[::1]:3333"), "c").is_ok());
        assert!(GdbFlasher::new(cfg("/dev/ttyACM0"), "c").is_ok());
        for bad in ["", "localhost", ":3333", "host:0", "host:99999", "a b:1"] {
            assert!(GdbFlasher::new(cfg(bad), "c").is_err(), "{bad:?}");
        }
        let reset = |r: &str| GdbConfig {
            reset: Some(r.into()),
            ..cfg("h:1")
        };
        let init = GdbConfig {
            init: vec!["swdp_scan".into(), "".into()],
            ..cfg("/dev/ttyACM0")
        };
        assert!(GdbFlasher::new(init, "c").is_err());
        assert!(GdbFlasher::new(reset("reset halt"), "c").is_ok());
        assert!(GdbFlasher::new(reset(""), "c").is_err());
        assert!(GdbFlasher::new(reset("reset\nquit"), "c").is_err());
        let zero = GdbConfig {
            reply_timeout_secs: 0,
            ..cfg("h:1")
        };
        assert!(GdbFlasher::new(zero, "c").is_err());
    }

    #[test]
    fn segments_split_at_flash_regions_and_erase_whole_blocks() {
        // (address, length) of the image's segments, in address order.
        let segments = [(0x0800_3ff0, 0x20), (0x2000_0000, 8)];
        let regions = [
            FlashRegion {
                start: 0x0800_0000,
                length: 0x4000,
                blocksize: 0x1000,
            },
            FlashRegion {
                start: 0x0800_4000,
                length: 0x10000,
                blocksize: 0x10000,
            },
        ];
        let p = pieces(&segments, &regions);
        let shape: Vec<(u64, u64, bool)> = p
            .iter()
            .map(|p| (p.address, p.len, p.region.is_some()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (0x0800_3ff0, 0x10, true),
                (0x0800_4000, 0x10, true),
                (0x2000_0000, 8, false)
            ]
        );
        // Widened to whole blocks of each region, then merged where they touch.
        assert_eq!(erase_ranges(&p), vec![(0x0800_3000, 0x0801_4000)]);
        // Nothing in flash without a memory map: everything is plain memory.
        assert!(pieces(&segments, &[]).iter().all(|p| p.region.is_none()));
        // Where each piece reads from: segment 0 from 0 and 0x10, segment 1 from 0.
        assert_eq!(
            p.iter().map(|p| (p.seg, p.offset)).collect::<Vec<_>>(),
            vec![(0, 0), (0, 0x10), (1, 0)]
        );
    }
}
