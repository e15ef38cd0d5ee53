//! The client side of the GDB remote serial protocol (RSP), as far as flashing needs it: packet framing
//! (`$data#cs`), acknowledgements (and `QStartNoAckMode` when offered), run-length decoding of replies, the binary
//! escape of `X`, `vFlashWrite` and `qXfer` data. Hand-written: crates.io has no maintained RSP client (ADR 0006).
//!
//! Reference: GDB manual, "Remote Protocol" (Overview, Packets, General Query Packets, Memory Map Format).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};

use crate::FlashError;

/// A byte stream to a GDB server: a TCP connection or a serial device.
pub(crate) trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// Times a packet is sent again after a `-` (bad checksum) from the server.
const RESENDS: usize = 3;
/// Upper bound of a packet we accept from a server, so a broken server cannot grow our buffer without limit.
const MAX_REPLY: usize = 1 << 20;

/// What the server said in `qSupported`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Features {
    /// `PacketSize`: the largest packet (data between `$` and `#`) the server accepts.
    pub packet_size: usize,
    /// `qXfer:memory-map:read+`: it describes its flash, so writes go through `vFlash*`.
    pub memory_map: bool,
    /// `QStartNoAckMode+`.
    pub no_ack: bool,
}

impl Features {
    /// Parses a `qSupported` reply: `PacketSize=1000;qXfer:memory-map:read+;...` (PacketSize in hex).
    pub(crate) fn parse(reply: &[u8]) -> Features {
        let text = String::from_utf8_lossy(reply);
        let mut f = Features {
            // The protocol's floor when a server does not say: gdb assumes 400 bytes.
            packet_size: 400,
            memory_map: false,
            no_ack: false,
        };
        for item in text.split(';') {
            if let Some(size) = item.strip_prefix("PacketSize=") {
                if let Ok(n) = usize::from_str_radix(size, 16) {
                    f.packet_size = n.clamp(64, MAX_REPLY);
                }
            } else if item == "qXfer:memory-map:read+" {
                f.memory_map = true;
            } else if item == "QStartNoAckMode+" {
                f.no_ack = true;
            }
        }
        f
    }
}

/// One connection to a GDB server.
pub(crate) struct Client {
    link: BufStream<Box<dyn Link>>,
    /// The server's address or device, for messages.
    target: String,
    ack: bool,
    reply_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target)
            .field("ack", &self.ack)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `target`: `host:port` over TCP, or a path (starting with `/`) of a serial device.
    /// Any failure is `probe-not-found`: the server is the probe, and it may come back.
    pub(crate) async fn connect(
        target: &str,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Client, FlashError> {
        let unreachable = |detail: String| FlashError::ProbeNotFound {
            selector: format!("GDB server {target}"),
            detail,
        };
        let open = async {
            let link: Box<dyn Link> = if target.starts_with('/') {
                let file = tokio::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(target)
                    .await?;
                Box::new(file)
            } else {
                let stream = tokio::net::TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            };
            Ok::<_, std::io::Error>(link)
        };
        let link = match tokio::time::timeout(connect_timeout, open).await {
            Ok(Ok(link)) => link,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {} s",
                    connect_timeout.as_secs_f32()
                )));
            }
        };
        Ok(Client {
            link: BufStream::new(link),
            target: target.to_owned(),
            ack: true,
            reply_timeout,
        })
    }

    /// `qSupported`, then `QStartNoAckMode` when offered.
    pub(crate) async fn handshake(&mut self) -> Result<Features, FlashError> {
        let reply = self
            .request(b"qSupported:multiprocess-;swbreak+;hwbreak+;vContSupported+")
            .await?;
        let features = Features::parse(&reply);
        if features.no_ack && self.request(b"QStartNoAckMode").await? == b"OK" {
            self.ack = false;
        }
        Ok(features)
    }

    /// Sends `payload` (already escaped where the packet is binary) and returns the reply's data.
    pub(crate) async fn request(&mut self, payload: &[u8]) -> Result<Vec<u8>, FlashError> {
        self.send(payload).await?;
        self.receive(payload).await
    }

    /// `monitor <cmd>` (`qRcmd,<hex>`); the server's console output goes to the log, the final reply is returned.
    pub(crate) async fn monitor(&mut self, cmd: &str) -> Result<Vec<u8>, FlashError> {
        self.request(format!("qRcmd,{}", hex::encode(cmd)).as_bytes())
            .await
    }

    /// Sends a packet without waiting for a reply (`D` on servers that close at once, `k`).
    pub(crate) async fn send(&mut self, payload: &[u8]) -> Result<(), FlashError> {
        let mut frame = Vec::with_capacity(payload.len() + 4);
        frame.push(b'$');
        frame.extend_from_slice(payload);
        frame.push(b'#');
        frame.extend_from_slice(format!("{:02x}", checksum(payload)).as_bytes());
        for _ in 0..=RESENDS {
            self.link
                .write_all(&frame)
                .await
                .map_err(|e| self.lost(payload, &e))?;
            self.link
                .flush()
                .await
                .map_err(|e| self.lost(payload, &e))?;
            if !self.ack {
                return Ok(());
            }
            let ack = tokio::time::timeout(self.reply_timeout, self.read_ack()).await;
            match self.settle(payload, ack)? {
                b'+' => return Ok(()),
                _ => tracing::debug!(target = %self.target, "GDB server asked for a resend"),
            }
        }
        Err(FlashError::FlashFailed {
            detail: format!(
                "GDB server {} refused packet {} {RESENDS} times (bad checksum)",
                self.target,
                name(payload)
            ),
        })
    }

    /// Waits for the reply to `request` (named in errors); console output (`O...`) is skipped. The reply timeout
    /// bounds the whole wait, so a server that sends console output without end still times out.
    pub(crate) async fn receive(&mut self, request: &[u8]) -> Result<Vec<u8>, FlashError> {
        let deadline = tokio::time::Instant::now() + self.reply_timeout;
        loop {
            let packet = tokio::time::timeout_at(deadline, self.read_packet()).await;
            if let Some(p) = self.settle(request, packet)? {
                return Ok(p);
            }
        }
    }

    /// A timed read's outcome as our error: a timeout, or the connection lost.
    fn settle<T>(
        &self,
        request: &[u8],
        res: Result<std::io::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, FlashError> {
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.lost(request, &e)),
            Err(_) => Err(FlashError::Timeout {
                what: format!("reply of GDB server {} to {}", self.target, name(request)),
                seconds: self.reply_timeout.as_secs(),
            }),
        }
    }

    fn lost(&self, request: &[u8], e: &std::io::Error) -> FlashError {
        FlashError::FlashFailed {
            detail: format!(
                "connection to GDB server {} lost during {}: {e}",
                self.target,
                name(request)
            ),
        }
    }

    /// The next `+` or `-`; anything else before it is line noise.
    async fn read_ack(&mut self) -> std::io::Result<u8> {
        loop {
            let b = self.link.read_u8().await?;
            if b == b'+' || b == b'-' {
                return Ok(b);
            }
        }
    }

    /// One packet's data, run-length decoded. `None` for a packet that is no reply: console output (`O<hex>`,
    /// but not `OK`) and a bad checksum (a `-` asks for it again).
    async fn read_packet(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        while self.link.read_u8().await? != b'$' {}
        let mut raw = Vec::new();
        loop {
            let b = self.link.read_u8().await?;
            if b == b'#' {
                break;
            }
            if raw.len() >= MAX_REPLY {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("packet longer than {MAX_REPLY} bytes"),
                ));
            }
            raw.push(b);
        }
        let mut cs = [0u8; 2];
        self.link.read_exact(&mut cs).await?;
        let sent = std::str::from_utf8(&cs)
            .ok()
            .and_then(|s| u8::from_str_radix(s, 16).ok());
        if sent != Some(checksum(&raw)) {
            if self.ack {
                self.link.write_all(b"-").await?;
                self.link.flush().await?;
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "packet with a bad checksum (no-ack mode)",
            ));
        }
        if self.ack {
            self.link.write_all(b"+").await?;
            self.link.flush().await?;
        }
        let data = run_length_decode(&raw);
        if data.first() == Some(&b'O') && data != b"OK" {
            let text = hex::decode(&data[1..]).unwrap_or_default();
            tracing::info!(target = %self.target, "GDB server: {}", String::from_utf8_lossy(&text).trim_end());
            return Ok(None);
        }
        Ok(Some(data))
    }
}

/// The packet's command, for messages: `vFlashWrite`, `qRcmd`; for memory packets with their range (`X8000000,4`).
pub(crate) fn name(payload: &[u8]) -> String {
    let stop: &[u8] = if matches!(payload.first(), Some(b'X' | b'M' | b'm')) {
        b":"
    } else {
        b":,;"
    };
    let end = payload
        .iter()
        .position(|b| stop.contains(b))
        .unwrap_or(payload.len())
        .min(32);
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// The modulo-256 sum of the packet's data.
pub(crate) fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// `x*n` repeats `x` `n - 29` more times (GDB manual, "Overview": run-length encoding).
pub(crate) fn run_length_decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'*' && i + 1 < raw.len() {
            if let Some(&last) = out.last() {
                let n = usize::from(raw[i + 1].saturating_sub(29));
                out.extend(std::iter::repeat_n(last, n));
            }
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// Appends `data` escaped for a binary packet: `#`, `$`, `}` and `*` become `}` and the byte xor 0x20.
pub(crate) fn escape_into(out: &mut Vec<u8>, data: &[u8]) {
    for &b in data {
        if matches!(b, b'#' | b'$' | b'}' | b'*') {
            out.push(b'}');
            out.push(b ^ 0x20);
        } else {
            out.push(b);
        }
    }
}

/// The inverse of [`escape_into`] (binary replies: `qXfer`).
pub(crate) fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut it = data.iter();
    while let Some(&b) = it.next() {
        if b == b'}' {
            if let Some(&n) = it.next() {
                out.push(n ^ 0x20);
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_from_qsupported() {
        let f =
            Features::parse(b"PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+");
        assert_eq!(
            f,
            Features {
                packet_size: 4096,
                memory_map: false,
                no_ack: false
            }
        );
        let f = Features::parse(b"PacketSize=3fff;qXfer:memory-map:read+;QStartNoAckMode+");
        assert_eq!(
            (f.packet_size, f.memory_map, f.no_ack),
            (0x3fff, true, true)
        );
        assert_eq!(Features::parse(b"PacketSize=zz").packet_size, 400);
        assert_eq!(Features::parse(b"PacketSize=1").packet_size, 64);
    }

    #[test]
    fn framing_helpers() {
        // The checksum gdb sends for `$?#3f` and `$g#67`.
        assert_eq!(checksum(b"?"), 0x3f);
        assert_eq!(checksum(b"g"), 0x67);
        assert_eq!(run_length_decode(b"0* "), b"0000".to_vec());
        assert_eq!(run_length_decode(b"ab"), b"ab".to_vec());
        let mut out = Vec::new();
        escape_into(&mut out, b"a#$}*b");
        assert_eq!(out, b"a}\x03}\x04}]}\x0ab".to_vec());
        assert_eq!(unescape(&out), b"a#$}*b".to_vec());
        assert_eq!(name(b"vFlashWrite:8000000:xyz"), "vFlashWrite");
        assert_eq!(name(b"X8000000,4:abcd"), "X8000000,4");
        assert_eq!(name(b"qRcmd,7265"), "qRcmd");
    }
}
