//! The two directions of one proxied connection. Downstream (upstream -> client) applies the
//! fault mode byte-exactly; upstream (client -> upstream) only honours `Stall` and cuts.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::{Conn, Fault, Shared, lock};

const BUF: usize = 16 * 1024;
/// Longest sleep before the mode is looked at again.
const RECHECK: Duration = Duration::from_millis(20);

/// Waits while the mode is `Stall`. `None` when the connection was cut meanwhile.
fn wait_unstalled(conn: &Conn, shared: &Shared) -> Option<(Fault, u64)> {
    let mut mode = lock(&shared.mode);
    loop {
        if conn.is_closed() || shared.shutdown.load(Ordering::SeqCst) {
            return None;
        }
        if mode.0 != Fault::Stall {
            return Some(*mode);
        }
        mode = shared
            .mode_changed
            .wait_timeout(mode, RECHECK)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner().0);
    }
}

/// Reads a chunk, retrying on EINTR.
fn read_chunk(from: &mut &std::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match from.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Pacing state of `Bandwidth`, restarted whenever the mode changes.
struct Pace {
    generation: u64,
    since: Instant,
    sent: u64,
}

/// Upstream -> client.
pub(super) fn down(conn: &Arc<Conn>, shared: &Shared) {
    let mut buf = vec![0u8; BUF];
    let mut pace: Option<Pace> = None;
    loop {
        let n = match read_chunk(&mut &conn.upstream, &mut buf) {
            Ok(0) => {
                // Upstream finished sending: pass the half-close on.
                let _ = conn.client.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(_) => {
                conn.cut();
                return;
            }
        };
        let mut pos = 0;
        while pos < n {
            let Some((fault, generation)) = wait_unstalled(conn, shared) else {
                return;
            };
            let offset = conn.down_offset.load(Ordering::SeqCst);
            let remaining = n - pos;
            let len = match fault {
                Fault::Pass | Fault::Corrupt { .. } | Fault::Stall => remaining,
                Fault::Refuse => {
                    conn.cut();
                    return;
                }
                Fault::CutAfter { bytes } => {
                    let allowed = bytes.saturating_sub(offset);
                    if allowed == 0 {
                        conn.cut();
                        return;
                    }
                    remaining.min(usize::try_from(allowed).unwrap_or(usize::MAX))
                }
                Fault::Bandwidth { bytes_per_sec } => {
                    if bytes_per_sec == 0 {
                        thread::sleep(RECHECK);
                        continue;
                    }
                    let p = match pace.take() {
                        Some(p) if p.generation == generation => p,
                        _ => Pace {
                            generation,
                            since: Instant::now(),
                            sent: 0,
                        },
                    };
                    let due =
                        p.since + Duration::from_secs_f64(p.sent as f64 / bytes_per_sec as f64);
                    let now = Instant::now();
                    pace = Some(p);
                    if due > now {
                        thread::sleep((due - now).min(RECHECK));
                        continue;
                    }
                    // About 20 slices a second, at least one byte.
                    let slice = usize::try_from((bytes_per_sec / 20).max(1)).unwrap_or(usize::MAX);
                    remaining.min(slice)
                }
            };
            let piece = &mut buf[pos..pos + len];
            if let Fault::Corrupt { at_byte } = fault
                && let Some(i) = at_byte
                    .checked_sub(offset)
                    .and_then(|d| usize::try_from(d).ok())
                    .filter(|&i| i < len)
            {
                piece[i] ^= 0x01;
            }
            let len64 = len as u64;
            // Counted before the write so that `set(CutAfter)` never misses bytes a client
            // already holds.
            conn.down_offset.fetch_add(len64, Ordering::SeqCst);
            if conn.is_closed() || (&conn.client).write_all(piece).is_err() {
                conn.cut();
                return;
            }
            shared.bytes_down.fetch_add(len64, Ordering::SeqCst);
            if let Some(p) = pace.as_mut() {
                p.sent += len64;
            }
            pos += len;
            // The mode as of now: a `set(CutAfter)` racing with this write either saw the new
            // offset and cut, or is seen here.
            if let Fault::CutAfter { bytes } = shared.mode().0
                && offset + len64 >= bytes
            {
                conn.cut();
                return;
            }
        }
    }
}

/// Client -> upstream.
pub(super) fn up(conn: &Arc<Conn>, shared: &Shared) {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match read_chunk(&mut &conn.client, &mut buf) {
            Ok(0) => {
                let _ = conn.upstream.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(_) => {
                conn.cut();
                return;
            }
        };
        let Some((fault, _)) = wait_unstalled(conn, shared) else {
            return;
        };
        if fault == Fault::Refuse || conn.is_closed() {
            conn.cut();
            return;
        }
        if (&conn.upstream).write_all(&buf[..n]).is_err() {
            conn.cut();
            return;
        }
        shared.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
    }
}
