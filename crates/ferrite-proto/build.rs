//! Generates Rust code and a descriptor set from `proto/` with protox: no system protoc.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "ferrite/v1/common.proto",
    "ferrite/v1/features.proto",
    "ferrite/v1/scoring.proto",
    "ferrite/v1/search.proto",
    "ferrite/v1/experiments.proto",
    "ferrite/v1/admin.proto",
    "inference/grpc_service.proto",
    "inference/model_config.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: the compiled build script may be shared by clones that share a
    // target dir (cargo's metadata hash ignores the path), so `env!` could name another clone.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ferrite_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .skip_protoc_run()
        // Methods a service does not implement answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        // Messages are decoded from one slice rather than through `Buf` (see src/codec.rs).
        .codec_path("crate::codec::SliceCodec")
        .compile_fds(fds)?;
    Ok(())
}
