//! Policy evaluation: presets, rules, scores, rate limits, peers, behaviour, shadow mode and
//! the explanation of each decision.

use agentmesh_trust::Timestamp;
use agentmesh_trust::policy::*;

const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

fn compile(f: impl FnOnce(&mut PolicySpec)) -> Policy {
    let mut spec = PolicySpec::default();
    f(&mut spec);
    Policy::compile(spec).unwrap()
}

fn tool(p: &Policy, name: &str, score: i32) -> Effect {
    let mut rate = p.new_rate_state(T0);
    p.decide_tool(name, score, &mut rate, T0).effect
}

#[test]
fn standard_preset_denies_shell_exec_eval_and_allows_the_rest() {
    let p = compile(|_| {});
    for denied in [
        "shell",
        "run_shell",
        "bash",
        "exec",
        "exec_command",
        "execute_sql",
        "eval",
        "js_eval",
        "run_command",
        "python_repl",
    ] {
        assert_eq!(tool(&p, denied, 800), Effect::Deny, "{denied}");
    }
    for allowed in [
        "search_web",
        "fetch_url",
        "write_file",
        "retrieval",
        "evaluate_model",
        "shellfish_facts",
    ] {
        assert_eq!(tool(&p, allowed, 800), Effect::Allow, "{allowed}");
    }
}

#[test]
fn strict_preset_allows_read_only_tools_only() {
    let p = compile(|s| s.preset = Preset::Strict);
    for allowed in [
        "read_file",
        "get_weather",
        "list_dir",
        "search",
        "search_web",
        "find_user",
    ] {
        assert_eq!(tool(&p, allowed, 800), Effect::Allow, "{allowed}");
    }
    for denied in ["write_file", "delete_file", "fetch_url", "reader"] {
        assert_eq!(tool(&p, denied, 800), Effect::Deny, "{denied}");
    }
    let mut rate = p.new_rate_state(T0);
    let d = p.decide_tool("write_file", 800, &mut rate, T0);
    assert_eq!(d.rule(), "preset:strict");
    assert!(d.to_string().contains("read-only"), "{d}");
}

#[test]
fn permissive_allows_everything_but_explicit_denies() {
    let p = compile(|s| {
        s.preset = Preset::Permissive;
        s.tools.deny = vec!["delete_*".into()];
    });
    assert_eq!(tool(&p, "shell", 800), Effect::Allow);
    assert_eq!(tool(&p, "delete_everything", 800), Effect::Deny);
}

#[test]
fn deny_wins_over_allow_and_allow_refines_the_preset() {
    let p = compile(|s| {
        s.tools.allow = vec!["exec_sandboxed".into(), "danger_*".into()];
        s.tools.deny = vec!["danger_zone".into()];
    });
    assert_eq!(tool(&p, "exec_sandboxed", 800), Effect::Allow);
    assert_eq!(tool(&p, "danger_ok", 800), Effect::Allow);
    let mut rate = p.new_rate_state(T0);
    let d = p.decide_tool("danger_zone", 800, &mut rate, T0);
    assert_eq!(
        (d.effect, d.rule()),
        (Effect::Deny, "tools.deny[0]".to_string())
    );
}

#[test]
fn per_tool_minimum_score() {
    let p = compile(|s| {
        s.tools.rules = vec![ToolRuleSpec {
            tool: "write_*".into(),
            min_score: Some(700),
            rate_limit: None,
        }]
    });
    assert_eq!(tool(&p, "write_file", 700), Effect::Allow);
    let mut rate = p.new_rate_state(T0);
    let d = p.decide_tool("write_file", 699, &mut rate, T0);
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(
        d.to_string(),
        "deny by tools.rules[0].minScore: tools matching \"write_*\" need score 700, the score is 699"
    );
}

#[test]
fn rate_limits_per_rule_and_global() {
    let p = compile(|s| {
        s.tools.rules = vec![ToolRuleSpec {
            tool: "fetch_url".into(),
            min_score: None,
            rate_limit: Some(RateLimitSpec {
                requests: 2,
                period_seconds: 60,
            }),
        }];
        s.tools.rate_limit = Some(RateLimitSpec {
            requests: 3,
            period_seconds: 60,
        });
    });
    let mut rate = p.new_rate_state(T0);
    assert!(
        p.decide_tool("fetch_url", 800, &mut rate, T0)
            .effect
            .is_allowed()
    );
    assert!(
        p.decide_tool("fetch_url", 800, &mut rate, T0)
            .effect
            .is_allowed()
    );
    let d = p.decide_tool("fetch_url", 800, &mut rate, T0);
    assert_eq!(
        (d.effect, d.rule()),
        (Effect::Deny, "tools.rules[0].rateLimit".to_string())
    );
    // The denied call spent nothing: one global call is left.
    assert!(
        p.decide_tool("search", 800, &mut rate, T0)
            .effect
            .is_allowed()
    );
    let d = p.decide_tool("search", 800, &mut rate, T0);
    assert_eq!(
        (d.effect, d.rule()),
        (Effect::Deny, "tools.rateLimit".to_string())
    );
    // Time refills.
    assert!(
        p.decide_tool("fetch_url", 800, &mut rate, T0.plus_millis(30_000))
            .effect
            .is_allowed()
    );
}

#[test]
fn quarantine_denies_tools_and_blocks_network() {
    let p = compile(|_| {});
    let mut rate = p.new_rate_state(T0);
    let d = p.decide_tool("search", 299, &mut rate, T0);
    assert_eq!(
        (d.effect, d.rule()),
        (Effect::Deny, "quarantine.denyTools".to_string())
    );
    assert_eq!(
        p.decide_connect("10.0.0.1".parse().unwrap(), 443, 299)
            .effect,
        Effect::Deny
    );
    let lenient = compile(|s| {
        s.quarantine = QuarantineSpec {
            deny_tools: false,
            block_network: false,
        }
    });
    assert_eq!(tool(&lenient, "search", 299), Effect::Allow);
    assert_eq!(
        lenient
            .decide_connect("10.0.0.1".parse().unwrap(), 443, 299)
            .effect,
        Effect::Allow
    );
}

#[test]
fn shadow_mode_never_denies() {
    let p = compile(|s| {
        s.mode = Mode::Shadow;
        s.behavior.exec = vec![ExecRuleSpec {
            path: "/usr/bin/curl".into(),
            action: BehaviorAction::Deny,
            penalty: 100,
        }];
    });
    let mut rate = p.new_rate_state(T0);
    let d = p.decide_tool("shell", 800, &mut rate, T0);
    assert_eq!(d.effect, Effect::WouldDeny);
    assert!(d.effect.is_allowed());
    assert!(
        d.to_string().starts_with("would-deny by preset:standard"),
        "{d}"
    );
    assert!(
        d.to_string()
            .ends_with("[shadow mode: recorded, not enforced]")
    );
    assert_eq!(tool(&p, "search", 100), Effect::WouldDeny);
    let d = p.decide_exec("/usr/bin/curl", 800);
    assert_eq!((d.effect, d.penalty), (Effect::WouldDeny, 100));
}

#[test]
fn peers() {
    let p = compile(|s| {
        s.allowed_peers = vec![
            "summarizer".into(),
            "tools/indexer".into(),
            "did:mesh:00ff*".into(),
        ];
        s.min_peer_score = Some(500);
    });
    let peer = |ns: &'static str, name: &'static str, did: &'static str| PeerRef {
        did,
        namespace: Some(ns),
        name: Some(name),
    };
    let did = "did:mesh:0123456789abcdef0123456789abcdef";
    assert_eq!(
        p.decide_peer(peer("agents", "summarizer", did), 600, "agents")
            .effect,
        Effect::Allow
    );
    assert_eq!(
        p.decide_peer(peer("other", "summarizer", did), 600, "agents")
            .effect,
        Effect::Deny
    );
    assert_eq!(
        p.decide_peer(peer("tools", "indexer", did), 600, "agents")
            .effect,
        Effect::Allow
    );
    assert_eq!(
        p.decide_peer(
            peer("x", "y", "did:mesh:00ff456789abcdef0123456789abcdef"),
            600,
            "agents"
        )
        .effect,
        Effect::Allow
    );
    let d = p.decide_peer(peer("agents", "summarizer", did), 499, "agents");
    assert_eq!(
        (d.effect, d.rule()),
        (Effect::Deny, "minPeerScore".to_string())
    );
    let open = compile(|_| {});
    assert_eq!(
        open.decide_peer(peer("x", "y", did), 0, "agents").effect,
        Effect::Allow
    );
}

#[test]
fn behaviour_rules_most_specific_wins() {
    let p = compile(|s| {
        s.behavior.exec = vec![
            ExecRuleSpec {
                path: "/usr/bin/*".into(),
                action: BehaviorAction::Alert,
                penalty: 5,
            },
            ExecRuleSpec {
                path: "/usr/bin/python3*".into(),
                action: BehaviorAction::Allow,
                penalty: 0,
            },
            ExecRuleSpec {
                path: "/usr/bin/curl".into(),
                action: BehaviorAction::Deny,
                penalty: 100,
            },
        ];
        s.behavior.files = vec![
            FileRuleSpec {
                path_prefix: "/etc".into(),
                access: FileAccess::Write,
                action: BehaviorAction::Alert,
                penalty: 10,
            },
            FileRuleSpec {
                path_prefix: "/etc/shadow".into(),
                access: FileAccess::Any,
                action: BehaviorAction::Deny,
                penalty: 200,
            },
        ];
        s.behavior.network = vec![
            NetworkRuleSpec {
                cidr: "0.0.0.0/0".into(),
                ports: vec![],
                action: BehaviorAction::Alert,
                penalty: 1,
            },
            NetworkRuleSpec {
                cidr: "10.96.0.0/12".into(),
                ports: vec![443],
                action: BehaviorAction::Allow,
                penalty: 0,
            },
            NetworkRuleSpec {
                cidr: "169.254.169.254/32".into(),
                ports: vec![],
                action: BehaviorAction::Deny,
                penalty: 300,
            },
            NetworkRuleSpec {
                cidr: "fd00::/8".into(),
                ports: vec![],
                action: BehaviorAction::Alert,
                penalty: 20,
            },
        ];
    });
    assert_eq!(
        p.decide_exec("/usr/bin/python3.12", 800).effect,
        Effect::Allow
    );
    let d = p.decide_exec("/usr/bin/vim", 800);
    assert_eq!(
        (d.effect, d.penalty, d.rule()),
        (Effect::Allow, 5, "behavior.exec[0]".to_string())
    );
    let d = p.decide_exec("/usr/bin/curl", 800);
    assert_eq!((d.effect, d.penalty), (Effect::Deny, 100));
    assert_eq!(
        p.decide_exec("/opt/app", 800).rule(),
        "behavior.exec (no rule matched)"
    );

    assert_eq!(
        p.decide_file("/etc/shadow", FileAccess::Read, 800).effect,
        Effect::Deny
    );
    assert_eq!(
        p.decide_file("/etc/hosts", FileAccess::Write, 800).penalty,
        10
    );
    assert_eq!(
        p.decide_file("/etc/hosts", FileAccess::Read, 800).penalty,
        0
    );
    assert_eq!(
        p.decide_file("/etcetera", FileAccess::Write, 800).penalty,
        0
    );

    let ip = |s: &str| s.parse().unwrap();
    assert_eq!(p.decide_connect(ip("10.100.0.1"), 443, 800).penalty, 0);
    assert_eq!(p.decide_connect(ip("10.100.0.1"), 80, 800).penalty, 1);
    let d = p.decide_connect(ip("169.254.169.254"), 80, 800);
    assert_eq!(
        (d.effect, d.penalty, d.rule()),
        (Effect::Deny, 300, "behavior.network[2]".to_string())
    );
    assert_eq!(p.decide_connect(ip("fd00::1"), 80, 800).penalty, 20);
}

#[test]
fn invalid_policies_name_the_field() {
    type Mutation = fn(&mut PolicySpec);
    let cases: Vec<(Mutation, &str)> = vec![
        (|s| s.trust.decay_floor = 400, "decayFloor"),
        (|s| s.trust.decay_rate = f64::INFINITY, "decayRate"),
        (
            |s| s.tools.allow = vec!["bad pattern".into()],
            "spec.tools.allow[0]",
        ),
        (
            |s| {
                s.tools.rules = vec![ToolRuleSpec {
                    tool: "x".into(),
                    min_score: None,
                    rate_limit: None,
                }]
            },
            "spec.tools.rules[0]",
        ),
        (
            |s| {
                s.tools.rate_limit = Some(RateLimitSpec {
                    requests: 0,
                    period_seconds: 60,
                })
            },
            "spec.tools.rateLimit",
        ),
        (
            |s| {
                s.behavior.network = vec![NetworkRuleSpec {
                    cidr: "10.0.0.0/40".into(),
                    ports: vec![],
                    action: BehaviorAction::Deny,
                    penalty: 1,
                }]
            },
            "spec.behavior.network[0].cidr",
        ),
        (
            |s| {
                s.behavior.network = vec![NetworkRuleSpec {
                    cidr: "10.0.0.0/8".into(),
                    ports: vec![70000],
                    action: BehaviorAction::Deny,
                    penalty: 1,
                }]
            },
            "spec.behavior.network[0].ports[0]",
        ),
        (
            |s| {
                s.behavior.exec = vec![ExecRuleSpec {
                    path: "/bin/sh".into(),
                    action: BehaviorAction::Allow,
                    penalty: 5,
                }]
            },
            "spec.behavior.exec[0].penalty",
        ),
        (
            // A wildcard to the operator, a literal to the kernel: refused.
            |s| {
                s.behavior.exec = vec![
                    ExecRuleSpec {
                        path: "/usr/bin/*".into(),
                        action: BehaviorAction::Deny,
                        penalty: 5,
                    },
                    ExecRuleSpec {
                        path: "/usr/*/curl".into(),
                        action: BehaviorAction::Deny,
                        penalty: 5,
                    },
                ]
            },
            "spec.behavior.exec[1].path",
        ),
        (
            |s| {
                s.behavior.files = vec![FileRuleSpec {
                    path_prefix: "etc".into(),
                    access: FileAccess::Any,
                    action: BehaviorAction::Deny,
                    penalty: 5,
                }]
            },
            "spec.behavior.files[0].pathPrefix",
        ),
        (|s| s.max_delegation_depth = 17, "maxDepth"),
    ];
    for (mutate, field) in cases {
        let mut spec = PolicySpec::default();
        mutate(&mut spec);
        let err = Policy::compile(spec).unwrap_err();
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
}

#[test]
fn version_changes_with_the_spec() {
    let a = compile(|_| {});
    let b = compile(|s| s.tools.deny = vec!["x".into()]);
    assert_eq!(a.version().len(), 16);
    assert_ne!(a.version(), b.version());
    assert_eq!(a.version(), compile(|_| {}).version());
}

#[test]
fn a_rule_cannot_be_escaped_by_spelling() {
    let p = compile(|s| {
        s.preset = Preset::Permissive;
        s.tools.deny = vec!["run_shell".into(), "deleteRepo*".into()];
    });
    for spelling in [
        "run_shell",
        "Run_Shell",
        "RUN_SHELL",
        "run-shell",
        "runShell",
        "RunShell",
        "run.shell",
        "run__shell",
        "_run_shell",
    ] {
        assert_eq!(tool(&p, spelling, 800), Effect::Deny, "{spelling}");
    }
    // The pattern is canonical too: `deleteRepo*` governs `delete_repo_now` and `DeleteRepo`.
    for spelling in ["delete_repo_now", "DeleteRepo", "delete-repo"] {
        assert_eq!(tool(&p, spelling, 800), Effect::Deny, "{spelling}");
    }
    assert_eq!(tool(&p, "run_shellfish", 800), Effect::Allow);
    // The standard preset's patterns are canonical as well.
    let standard = compile(|_| {});
    for spelling in ["Bash", "PythonREPL", "runCommand", "EXEC"] {
        assert_eq!(tool(&standard, spelling, 800), Effect::Deny, "{spelling}");
    }
}

#[test]
fn prompts_and_resources_follow_the_explicit_rules_not_the_tool_presets() {
    let p = compile(|s| {
        s.preset = Preset::Strict;
        s.tools.deny = vec!["file:///etc/*".into(), "secret_prompt".into()];
    });
    let mut rate = p.new_rate_state(T0);
    let mut decide = |kind, name: &str| p.decide_call(kind, name, 800, &mut rate, T0).effect;
    // Strict allows read-only tool names only, but reading a resource or getting a prompt runs
    // nothing: the preset allows them, explicit deny rules still apply.
    assert_eq!(decide(CallKind::Resource, "memo://notes"), Effect::Allow);
    assert_eq!(decide(CallKind::Prompt, "greeting"), Effect::Allow);
    assert_eq!(decide(CallKind::Tool, "greeting"), Effect::Deny);
    assert_eq!(
        decide(CallKind::Resource, "file:///etc/passwd"),
        Effect::Deny
    );
    assert_eq!(
        decide(CallKind::Resource, "FILE:///etc/passwd"),
        Effect::Deny
    );
    assert_eq!(decide(CallKind::Prompt, "SecretPrompt"), Effect::Deny);
    assert_eq!(
        CallKind::of_method("resources/read"),
        Some(CallKind::Resource)
    );
    assert_eq!(CallKind::of_method("tools/list"), None);
}
