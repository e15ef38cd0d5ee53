//! Fuzzing in the normal suite: every decoder and parser gets arbitrary bytes and mutated golden
//! payloads and must return (never panic); what decodes re-encodes to something that decodes
//! to the same value.
// Test code: unwrap/expect on data we just produced is the point of the assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use base64::Engine;
use mqtt_schema::gojson::{GoDecode, decode_partial};
use mqtt_schema::{
    BaseMessage, DeviceAttrUpdate, DeviceMsg, DeviceStateUpdate, DeviceTwinDelta,
    DeviceTwinDocument, DeviceTwinResult, DeviceTwinUpdate, DeviceUpdate, MembershipGetResult,
    MembershipUpdate, ResultMessage, WireMessage, unmarshal_device_twin_update,
};
use proptest::prelude::*;

fn golden_payloads() -> &'static Vec<Vec<u8>> {
    static PAYLOADS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    PAYLOADS.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kubeedge");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("golden vectors in tests/data/kubeedge") {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            if let Some(b64) = v["payload_b64"].as_str() {
                out.push(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap(),
                );
            }
        }
        assert!(out.len() > 50);
        out
    })
}

fn stable<T: WireMessage + GoDecode + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let (partial, err) = decode_partial::<T>(bytes);
    // The partial state always encodes (and that encoding is itself decodable).
    let again = T::decode(&partial.encode()).unwrap();
    assert_eq!(again, partial);
    match T::decode(bytes) {
        Ok(v) => {
            assert!(err.is_none());
            assert_eq!(v, partial);
        }
        Err(e) => assert_eq!(Some(e), err),
    }
}

fn all_decoders(bytes: &[u8]) {
    stable::<DeviceTwinUpdate>(bytes);
    stable::<DeviceTwinResult>(bytes);
    stable::<DeviceTwinDelta>(bytes);
    stable::<DeviceTwinDocument>(bytes);
    stable::<ResultMessage>(bytes);
    stable::<DeviceUpdate>(bytes);
    stable::<DeviceStateUpdate>(bytes);
    stable::<MembershipUpdate>(bytes);
    stable::<MembershipGetResult>(bytes);
    stable::<DeviceMsg>(bytes);
    stable::<DeviceAttrUpdate>(bytes);
    stable::<BaseMessage>(bytes);
    let _ = unmarshal_device_twin_update(bytes);
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        any::<u8>(),
        proptest::sample::select(b"{}[]\",:\\0-1eE.tnu\xff\xc3 ".to_vec()),
    ];
    prop_oneof![
        (any::<usize>(), interesting.clone()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), interesting).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

fn apply(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = b.len().max(1);
    match *m {
        Mutation::Flip(i, x) => {
            if !b.is_empty() {
                b[i % n] = x;
            }
        }
        Mutation::Insert(i, x) => b.insert(i % (b.len() + 1), x),
        Mutation::Delete(i) => {
            if !b.is_empty() {
                b.remove(i % n);
            }
        }
        Mutation::Splice(a, len, at) => {
            let start = a % n;
            let end = (start + len % 16).min(b.len());
            let chunk = b.get(start..end).unwrap_or(&[]).to_vec();
            let at = at % (b.len() + 1);
            b.splice(at..at, chunk);
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        all_decoders(&bytes);
    }

    #[test]
    fn json_shaped_noise_never_panics(s in "[{}\\[\\]\":,a-z0-9 \\\\ſ.eE+-]{0,120}") {
        all_decoders(s.as_bytes());
    }

    #[test]
    fn mutated_golden_payloads_never_panic(
        pick in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..6),
    ) {
        let payloads = golden_payloads();
        let mut b = payloads[pick % payloads.len()].clone();
        for m in &muts {
            b = apply(b, m);
        }
        all_decoders(&b);
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for depth in [9_999usize, 10_000, 10_001, 200_000] {
        let deep = format!(
            "{{\"x\":{}{},\"twin\":{{}}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let r = DeviceTwinUpdate::decode(deep.as_bytes());
        // The object adds one level: Go's limit of 10000 levels allows 9999 arrays inside it.
        assert_eq!(r.is_ok(), depth < 10_000, "depth {depth}");
        all_decoders(deep.as_bytes());
    }
    let unclosed = "[".repeat(300_000);
    all_decoders(unclosed.as_bytes());
}
