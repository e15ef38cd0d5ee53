//! Go `json.Unmarshal` behaviours without a golden vector, as a table: each row is an input, whether
//! Go reports an error, and the re-encoding of the state Go leaves behind.
// Test code: unwrap/expect on literals is the point of the assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqtt_schema::gojson::decode_partial;
use mqtt_schema::{DeviceTwinDelta, DeviceTwinUpdate, MembershipGetResult, WireMessage};

fn update(input: &str) -> (String, bool) {
    let (v, e) = decode_partial::<DeviceTwinUpdate>(input.as_bytes());
    (String::from_utf8(v.encode()).unwrap(), e.is_some())
}

#[test]
fn update_decoding_table() {
    let rows: &[(&str, bool, &str)] = &[
        // Duplicate map entries do not merge: the entry is decoded into a fresh value.
        (
            r#"{"twin":{"a":{"actual":{"value":"1"}},"a":{"optional":true}}}"#,
            false,
            r#"{"event_id":"","timestamp":0,"twin":{"a":{"optional":true}}}"#,
        ),
        // A later null clears the whole map (nil).
        (
            r#"{"twin":{"a":null},"twin":null}"#,
            false,
            r#"{"event_id":"","timestamp":0,"twin":null}"#,
        ),
        // A string where a struct pointer is expected: pointer allocated, error reported.
        (
            r#"{"twin":{"a":{"actual":"x"}}}"#,
            true,
            r#"{"event_id":"","timestamp":0,"twin":{"a":{"actual":{}}}}"#,
        ),
        // A string where a map is expected: the map stays nil.
        (
            r#"{"twin":"x"}"#,
            true,
            r#"{"event_id":"","timestamp":0,"twin":null}"#,
        ),
        // Escapes in keys are resolved before matching; map keys are never folded (Kelvin sign kept).
        (
            r#"{"\u0074imestamp":5,"event_\u0069d":"e","twin":{"\u212Aey":{"actual":{"value":"1"}}}}"#,
            false,
            "{\"event_id\":\"e\",\"timestamp\":5,\"twin\":{\"\u{212A}ey\":{\"actual\":{\"value\":\"1\"}}}}",
        ),
        // -0 is a valid int64; an exponent is not.
        (
            r#"{"timestamp":-0,"twin":{}}"#,
            false,
            r#"{"event_id":"","timestamp":0,"twin":{}}"#,
        ),
        (
            r#"{"timestamp":1e3,"twin":{}}"#,
            true,
            r#"{"event_id":"","timestamp":0,"twin":{}}"#,
        ),
        // Bool and null literals in a value field.
        (
            r#"{"twin":{"a":{"optional":1,"actual":{"value":null}}}}"#,
            true,
            r#"{"event_id":"","timestamp":0,"twin":{"a":{"actual":{},"optional":false}}}"#,
        ),
        // Whitespace around and inside is fine; a BOM is not.
        (
            " \t\r\n{ \"twin\" : { } } \n",
            false,
            r#"{"event_id":"","timestamp":0,"twin":{}}"#,
        ),
        (
            "\u{feff}{\"twin\":{}}",
            true,
            r#"{"event_id":"","timestamp":0,"twin":null}"#,
        ),
        // Top-level null is a no-op; other top-level values are type errors.
        (
            "null",
            false,
            r#"{"event_id":"","timestamp":0,"twin":null}"#,
        ),
        (
            "\"x\"",
            true,
            r#"{"event_id":"","timestamp":0,"twin":null}"#,
        ),
        // Lone surrogate escapes become U+FFFD, which is written raw.
        (
            r#"{"event_id":"\ud800x","twin":{}}"#,
            false,
            "{\"event_id\":\"\u{fffd}x\",\"timestamp\":0,\"twin\":{}}",
        ),
    ];
    for (input, err, state) in rows {
        let (got, got_err) = update(input);
        assert_eq!((got.as_str(), got_err), (*state, *err), "input {input}");
    }
}

#[test]
fn delta_map_null_entry_is_empty_string() {
    let d = DeviceTwinDelta::decode(br#"{"delta":{"a":null,"b":"x"}}"#).unwrap();
    assert_eq!(d.wanted("a"), Some(""));
    assert_eq!(d.wanted("b"), Some("x"));
}

#[test]
fn slices_decode_into_existing_elements() {
    let m = MembershipGetResult::decode(
        br#"{"devices":[{"id":"a","name":"n"}],"devices":[{"id":"b"}]}"#,
    )
    .unwrap();
    let devices = m.devices.unwrap();
    assert_eq!(devices.len(), 1);
    // Go decodes the second array's element into the existing first element: name survives.
    assert_eq!(
        (devices[0].id.as_str(), devices[0].name.as_str()),
        ("b", "n")
    );
    let empty = MembershipGetResult::decode(br#"{"devices":[]}"#).unwrap();
    assert_eq!(
        empty.encode(),
        br#"{"event_id":"","timestamp":0,"devices":[]}"#
    );
}
