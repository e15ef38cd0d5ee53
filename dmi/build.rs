//! Generates the DMI wire types and gRPC stubs from proto/v1beta1/api.proto with protox (a protobuf compiler in
//! Rust: no protoc on the build machine) and tonic-prost-build. Maps are BTreeMaps, so an encoded message is
//! deterministic (map entries sorted by key), as KubeEdge's golden vectors are.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["v1beta1/api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        // No tonic::transport (see twinflash_dmi::transport).
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
