//! Compiles `bpf/probe.bpf.c` (CO-RE, against the vendored `bpf/vmlinux.h`) and generates its
//! libbpf-rs skeleton into `OUT_DIR/probe.skel.rs`.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let bpf_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("../../bpf");
    let source = bpf_dir.join("probe.bpf.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("probe.skel.rs");
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => panic!("meshlogic-probe: no BPF target for architecture {other}"),
        Err(_) => "x86",
    };
    SkeletonBuilder::new()
        .source(&source)
        .clang_args([
            format!("-I{}", bpf_dir.display()),
            format!("-D__TARGET_ARCH_{arch}"),
            "-O2".to_string(),
            "-g".to_string(),
            "-Wall".to_string(),
        ])
        .build_and_generate(&out)
        .unwrap_or_else(|error| panic!("compiling {}: {error:#}", source.display()));
    for file in ["probe.bpf.c", "probe.h", "vmlinux.h"] {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(file).display());
    }
}
