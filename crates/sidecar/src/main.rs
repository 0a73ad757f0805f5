//! `agentmesh-sidecar`: see the crate documentation.
//!
//! Invoked as `cat` (the image links `/bin/cat` to this binary) it only prints files: the
//! seed deployment guide's liveness probe is `cat /var/run/agentmesh/healthy`, and the image has
//! no other program to run it with.

use std::io::Write;

use agentmesh_sidecar::config::Config;

fn main() {
    let mut args = std::env::args_os();
    let invoked_as = args.next().unwrap_or_default();
    if std::path::Path::new(&invoked_as)
        .file_name()
        .is_some_and(|name| name == "cat")
    {
        std::process::exit(cat(args));
    }
    serve();
}

/// Writes each file to stdout; 1 if any cannot be read (the probe then fails).
fn cat(files: impl Iterator<Item = std::ffi::OsString>) -> i32 {
    let mut status = 0;
    let mut stdout = std::io::stdout().lock();
    for file in files {
        match std::fs::read(&file) {
            Ok(contents) => {
                let _ = stdout.write_all(&contents);
            }
            Err(error) => {
                eprintln!("cat: {}: {error}", file.to_string_lossy());
                status = 1;
            }
        }
    }
    status
}

#[tokio::main]
async fn serve() {
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("agentmesh-sidecar: {error}");
            std::process::exit(2);
        }
    };
    let _traces = match agentmesh_sidecar::init_logging(&config.settings) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("agentmesh-sidecar: {error}");
            std::process::exit(2);
        }
    };
    if let Err(error) = agentmesh_sidecar::run(config).await {
        tracing::error!("{error:#}");
        eprintln!("agentmesh-sidecar: {error:#}");
        std::process::exit(1);
    }
}
