//! Compiles `proto/omi/model.proto` (the OMI service) into Rust with protox,
//! a pure-Rust protobuf compiler, so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/omi");
    println!("cargo:rerun-if-changed={dir}/model.proto");
    let fds = protox::compile(["model.proto"], [dir])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
