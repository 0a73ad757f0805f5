//! The image's `/bin/cat` is this binary: the seed's liveness probe `cat <healthy file>` must
//! succeed while the file exists and fail once it is gone.

use std::process::Command;

#[test]
fn invoked_as_cat_it_prints_files_and_fails_on_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("agentmesh-sidecar-cat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cat = dir.join("cat");
    let _ = std::fs::remove_file(&cat);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_agentmesh-sidecar"), &cat).unwrap();
    let healthy = dir.join("healthy");
    std::fs::write(&healthy, "ok\n").unwrap();

    let output = Command::new(&cat).arg(&healthy).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"ok\n");

    std::fs::remove_file(&healthy).unwrap();
    let output = Command::new(&cat).arg(&healthy).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("No such file"));
    // It never starts the proxy: no flags are parsed, nothing listens.
    assert!(output.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
