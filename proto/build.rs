//! Compiles `berth/v1/*.proto` with protox (a pure-Rust protobuf compiler), so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["berth/v1/spawner.proto", "berth/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
