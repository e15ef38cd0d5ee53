//! Golden h01 (the HTTP/2 frames of one call of a real edgecore to a mapper), shared by dmi/tests/authority.rs and
//! testkit/tests/dmi_standin.rs (which includes this file by path).

/// The header list of h01's HEADERS frame, as recorded, in order.
pub fn header_list(h01: &serde_json::Value) -> Vec<(String, String)> {
    h01["client_to_mapper"]
        .as_array()
        .and_then(|frames| frames.iter().find(|f| f["frame"] == "HEADERS"))
        .and_then(|f| f["headers"].as_array())
        .expect("h01 has a HEADERS frame with headers")
        .iter()
        .map(|h| {
            let field = |i: usize| h[i].as_str().expect("a header is [name, value]").to_owned();
            (field(0), field(1))
        })
        .collect()
}
