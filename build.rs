//! Compiles `schema/*.capnp` to Rust with an embedded (wasm) capnp, so no system tool is needed.

fn main() {
    println!("cargo:rerun-if-changed=schema");
    let request = capnpc_embedded::CompileCommand::new()
        .src_prefix("schema")
        .file("schema/capstan.capnp")
        .file("schema/example.capnp")
        .compile()
        .expect("compiling schema/*.capnp");
    capnpc::codegen::CodeGenerationCommand::new()
        .output_directory(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .run(&request[..])
        .expect("generating Rust from schema/*.capnp");
}
