//! On the real kernel, as root: the tier 2/3 programs attribute events to pods, filter in the
//! kernel, and enforce at tier 3. Needs root and BPF (this machine and CI have both).

#[path = "../common/mod.rs"]
mod common;
mod tier3;

use std::net::TcpListener;
use std::time::Duration;

use common::{Layout, TestPod, TrustServer, config, require_root};
use meshlogic_probe::kernel::event::Counter;
use serde_json::json;

/// Execs, opens (read and write) and connects (IPv4 and IPv6) from a process in a pod cgroup
/// of `layout`; a second pod's activity must not be attributed to the first.
async fn attribution(layout: Layout) {
    let Some((server, probe)) = common::root_probe(json!({})).await else {
        return;
    };
    assert_eq!(
        probe.status.tier(),
        2,
        "{:?}",
        probe.status.fallback_reason()
    );
    let hook = probe.status.file_hook();
    assert_eq!(
        probe.status.programs_loaded(),
        common::tier2_programs(hook),
        "{hook:?}"
    );

    let pod = TestPod::new(layout);
    let other = TestPod::new(layout);
    common::wait_watched(&probe, &[&pod, &other]).await;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = std::env::temp_dir().join(format!("meshlogic-written-{}", pod.uid));
    let status = pod.run(&format!(
        "/bin/true; cat /etc/hostname > /dev/null; echo x > {written}; \
         (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; \
         (exec 3<>/dev/tcp/::1/{port6}) 2>/dev/null; exit 0",
        written = written.display(),
        port6 = port + 1,
    ));
    assert!(status.success(), "{status:?}");
    assert!(other.run("cat /etc/os-release > /dev/null").success());

    let v4: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: std::net::SocketAddr = format!("[::1]:{}", port + 1).parse().unwrap();
    let written_path = written.display().to_string();
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.executables.iter().any(|e| e == "/bin/true")
                && m.read_paths.iter().any(|p| p == "/etc/hostname")
                && m.written_paths.contains(&written_path)
                && m.destinations.contains(&v4)
                && m.destinations.contains(&v6)
        })
        .await;
    assert!(
        seen.execs >= 2 && seen.exits >= 1 && seen.connects >= 2,
        "{seen:#?}"
    );
    // An exec is an exec, not also an open of the program (the kernel opens it through the
    // same function as open(2) does, which the fexit hook sees: flagged __FMODE_EXEC).
    let true_path = std::fs::canonicalize("/bin/true").unwrap();
    assert!(
        !seen
            .read_paths
            .iter()
            .any(|p| std::path::Path::new(p) == true_path || p == "/bin/true"),
        "an exec counted as an open: {seen:#?}"
    );
    // An open is named by the file opened: /etc/os-release is often a link to
    // /usr/lib/os-release.
    let os_release = std::fs::canonicalize("/etc/os-release")
        .unwrap()
        .display()
        .to_string();
    assert!(
        !seen.read_paths.contains(&os_release),
        "another pod's open was attributed to this one: {seen:#?}"
    );
    let theirs = server
        .wait_for_pod(&other.uid, common::wait(), |m| {
            m.read_paths.contains(&os_release)
        })
        .await;
    assert!(!theirs.read_paths.iter().any(|p| p == "/etc/hostname"));
    let batch = server.batches().pop().unwrap();
    match batch.source {
        agentmesh_api::wire::ReportSource::Probe {
            tier,
            node,
            agent,
            programs_loaded,
            file_hook,
            ..
        } => {
            assert_eq!(
                (tier, node.as_str(), agent.as_str(), programs_loaded),
                (
                    2,
                    "test-node",
                    "meshlogic/test-agent",
                    common::tier2_programs(hook)
                )
            );
            assert_eq!(file_hook, hook);
        }
        other => panic!("the probe reported as {other:?}"),
    }
    let _ = std::fs::remove_file(written);
    probe.shutdown();
}

/// The hook observing opens is the one this kernel allows (fexit where it attaches and fires,
/// else sys_exit with the reason), and it is the same in the status, on /health, in /metrics and
/// in the reports. Without file events there is no file hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_hook_in_use_is_reported_everywhere() {
    use agentmesh_api::meshlogic::FileHook;
    let Some((server, probe)) = common::root_probe(json!({})).await else {
        return;
    };
    let hook = probe.status.file_hook().expect("file events are on");
    if let Some(expected) = common::expected_file_hook() {
        assert_eq!(hook, expected, "{}", probe.status.to_json());
    }
    let forced = std::env::var("MESHLOGIC_FILE_HOOK").is_ok_and(|h| h != "auto");
    let health: serde_json::Value = serde_json::from_str(&probe.status.to_json()).unwrap();
    assert_eq!(health["fileHook"], hook.as_str());
    // auto says why it did not get fexit, and only then.
    assert_eq!(
        health["fileHookNote"].is_string(),
        hook == FileHook::SysExit && !forced,
        "{health}"
    );
    let metrics = common::get(probe.listen_addr, "/metrics").await;
    let line = format!("meshlogic_probe_file_hook{{hook=\"{hook}\"}} 1");
    assert!(metrics.contains(&line), "{line} in {metrics}");
    assert_eq!(metrics.matches("meshlogic_probe_file_hook{").count(), 1);
    let start = std::time::Instant::now();
    let reported = loop {
        if let Some(agentmesh_api::wire::ReportSource::Probe { file_hook, .. }) =
            server.batches().pop().map(|b| b.source)
        {
            break file_hook;
        }
        assert!(start.elapsed() < common::wait(), "no report");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reported, Some(hook));
    probe.shutdown();

    let Some((_server, probe)) = common::root_probe(json!({"ebpf": {"enableFile": false}})).await
    else {
        return;
    };
    assert_eq!(probe.status.file_hook(), None);
    assert_eq!(probe.status.programs_loaded(), common::tier2_programs(None));
    probe.shutdown();
}

/// `auto` on a kernel that runs the empty fexit pair but refuses the probe's own fexit program
/// (injected: the program is aimed at a function whose arguments it cannot read): the probe
/// loads again with sys_exit, says why, holds no program of the refused load, and sees opens.
/// Where fexit does not fire at all (this host) the empty pair already sends it to sys_exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_loads_again_with_sys_exit_when_the_kernel_refuses_the_fexit_probe() {
    use agentmesh_api::meshlogic::FileHook;
    if std::env::var("MESHLOGIC_FILE_HOOK").is_ok_and(|h| h != "auto") {
        return; // a forced hook has no fallback
    }
    let Some((server, probe)) = common::root_probe_with(json!({}), |c| {
        c.inject_fexit_load_failure = true;
    })
    .await
    else {
        return;
    };
    let health: serde_json::Value = serde_json::from_str(&probe.status.to_json()).unwrap();
    assert_eq!(probe.status.tier(), 2, "{health}");
    assert_eq!(
        probe.status.file_hook(),
        Some(FileHook::SysExit),
        "{health}"
    );
    assert_eq!(
        probe.status.programs_loaded(),
        common::tier2_programs(Some(FileHook::SysExit)),
        "{health}"
    );
    let note = health["fileHookNote"].as_str().unwrap_or_default();
    if common::expected_file_hook() == Some(FileHook::Fexit) {
        // The empty pair fired: it was the probe's program that the verifier refused.
        assert!(
            note.starts_with("the probe with fexit/do_handle_open: "),
            "{health}"
        );
    } else {
        assert!(!note.is_empty(), "{health}");
    }
    let metrics = common::get(probe.listen_addr, "/metrics").await;
    assert!(
        metrics.contains("meshlogic_probe_file_hook{hook=\"sys_exit\"} 1"),
        "{metrics}"
    );

    let pod = TestPod::new(Layout::Cgroupfs);
    common::wait_watched(&probe, &[&pod]).await;
    assert!(pod.run("cat /etc/hostname > /dev/null").success());
    server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.read_paths.iter().any(|p| p == "/etc/hostname")
        })
        .await;
    probe.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_attributed_to_the_pod_in_the_cgroupfs_layout() {
    attribution(Layout::Cgroupfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_attributed_to_the_pod_in_the_systemd_layout() {
    attribution(Layout::Systemd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_paths_never_reach_user_space() {
    let Some((server, probe)) = common::root_probe(json!({})).await else {
        return;
    };
    let pod = TestPod::new(Layout::Cgroupfs);
    common::wait_watched(&probe, &[&pod]).await;
    let muted_before = probe.kernel_counters().unwrap().get(Counter::C_MUTED);
    assert!(pod
        .run("cat /proc/self/status /sys/kernel/btf/vmlinux /dev/null > /dev/null; cat /etc/hostname > /dev/null")
        .success());
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.read_paths.iter().any(|p| p == "/etc/hostname")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let muted = probe.kernel_counters().unwrap().get(Counter::C_MUTED) - muted_before;
    assert!(muted >= 3, "the kernel counted {muted} muted opens");
    let leaked: Vec<&String> = seen
        .all_paths()
        .filter(|p| {
            ["/proc", "/sys", "/dev"]
                .iter()
                .any(|m| p == m || p.starts_with(&format!("{m}/")))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "muted paths reached user space: {leaked:?}"
    );
    let metrics = common::get(probe.listen_addr, "/metrics").await;
    assert!(
        metrics.contains("meshlogic_probe_muted_events_total"),
        "{metrics}"
    );
    probe.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_category_stops_its_events() {
    if !require_root() {
        return;
    }
    let script = "/bin/true; cat /etc/hostname > /dev/null; (exec 3<>/dev/tcp/127.0.0.1/9) 2>/dev/null; exit 0";

    // Process only.
    let server = TrustServer::start().await;
    let spec = json!({"ebpf": {"enableFile": false, "enableNetwork": false}});
    let probe = meshlogic_probe::run::start(config(&server, spec))
        .await
        .unwrap();
    assert_eq!(
        probe.status.programs_loaded(),
        3,
        "exec, exit and cgroup_mkdir only"
    );
    let pod = TestPod::new(Layout::Cgroupfs);
    common::wait_watched(&probe, &[&pod]).await;
    assert!(pod.run(script).success());
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.executables.iter().any(|e| e == "/bin/true")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen_later = common::Merged::of(&server.pod_windows(&pod.uid));
    assert_eq!(
        (seen_later.file_opens, seen_later.connects),
        (0, 0),
        "{seen:#?}"
    );
    let counters = probe.kernel_counters().unwrap();
    assert_eq!(
        (
            counters.get(Counter::C_OPEN),
            counters.get(Counter::C_CONNECT)
        ),
        (0, 0)
    );
    assert!(counters.get(Counter::C_EXEC) >= 1);
    probe.shutdown();
    drop(pod);

    // Files and network, no process.
    let server = TrustServer::start().await;
    let spec = json!({"ebpf": {"enableProcess": false}});
    let probe = meshlogic_probe::run::start(config(&server, spec))
        .await
        .unwrap();
    assert_eq!(
        probe.status.programs_loaded(),
        common::tier2_programs(probe.status.file_hook()) - 2,
        "cgroup_mkdir, the file hook's, cgroup connect4 and connect6"
    );
    let pod = TestPod::new(Layout::Systemd);
    common::wait_watched(&probe, &[&pod]).await;
    assert!(pod.run(script).success());
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.read_paths.iter().any(|p| p == "/etc/hostname") && m.connects >= 1
        })
        .await;
    assert_eq!((seen.execs, seen.exits), (0, 0), "{seen:#?}");
    assert!(seen.executables.is_empty());
    assert_eq!(probe.kernel_counters().unwrap().get(Counter::C_EXEC), 0);
    probe.shutdown();
}

/// A one-page ring buffer flooded by a burst of opens: the losses are counted in the kernel,
/// exported, and reported to the trust API, never silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_buffer_drops_are_counted_and_reported() {
    if !require_root() {
        return;
    }
    let server = TrustServer::start().await;
    let spec = json!({"ebpf": {"ringBufferSize": 4096}});
    let probe = meshlogic_probe::run::start(config(&server, spec))
        .await
        .unwrap();
    let pod = TestPod::new(Layout::Cgroupfs);
    common::wait_watched(&probe, &[&pod]).await;
    let flood = "python3 -c \"import os\nfor _ in range(20000): os.close(os.open('/etc/hostname', os.O_RDONLY))\"";
    {
        // The consumer held while the pod floods (it takes this lock for each event it reads):
        // the ring buffer fills however fast the machine is. Without it, a slow machine (a VM
        // under emulation) opens slowly enough for the consumer to keep up, and nothing is lost.
        let _held = probe.shared.lock().unwrap_or_else(|e| e.into_inner());
        assert!(pod.run(flood).success());
    }
    let start = std::time::Instant::now();
    let drops = loop {
        let drops = probe
            .kernel_counters()
            .unwrap()
            .get(Counter::C_RINGBUF_DROPS);
        if drops > 0 || start.elapsed() > common::wait() {
            break drops;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        drops > 0,
        "20000 opens through a 4 KiB ring buffer lost nothing?"
    );
    // And to the pod whose events they were, so that the operator can hold it against it.
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| m.events_dropped > 0)
        .await;
    // The pod's drops are among the kernel's. The count read above is a periodic copy of the
    // kernel's counters, possibly taken mid-flood: read it again until it has caught up.
    let start = std::time::Instant::now();
    let drops = loop {
        let now = probe
            .kernel_counters()
            .unwrap()
            .get(Counter::C_RINGBUF_DROPS)
            .max(drops);
        if now >= seen.events_dropped || start.elapsed() > common::wait() {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        seen.events_dropped <= drops,
        "{drops} drops in all; {seen:#?}"
    );
    // Reported to the trust API and exported.
    let start = std::time::Instant::now();
    loop {
        let reported = server.batches().iter().any(|b| match &b.source {
            agentmesh_api::wire::ReportSource::Probe {
                ring_buffer_drops, ..
            } => *ring_buffer_drops > 0,
            agentmesh_api::wire::ReportSource::Sidecar { .. } => false,
        });
        if reported {
            break;
        }
        assert!(start.elapsed() < common::wait(), "drops never reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = common::get(probe.listen_addr, "/metrics").await;
    let exported: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshlogic_probe_ring_buffer_drops_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(exported > 0.0, "{metrics}");
    probe.shutdown();
}

/// open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) through the 32-bit system call entry
/// (`int 0x80`), from memory below 4 GiB (MAP_32BIT), as a 32-bit program would.
const IA32_OPEN: &str = r#"
import ctypes, mmap, struct
m = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40,
              prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
assert base < 2**32, hex(base)
path = b"{path}\0"
code = (b"\x53" + b"\xb8\x05\x00\x00\x00" + b"\xbb" + struct.pack("<I", base + 256)
        + b"\xb9\x41\x02\x00\x00" + b"\xba\xa4\x01\x00\x00" + b"\xcd\x80" + b"\x5b\xc3")
m[0:len(code)] = code
m[256:256 + len(path)] = path
fd = ctypes.CFUNCTYPE(ctypes.c_int)(base)()
assert fd >= 0, fd
"#;

/// An open is named by the file it opened, whatever text asked for it: a relative name, `..`,
/// `/proc/self/cwd/…`, a symbolic link; creat(2) and a 32-bit open are opens like any other.
#[tokio::test]
async fn opens_are_named_by_the_file_they_open() {
    let Some((server, probe)) = common::root_probe(json!({})).await else {
        return;
    };
    let pod = TestPod::new(Layout::Cgroupfs);
    common::wait_watched(&probe, &[&pod]).await;
    let dir = std::env::temp_dir().join(format!("meshlogic-open-{}", pod.uid));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
    let mut script = format!(
        "cd {d} && echo > relative && echo > /dev/../{rest}/dotdot && echo > /proc/self/cwd/cwd \
         && echo > link && mkdir sub && echo > sub/../plain",
        rest = d.to_string().trim_start_matches('/'),
    );
    let mut want = vec!["relative", "dotdot", "cwd", "target", "plain"];
    if cfg!(target_arch = "x86_64") {
        // creat(2) itself (glibc may implement creat() with openat).
        script.push_str(&format!(
            " && python3 -c \"import ctypes; assert ctypes.CDLL(None).syscall(85, b'{d}/created', 0o644) >= 0\""
        ));
        want.push("created");
        // A 32-bit open (int 0x80, which a 64-bit process may use too), numbered otherwise:
        // ia32 open is 5, which is fstat to the 64-bit table.
        std::fs::write(
            dir.join("ia32.py"),
            IA32_OPEN.replace("{path}", &format!("{d}/ia32")),
        )
        .unwrap();
        script.push_str(&format!(" && python3 {d}/ia32.py"));
        want.push("ia32");
    }
    assert!(pod.run(&script).success(), "{script}");
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            want.iter()
                .all(|name| m.written_paths.contains(&format!("{d}/{name}")))
        })
        .await;
    // No spelling of the request is reported instead of the file.
    for path in &seen.written_paths {
        assert!(
            !path.contains("..") && !path.starts_with("/proc/") && path.starts_with('/'),
            "{path} is not the file's path: {seen:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    probe.shutdown();
}

/// A pod is watched from the creation of its cgroup: a process that runs in it at once, before
/// any scan of the cgroup tree could have found it, is attributed to it (both layouts).
#[tokio::test]
async fn a_pod_is_watched_from_its_cgroup_creation() {
    let Some((server, probe)) = common::root_probe(json!({})).await else {
        return;
    };
    assert_eq!(probe.status.tier(), 2);
    for layout in [Layout::Cgroupfs, Layout::Systemd] {
        let pod = TestPod::new(layout);
        let status = pod.run("/bin/true; cat /etc/hostname > /dev/null");
        assert!(status.success(), "{status:?}");
        let seen = server
            .wait_for_pod(&pod.uid, common::wait(), |m| {
                m.executables.iter().any(|e| e == "/bin/true")
                    && m.read_paths.iter().any(|p| p == "/etc/hostname")
            })
            .await;
        assert!(seen.execs >= 2, "{layout:?}: {seen:#?}");
    }
    probe.shutdown();
}

/// Repeats of an open (same pod, path and flags) within a report window are counted in the
/// kernel without an event: the window still counts every open and lists the path once, and
/// the next window lists it again when it is opened again.
#[tokio::test]
async fn repeated_opens_are_counted_in_the_kernel_and_listed_once_per_window() {
    let Some((server, probe)) = common::root_probe(json!({})).await else {
        return;
    };
    let pod = TestPod::new(Layout::Cgroupfs);
    common::wait_watched(&probe, &[&pod]).await;
    let marker = std::env::temp_dir().join(format!("meshlogic-repeated-{}", pod.uid));
    std::fs::write(&marker, "x").unwrap();
    let marker_path = marker.display().to_string();
    // 2000 opens of the marker, read-only, each by `: < file` in one shell.
    let script = format!("for i in $(seq 2000); do : < {}; done", marker.display());
    assert!(pod.run(&script).success());
    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.file_opens >= 2000 && m.read_paths.contains(&marker_path)
        })
        .await;
    let counters = probe.kernel_counters().unwrap();
    assert!(
        counters.get(Counter::C_OPEN_REPEATED) >= 1900,
        "repeats were sent as events: {} folded, {seen:#?}",
        counters.get(Counter::C_OPEN_REPEATED)
    );
    let windows = server.pod_windows(&pod.uid);
    let listing = windows
        .iter()
        .filter(|w| w.read_paths.contains(&marker_path))
        .count();
    assert!(
        listing <= 2,
        "the path was listed in {listing} windows during one loop"
    );

    // A later window lists it again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = server.pod_windows(&pod.uid).len();
    assert!(pod.run(&format!(": < {}", marker.display())).success());
    let start = std::time::Instant::now();
    loop {
        let windows = server.pod_windows(&pod.uid);
        if windows[before.min(windows.len())..]
            .iter()
            .any(|w| w.read_paths.contains(&marker_path))
        {
            break;
        }
        assert!(
            start.elapsed() < common::wait(),
            "the path was not listed again in a later window"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_file(marker);
    probe.shutdown();
}

/// The container runtime's own opens in a pod cgroup are not the pod's: runc's init writes
/// /etc/hosts and friends into the rootfs by their node paths before it pivots into it, from
/// the node's root, which is also the root of whoever makes cgroups outside pods (here, this
/// test).
/// A process under its own root (a chroot, as a container's are) is the pod's, even when it
/// writes the same names; and it cannot pass for the runtime.
#[tokio::test]
async fn opens_at_the_runtimes_root_are_not_the_pods() {
    let Some((server, probe)) =
        common::root_probe_with(json!({}), |c| c.skip_runtime_opens = true).await
    else {
        return;
    };
    let pod = TestPod::new(Layout::Systemd);
    common::wait_watched(&probe, &[&pod]).await;
    let skipped_before = probe
        .kernel_counters()
        .unwrap()
        .get(Counter::C_RUNTIME_SETUP);

    // A root of the pod's own: busybox (static) in a directory.
    let rootfs = std::env::temp_dir().join(format!("meshlogic-rootfs-{}", pod.uid));
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("busybox")).unwrap();
    let runtime_write = rootfs.join("etc/hosts");
    let status = pod.run(&format!(
        "echo 127.0.0.1 localhost > {runtime}; chroot {root} /busybox sh -c 'echo x > /etc/agent-wrote'",
        runtime = runtime_write.display(),
        root = rootfs.display(),
    ));
    assert!(status.success(), "{status:?}");

    let seen = server
        .wait_for_pod(&pod.uid, common::wait(), |m| {
            m.written_paths.iter().any(|p| p == "/etc/agent-wrote")
        })
        .await;
    let runtime_path = runtime_write.display().to_string();
    assert!(
        !seen.written_paths.contains(&runtime_path),
        "the runtime's write was counted as the pod's: {seen:#?}"
    );
    let skipped = probe
        .kernel_counters()
        .unwrap()
        .get(Counter::C_RUNTIME_SETUP)
        - skipped_before;
    assert!(skipped >= 1, "the runtime's opens are counted as skipped");
    let _ = std::fs::remove_dir_all(&rootfs);
    probe.shutdown();
}
