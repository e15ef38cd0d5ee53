//! The mapper's DMI server takes every header block edgecore's grpc-go sends (golden h01, ADR 0004): on a raw
//! HTTP/2 connection to `transport::serve` with a real generated DeviceMapperService, the exact header list edgecore
//! v1.23.1 sent (`:authority` = the dialled socket path, percent-encoded), HPACK-coded plainly and Huffman-coded,
//! and the same with `:authority: localhost` and with no `:authority`, each reach the handler and get grpc-status 0.
//! Before the fix h2 answered RST_STREAM PROTOCOL_ERROR and the handler never ran.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use twinflash_dmi::pb;
use twinflash_dmi::pb::device_mapper_service_server::{
    DeviceMapperService, DeviceMapperServiceServer,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A mapper that records which calls reached it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn hit<T>(&self, what: String) -> Result<tonic::Response<T>, tonic::Status>
    where
        T: Default,
    {
        self.0.lock().unwrap().push(what);
        Ok(tonic::Response::new(T::default()))
    }
}

#[tonic::async_trait]
impl DeviceMapperService for Recorder {
    async fn register_device(
        &self,
        r: tonic::Request<pb::RegisterDeviceRequest>,
    ) -> Result<tonic::Response<pb::RegisterDeviceResponse>, tonic::Status> {
        self.hit(format!(
            "RegisterDevice {}",
            r.into_inner().device.unwrap_or_default().name
        ))
    }
    async fn remove_device(
        &self,
        r: tonic::Request<pb::RemoveDeviceRequest>,
    ) -> Result<tonic::Response<pb::RemoveDeviceResponse>, tonic::Status> {
        self.hit(format!("RemoveDevice {}", r.into_inner().device_name))
    }
    async fn update_device(
        &self,
        r: tonic::Request<pb::UpdateDeviceRequest>,
    ) -> Result<tonic::Response<pb::UpdateDeviceResponse>, tonic::Status> {
        self.hit(format!(
            "UpdateDevice {}",
            r.into_inner().device.unwrap_or_default().name
        ))
    }
    async fn create_device_model(
        &self,
        r: tonic::Request<pb::CreateDeviceModelRequest>,
    ) -> Result<tonic::Response<pb::CreateDeviceModelResponse>, tonic::Status> {
        self.hit(format!(
            "CreateDeviceModel {}",
            r.into_inner().model.unwrap_or_default().name
        ))
    }
    async fn remove_device_model(
        &self,
        r: tonic::Request<pb::RemoveDeviceModelRequest>,
    ) -> Result<tonic::Response<pb::RemoveDeviceModelResponse>, tonic::Status> {
        self.hit(format!("RemoveDeviceModel {}", r.into_inner().model_name))
    }
    async fn update_device_model(
        &self,
        r: tonic::Request<pb::UpdateDeviceModelRequest>,
    ) -> Result<tonic::Response<pb::UpdateDeviceModelResponse>, tonic::Status> {
        self.hit(format!(
            "UpdateDeviceModel {}",
            r.into_inner().model.unwrap_or_default().name
        ))
    }
    async fn get_device(
        &self,
        _: tonic::Request<pb::GetDeviceRequest>,
    ) -> Result<tonic::Response<pb::GetDeviceResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "never called by edgecore 1.23",
        ))
    }
}

#[path = "common/h01.rs"]
mod h01;

/// The header list edgecore sent (golden h01), as recorded.
fn h01_headers() -> Vec<(String, String)> {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/h01_http2_call_from_edgecore.json");
    let headers = h01::header_list(&serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap());
    assert_eq!(
        headers[3],
        (
            ":authority".into(),
            "%2Fvar%2Flib%2Ftwinflash%2Fdmi.sock".into()
        )
    );
    headers
}

fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    out.extend([frame_type, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// How HPACK codes the block.
#[derive(Debug, Clone, Copy)]
enum Coding {
    /// Literals as they are (loona-hpack).
    Plain,
    /// Huffman-coded strings with incremental indexing, as Go's encoder writes them (httlib-hpack).
    Huffman,
}

fn encode(headers: &[(String, String)], coding: Coding) -> Vec<u8> {
    match coding {
        Coding::Plain => loona_hpack::Encoder::new()
            .encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
        Coding::Huffman => {
            let mut enc = httlib_hpack::Encoder::default();
            let mut out = Vec::new();
            for (n, v) in headers {
                let flags = httlib_hpack::Encoder::HUFFMAN_NAME
                    | httlib_hpack::Encoder::HUFFMAN_VALUE
                    | httlib_hpack::Encoder::WITH_INDEXING
                    | httlib_hpack::Encoder::BEST_FORMAT;
                enc.encode(
                    (n.as_bytes().to_vec(), v.as_bytes().to_vec(), flags),
                    &mut out,
                )
                .unwrap();
            }
            out
        }
    }
}

/// What came back on stream 1.
#[derive(Debug, Default)]
struct Answer {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    reset: Option<u32>,
}

impl Answer {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One call on a raw HTTP/2 connection: preface, SETTINGS, the server's SETTINGS acknowledged, HEADERS with
/// `block`, DATA with `message` (END_STREAM); then the answer on stream 1 until it ends or is reset.
async fn raw_call(socket: &Path, block: &[u8], message: &[u8]) -> Answer {
    let mut s = UnixStream::connect(socket).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    s.write_all(&out).await.unwrap();
    let mut grpc = vec![0u8];
    grpc.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    grpc.extend(message);
    let mut decoder = loona_hpack::Decoder::new();
    let mut answer = Answer::default();
    let read = async {
        let mut sent = false;
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (t, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes(head[5..9].try_into().unwrap());
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            match t {
                0x4 if flags & 1 == 0 && !sent => {
                    let mut out = frame(0x4, 1, 0, &[]);
                    out.extend(frame(0x1, 0x4, 1, block));
                    out.extend(frame(0x0, 0x1, 1, &grpc));
                    s.write_all(&out).await.unwrap();
                    sent = true;
                }
                0x1 if stream == 1 => {
                    for (n, v) in decoder.decode(&payload).unwrap() {
                        answer
                            .headers
                            .push((String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()));
                    }
                    if flags & 1 != 0 {
                        return;
                    }
                }
                0x0 if stream == 1 => {
                    answer.data.extend(&payload);
                    if flags & 1 != 0 {
                        return;
                    }
                }
                0x3 if stream == 1 => {
                    answer.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    return;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s");
    // grpc-go's goodbye after the call (h01).
    let _ = s
        .write_all(&frame(
            0x7,
            0,
            0,
            b"\0\0\0\x01\0\0\0\0client transport shutdown",
        ))
        .await;
    answer
}

async fn mapper() -> (tempfile::TempDir, std::path::PathBuf, Recorder) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dmi.sock");
    let incoming = twinflash_dmi::transport::bind(&socket).unwrap();
    let rec = Recorder::default();
    tokio::spawn(twinflash_dmi::transport::serve(
        incoming,
        DeviceMapperServiceServer::new(rec.clone()),
        std::future::pending(),
    ));
    (dir, socket, rec)
}

fn device(name: &str) -> pb::Device {
    pb::Device {
        name: name.into(),
        namespace: "default".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_header_form_edgecores_grpc_go_sends_reaches_the_handler() {
    let (_dir, socket, rec) = mapper().await;
    let h01 = h01_headers();
    let with = |authority: Option<&str>| {
        let mut h = h01.clone();
        h.retain(|(n, _)| n != ":authority");
        if let Some(a) = authority {
            h.insert(3, (":authority".into(), a.into()));
        }
        h
    };
    let forms = [
        ("the percent-encoded socket path (h01)", h01.clone()),
        ("localhost", with(Some("localhost"))),
        ("no :authority", with(None)),
    ];
    let mut n = 0;
    for (what, headers) in &forms {
        for coding in [Coding::Plain, Coding::Huffman] {
            n += 1;
            let name = format!("blinky-{n}");
            let message = pb::UpdateDeviceRequest {
                device: Some(device(&name)),
            }
            .encode_to_vec();
            let answer = raw_call(&socket, &encode(headers, coding), &message).await;
            assert_eq!(
                answer.reset, None,
                "{what}, {coding:?}: the stream was reset (1 = PROTOCOL_ERROR): {answer:?}"
            );
            assert_eq!(
                answer.get(":status"),
                Some("200"),
                "{what}, {coding:?}: {answer:?}"
            );
            assert_eq!(
                answer.get("grpc-status"),
                Some("0"),
                "{what}, {coding:?}: {answer:?}"
            );
            assert_eq!(
                answer.data,
                [0, 0, 0, 0, 0],
                "{what}, {coding:?}: one empty UpdateDeviceResponse"
            );
            assert_eq!(
                rec.0.lock().unwrap().last().map(String::as_str),
                Some(format!("UpdateDevice {name}").as_str()),
                "{what}, {coding:?}: the handler ran"
            );
        }
    }
}

#[tokio::test]
async fn register_device_and_create_device_model_carry_the_same_block_and_reach_the_handler() {
    // h01 "also_seen": RegisterDevice and CreateDeviceModel carry the same header block with their own :path.
    let (_dir, socket, rec) = mapper().await;
    let calls = [
        (
            "RegisterDevice",
            pb::RegisterDeviceRequest {
                device: Some(device("blinky-1")),
            }
            .encode_to_vec(),
            "RegisterDevice blinky-1",
        ),
        (
            "CreateDeviceModel",
            pb::CreateDeviceModelRequest {
                model: Some(pb::DeviceModel {
                    name: "blinky-model".into(),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
            "CreateDeviceModel blinky-model",
        ),
    ];
    for (method, message, seen) in calls {
        let mut headers = h01_headers();
        headers[2].1 = format!("/v1beta1.DeviceMapperService/{method}");
        let answer = raw_call(&socket, &encode(&headers, Coding::Huffman), &message).await;
        assert_eq!(
            (answer.reset, answer.get("grpc-status")),
            (None, Some("0")),
            "{method}: {answer:?}"
        );
        assert_eq!(rec.0.lock().unwrap().last().map(String::as_str), Some(seen));
    }
}

#[tokio::test]
async fn an_unreadable_header_block_closes_that_connection_only() {
    let (_dir, socket, rec) = mapper().await;
    // An index past both HPACK tables: a connection error; the server goes on serving the next connection.
    let answer = raw_call(&socket, &[0xff, 0x7f], b"").await;
    assert_eq!(
        (answer.reset, answer.get("grpc-status")),
        (None, None),
        "{answer:?}"
    );
    let message = pb::UpdateDeviceRequest {
        device: Some(device("after")),
    }
    .encode_to_vec();
    let answer = raw_call(&socket, &encode(&h01_headers(), Coding::Huffman), &message).await;
    assert_eq!(answer.get("grpc-status"), Some("0"), "{answer:?}");
    assert_eq!(rec.0.lock().unwrap().as_slice(), ["UpdateDevice after"]);
}
