//! Loading the golden vectors and decoding payloads by their Go type.

use std::path::{Path, PathBuf};

use base64::Engine;
use mqtt_schema::gojson::{self, GoDecode};
use mqtt_schema::{
    BaseMessage, DecodeError, DeviceAttrUpdate, DeviceMsg, DeviceStateUpdate, DeviceTwinDelta,
    DeviceTwinDocument, DeviceTwinResult, DeviceTwinUpdate, DeviceUpdate, MembershipGetResult,
    MembershipUpdate, ResultMessage, WireMessage,
};
use sha2::Digest;

pub struct Vector {
    pub name: String,
    pub kind: String,
    pub json: serde_json::Value,
}

pub fn golden_dir() -> PathBuf {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kubeedge"));
    assert!(
        dir.is_dir(),
        "golden vectors not found at {}: they are part of the repository",
        dir.display()
    );
    dir.to_path_buf()
}

pub fn load_all() -> Vec<Vector> {
    let mut files: Vec<_> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('_'))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            Vector {
                name: json["name"].as_str().unwrap().to_owned(),
                kind: json["kind"].as_str().unwrap().to_owned(),
                json,
            }
        })
        .collect()
}

impl Vector {
    /// The exact bytes (`payload_b64` is the authority).
    pub fn payload(&self) -> Vec<u8> {
        let b64 = self.json["payload_b64"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no payload", self.name));
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    pub fn check_integrity(&self) {
        if self.json["payload"].is_null() {
            return;
        }
        let bytes = self.payload();
        assert_eq!(
            bytes.len() as u64,
            self.json["payload_len"].as_u64().unwrap(),
            "{}",
            self.name
        );
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        assert_eq!(
            Some(sha.as_str()),
            self.json["payload_sha256"].as_str(),
            "{}",
            self.name
        );
        if self.json["payload_invalid_utf8"].as_bool() != Some(true) {
            assert_eq!(
                Some(std::str::from_utf8(&bytes).unwrap()),
                self.json["payload"].as_str(),
                "{}",
                self.name
            );
        }
    }

    /// The Go type name without package, e.g. `DeviceTwinUpdate`.
    pub fn go_type(&self) -> String {
        go_type_name(self.json["go_type"].as_str().unwrap())
    }
}

pub fn go_type_name(go_type: &str) -> String {
    let token = go_type
        .split_whitespace()
        .find(|t| t.contains('.'))
        .unwrap_or(go_type);
    let token = token.split('{').next().unwrap();
    token.rsplit('.').next().unwrap().to_owned()
}

fn partial<T: GoDecode + WireMessage>(bytes: &[u8]) -> (Vec<u8>, Option<DecodeError>) {
    let (v, e) = gojson::decode_partial::<T>(bytes);
    (v.encode(), e)
}

/// Decodes as Go would into the type named `go_type`; returns the re-encoding of the resulting
/// state and Go's error.
pub fn decode_partial_reencode(go_type: &str, bytes: &[u8]) -> (Vec<u8>, Option<DecodeError>) {
    match go_type {
        "DeviceTwinUpdate" => partial::<DeviceTwinUpdate>(bytes),
        "DeviceTwinResult" => partial::<DeviceTwinResult>(bytes),
        "DeviceTwinDelta" => partial::<DeviceTwinDelta>(bytes),
        "DeviceTwinDocument" => partial::<DeviceTwinDocument>(bytes),
        "Result" => partial::<ResultMessage>(bytes),
        "DeviceUpdate" => partial::<DeviceUpdate>(bytes),
        "DeviceStateUpdate" => partial::<DeviceStateUpdate>(bytes),
        "MembershipUpdate" => partial::<MembershipUpdate>(bytes),
        "MembershipGetResult" => partial::<MembershipGetResult>(bytes),
        "DeviceMsg" => partial::<DeviceMsg>(bytes),
        "DeviceAttrUpdate" => partial::<DeviceAttrUpdate>(bytes),
        "BaseMessage" => partial::<BaseMessage>(bytes),
        other => panic!("no Rust type for Go type {other}: teach this test about it"),
    }
}

pub fn reencode(go_type: &str, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    match decode_partial_reencode(go_type, bytes) {
        (b, None) => Ok(b),
        (_, Some(e)) => Err(e),
    }
}

pub fn decode_ok(go_type: &str, bytes: &[u8]) -> bool {
    decode_partial_reencode(go_type, bytes).1.is_none()
}
