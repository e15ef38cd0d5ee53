//! A unary gRPC call made the way edgecore v1.23.1's DMI client makes it to a mapper (grpc-go 1.67.1,
//! edge/pkg/devicetwin/dmiclient/client.go), written on a raw HTTP/2 connection so that nothing of twinflash's own
//! transport is on the caller's side of the wire. Each rule names what it reproduces: golden h01 (the recorded
//! frames of one call, dmi/tests/data/), or the grpc-go source vendored in KubeEdge v1.23.1
//! (`vendor/google.golang.org/grpc/...`, cited by file).
//!
//! - A new unix connection per call, to the address taken as a plain path (e13), the deadline counted from the dial
//!   (client.go: `grpc.Dial` is non-blocking, the 10 s context is made right after it).
//! - Client preface and an empty SETTINGS; the server's SETTINGS is awaited and acknowledged before the call
//!   (h01; http2_client.go "Block until the server preface is received").
//! - One HEADERS frame with grpc-go's header list in its order (h01; http2_client.go `createHeaderFields`):
//!   `:authority` = the dialled path escaped by grpc-go's `encodeAuthority` (clientconn.go: '/' becomes `%2F`),
//!   `grpc-timeout` = the time left, encoded by `grpcutil.EncodeDuration`. HPACK as Go's encoder writes it
//!   (x/net/http2/hpack `WriteField`): indexed when in a table, otherwise a literal with incremental indexing, each
//!   string Huffman-coded when that is shorter (httlib-hpack, not loona-hpack which the mapper's transport uses).
//! - The request in DATA frames (5-byte gRPC prefix), the last with END_STREAM, within the server's frame size and
//!   flow-control windows.
//! - The answer: `:status` 200 and `content-type: application/grpc` or grpc-go's error for them, one message,
//!   trailers `grpc-status` / `grpc-message` (percent-decoded); RST_STREAM becomes grpc-go's "stream terminated by
//!   RST_STREAM with error code: <NAME>" with the code of `http2ErrConvTab` (http_util.go); the connection ending
//!   first is `Unavailable` "error reading from server: EOF". PING and SETTINGS are acknowledged.
//! - At the deadline: RST_STREAM CANCEL and `DeadlineExceeded` "context deadline exceeded".
//! - After the call, whatever its outcome: GOAWAY (NO_ERROR, last stream 1, "client transport shutdown"), then the
//!   connection is closed (h01; http2_client.go `Close`).
//!
//! Not modelled: compression (`grpc-accept-encoding: gzip` is sent as grpc-go does, a compressed answer is an error
//! here), the BDP ping and WINDOW_UPDATE grpc-go may send after the answer's DATA (not in the h01 capture), retries
//! (edgecore makes none), keepalive.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// grpc-go's user agent as edgecore v1.23.1 sends it (h01).
pub const USER_AGENT: &str = "grpc-go/1.67.1";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const STREAM: u32 = 1;
const CANCEL: u32 = 0x8;
/// HTTP/2's defaults until the server's SETTINGS says otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
const DEFAULT_MAX_FRAME: usize = 16_384;

/// A failed call, as grpc-go's `err.Error()` prints it (what edgecore logs after "failed with err: ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoError(pub String);

impl std::fmt::Display for GoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GoError {}

/// `status.Error(code, desc).Error()`.
pub fn status_error(code: u32, desc: &str) -> GoError {
    GoError(format!(
        "rpc error: code = {} desc = {desc}",
        code_name(code)
    ))
}

/// `codes.Code.String()` (codes/code_string.go).
pub fn code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("Code({code})"), |n| (*n).to_owned())
}

const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;
const UNKNOWN: u32 = 2;

/// The name and gRPC code of an HTTP/2 error code (x/net/http2 `ErrCode.String()`, grpc-go `http2ErrConvTab`).
fn rst_code(code: u32) -> (String, u32) {
    const TABLE: [(&str, u32); 14] = [
        ("NO_ERROR", INTERNAL),
        ("PROTOCOL_ERROR", INTERNAL),
        ("INTERNAL_ERROR", INTERNAL),
        ("FLOW_CONTROL_ERROR", 8),
        ("SETTINGS_TIMEOUT", INTERNAL),
        ("STREAM_CLOSED", INTERNAL),
        ("FRAME_SIZE_ERROR", INTERNAL),
        ("REFUSED_STREAM", UNAVAILABLE),
        ("CANCEL", 1),
        ("COMPRESSION_ERROR", INTERNAL),
        ("CONNECT_ERROR", INTERNAL),
        ("ENHANCE_YOUR_CALM", 8),
        ("INADEQUATE_SECURITY", 7),
        ("HTTP_1_1_REQUIRED", INTERNAL),
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| TABLE.get(i))
        .map_or_else(
            || (format!("unknown error code 0x{code:x}"), UNKNOWN),
            |(n, c)| ((*n).to_owned(), *c),
        )
}

/// grpc-go's `encodeAuthority` (clientconn.go): everything but RFC 3986's unreserved characters, sub-delims and
/// `:[]@` is percent-encoded with upper-case hex.
pub fn encode_authority(authority: &str) -> String {
    let keep = |c: u8| c.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:[]@".contains(&c);
    let mut out = String::with_capacity(authority.len());
    for &c in authority.as_bytes() {
        if keep(c) {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// `grpcutil.EncodeDuration` (internal/grpcutil/encode_duration.go): the smallest unit in which the value,
/// rounded up, has at most 8 digits.
pub fn encode_timeout(t: Duration) -> String {
    const MAX: u128 = 100_000_000 - 1;
    let ns = t.as_nanos();
    if ns == 0 {
        return "0n".to_owned();
    }
    for (unit, suffix) in [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
    ] {
        let d = ns.div_ceil(unit);
        if d <= MAX {
            return format!("{d}{suffix}");
        }
    }
    format!("{}H", ns.div_ceil(3_600_000_000_000))
}

/// grpc-go's `decodeGrpcMessage` (http_util.go), quirks included: `%XY` is decoded only when two more characters
/// follow the `%`.
fn decode_grpc_message(msg: &str) -> String {
    let b = msg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The header list grpc-go writes for a unary call (h01; http2_client.go `createHeaderFields`).
pub fn header_list(dialled: &Path, method: &str, time_left: Duration) -> Vec<(String, String)> {
    [
        (":method", "POST".to_owned()),
        (":scheme", "http".to_owned()),
        (":path", method.to_owned()),
        (":authority", encode_authority(&dialled.to_string_lossy())),
        ("content-type", "application/grpc".to_owned()),
        ("user-agent", USER_AGENT.to_owned()),
        ("te", "trailers".to_owned()),
        ("grpc-accept-encoding", "gzip".to_owned()),
        ("grpc-timeout", encode_timeout(time_left)),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect()
}

/// A header block as Go's HPACK encoder writes it on a new connection (see the module doc).
pub fn go_hpack(fields: &[(String, String)]) -> Vec<u8> {
    let mut enc = httlib_hpack::Encoder::default();
    let mut out = Vec::new();
    for (n, v) in fields {
        let huffman = |s: &str, flag: u8| {
            let mut h = Vec::new();
            match httlib_huffman::encode(s.as_bytes(), &mut h) {
                Ok(()) if h.len() < s.len() => flag,
                _ => 0,
            }
        };
        let flags = httlib_hpack::Encoder::WITH_INDEXING
            | httlib_hpack::Encoder::BEST_FORMAT
            | huffman(n, httlib_hpack::Encoder::HUFFMAN_NAME)
            | huffman(v, httlib_hpack::Encoder::HUFFMAN_VALUE);
        // Only an unknown table index fails, and BEST_FORMAT takes indexes from the table itself.
        let _ = enc.encode(
            (n.as_bytes().to_vec(), v.as_bytes().to_vec(), flags),
            &mut out,
        );
    }
    out
}

/// One HTTP/2 frame: the 9-byte header, then `payload`.
pub fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len[1..]);
    out.extend([frame_type, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

struct Frame {
    frame_type: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A unary call to `method` (`/package.Service/Method`) with the protobuf bytes `request`, on a new connection to
/// `socket`; `dialled` is the deadline's start (edgecore's dial). The answer's message bytes, or grpc-go's error.
pub async fn unary(
    socket: &Path,
    method: &str,
    request: &[u8],
    deadline: Instant,
) -> Result<Vec<u8>, GoError> {
    let deadline_exceeded = || status_error(4, "context deadline exceeded");
    let io = match tokio::time::timeout_at(deadline, UnixStream::connect(socket)).await {
        Err(_) => return Err(deadline_exceeded()),
        Ok(Err(e)) => {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                "no such file or directory".to_owned()
            } else {
                e.to_string()
            };
            return Err(status_error(
                UNAVAILABLE,
                &format!(
                    "connection error: desc = \"transport: Error while dialing: dial unix {}: connect: {why}\"",
                    socket.display()
                ),
            ));
        }
        Ok(Ok(io)) => io,
    };
    let mut call = Call {
        io,
        buf: Vec::new(),
        conn_window: DEFAULT_WINDOW,
        stream_window: DEFAULT_WINDOW,
        initial_window: DEFAULT_WINDOW,
        max_frame: DEFAULT_MAX_FRAME,
        decoder: loona_hpack::Decoder::new(),
        started: false,
        unacked: 0,
    };
    let result = match tokio::time::timeout_at(
        deadline,
        call.run(socket, method, request, deadline),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => {
            if call.started {
                let _ = call
                    .send(&frame(RST_STREAM, 0, STREAM, &CANCEL.to_be_bytes()))
                    .await;
            }
            Err(deadline_exceeded())
        }
    };
    // ClientConn.Close: GOAWAY, then the connection is closed (h01), whatever the outcome.
    let mut goaway = (if call.started { STREAM } else { 0 })
        .to_be_bytes()
        .to_vec();
    goaway.extend(0u32.to_be_bytes());
    goaway.extend(b"client transport shutdown");
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        call.send(&frame(GOAWAY, 0, 0, &goaway)),
    )
    .await;
    let _ = call.io.shutdown().await;
    result
}

struct Call {
    io: UnixStream,
    buf: Vec<u8>,
    conn_window: i64,
    stream_window: i64,
    initial_window: i64,
    max_frame: usize,
    decoder: loona_hpack::Decoder<'static>,
    /// HEADERS sent.
    started: bool,
    /// Received DATA bytes not yet given back by a WINDOW_UPDATE.
    unacked: i64,
}

/// The answer on the stream so far.
#[derive(Default)]
struct Answer {
    headers_seen: bool,
    data: Vec<u8>,
    block: Vec<u8>,
    block_end_stream: bool,
}

impl Call {
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    fn lost(e: &impl std::fmt::Display) -> GoError {
        status_error(UNAVAILABLE, &format!("error reading from server: {e}"))
    }

    /// The next frame, or why there is none (`EOF`, an I/O error).
    async fn read_frame(&mut self) -> Result<Frame, String> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        frame_type: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Ok(f);
                }
            }
            let mut chunk = [0u8; 16_384];
            match self.io.read(&mut chunk).await {
                Ok(0) => return Err("EOF".to_owned()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The next frame; the connection's end is grpc-go's "error reading from server: EOF".
    async fn frame(&mut self) -> Result<Frame, GoError> {
        self.read_frame().await.map_err(|e| Self::lost(&e))
    }

    /// Handles what every frame on the connection asks for (SETTINGS, PING, WINDOW_UPDATE); true when it was one
    /// of those.
    async fn connection_frame(&mut self, f: &Frame) -> Result<bool, GoError> {
        match f.frame_type {
            SETTINGS if f.flags & ACK == 0 => {
                for s in f.payload.chunks_exact(6) {
                    let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    match u16::from_be_bytes([s[0], s[1]]) {
                        0x4 => {
                            let v = i64::from(value);
                            self.stream_window += v - self.initial_window;
                            self.initial_window = v;
                        }
                        0x5 => self.max_frame = usize::try_from(value).unwrap_or(DEFAULT_MAX_FRAME),
                        _ => {}
                    }
                }
                self.send(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .map_err(|e| Self::lost(&e))?;
            }
            SETTINGS => {}
            PING if f.flags & ACK == 0 => {
                self.send(&frame(PING, ACK, 0, &f.payload))
                    .await
                    .map_err(|e| Self::lost(&e))?;
            }
            PING => {}
            WINDOW_UPDATE if f.payload.len() == 4 => {
                let inc = i64::from(
                    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]])
                        & 0x7fff_ffff,
                );
                match f.stream {
                    0 => self.conn_window += inc,
                    STREAM => self.stream_window += inc,
                    _ => {}
                }
            }
            // A GOAWAY naming our stream lets it finish; one before it means the call was not processed.
            GOAWAY if f.payload.len() >= 8 => {
                let last =
                    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]])
                        & 0x7fff_ffff;
                if self.started && last < STREAM {
                    return Err(status_error(UNAVAILABLE, "the connection is draining"));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    async fn run(
        &mut self,
        dialled: &Path,
        method: &str,
        request: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, GoError> {
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        self.send(&hello).await.map_err(|e| Self::lost(&e))?;
        // The server preface: its first frame must be SETTINGS (http2_client.go readServerPreface).
        let first = self.read_frame().await.map_err(|e| {
            status_error(
                UNAVAILABLE,
                &format!("connection error: desc = \"error reading server preface: {e}\""),
            )
        })?;
        if first.frame_type != SETTINGS || first.flags & ACK != 0 {
            return Err(status_error(
                UNAVAILABLE,
                "connection error: desc = \"initial http2 frame from server is not a settings frame\"",
            ));
        }
        self.connection_frame(&first).await?;
        let fields = header_list(
            dialled,
            method,
            deadline.saturating_duration_since(Instant::now()),
        );
        self.send(&frame(HEADERS, END_HEADERS, STREAM, &go_hpack(&fields)))
            .await
            .map_err(|e| Self::lost(&e))?;
        self.started = true;
        let mut message = vec![0u8];
        message.extend(
            u32::try_from(request.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        message.extend_from_slice(request);
        let mut answer = Answer::default();
        let mut rest = &message[..];
        loop {
            let room =
                usize::try_from(self.conn_window.min(self.stream_window).max(0)).unwrap_or(0);
            let n = rest.len().min(self.max_frame).min(room);
            if n > 0 || rest.is_empty() {
                let (chunk, tail) = rest.split_at(n);
                let flags = if tail.is_empty() { END_STREAM } else { 0 };
                self.send(&frame(DATA, flags, STREAM, chunk))
                    .await
                    .map_err(|e| Self::lost(&e))?;
                let sent = i64::try_from(n).unwrap_or(i64::MAX);
                self.conn_window -= sent;
                self.stream_window -= sent;
                rest = tail;
                if tail.is_empty() {
                    break;
                }
                continue;
            }
            // Blocked by flow control: read until a WINDOW_UPDATE (or an early answer).
            let f = self.frame().await?;
            if let Some(done) = self.stream_frame(&f, &mut answer).await? {
                return done;
            }
        }
        loop {
            let f = self.frame().await?;
            if let Some(done) = self.stream_frame(&f, &mut answer).await? {
                return done;
            }
        }
    }

    /// One frame while the call is open: `Some` when the call is over.
    async fn stream_frame(
        &mut self,
        f: &Frame,
        answer: &mut Answer,
    ) -> Result<Option<Result<Vec<u8>, GoError>>, GoError> {
        if self.connection_frame(f).await? || f.stream != STREAM {
            return Ok(None);
        }
        match f.frame_type {
            RST_STREAM if f.payload.len() == 4 => {
                let (name, code) = rst_code(u32::from_be_bytes([
                    f.payload[0],
                    f.payload[1],
                    f.payload[2],
                    f.payload[3],
                ]));
                Ok(Some(Err(status_error(
                    code,
                    &format!("stream terminated by RST_STREAM with error code: {name}"),
                ))))
            }
            DATA => {
                let mut p = &f.payload[..];
                if f.flags & PADDED != 0 {
                    let pad = usize::from(p.first().copied().unwrap_or(0));
                    p = p.get(1..p.len().saturating_sub(pad)).unwrap_or(&[]);
                }
                answer.data.extend_from_slice(p);
                // Flow control: what was read is given back once a quarter of the window is unacknowledged
                // (flowcontrol.go inFlow/trInFlow; a small answer, as in h01, sends no WINDOW_UPDATE).
                self.unacked += i64::try_from(f.payload.len()).unwrap_or(i64::MAX);
                if self.unacked >= DEFAULT_WINDOW / 4 {
                    let inc = u32::try_from(self.unacked)
                        .unwrap_or(u32::MAX)
                        .to_be_bytes();
                    let mut wu = frame(WINDOW_UPDATE, 0, 0, &inc);
                    wu.extend(frame(WINDOW_UPDATE, 0, STREAM, &inc));
                    let _ = self.send(&wu).await;
                    self.unacked = 0;
                }
                if f.flags & END_STREAM != 0 {
                    // DATA ending the stream: no trailers, so no status (grpc-go: "server closed the stream
                    // without sending trailers").
                    return Ok(Some(Err(status_error(
                        INTERNAL,
                        "server closed the stream without sending trailers",
                    ))));
                }
                Ok(None)
            }
            HEADERS | CONTINUATION => {
                let mut p = &f.payload[..];
                if f.frame_type == HEADERS {
                    answer.block.clear();
                    answer.block_end_stream = f.flags & END_STREAM != 0;
                    if f.flags & PADDED != 0 {
                        let pad = usize::from(p.first().copied().unwrap_or(0));
                        p = p.get(1..p.len().saturating_sub(pad)).unwrap_or(&[]);
                    }
                    if f.flags & PRIORITY != 0 {
                        p = p.get(5..).unwrap_or(&[]);
                    }
                }
                answer.block.extend_from_slice(p);
                if f.flags & END_HEADERS == 0 {
                    return Ok(None);
                }
                let block = std::mem::take(&mut answer.block);
                let fields = self.decoder.decode(&block).map_err(|e| {
                    status_error(INTERNAL, &format!("connection error: desc = \"{e}\""))
                })?;
                let fields: Vec<(String, String)> = fields
                    .into_iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
                Ok(Self::headers(answer, fields))
            }
            _ => Ok(None),
        }
    }

    /// A header block on the stream (http2_client.go operateHeaders).
    fn headers(
        answer: &mut Answer,
        fields: Vec<(String, String)>,
    ) -> Option<Result<Vec<u8>, GoError>> {
        let end_stream = answer.block_end_stream;
        let initial = !answer.headers_seen;
        answer.headers_seen = true;
        if !initial && !end_stream {
            return Some(Err(status_error(
                INTERNAL,
                "a HEADERS frame cannot appear in the middle of a stream",
            )));
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if initial {
            let status = get(":status");
            let content_type = get("content-type");
            let grpc_type = content_type.is_some_and(|c| {
                c == "application/grpc"
                    || c.starts_with("application/grpc+")
                    || c.starts_with("application/grpc;")
            });
            if status != Some("200") || !grpc_type {
                let mut errs = Vec::new();
                let code = match status {
                    None => {
                        errs.push("malformed header: missing HTTP status".to_owned());
                        INTERNAL
                    }
                    Some("200") => INTERNAL,
                    Some(s) => {
                        // HTTPStatusConvTab (http_util.go) and Go's http.StatusText.
                        let (code, text) = match s {
                            "400" => (INTERNAL, "Bad Request"),
                            "401" => (16, "Unauthorized"),
                            "403" => (7, "Forbidden"),
                            "404" => (12, "Not Found"),
                            "429" => (UNAVAILABLE, "Too Many Requests"),
                            "502" => (UNAVAILABLE, "Bad Gateway"),
                            "503" => (UNAVAILABLE, "Service Unavailable"),
                            "504" => (UNAVAILABLE, "Gateway Timeout"),
                            "500" => (UNKNOWN, "Internal Server Error"),
                            _ => (UNKNOWN, ""),
                        };
                        errs.push(format!(
                            "unexpected HTTP status code received from server: {s} ({text})"
                        ));
                        code
                    }
                };
                match content_type {
                    None => errs.push("malformed header: missing HTTP content-type".to_owned()),
                    Some(c) if !grpc_type => {
                        errs.push(format!("transport: received unexpected content-type {c:?}"))
                    }
                    Some(_) => {}
                }
                return Some(Err(status_error(code, &errs.join("; "))));
            }
        }
        if !end_stream {
            return None;
        }
        let code = match get("grpc-status").map(str::parse::<u32>) {
            None => UNKNOWN,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Some(Err(status_error(
                    INTERNAL,
                    &format!("transport: malformed grpc-status: {e}"),
                )));
            }
        };
        if code != 0 {
            let msg = decode_grpc_message(get("grpc-message").unwrap_or(""));
            return Some(Err(status_error(code, &msg)));
        }
        // A unary answer: one message (rpc_util.go recvMsg); none at all is io.EOF (stream.go RecvMsg).
        let d = &answer.data;
        if d.is_empty() {
            return Some(Err(GoError("EOF".to_owned())));
        }
        if d.len() < 5 {
            return Some(Err(status_error(INTERNAL, "unexpected EOF")));
        }
        if d[0] != 0 {
            return Some(Err(status_error(
                INTERNAL,
                "grpc: the stand-in does not decompress (not modelled)",
            )));
        }
        let len =
            usize::try_from(u32::from_be_bytes([d[1], d[2], d[3], d[4]])).unwrap_or(usize::MAX);
        match d.get(5..).filter(|m| m.len() == len) {
            Some(m) => Some(Ok(m.to_vec())),
            None if d.len() - 5 < len => Some(Err(status_error(INTERNAL, "unexpected EOF"))),
            None => Some(Err(status_error(
                INTERNAL,
                "grpc: client streaming protocol violation: get <nil>, want <EOF>",
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_escaped_as_grpc_go_does() {
        // h01: the dialled path, '/' as %2F.
        assert_eq!(
            encode_authority("/var/lib/twinflash/dmi.sock"),
            "%2Fvar%2Flib%2Ftwinflash%2Fdmi.sock"
        );
        assert_eq!(
            encode_authority("/tmp/.tmpAb_9/x y%.sock"),
            "%2Ftmp%2F.tmpAb_9%2Fx%20y%25.sock"
        );
        assert_eq!(encode_authority("host:50051"), "host:50051");
        assert_eq!(
            encode_authority("a@[::1]!$&'()*+,;=~"),
            "a@[::1]!$&'()*+,;=~"
        );
    }

    #[test]
    fn the_timeout_is_encoded_as_grpc_go_does() {
        // h01: 10 s less 4.1 ms.
        assert_eq!(
            encode_timeout(Duration::from_nanos(9_995_893_001)),
            "9995894u"
        );
        assert_eq!(encode_timeout(Duration::ZERO), "0n");
        assert_eq!(
            encode_timeout(Duration::from_nanos(99_999_999)),
            "99999999n"
        );
        assert_eq!(encode_timeout(Duration::from_secs(10)), "10000000u");
        assert_eq!(encode_timeout(Duration::from_secs(100_000)), "100000S");
        assert_eq!(
            encode_timeout(Duration::from_secs(100_000_000 * 60)),
            "1666667H"
        );
    }

    #[test]
    fn statuses_and_resets_read_as_grpc_go_prints_them() {
        assert_eq!(
            status_error(
                rst_code(1).1,
                &format!(
                    "stream terminated by RST_STREAM with error code: {}",
                    rst_code(1).0
                )
            )
            .0,
            "rpc error: code = Internal desc = stream terminated by RST_STREAM with error code: PROTOCOL_ERROR"
        );
        assert_eq!(rst_code(7), ("REFUSED_STREAM".to_owned(), UNAVAILABLE));
        assert_eq!(rst_code(8), ("CANCEL".to_owned(), 1));
        assert_eq!(rst_code(0x42).1, UNKNOWN);
        assert_eq!(code_name(3), "InvalidArgument");
        assert_eq!(code_name(1), "Canceled");
        assert_eq!(code_name(42), "Code(42)");
        assert_eq!(decode_grpc_message("a%20b%2"), "a b%2");
        assert_eq!(decode_grpc_message("100%"), "100%");
        assert_eq!(decode_grpc_message("%zz"), "%zz");
    }
}
