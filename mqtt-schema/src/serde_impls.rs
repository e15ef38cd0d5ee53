//! serde support for the string-shaped types other crates put in configuration and journals:
//! each is written as its wire string and read back with its `FromStr` (so validation applies).

use std::fmt::Display;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::ErrorCode;
use crate::firmware::{FirmwareRef, FirmwareState};
use crate::topic::{DeviceId, TopicLayout};

fn deserialize_parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(de::Error::custom)
}

macro_rules! string_serde {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_parsed(d)
            }
        }
    )*};
}

string_serde!(DeviceId, ErrorCode, FirmwareRef, FirmwareState, TopicLayout);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_in_and_out() {
        let id: DeviceId = serde_json::from_str("\"default/blinky-01\"").unwrap();
        assert_eq!(id, DeviceId::namespaced("default", "blinky-01").unwrap());
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"default/blinky-01\"");
        let layout: TopicLayout = serde_json::from_str("\"legacy\"").unwrap();
        assert_eq!(layout, TopicLayout::Legacy);
        assert_eq!(
            serde_json::to_string(&TopicLayout::Namespaced).unwrap(),
            "\"namespaced\""
        );
        assert!(serde_json::from_str::<FirmwareRef>("\"fw/blinky:1.0\"").is_err());
        let s: FirmwareState = serde_json::from_str("\"flashing:3\"").unwrap();
        assert_eq!(s, FirmwareState::Flashing(3));
        let c: ErrorCode = serde_json::from_str("\"disk-full\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"disk-full\"");
        assert!(serde_json::from_str::<ErrorCode>("\"nope\"").is_err());
    }
}
