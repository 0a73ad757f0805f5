use std::net::IpAddr;

use agentmesh_api::wire::{Cidr, DeniedNetwork, Destination, PodEnforcement};
use agentmesh_trust::policy::{BehaviorAction, Effect, NetworkRuleSpec, Policy, PolicySpec};

use super::*;
use crate::keys::exec_file_key;

const WATCHED: u32 = POD_WATCHED;
const ENFORCED: u32 = POD_ENFORCED;
const QUARANTINED: u32 = POD_QUARANTINED;

fn pods() -> PodCgroups {
    PodCgroups {
        by_id: [(11, "a".to_string()), (22, "b".to_string())]
            .into_iter()
            .collect(),
    }
}

fn enforcing(denied_networks: Vec<DeniedNetwork>) -> EnforcementSet {
    EnforcementSet {
        version: "1".into(),
        pods: vec![PodEnforcement {
            pod_uid: "a".into(),
            quarantined: false,
            denied_networks,
            denied_executables: vec![],
            allowed_destinations: vec![],
        }],
    }
}

fn denied(cidr: &str, ports: Vec<u16>) -> DeniedNetwork {
    DeniedNetwork {
        cidr: cidr.into(),
        ports,
    }
}

#[test]
fn enforcement_marks_the_pod_and_narrow_rules_keep_wide_ports() {
    let mut set = enforcing(vec![
        denied("10.0.0.0/8", vec![22]),
        denied("10.1.0.0/16", vec![443]),
        denied("fd00::/8", vec![]),
    ]);
    let pod = &mut set.pods[0];
    pod.quarantined = true;
    pod.denied_executables = vec!["/usr/bin/curl".into(), "bad".into()];
    pod.allowed_destinations = vec![Destination {
        ip: "10.0.0.1".parse().unwrap(),
        port: 8080,
    }];
    let (state, warnings) = build(&pods(), Some(&set), &FilesByPod::new());
    assert_eq!(
        state.pods[&11],
        WATCHED | ENFORCED | QUARANTINED | POD_EXEC_DENIED
    );
    assert_eq!(state.pods[&22], WATCHED);
    assert_eq!(state.deny_exec.len(), 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(state.deny_net4.len(), 2);
    let narrow = &state.deny_net4[&net_key(11, "10.1.0.0/16".parse().unwrap())];
    assert_eq!(u32::from_ne_bytes(narrow[..4].try_into().unwrap()), 2);
    // fd00::/8 only: the kernel looks IPv4-mapped destinations up in the IPv4 trie.
    assert_eq!(state.deny_net6.len(), 1);
    assert_eq!(state.allowed.len(), 1);
    let (plain, _) = build(&pods(), None, &FilesByPod::new());
    assert!(plain.deny_exec.is_empty() && plain.pods.values().all(|f| *f == WATCHED));
}

/// Two entries for one pod (the wire allows it) add up: the second neither hides the first's
/// wider rule behind its narrower one nor lifts its quarantine. Found by the fuzz target
/// `enforcement_set`: the second entry's 10.0.0.0/8 (443) was the longest match for 10.0.0.1,
/// without the first's 0.0.0.0/0 (25), and its flags replaced the first's.
#[test]
fn entries_of_one_pod_add_up() {
    let mut set = enforcing(vec![denied("0.0.0.0/0", vec![25])]);
    set.pods[0].quarantined = true;
    set.pods[0].denied_executables = vec!["/usr/bin/curl".into()];
    let mut second = enforcing(vec![denied("10.0.0.0/8", vec![443])])
        .pods
        .remove(0);
    second.denied_executables = vec!["/tmp/*".into()];
    set.pods.push(second);
    let (state, warnings) = build(&pods(), Some(&set), &FilesByPod::new());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        state.pods[&11],
        WATCHED | ENFORCED | QUARANTINED | POD_EXEC_DENIED
    );
    assert_eq!(state.deny_exec.len(), 2);
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    assert!(kernel_refuses(&state, ip, 25));
    assert!(kernel_refuses(&state, ip, 443));
    assert!(!kernel_refuses(&state, ip, 80));
}

/// An exact exec rule also names its files (every name of them) and, once a pod has any rule,
/// its dynamic loaders; a prefix names no file; a pod without exec rules gets no file entries,
/// whatever was found in it; `*` is a prefix only at the end.
#[test]
fn exec_rules_name_files_and_loaders() {
    let curl = FileId {
        dev: 8 << 20,
        ino: 42,
    };
    let loader = FileId {
        dev: 8 << 20,
        ino: 7,
    };
    let found = |denied: &[(&str, FileId)]| PodFiles {
        denied: denied
            .iter()
            .map(|(path, id)| (path.to_string(), [*id].into()))
            .collect(),
        loaders: [loader].into(),
    };
    let files: FilesByPod = [
        ("a".to_string(), found(&[("/usr/bin/curl", curl)])),
        ("b".to_string(), found(&[("/usr/bin/curl", curl)])),
    ]
    .into();
    let mut set = enforcing(vec![]);
    set.pods[0].denied_executables = vec![
        "/usr/bin/curl".into(),
        "/tmp/*".into(),
        "/usr/*/wget".into(),
    ];
    // Pod b is enforced (quarantined) but denies no executable.
    set.pods.push(PodEnforcement {
        pod_uid: "b".into(),
        quarantined: true,
        ..Default::default()
    });
    let (state, warnings) = build(&pods(), Some(&set), &files);
    assert_eq!(
        state.deny_exec_file,
        [
            (exec_file_key(11, curl), vec![EXEC_FILE_DENIED]),
            (exec_file_key(11, loader), vec![EXEC_FILE_LOADER]),
        ]
        .into()
    );
    assert_eq!(state.pods[&11] & POD_EXEC_DENIED, POD_EXEC_DENIED);
    assert_eq!(state.pods[&22] & POD_EXEC_DENIED, 0);
    // The wildcard in the middle is refused, not taken literally by the kernel.
    assert_eq!(state.deny_exec.len(), 2);
    assert!(
        warnings.iter().any(|w| w.contains("/usr/*/wget")),
        "{warnings:?}"
    );
    let key = exec_file_key(11, curl);
    assert_eq!(key.len(), 24);
    assert_eq!(&key[..8], &11u64.to_ne_bytes());
    assert_eq!(&key[8..16], &42u64.to_ne_bytes());
    assert_eq!(&key[16..20], &(8u32 << 20).to_ne_bytes());
}

/// Whether the kernel refuses a connect of pod 11 to `ip:port` under `state`.
fn kernel_refuses(state: &KernelState, ip: IpAddr, port: u16) -> bool {
    state.refuses_connect(11, ip, port)
}

/// The trust rules and the probe read a CIDR alike (one parser: host bits, signs, leading zeros,
/// spaces, mapped forms), and the kernel refuses exactly the connects the trust rules deny,
/// for IPv4, IPv6 and IPv4-mapped IPv6 destinations. The old probe parser took `10.0.0.1` as
/// `10.0.0.1/32` and `10.0.0.0/+8` as `/8`, which the policy refuses, and a dual-stack socket's
/// connect to `::ffff:10.0.0.1` escaped a `10.0.0.0/8` rule in the kernel while it counted as
/// denied in the trust rules. Then (found by the fuzz target `enforcement_set`) an IPv6 rule
/// covering the mapped addresses, `::/0`, refused a dual-stack socket's IPv4 connects, which the
/// trust rules count as IPv4.
#[test]
fn the_probe_and_the_trust_rules_agree_on_cidrs() {
    let texts = [
        "10.0.0.1/8",
        "10.1.2.3/16",
        "10.0.0.0/008",
        "fd12::1/8",
        "0.0.0.0/0",
        "10.0.0.1",
        "10.0.0.0/+8",
        "010.0.0.0/8",
        " 10.0.0.0/8",
        "10.0.0.0/8 ",
        "::ffff:10.0.0.0/104",
        "10.0.0.0/33",
        "::/0",
        "::/80",
    ];
    let destinations: Vec<IpAddr> = [
        "10.0.0.1",
        "10.1.2.3",
        "11.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:11.0.0.1",
        "fd00::1",
        "fe80::1",
    ]
    .iter()
    .map(|ip| ip.parse().unwrap())
    .collect();
    for text in texts {
        let mut spec = PolicySpec::default();
        spec.behavior.network.push(NetworkRuleSpec {
            cidr: text.into(),
            ports: vec![443],
            action: BehaviorAction::Deny,
            penalty: 10,
        });
        let policy = Policy::compile(spec);
        let (state, warnings) = build(
            &pods(),
            Some(&enforcing(vec![denied(text, vec![443])])),
            &FilesByPod::new(),
        );
        assert_eq!(
            policy.is_ok(),
            warnings.is_empty(),
            "{text:?}: policy {:?}, probe {warnings:?}",
            policy.as_ref().err()
        );
        assert_eq!(
            text.parse::<Cidr>().is_ok(),
            warnings.is_empty(),
            "{text:?}"
        );
        let Ok(policy) = policy else {
            continue;
        };
        for ip in &destinations {
            for port in [443, 80] {
                assert_eq!(
                    kernel_refuses(&state, *ip, port),
                    policy.decide_connect(*ip, port, 1000).effect != Effect::Allow,
                    "{text} {ip} {port}"
                );
            }
        }
    }
}
