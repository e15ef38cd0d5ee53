//! Makes the `:authority` that grpc-go sends on a unix socket acceptable to hyper's HTTP/2 server (ADR 0004).
//!
//! edgecore v1.23.1 (grpc-go 1.67.1) dials a mapper at its absolute socket path and sends that path, percent-encoded,
//! as `:authority` (`%2Fvar%2Flib%2Ftwinflash%2Fdmi.sock`, golden h01). The h2 crate parses `:authority` with
//! `http::uri::Authority`, which refuses a `%` outside a port or userinfo, and answers every such call with
//! RST_STREAM PROTOCOL_ERROR before the handler runs. h2 and hyper have no option to relax it.
//!
//! [`FixAuthority`] sits between the unix socket and hyper, on the client-to-server bytes only:
//! - the 24-byte client preface and every frame other than HEADERS/CONTINUATION pass through unchanged; a DATA
//!   payload is streamed through as it arrives, never buffered whole;
//! - a header block (a HEADERS frame and its CONTINUATION frames) is collected, at most [`MAX_HEADER_BLOCK`] bytes,
//!   HPACK-decoded, its `:authority` replaced by `localhost` when `http::uri::Authority` cannot parse it (a valid one
//!   is kept, an absent one stays absent), and HPACK-encoded again by one encoder per connection, whose dynamic
//!   table therefore mirrors the one h2 decodes with. It is sent on as HEADERS + CONTINUATION frames of at most
//!   16,384 bytes (the SETTINGS_MAX_FRAME_SIZE hyper advertises), with the same END_STREAM and PRIORITY fields and
//!   no padding;
//! - anything it cannot handle (an HPACK error, a block or decoded header list over the limit, a malformed
//!   HEADERS frame, a frame between a HEADERS and its CONTINUATION) fails the connection, as HTTP/2 makes those
//!   connection errors anyway; the cause is logged at warn (target `twinflash_dmi::transport::authority`).
//!
//! The server-to-client bytes are not touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest header block taken, before and after HPACK decoding (name + value + 32 per field, as
/// SETTINGS_MAX_HEADER_LIST_SIZE counts). hyper answers anything over its own 16 KiB limit itself.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The largest frame payload hyper's HTTP/2 server accepts by default (SETTINGS_MAX_FRAME_SIZE), and the largest
/// one sent on.
pub const MAX_FRAME: usize = 16_384;
/// The dynamic table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE, the HTTP/2 default): the most a client's
/// table size update may ask for.
const HEADER_TABLE_SIZE: usize = 4096;
/// What a malformed `:authority` becomes (what twinflash's own client sends).
pub const LOCALHOST: &[u8] = b"localhost";

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A decoded header list: (name, value) in order.
type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

/// Why a connection was failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShimError {
    /// A header block over [`MAX_HEADER_BLOCK`], encoded or decoded.
    #[error("header block over {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    /// A HEADERS or CONTINUATION frame over [`MAX_FRAME`].
    #[error("{0}-byte header frame over the {MAX_FRAME}-byte frame size")]
    FrameTooLarge(usize),
    /// A HEADERS frame whose padding or priority does not fit in it.
    #[error("malformed HEADERS frame: {0}")]
    Malformed(&'static str),
    /// A frame other than the CONTINUATION of the open header block.
    #[error(
        "frame of type {frame_type:#x} on stream {stream} inside the header block of stream {open}"
    )]
    ExpectedContinuation {
        /// The frame's type.
        frame_type: u8,
        /// The frame's stream.
        stream: u32,
        /// The stream of the open header block.
        open: u32,
    },
    /// The block is not valid HPACK (or asks for a dynamic table over 4096 bytes).
    #[error("HPACK: {0}")]
    Hpack(String),
}

impl From<ShimError> for io::Error {
    fn from(e: ShimError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Where the rewriter is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Passing the client preface through: this many bytes left.
    Preface(usize),
    /// At a frame boundary.
    Frame,
    /// Passing a frame's payload through: this many bytes left.
    Payload(usize),
}

/// A header block being collected.
#[derive(Debug)]
struct Block {
    stream: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The PRIORITY fields of the HEADERS frame (exclusive bit + dependency, weight).
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The sans-IO part: client bytes in, bytes for h2 out.
pub struct Rewriter {
    state: State,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// How many `:authority` values were replaced (for tests and the log).
    pub rewritten: u64,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("block", &self.block)
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Rewriter {
        Rewriter::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection (before the client preface).
    pub fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            state: State::Preface(PREFACE_LEN),
            block: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            rewritten: 0,
        }
    }

    /// Takes what it can from `input` and appends to `out` what may go to the server. Bytes of an incomplete
    /// HEADERS or CONTINUATION frame, or of an incomplete frame header, stay in `input` until more arrive.
    pub fn process(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(), ShimError> {
        loop {
            match self.state {
                State::Preface(left) | State::Payload(left) => {
                    let n = left.min(input.len());
                    out.put(input.split_to(n));
                    let rest = left - n;
                    self.state = match (self.state, rest) {
                        (_, 0) => State::Frame,
                        (State::Preface(_), r) => State::Preface(r),
                        (_, r) => State::Payload(r),
                    };
                    if rest > 0 {
                        return Ok(());
                    }
                }
                State::Frame => {
                    if input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let len = usize::from(input[0]) << 16
                        | usize::from(input[1]) << 8
                        | usize::from(input[2]);
                    let (frame_type, flags) = (input[3], input[4]);
                    let stream =
                        u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
                    let header_frame = frame_type == HEADERS
                        || (frame_type == CONTINUATION && self.block.is_some());
                    if let Some(open) = &self.block
                        && (frame_type != CONTINUATION || stream != open.stream)
                    {
                        return Err(ShimError::ExpectedContinuation {
                            frame_type,
                            stream,
                            open: open.stream,
                        });
                    }
                    if !header_frame {
                        out.put(input.split_to(FRAME_HEADER_LEN));
                        self.state = State::Payload(len);
                        continue;
                    }
                    if len > MAX_FRAME {
                        return Err(ShimError::FrameTooLarge(len));
                    }
                    if input.len() < FRAME_HEADER_LEN + len {
                        return Ok(());
                    }
                    input.advance(FRAME_HEADER_LEN);
                    let payload = input.split_to(len);
                    self.header_frame(frame_type, flags, stream, &payload, out)?;
                }
            }
        }
    }

    /// One HEADERS or CONTINUATION frame (whole).
    fn header_frame(
        &mut self,
        frame_type: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), ShimError> {
        let fragment = if frame_type == HEADERS {
            let mut p = payload;
            let pad = if flags & PADDED != 0 {
                let (&n, rest) = p
                    .split_first()
                    .ok_or(ShimError::Malformed("no pad length"))?;
                p = rest;
                usize::from(n)
            } else {
                0
            };
            let priority = if flags & PRIORITY != 0 {
                let (fields, rest) = p
                    .split_first_chunk::<5>()
                    .ok_or(ShimError::Malformed("no room for the priority fields"))?;
                p = rest;
                Some(*fields)
            } else {
                None
            };
            let end = p
                .len()
                .checked_sub(pad)
                .ok_or(ShimError::Malformed("padding longer than the frame"))?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: Vec::new(),
            });
            &p[..end]
        } else {
            payload
        };
        let block = self
            .block
            .as_mut()
            .ok_or(ShimError::Malformed("CONTINUATION without HEADERS"))?;
        if block.fragment.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(ShimError::HeaderBlockTooLarge);
        }
        block.fragment.extend_from_slice(fragment);
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let fields = self.decode(&block.fragment)?;
        let encoded = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        emit(&block, &encoded, out);
        Ok(())
    }

    /// The header list of a block, `:authority` fixed.
    fn decode(&mut self, fragment: &[u8]) -> Result<HeaderList, ShimError> {
        let mut fields = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                // Count every field (indexed ones expand), keep them only below the limit.
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_HEADER_BLOCK {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| ShimError::Hpack(e.to_string()))?;
        if size > MAX_HEADER_BLOCK {
            return Err(ShimError::HeaderBlockTooLarge);
        }
        for (name, value) in &mut fields {
            if name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                *value = LOCALHOST.to_vec();
                self.rewritten += 1;
            }
        }
        Ok(fields)
    }
}

/// HEADERS (+ CONTINUATION) frames carrying `encoded` for `block`'s stream.
fn emit(block: &Block, encoded: &[u8], out: &mut BytesMut) {
    let first_room = MAX_FRAME - block.priority.map_or(0, |p| p.len());
    let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let prio = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
    frame(out, HEADERS, flags, block.stream, &[prio, first]);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame(out, CONTINUATION, flags, block.stream, &[chunk]);
    }
}

fn frame(out: &mut BytesMut, frame_type: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // len <= MAX_FRAME, so it fits the 24-bit length.
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.put_slice(&len[1..]);
    out.put_u8(frame_type);
    out.put_u8(flags);
    out.put_u32(stream);
    for p in parts {
        out.put_slice(p);
    }
}

/// A unix-socket connection whose client-to-server bytes go through a [`Rewriter`] (see the module doc).
#[derive(Debug)]
pub struct FixAuthority<IO> {
    io: IO,
    rewriter: Rewriter,
    /// Read from the socket, not processed yet.
    raw: BytesMut,
    /// Processed, not handed to hyper yet.
    ready: BytesMut,
    eof: bool,
}

impl<IO> FixAuthority<IO> {
    /// Wraps a freshly accepted connection.
    pub fn new(io: IO) -> FixAuthority<IO> {
        FixAuthority {
            io,
            rewriter: Rewriter::new(),
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            eof: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FixAuthority<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left is an incomplete frame: h2 sees the connection end inside it.
                if this.raw.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready = std::mem::take(&mut this.raw);
                continue;
            }
            if !this.raw.is_empty() {
                if let Err(e) = this.rewriter.process(&mut this.raw, &mut this.ready) {
                    tracing::warn!(error = %e, "DMI connection refused: its HTTP/2 header block cannot be read");
                    return Poll::Ready(Err(e.into()));
                }
                if !this.ready.is_empty() {
                    continue;
                }
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.raw.put_slice(rb.filled()),
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FixAuthority<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// The header list of golden h01 (edgecore's grpc-go 1.67.1 calling UpdateDevice).
    const H01: [(&str, &str); 9] = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/v1beta1.DeviceMapperService/UpdateDevice"),
        (":authority", "%2Fvar%2Flib%2Ftwinflash%2Fdmi.sock"),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.67.1"),
        ("te", "trailers"),
        ("grpc-accept-encoding", "gzip"),
        ("grpc-timeout", "9995894u"),
    ];

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn with_authority(list: &[(&str, &str)], authority: Option<&str>) -> Fields {
        let mut f = fields(list);
        f.retain(|(n, _)| n != b":authority");
        if let Some(a) = authority {
            f.insert(3, (b":authority".to_vec(), a.as_bytes().to_vec()));
        }
        f
    }

    /// Go's encoder: indexing for every field that is not in a table, Huffman where shorter (httlib-hpack, an
    /// implementation independent of the one under test).
    struct GoLike(httlib_hpack::Encoder<'static>);

    impl GoLike {
        fn new() -> GoLike {
            GoLike(httlib_hpack::Encoder::default())
        }

        fn encode(&mut self, fields: &Fields) -> Vec<u8> {
            let mut out = Vec::new();
            for (n, v) in fields {
                let flags = httlib_hpack::Encoder::HUFFMAN_NAME
                    | httlib_hpack::Encoder::HUFFMAN_VALUE
                    | httlib_hpack::Encoder::WITH_INDEXING
                    | httlib_hpack::Encoder::BEST_FORMAT;
                self.0
                    .encode((n.clone(), v.clone(), flags), &mut out)
                    .unwrap();
            }
            out
        }
    }

    fn frame_bytes(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame(&mut out, frame_type, flags, stream, &[payload]);
        out.to_vec()
    }

    /// A frame as h2 reads it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Frame {
        frame_type: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            out.push(Frame {
                frame_type: bytes[3],
                flags: bytes[4],
                stream: u32::from_be_bytes(bytes[5..9].try_into().unwrap()),
                payload: bytes[9..9 + len].to_vec(),
            });
            bytes = &bytes[9 + len..];
        }
        out
    }

    /// Runs `input` through a fresh rewriter in chunks of `chunk` bytes; returns the output after the preface.
    fn run(input: &[u8], chunk: usize) -> Result<Vec<u8>, ShimError> {
        let mut rw = Rewriter::new();
        let (mut pending, mut out) = (BytesMut::new(), BytesMut::new());
        for piece in input.chunks(chunk.max(1)) {
            pending.extend_from_slice(piece);
            rw.process(&mut pending, &mut out)?;
        }
        assert!(
            pending.is_empty(),
            "all input taken: {} left",
            pending.len()
        );
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        Ok(out[PREFACE_LEN..].to_vec())
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut c = PREFACE.to_vec();
        for f in frames {
            c.extend_from_slice(f);
        }
        c
    }

    /// The header blocks of the output, decoded by an independent decoder with one table for the connection (as
    /// h2's), with each block's HEADERS flags.
    fn blocks(out: &[u8]) -> Vec<(u32, u8, Fields)> {
        let mut dec = httlib_hpack::Decoder::default();
        let mut result = Vec::new();
        let mut open: Option<(u32, u8, Vec<u8>)> = None;
        for f in frames(out) {
            match f.frame_type {
                HEADERS => {
                    assert!(open.is_none());
                    assert!(f.payload.len() <= MAX_FRAME);
                    assert_eq!(f.flags & PADDED, 0, "no padding sent on");
                    let skip = if f.flags & PRIORITY != 0 { 5 } else { 0 };
                    open = Some((f.stream, f.flags, f.payload[skip..].to_vec()));
                }
                CONTINUATION => {
                    assert!(f.payload.len() <= MAX_FRAME);
                    open.as_mut().unwrap().2.extend_from_slice(&f.payload);
                }
                _ => continue,
            }
            if f.flags & END_HEADERS != 0 {
                let (stream, flags, mut block) = open.take().unwrap();
                let mut decoded = Vec::new();
                dec.decode(&mut block, &mut decoded).unwrap();
                result.push((
                    stream,
                    flags | END_HEADERS,
                    decoded.into_iter().map(|(n, v, _)| (n, v)).collect(),
                ));
            }
        }
        result
    }

    #[test]
    fn the_h01_header_block_reaches_h2_with_localhost_and_everything_else_unchanged() {
        for huffman in [false, true] {
            let block = if huffman {
                GoLike::new().encode(&fields(&H01))
            } else {
                loona_hpack::Encoder::new()
                    .encode(fields(&H01).iter().map(|(n, v)| (&n[..], &v[..])))
            };
            let data = frame_bytes(0x0, END_STREAM, 1, &[0, 0, 0, 0, 3, 1, 2, 3]);
            let input = connection(&[
                frame_bytes(0x4, 0, 0, &[]),
                frame_bytes(HEADERS, END_HEADERS, 1, &block),
                data.clone(),
            ]);
            for chunk in [1, 7, 4096] {
                let out = run(&input, chunk).unwrap();
                let got = blocks(&out);
                assert_eq!(
                    got,
                    vec![(1, END_HEADERS, with_authority(&H01, Some("localhost")))],
                    "huffman {huffman}, chunk {chunk}"
                );
                let f = frames(&out);
                assert_eq!(
                    f[0],
                    frames(&frame_bytes(0x4, 0, 0, &[]))[0],
                    "SETTINGS first, unchanged"
                );
                assert_eq!(f.last().unwrap(), &frames(&data)[0], "DATA unchanged");
            }
        }
    }

    #[test]
    fn a_valid_authority_is_kept_and_an_absent_one_stays_absent() {
        for authority in [Some("localhost"), Some("example.com:8080"), None] {
            let list = with_authority(&H01, authority);
            let block = GoLike::new().encode(&list);
            let out = run(
                &connection(&[frame_bytes(HEADERS, END_HEADERS | END_STREAM, 3, &block)]),
                5,
            )
            .unwrap();
            assert_eq!(blocks(&out), vec![(3, END_HEADERS | END_STREAM, list)]);
        }
    }

    #[test]
    fn other_authorities_h2_refuses_become_localhost() {
        for bad in ["", "%2Ftmp%2Fx.sock", "a b", "/abs/path", "ü"] {
            let list = with_authority(&H01, Some(bad));
            let block = GoLike::new().encode(&list);
            let out = run(
                &connection(&[frame_bytes(HEADERS, END_HEADERS, 1, &block)]),
                64,
            )
            .unwrap();
            assert_eq!(
                blocks(&out)[0].2,
                with_authority(&H01, Some("localhost")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_dynamic_tables_stay_in_step_over_many_calls_on_one_connection() {
        // Go's encoder refers to what it indexed in earlier blocks; the re-encoded blocks must decode in h2's table.
        let mut go = GoLike::new();
        let mut input = Vec::new();
        let mut want = Vec::new();
        for i in 0..40u32 {
            let stream = 1 + 2 * i;
            let mut list = fields(&H01);
            list.push((b"x-call".to_vec(), format!("call-{}", i % 7).into_bytes()));
            list.push((b"x-big".to_vec(), vec![b'a' + (i % 26) as u8; 900]));
            input.push(frame_bytes(HEADERS, END_HEADERS, stream, &go.encode(&list)));
            list[3].1 = b"localhost".to_vec();
            want.push((stream, END_HEADERS, list));
        }
        let out = run(&connection(&input), 1000).unwrap();
        assert_eq!(blocks(&out), want);
    }

    #[test]
    fn continuation_padding_and_priority_are_read_and_sent_on_clean() {
        let block = GoLike::new().encode(&fields(&H01));
        let (a, rest) = block.split_at(10);
        let (b, c) = rest.split_at(20);
        let mut headers = vec![4u8]; // pad length
        headers.extend_from_slice(&[0x80, 0, 0, 1, 200]); // exclusive, depends on stream 1, weight 200
        headers.extend_from_slice(a);
        headers.extend_from_slice(&[0; 4]);
        let input = connection(&[
            frame_bytes(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &headers),
            frame_bytes(CONTINUATION, 0, 5, b),
            frame_bytes(CONTINUATION, END_HEADERS, 5, c),
            frame_bytes(0x8, 0, 0, &[0, 0, 1, 0]), // WINDOW_UPDATE after the block
        ]);
        let out = run(&input, 3).unwrap();
        let f = frames(&out);
        assert_eq!(
            f.len(),
            2,
            "one HEADERS frame, then the WINDOW_UPDATE: {f:?}"
        );
        assert_eq!(f[0].flags, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(&f[0].payload[..5], &[0x80, 0, 0, 1, 200]);
        assert_eq!(f[1].frame_type, 0x8);
        assert_eq!(blocks(&out)[0].2, with_authority(&H01, Some("localhost")));
    }

    #[test]
    fn a_block_larger_than_a_frame_is_sent_on_in_continuation_frames() {
        let mut list = fields(&H01);
        for i in 0..6 {
            list.push((format!("x-large-{i}").into_bytes(), vec![b'v'; 7000]));
        }
        let block = loona_hpack::Encoder::new().encode(list.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = vec![frame_bytes(HEADERS, END_STREAM, 7, &block[..MAX_FRAME])];
        for chunk in block[MAX_FRAME..].chunks(MAX_FRAME) {
            input.push(frame_bytes(CONTINUATION, 0, 7, chunk));
        }
        let last = input.len() - 1;
        input[last][4] = END_HEADERS;
        let out = run(&connection(&input), 5000).unwrap();
        let f = frames(&out);
        assert!(f.len() >= 3, "{}", f.len());
        assert_eq!(f[0].frame_type, HEADERS);
        assert_eq!(f[0].flags, END_STREAM);
        assert!(
            f[1..]
                .iter()
                .all(|f| f.frame_type == CONTINUATION && f.stream == 7)
        );
        list[3].1 = b"localhost".to_vec();
        assert_eq!(blocks(&out), vec![(7, END_STREAM | END_HEADERS, list)]);
    }

    #[test]
    fn a_data_payload_streams_through_before_its_frame_is_complete() {
        let mut rw = Rewriter::new();
        let (mut input, mut out) = (BytesMut::from(PREFACE), BytesMut::new());
        let big = vec![7u8; 10_000];
        let data = frame_bytes(0x0, 0, 1, &big);
        input.extend_from_slice(&data[..5000]);
        rw.process(&mut input, &mut out).unwrap();
        assert_eq!(out.len(), PREFACE_LEN + 5000, "passed on at once");
        assert!(input.is_empty());
        input.extend_from_slice(&data[5000..]);
        rw.process(&mut input, &mut out).unwrap();
        assert_eq!(&out[PREFACE_LEN..], &data[..]);
    }

    #[test]
    fn oversize_blocks_and_frames_fail_the_connection() {
        // Encoded: five full CONTINUATION frames of junk never end the block.
        let mut input = vec![frame_bytes(HEADERS, 0, 1, &[0x82; MAX_FRAME])];
        for _ in 0..4 {
            input.push(frame_bytes(CONTINUATION, 0, 1, &[0x82; MAX_FRAME]));
        }
        assert_eq!(
            run(&connection(&input), 9000),
            Err(ShimError::HeaderBlockTooLarge)
        );
        // Decoded: a 4000-byte field indexed once, then referred to 20 times (each reference a single byte).
        let mut block = loona_hpack::Encoder::new().encode([(&b"x-fat"[..], &[b'f'; 4000][..])]);
        block.extend(std::iter::repeat_n(0xbe, 20)); // index 62: the newest dynamic entry
        assert_eq!(
            run(
                &connection(&[frame_bytes(HEADERS, END_HEADERS, 1, &block)]),
                100
            ),
            Err(ShimError::HeaderBlockTooLarge)
        );
        assert_eq!(
            run(
                &connection(&[frame_bytes(HEADERS, END_HEADERS, 1, &[0x82; MAX_FRAME + 1])]),
                100
            ),
            Err(ShimError::FrameTooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn garbage_fails_the_connection_with_a_reason() {
        type Case = (Vec<u8>, fn(&ShimError) -> bool);
        let cases: [Case; 6] = [
            // Index 0, and an index past both tables.
            (frame_bytes(HEADERS, END_HEADERS, 1, &[0x80]), |e| {
                matches!(e, ShimError::Hpack(_))
            }),
            (frame_bytes(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]), |e| {
                matches!(e, ShimError::Hpack(_))
            }),
            // A string longer than the block; a Huffman string with bad padding; a table size over 4096.
            (
                frame_bytes(HEADERS, END_HEADERS, 1, &[0x40, 0x7f, 0x10, b'a']),
                |e| matches!(e, ShimError::Hpack(_)),
            ),
            (
                frame_bytes(HEADERS, END_HEADERS, 1, &[0x40, 0x81, 0x00, 0x81, 0x00]),
                |e| matches!(e, ShimError::Hpack(_)),
            ),
            (
                frame_bytes(HEADERS, END_HEADERS, 1, &[0x3f, 0xe2, 0x1f, 0x82]),
                |e| matches!(e, ShimError::Hpack(_)),
            ),
            // Padding longer than the frame.
            (
                frame_bytes(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]),
                |e| matches!(e, ShimError::Malformed(_)),
            ),
        ];
        for (frame, ok) in cases {
            let e = run(&connection(std::slice::from_ref(&frame)), 2).unwrap_err();
            assert!(ok(&e), "{frame:?}: {e}");
        }
        let interleaved = connection(&[
            frame_bytes(HEADERS, 0, 1, &[0x82]),
            frame_bytes(0x0, 0, 1, b"x"),
        ]);
        assert_eq!(
            run(&interleaved, 50),
            Err(ShimError::ExpectedContinuation {
                frame_type: 0,
                stream: 1,
                open: 1
            })
        );
        let wrong_stream = connection(&[
            frame_bytes(HEADERS, 0, 1, &[0x82]),
            frame_bytes(CONTINUATION, END_HEADERS, 3, &[0x84]),
        ]);
        assert!(matches!(
            run(&wrong_stream, 50),
            Err(ShimError::ExpectedContinuation { .. })
        ));
    }

    #[test]
    fn a_continuation_without_headers_is_left_to_h2() {
        let stray = frame_bytes(CONTINUATION, END_HEADERS, 1, &[0x82]);
        assert_eq!(
            run(&connection(std::slice::from_ref(&stray)), 4).unwrap(),
            stray
        );
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(
            frames_in in proptest::collection::vec(
                (prop_oneof![Just(HEADERS), Just(CONTINUATION), Just(0u8), Just(8u8)], any::<u8>(), 0u32..4,
                 proptest::collection::vec(any::<u8>(), 0..300)),
                0..12),
            chunk in 1usize..64,
        ) {
            let mut input = PREFACE.to_vec();
            for (t, flags, stream, payload) in frames_in {
                input.extend(frame_bytes(t, flags, stream, &payload));
            }
            let mut rw = Rewriter::new();
            let (mut pending, mut out) = (BytesMut::new(), BytesMut::new());
            for piece in input.chunks(chunk) {
                pending.extend_from_slice(piece);
                if rw.process(&mut pending, &mut out).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn random_header_lists_come_out_equal_but_for_the_authority(
            lists in proptest::collection::vec(
                proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..12), 1..6),
            chunk in 1usize..200,
        ) {
            let mut go = GoLike::new();
            let mut input = vec![];
            let mut want = vec![];
            for (i, list) in lists.iter().enumerate() {
                let mut f: Fields = vec![(b":authority".to_vec(), b"%2Fa%2Fb.sock".to_vec())];
                f.extend(list.iter().map(|(n, v)| (n.clone().into_bytes(), v.clone().into_bytes())));
                let stream = 1 + 2 * u32::try_from(i).unwrap();
                input.push(frame_bytes(HEADERS, END_HEADERS, stream, &go.encode(&f)));
                f[0].1 = b"localhost".to_vec();
                want.push((stream, END_HEADERS, f));
            }
            prop_assert_eq!(blocks(&run(&connection(&input), chunk).unwrap()), want);
        }
    }
}
