//! A Device's `configData` values. KubeEdge turns each JSON value of the Device's protocol config data into a
//! `google.protobuf.Any` (edge/pkg/devicetwin/dtcommon/util.go): a string becomes `StringValue`, a number
//! `FloatValue` (float32, even for an integer), a boolean `BoolValue`. An object or an array cannot be converted,
//! and edgecore then never sends the Device at all (golden e11). This module converts both ways.

use prost::Message;
use prost_types::Any;
use serde_json::Value;

/// `type_url` of a string value.
pub const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// `type_url` of a number (float32).
pub const FLOAT_VALUE: &str = "type.googleapis.com/google.protobuf.FloatValue";
/// `type_url` of a boolean.
pub const BOOL_VALUE: &str = "type.googleapis.com/google.protobuf.BoolValue";

/// The largest integer a float32 holds exactly (2^24). KubeEdge passes every configData number through float32, so a
/// larger number may have lost digits before the mapper sees it.
pub const FLOAT32_EXACT: f64 = 16_777_216.0;

/// A config data value could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// A `type_url` KubeEdge never sends.
    #[error(
        "config data value of type {0:?} (KubeEdge sends only StringValue, FloatValue and BoolValue)"
    )]
    UnknownType(String),
    /// The bytes do not decode as the named type.
    #[error("config data value of type {type_url} does not decode: {reason}")]
    Undecodable { type_url: String, reason: String },
    /// An object or an array (KubeEdge cannot convert it; edgecore drops such a Device).
    #[error(
        "config data values must be strings, numbers or booleans (KubeEdge drops a Device with an object or array there)"
    )]
    NotScalar,
    /// A number that is not finite.
    #[error("config data number {0} is not finite")]
    NotFinite(f32),
}

/// The JSON value an `Any` of the config data carries. A FloatValue with an integral value becomes a JSON integer
/// (KubeEdge sends `4000` as the float 4000.0).
pub fn to_json(any: &Any) -> Result<Value, ValueError> {
    let undecodable = |e: prost::DecodeError| ValueError::Undecodable {
        type_url: any.type_url.clone(),
        reason: e.to_string(),
    };
    match any.type_url.as_str() {
        STRING_VALUE => Ok(Value::String(
            String::decode(any.value.as_slice()).map_err(undecodable)?,
        )),
        BOOL_VALUE => Ok(Value::Bool(
            bool::decode(any.value.as_slice()).map_err(undecodable)?,
        )),
        FLOAT_VALUE => {
            let f = f32::decode(any.value.as_slice()).map_err(undecodable)?;
            if !f.is_finite() {
                return Err(ValueError::NotFinite(f));
            }
            let wide = f64::from(f);
            if wide.fract() == 0.0 && wide.abs() <= 9.0e15 {
                // Integral and well inside i64: exact.
                #[allow(clippy::cast_possible_truncation)]
                Ok(Value::from(wide as i64))
            } else {
                Ok(serde_json::Number::from_f64(wide).map_or(Value::Null, Value::Number))
            }
        }
        other => Err(ValueError::UnknownType(other.to_owned())),
    }
}

/// The `Any` KubeEdge makes of a JSON value (what edgecore sends; the test harness's stand-in uses it).
pub fn from_json(value: &Value) -> Result<Any, ValueError> {
    match value {
        Value::String(s) => Ok(Any {
            type_url: STRING_VALUE.into(),
            value: s.encode_to_vec(),
        }),
        Value::Bool(b) => Ok(Any {
            type_url: BOOL_VALUE.into(),
            value: b.encode_to_vec(),
        }),
        Value::Number(n) => {
            #[allow(clippy::cast_possible_truncation)]
            let f = n.as_f64().unwrap_or_default() as f32;
            Ok(Any {
                type_url: FLOAT_VALUE.into(),
                value: f.encode_to_vec(),
            })
        }
        Value::Null | Value::Array(_) | Value::Object(_) => Err(ValueError::NotScalar),
    }
}

/// All values of a config data map as a JSON object (absent map: empty object).
pub fn config_json(
    data: Option<&crate::pb::CustomizedValue>,
) -> Result<serde_json::Map<String, Value>, (String, ValueError)> {
    let mut out = serde_json::Map::new();
    if let Some(data) = data {
        for (k, v) in &data.data {
            out.insert(k.clone(), to_json(v).map_err(|e| (k.clone(), e))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_go_both_ways_and_integral_floats_come_back_as_integers() {
        for v in [
            Value::from("nRF52840_xxAA"),
            Value::from(true),
            Value::from(4000),
            Value::from(0.5),
        ] {
            assert_eq!(to_json(&from_json(&v).unwrap()).unwrap(), v);
        }
        assert_eq!(
            from_json(&serde_json::json!({"a": 1})),
            Err(ValueError::NotScalar)
        );
        assert_eq!(
            from_json(&serde_json::json!([1])),
            Err(ValueError::NotScalar)
        );
    }

    #[test]
    fn a_type_kubeedge_never_sends_and_garbage_bytes_are_errors_not_panics() {
        let any = Any {
            type_url: "type.googleapis.com/google.protobuf.Int64Value".into(),
            value: vec![8, 1],
        };
        assert!(matches!(to_json(&any), Err(ValueError::UnknownType(_))));
        let any = Any {
            type_url: STRING_VALUE.into(),
            value: vec![0x0a, 0xff],
        };
        assert!(matches!(to_json(&any), Err(ValueError::Undecodable { .. })));
    }
}
