//! Tier 3: denied connects refused and denied execs killed in the kernel, until lifted.

use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use agentmesh_api::wire::{BlockedAction, DeniedNetwork, EnforcementSet, PodEnforcement};
use serde_json::json;

use crate::common::{self, Layout, TestPod};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_refuses_denied_connects_and_kills_denied_execs_until_lifted() {
    let Some((server, probe)) = common::root_probe(json!({"safetyTier": 3})).await else {
        return;
    };
    assert_eq!(
        probe.status.tier(),
        3,
        "{:?}",
        probe.status.fallback_reason()
    );
    assert_eq!(
        probe.status.programs_loaded(),
        common::tier2_programs(probe.status.file_hook())
    );
    let pod = TestPod::new(Layout::Cgroupfs);
    let bystander = TestPod::new(Layout::Systemd);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
    // The same destination spelled as an IPv4-mapped IPv6 address, from an IPv6 socket.
    let mapped = format!("exec 3<>/dev/tcp/::ffff:127.0.0.1/{port}");
    // A port denied on every IPv6 network only: IPv4 connects to it, mapped or not, go through.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let v6_only_port = other.local_addr().unwrap().port();
    let mapped_v6_only = format!("exec 3<>/dev/tcp/::ffff:127.0.0.1/{v6_only_port}");
    common::wait_watched(&probe, &[&pod, &bystander]).await;

    // Nothing enforced yet.
    assert!(pod.run(&connect).success());
    assert!(pod.run(&mapped).success(), "a mapped connect works here");
    assert!(pod.run("/bin/true").success());

    server.set_enforcement(EnforcementSet {
        version: "1".into(),
        pods: vec![PodEnforcement {
            pod_uid: pod.uid.clone(),
            denied_networks: vec![
                DeniedNetwork {
                    cidr: "127.0.0.0/8".into(),
                    ports: vec![port],
                },
                DeniedNetwork {
                    cidr: "::/0".into(),
                    ports: vec![v6_only_port],
                },
            ],
            denied_executables: vec!["/bin/true".into()],
            ..Default::default()
        }],
    });
    wait_for_version(&probe, "1").await;

    assert!(
        !pod.run(&connect).success(),
        "a denied connect went through"
    );
    assert!(
        !pod.run(&mapped).success(),
        "a denied connect went through spelled as ::ffff:127.0.0.1"
    );
    assert!(
        pod.run(&mapped_v6_only).success(),
        "an IPv6 rule (::/0) refused a connect to ::ffff:127.0.0.1, an IPv4 address"
    );
    let killed = pod.run("/bin/true");
    assert_eq!(killed.signal(), Some(libc::SIGKILL), "{killed:?}");
    // Other ports, other binaries and other pods are untouched.
    assert!(pod.run("/bin/echo ok").success());
    assert!(bystander.run(&connect).success());
    assert!(bystander.run("/bin/true").success());

    // Waited for together: the refused connects and the killed exec can arrive in different
    // report windows (they did in a VM).
    let exec_blocked = BlockedAction::Exec {
        path: "/bin/true".into(),
    };
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.blocked.contains(&exec_blocked)
                && m.blocked
                    .iter()
                    .any(|b| matches!(b, BlockedAction::Connect { port: p, .. } if *p == port))
        })
        .await;
    assert!(
        seen.blocked.contains(&BlockedAction::Exec {
            path: "/bin/true".into()
        }),
        "{seen:#?}"
    );
    assert!(
        seen.blocked
            .iter()
            .any(|b| matches!(b, BlockedAction::Connect { port: p, .. } if *p == port))
    );

    // A rule names the file as it resolves: reaching it through a symbolic link or a relative
    // name is killed as well.
    let real = std::fs::canonicalize("/bin/true").unwrap();
    let link = std::env::temp_dir().join(format!("meshlogic-true-{}", pod.uid));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    server.set_enforcement(EnforcementSet {
        version: "1b".into(),
        pods: vec![PodEnforcement {
            pod_uid: pod.uid.clone(),
            denied_executables: vec![real.display().to_string()],
            ..Default::default()
        }],
    });
    wait_for_version(&probe, "1b").await;
    for script in [
        link.display().to_string(),
        format!(
            "cd {} && ./{}",
            real.parent().unwrap().display(),
            real.file_name().unwrap().to_str().unwrap()
        ),
    ] {
        let killed = pod.run(&script);
        assert_eq!(killed.signal(), Some(libc::SIGKILL), "{script}: {killed:?}");
    }
    assert!(pod.run("/bin/echo ok").success());
    let _ = std::fs::remove_file(&link);

    // Quarantine: every connect refused but the allowed destinations.
    let other_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = other_listener.local_addr().unwrap().port();
    server.set_enforcement(EnforcementSet {
        version: "2".into(),
        pods: vec![PodEnforcement {
            pod_uid: pod.uid.clone(),
            quarantined: true,
            allowed_destinations: vec![agentmesh_api::wire::Destination {
                ip: "127.0.0.1".parse().unwrap(),
                port: allowed_port,
            }],
            ..Default::default()
        }],
    });
    wait_for_version(&probe, "2").await;
    assert!(!pod.run(&connect).success(), "a quarantined pod connected");
    assert!(
        pod.run(&format!("exec 3<>/dev/tcp/127.0.0.1/{allowed_port}"))
            .success()
    );
    assert!(
        pod.run("/bin/true").success(),
        "the exec rule was lifted with version 2"
    );

    // Lifted: everything goes through again.
    server.set_enforcement(EnforcementSet {
        version: "3".into(),
        pods: vec![],
    });
    wait_for_version(&probe, "3").await;
    assert!(pod.run(&connect).success());
    assert!(pod.run("/bin/true").success());
    assert!(connect_error(&pod, "::1", port).contains("Connection refused"));
    drop(listener);
    probe.shutdown();
}

/// The exec deny rules hold whatever name runs the file (the attacks of issue 16, item 7): a
/// hard link, a merged /usr's other spelling, the dynamic loader run directly, a file with no
/// name (memfd); a `*` means a prefix to the kernel as to the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_exec_rules_hold_under_another_name_the_loader_and_memfd() {
    let Some((server, probe)) = common::root_probe(json!({"safetyTier": 3})).await else {
        return;
    };
    assert_eq!(
        probe.status.tier(),
        3,
        "{:?}",
        probe.status.fallback_reason()
    );
    let pod = TestPod::new(Layout::Cgroupfs);
    let bystander = TestPod::new(Layout::Systemd);
    common::wait_watched(&probe, &[&pod, &bystander]).await;
    // A process of the pod, through which the probe reads its root file system.
    let mut resident = pod.command("exec sleep 120").spawn().unwrap();
    let dir = std::env::temp_dir().join(format!("meshlogic-exec-{}", pod.uid));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tool = dir.join("tool");
    std::fs::copy("/bin/true", &tool).unwrap();
    std::fs::hard_link(&tool, dir.join("hardlink")).unwrap();
    std::fs::copy("/bin/true", dir.join("prefixed-true")).unwrap();
    let loader = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a glibc dynamic loader on this machine");
    let memfd = "python3 -c \"import os; f = os.memfd_create('x'); \
        os.write(f, open('/bin/true', 'rb').read()); os.execv(f'/proc/self/fd/{f}', ['x'])\"";
    let id_real = std::fs::canonicalize("/bin/id").unwrap();
    let id_other = if id_real == std::path::Path::new("/bin/id") {
        None // not a merged /usr: nothing to spell otherwise
    } else {
        Some(id_real.display().to_string())
    };
    let attacks: Vec<String> = [
        Some(dir.join("hardlink").display().to_string()),
        id_other.clone(),
        Some(format!("{loader} /bin/echo ok")),
        Some(memfd.to_string()),
        Some(dir.join("prefixed-true").display().to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Before any rule, every attack is a working command.
    for script in &attacks {
        assert!(pod.run(script).success(), "{script} must work unenforced");
    }
    assert!(pod.run("/bin/id").success());

    server.set_enforcement(EnforcementSet {
        version: "files".into(),
        pods: vec![PodEnforcement {
            pod_uid: pod.uid.clone(),
            denied_executables: vec![
                tool.display().to_string(),
                "/bin/id".into(),
                format!("{}/prefixed-*", dir.display()),
            ],
            ..Default::default()
        }],
    });
    wait_for_version(&probe, "files").await;
    for script in std::iter::once(tool.display().to_string()).chain(attacks.iter().cloned()) {
        let killed = pod.run(&script);
        assert_eq!(killed.signal(), Some(libc::SIGKILL), "{script}: {killed:?}");
    }
    // Programs run as usual (through the loader, by the kernel), and other pods are untouched.
    assert!(pod.run("/bin/echo ok").success());
    for script in attacks.iter().chain([&"/bin/id".to_string()]) {
        assert!(bystander.run(script).success(), "bystander: {script}");
    }
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.blocked.contains(&BlockedAction::Exec {
                path: loader.into(),
            })
        })
        .await;
    assert!(
        seen.blocked.contains(&BlockedAction::Exec {
            path: dir.join("hardlink").display().to_string()
        }),
        "{seen:#?}"
    );

    // Lifted: the loader and memfd run again.
    server.set_enforcement(EnforcementSet {
        version: "none".into(),
        pods: vec![],
    });
    wait_for_version(&probe, "none").await;
    for script in &attacks {
        assert!(
            pod.run(script).success(),
            "{script} after the rules were lifted"
        );
    }
    let _ = resident.kill();
    let _ = resident.wait();
    let _ = std::fs::remove_dir_all(&dir);
    probe.shutdown();
}

/// What bash says when it cannot connect to [ip]:port from the pod.
fn connect_error(pod: &TestPod, ip: &str, port: u16) -> String {
    let output = pod
        .command(&format!("exec 3<>/dev/tcp/{ip}/{port}"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn wait_for_version(probe: &meshlogic_probe::run::ProbeHandle, version: &str) {
    let start = std::time::Instant::now();
    while probe.status.enforcement_version().as_deref() != Some(version) {
        assert!(
            start.elapsed() < common::wait(),
            "enforcement version {version} never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
