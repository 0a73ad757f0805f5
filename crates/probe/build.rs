//! Compiles `bpf/probe.bpf.c` (with its headers: `bpf/probe.h`, shared with user space, and
//! `bpf/probe/`) and `bpf/floor.bpf.c` (CO-RE, against the vendored `bpf/vmlinux.h`) and
//! generates their libbpf-rs skeletons into `OUT_DIR/<name>.skel.rs`.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let bpf_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("../../bpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => panic!("meshlogic-probe: no BPF target for architecture {other}"),
        Err(_) => "x86",
    };
    for name in ["probe", "floor"] {
        let source = bpf_dir.join(format!("{name}.bpf.c"));
        SkeletonBuilder::new()
            .source(&source)
            .clang_args([
                format!("-I{}", bpf_dir.display()),
                format!("-D__TARGET_ARCH_{arch}"),
                "-O2".to_string(),
                "-g".to_string(),
                "-Wall".to_string(),
                // The BTF line info names the source file: name it relative to the repository,
                // so that the binary (and its image) does not depend on where the clone is.
                format!("-ffile-prefix-map={}=/agentmesh/bpf", bpf_dir.display()),
            ])
            .build_and_generate(out_dir.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|error| panic!("compiling {}: {error:#}", source.display()));
    }
    // The directory: cargo then watches every file under it (probe.bpf.c's headers in probe/).
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
}
