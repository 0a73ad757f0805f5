use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::policy::spec::{BehaviorAction, ExecRuleSpec, FileRuleSpec, NetworkRuleSpec};
use crate::replay::ReplayError;
use crate::{Effect, Policy, PolicySpec, Signal, Tier};

const T0: Timestamp = Timestamp::from_secs(1_800_000_000);
/// Past the default learning period (300 s).
const LEARNED: Timestamp = Timestamp::from_secs(1_800_000_000 + 301);

fn policy(edit: impl FnOnce(&mut PolicySpec)) -> Policy {
    let mut spec = PolicySpec::default();
    edit(&mut spec);
    Policy::compile(spec).expect("valid policy")
}

fn standing(policy: &Policy, now: Timestamp) -> Standing {
    Standing::new(TrustState::new(policy.trust(), None, now), [], None, now)
}

fn window<'a>(pod: &'a str) -> ProbeWindow<'a> {
    ProbeWindow {
        pod,
        ..ProbeWindow::default()
    }
}

/// A standing whose baseline has learned (it saw `/bin/true` at T0) at `LEARNED`.
fn learned(policy: &Policy) -> Standing {
    let mut s = standing(policy, T0);
    let mut first = window("p");
    first.executables = vec!["/bin/true"];
    assert!(s.apply_probe_window(policy, &first, T0).is_empty());
    s
}

fn exec_rule(path: &str, action: BehaviorAction, penalty: i32) -> ExecRuleSpec {
    ExecRuleSpec {
        path: path.into(),
        action,
        penalty,
    }
}

#[test]
fn a_new_executable_after_learning_costs_its_penalty_once() {
    let p = policy(|_| {});
    let mut s = learned(&p);
    let before = s.trust().score();
    let mut w = window("agent-0");
    w.executables = vec!["/usr/bin/curl"];
    assert!(s.apply_probe_window(&p, &w, LEARNED).is_empty());
    let penalty = p.spec().behavior.anomalies.new_executable;
    assert_eq!(s.trust().score(), before - penalty);
    assert_eq!(s.window().counts.anomalies, 1);
    let note = s.recent().next().expect("an anomaly is listed");
    assert_eq!(note.kind, AnomalyKind::NewExecutable);
    assert_eq!(note.detail, "exec /usr/bin/curl");
    assert_eq!(note.pod.as_deref(), Some("agent-0"));
    assert_eq!(s.last_decision().unwrap().verdict, Verdict::Anomaly);
    assert_eq!(
        s.last_decision().unwrap().reason,
        format!("newExecutable, -{penalty} trust")
    );
    // Seen once, it is part of the baseline.
    s.apply_probe_window(&p, &w, LEARNED.plus_millis(1000));
    assert_eq!(s.trust().score(), before - penalty);
}

#[test]
fn a_window_not_seen_whole_is_an_anomaly_so_flooding_the_list_hides_nothing() {
    // The attack: 256 harmless writes fill the report's list, and the write to /etc/shadow
    // that follows is only counted as unlisted.
    let p = policy(|_| {});
    let harmless: Vec<String> = (0..256).map(|i| format!("/tmp/f{i}")).collect();
    let flood = |unlisted| {
        let mut w = window("agent-0");
        w.written_paths = harmless.iter().map(String::as_str).collect();
        w.unlisted = unlisted;
        w
    };
    let mut control = learned(&p);
    let before = control.trust().score();
    control.apply_probe_window(&p, &flood(0), LEARNED);
    assert_eq!(
        control.trust().score(),
        before,
        "harmless writes cost nothing"
    );

    let mut s = learned(&p);
    s.apply_probe_window(&p, &flood(1), LEARNED);
    let penalty = p.spec().behavior.anomalies.unobserved;
    assert!(penalty > 0);
    assert_eq!(s.trust().score(), before - penalty);
    let note = s.recent().next().expect("an anomaly is listed");
    assert_eq!(note.kind, AnomalyKind::Unobserved);
    assert_eq!(note.detail, "1 events not seen whole");
    assert_eq!(note.pod.as_deref(), Some("agent-0"));
    // Events the kernel lost count the same way (the operator adds them to `unlisted`), once
    // per window however many.
    s.apply_probe_window(&p, &flood(5000), LEARNED.plus_millis(1000));
    assert_eq!(s.trust().score(), before - 2 * penalty);

    // While the baseline learns, a busy start is not held against the identity.
    let mut young = standing(&p, T0);
    young.apply_probe_window(&p, &flood(7), T0);
    assert_eq!(young.trust().score(), p.trust().initial_score);
}

#[test]
fn nothing_is_new_while_the_baseline_learns() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let mut w = window("p");
    w.executables = vec!["/a", "/b"];
    w.destinations = vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 443)];
    s.apply_probe_window(&p, &w, T0);
    assert_eq!(s.trust().score(), p.trust().initial_score);
    assert_eq!(s.recent().len(), 0);
}

#[test]
fn an_allow_rule_is_expected_behaviour_never_an_anomaly() {
    let p = policy(|spec| {
        spec.behavior.exec = vec![exec_rule("/usr/bin/git", BehaviorAction::Allow, 0)];
    });
    let mut s = learned(&p);
    let before = s.trust().score();
    let mut w = window("p");
    w.executables = vec!["/usr/bin/git"];
    assert!(s.apply_probe_window(&p, &w, LEARNED).is_empty());
    assert_eq!(s.trust().score(), before, "the baseline must not charge it");
    assert_eq!(s.window().counts.anomalies, 0);
}

#[test]
fn a_deny_rule_costs_its_penalty_and_is_a_violation() {
    let p = policy(|spec| {
        spec.behavior.exec = vec![exec_rule("/usr/local/bin/miner", BehaviorAction::Deny, 150)];
    });
    // Even while learning: rules do not wait for the baseline.
    let mut s = standing(&p, T0);
    let mut w = window("p");
    w.executables = vec!["/usr/local/bin/miner"];
    let violations = s.apply_probe_window(&p, &w, T0);
    assert_eq!(s.trust().score(), p.trust().initial_score - 150);
    assert_eq!(
        violations,
        vec![Violation {
            rule: "behavior.exec[0]".into(),
            detail: "exec /usr/local/bin/miner".into(),
            shadow: false
        }]
    );
    assert_eq!(s.window().counts.violations, 1);
    let note = s.recent().next().unwrap();
    assert_eq!(note.kind, AnomalyKind::RuleMatch);
    assert_eq!(note.detail, "exec /usr/local/bin/miner (behavior.exec[0])");
}

#[test]
fn an_alert_rule_in_shadow_mode_is_a_shadow_violation_of_files_and_network() {
    let p = policy(|spec| {
        spec.mode = crate::policy::Mode::Shadow;
        spec.behavior.files = vec![FileRuleSpec {
            path_prefix: "/etc/shadow".into(),
            access: Default::default(),
            action: BehaviorAction::Deny,
            penalty: 30,
        }];
        spec.behavior.network = vec![NetworkRuleSpec {
            cidr: "169.254.169.254/32".into(),
            ports: vec![],
            action: BehaviorAction::Deny,
            penalty: 40,
        }];
    });
    let mut s = standing(&p, T0);
    let mut w = window("p");
    w.read_paths = vec!["/etc/shadow"];
    w.destinations = vec![(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80)];
    let violations = s.apply_probe_window(&p, &w, T0);
    assert_eq!(violations.len(), 2);
    assert!(violations.iter().all(|v| v.shadow), "{violations:?}");
    assert_eq!(s.trust().score(), p.trust().initial_score - 70);
}

#[test]
fn a_write_under_a_sensitive_path_is_an_anomaly_even_while_learning() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let mut w = window("p");
    w.written_paths = vec!["/etc/passwd"];
    s.apply_probe_window(&p, &w, T0);
    let penalty = p.spec().behavior.anomalies.sensitive_write;
    assert_eq!(s.trust().score(), p.trust().initial_score - penalty);
    assert_eq!(s.recent().next().unwrap().kind, AnomalyKind::SensitiveWrite);
    // A read of the same path is not.
    let mut r = window("p");
    r.read_paths = vec!["/etc/passwd"];
    s.apply_probe_window(&p, &r, T0);
    assert_eq!(s.trust().score(), p.trust().initial_score - penalty);
}

#[test]
fn a_kernel_refusal_is_a_violation_and_the_last_decision() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let mut w = window("p");
    w.blocked = vec![
        Blocked::Exec {
            path: "/usr/local/bin/miner",
        },
        Blocked::Connect {
            ip: IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
            port: 443,
        },
    ];
    let violations = s.apply_probe_window(&p, &w, T0);
    assert_eq!(violations.len(), 2);
    assert!(violations.iter().all(|v| v.rule == "kernel" && !v.shadow));
    assert_eq!(
        s.trust().score(),
        p.trust().initial_score - 2 * p.trust().delta(Signal::Violation).abs()
    );
    let last = s.last_decision().unwrap();
    assert_eq!(last.verdict, Verdict::Blocked);
    assert_eq!(last.subject, "blocked connect 1.2.3.4:443");
}

#[test]
fn counts_from_the_network_saturate() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let mut w = window("p");
    w.execs = u64::MAX;
    w.file_opens = u64::MAX;
    w.connects = 3;
    s.apply_probe_window(&p, &w, T0);
    s.apply_probe_window(&p, &w, T0);
    let counts = s.window().counts;
    assert_eq!(counts.execs, i64::MAX);
    assert_eq!(counts.file_opens, i64::MAX);
    assert_eq!(counts.connects, 6);
}

fn call<'a>(effect: &'a str) -> SidecarOutcome<'a> {
    SidecarOutcome::Call {
        method: None,
        name: "search",
        effect,
        rule: "tools.allow[0]",
        at_ms: T0.as_millis(),
    }
}

fn batch<'a>(id: &'a str, outcomes: Vec<SidecarOutcome<'a>>) -> SidecarBatch<'a> {
    SidecarBatch {
        batch_id: id,
        sent_at_ms: T0.as_millis(),
        pod: "agent-0",
        outcomes,
    }
}

#[test]
fn a_replayed_or_stale_batch_changes_nothing() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let b = batch("b1", vec![call("deny")]);
    s.apply_sidecar_batch(&p, "ns/a", &b, T0).unwrap();
    let after_first = s.trust().score();
    assert_eq!(
        s.apply_sidecar_batch(&p, "ns/a", &b, T0),
        Err(ReplayError::Replayed("b1".into()))
    );
    let mut stale = batch("b2", vec![call("deny")]);
    stale.sent_at_ms -= 120_000;
    assert!(matches!(
        s.apply_sidecar_batch(&p, "ns/a", &stale, T0),
        Err(ReplayError::Stale { .. })
    ));
    assert_eq!(s.trust().score(), after_first);
    assert_eq!(s.window().counts.tool_calls, 1);
}

#[test]
fn an_unknown_effect_counts_as_a_deny_and_the_audit_says_so() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let applied = s
        .apply_sidecar_batch(&p, "ns/a", &batch("b", vec![call("ALLOW")]), T0)
        .unwrap();
    assert_eq!(
        s.trust().score(),
        p.trust().initial_score - p.trust().delta(Signal::DeniedCall).abs()
    );
    assert_eq!(applied.violations.len(), 1);
    let record = &applied.audit[0];
    assert_eq!(record.decision, crate::audit::AuditDecision::Deny);
    assert_eq!(record.subject, "tool:search");
    assert_eq!(record.identity, "ns/a");
    assert_eq!(record.policy_version, p.version());
    assert!(
        record.detail.contains("counted as deny"),
        "{}",
        record.detail
    );
    assert_eq!(s.window().counts.denied_calls, 1);
}

#[test]
fn allowed_calls_earn_only_capped_credit() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let start = s.trust().score();
    let outcomes = vec![call("allow"); 10_000];
    let applied = s
        .apply_sidecar_batch(&p, "ns/a", &batch("b", outcomes), T0)
        .unwrap();
    assert_eq!(applied.audit.len(), 10_000);
    let cap = crate::CreditCap::default();
    let gained = s.trust().score() - start;
    assert!(gained > 0 && gained <= cap.points, "gained {gained}");
}

#[test]
fn a_failed_handshake_is_a_violation_and_a_tool_change_an_anomaly() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let applied = s
        .apply_sidecar_batch(
            &p,
            "ns/a",
            &batch(
                "b",
                vec![
                    SidecarOutcome::Handshake {
                        peer_did: "did:mesh:x",
                        succeeded: false,
                        reason: Some("signature"),
                        at_ms: 1,
                    },
                    SidecarOutcome::ToolChanged {
                        server: "fs",
                        tool: "read",
                    },
                ],
            ),
            T0,
        )
        .unwrap();
    let cost =
        p.trust().delta(Signal::HandshakeFailed).abs() + p.spec().behavior.anomalies.new_executable;
    assert_eq!(s.trust().score(), p.trust().initial_score - cost);
    assert_eq!(applied.violations[0].rule, "handshake");
    assert_eq!(
        applied.violations[0].detail,
        "handshake with did:mesh:x failed: signature"
    );
    assert_eq!(
        applied.audit.len(),
        1,
        "tool changes are anomalies, not audit"
    );
    assert_eq!(applied.audit[0].subject, "peer:did:mesh:x");
    assert_eq!(s.recent().next().unwrap().kind, AnomalyKind::ToolChanged);
}

#[test]
fn an_allow_does_not_hide_a_refusal_of_the_same_second() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    s.apply_sidecar_batch(
        &p,
        "ns/a",
        &batch("1", vec![call("deny"), call("allow")]),
        T0,
    )
    .unwrap();
    assert_eq!(s.last_decision().unwrap().verdict, Verdict::Deny);
    let next_second = T0.plus_millis(1000);
    let mut b = batch("2", vec![call("allow")]);
    b.sent_at_ms = next_second.as_millis();
    s.apply_sidecar_batch(&p, "ns/a", &b, next_second).unwrap();
    assert_eq!(s.last_decision().unwrap().verdict, Verdict::Allow);
}

#[test]
fn long_texts_are_cut_on_character_boundaries() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let long = "é".repeat(2000);
    let applied = s
        .apply_sidecar_batch(
            &p,
            "ns/a",
            &batch(
                "b",
                vec![SidecarOutcome::Call {
                    method: Some("prompts/get"),
                    name: &long,
                    effect: "deny",
                    rule: &long,
                    at_ms: 0,
                }],
            ),
            T0,
        )
        .unwrap();
    let record = &applied.audit[0];
    assert!(record.subject.len() <= MAX_TEXT && record.subject.starts_with("prompt:"));
    assert!(record.rule.len() <= MAX_TEXT);
    assert!(applied.violations[0].detail.len() <= MAX_DETAIL);
    assert!(s.last_decision().unwrap().subject.len() <= MAX_TEXT);
    assert_eq!(truncate("ééé", 3), "é");
}

fn stored(s: &Standing, p: &Policy) -> Stored {
    Stored {
        score: Some(s.trust().score()),
        tier: Some(s.trust().tier()),
        quarantined: s.trust().is_quarantined(p.trust()),
        has_score_time: true,
    }
}

#[test]
fn status_is_written_on_first_sight_only_when_it_does_not_say_it_already() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    let same = stored(&s, &p);
    assert_eq!(s.status_due("default/a", &p, Some(&same), 5000, T0), None);
    let mut fresh = standing(&p, T0);
    assert!(fresh.status_due("default/a", &p, None, 5000, T0).is_some());
    let mut untimed = standing(&p, T0);
    let no_time = Stored {
        has_score_time: false,
        ..same
    };
    assert!(
        untimed
            .status_due("default/a", &p, Some(&no_time), 5000, T0)
            .is_some()
    );
}

#[test]
fn a_score_change_waits_for_the_interval_a_tier_change_does_not() {
    let p = policy(|_| {});
    let mut s = standing(&p, T0);
    assert!(s.status_due("default/a", &p, None, 5000, T0).is_some());
    let mut w = window("p");
    w.blocked = vec![Blocked::Exec { path: "/x" }];
    s.apply_probe_window(&p, &w, T0);
    // 800 → 750: still the same tier.
    assert_eq!(s.trust().tier(), Tier::of(p.trust().initial_score));
    assert_eq!(
        s.status_due("default/a", &p, None, 5000, T0.plus_millis(4999)),
        None
    );
    let update = s
        .status_due("default/a", &p, None, 5000, T0.plus_millis(5000))
        .unwrap();
    assert_eq!(update.counts.violations, 1);
    assert_eq!(update.window_start, T0);
    assert_eq!(update.last_decision.unwrap().verdict, Verdict::Blocked);
    // The next window starts empty.
    assert_eq!(s.window().counts, WindowCounts::default());
    // Enough refusals to fall below the threshold: written at once.
    let mut many = window("p");
    many.blocked = vec![Blocked::Exec { path: "/x" }; 12];
    s.apply_probe_window(&p, &many, T0.plus_millis(5001));
    let update = s
        .status_due("default/a", &p, None, 5000, T0.plus_millis(5002))
        .unwrap();
    assert!(update.quarantined);
    assert_eq!(update.threshold, p.trust().min_threshold);
    let record = update.quarantine_change.expect("the quarantine is audited");
    assert_eq!(record.decision, crate::audit::AuditDecision::Quarantine);
    assert_eq!(record.identity, "default/a");
    assert_eq!(record.score, s.trust().score());
    assert_eq!(record.policy_version, p.version());
}

#[test]
fn quarantine_and_release_are_audited_once_each_and_not_again_after_a_restart() {
    let p = policy(|_| {});
    // Status says quarantined; the score now says otherwise: the first write releases.
    let mut s = standing(&p, T0);
    let mut quarantined = stored(&s, &p);
    quarantined.quarantined = true;
    let update = s
        .status_due("default/a", &p, Some(&quarantined), 5000, T0)
        .unwrap();
    let record = update.quarantine_change.expect("the release is audited");
    assert_eq!(record.decision, crate::audit::AuditDecision::Release);
    // Nothing changes after: no more records.
    let later = s.status_due("default/a", &p, None, 5000, T0.plus_millis(60_000));
    assert!(later.is_none_or(|u| u.quarantine_change.is_none()));
    // A new leader whose status already says it: no record at all.
    let mut restarted = standing(&p, T0);
    let same = stored(&restarted, &p);
    assert_eq!(
        restarted.status_due("default/a", &p, Some(&same), 5000, T0),
        None
    );
    let mut first_sight = standing(&p, T0);
    let update = first_sight
        .status_due("default/a", &p, None, 5000, T0)
        .unwrap();
    assert_eq!(update.quarantine_change, None, "not quarantined, never was");
}

proptest! {
    /// Whatever probes and sidecars send, the score stays in 0..=1000, counts stay ≥ 0, at most
    /// ten anomalies are kept, and every violation is counted in the window.
    #[test]
    fn any_reports_keep_the_standing_in_bounds(
        steps in prop::collection::vec((
            any::<u64>(),
            prop::collection::vec("/[a-z]{1,3}(/[a-z]{1,3})?", 0..4),
            prop::collection::vec((any::<[u8; 4]>(), any::<u16>()), 0..3),
            prop::collection::vec(prop::sample::select(vec!["allow", "deny", "would-deny", "x"]), 0..4),
            0i64..400_000,
        ), 1..20),
    ) {
        let p = policy(|spec| {
            spec.behavior.exec = vec![exec_rule("/a", BehaviorAction::Deny, 100)];
        });
        let mut s = standing(&p, T0);
        let mut now = T0;
        let mut counted = 0i64;
        for (i, (count, paths, dests, effects, step_ms)) in steps.iter().enumerate() {
            now = now.plus_millis(*step_ms);
            let before = s.window().counts.violations;
            let w = ProbeWindow {
                pod: "p",
                execs: *count,
                file_opens: *count,
                connects: *count,
                executables: paths.iter().map(String::as_str).collect(),
                written_paths: paths.iter().map(String::as_str).collect(),
                read_paths: vec![],
                destinations: dests.iter().map(|(ip, port)| (IpAddr::from(*ip), *port)).collect(),
                blocked: vec![],
                unlisted: *count,
            };
            counted += s.apply_probe_window(&p, &w, now).len() as i64;
            let id = i.to_string();
            let b = SidecarBatch {
                batch_id: &id,
                sent_at_ms: now.as_millis(),
                pod: "p",
                outcomes: effects.iter().map(|e| call(e)).collect(),
            };
            counted += s.apply_sidecar_batch(&p, "ns/a", &b, now).unwrap().violations.len() as i64;
            prop_assert!(s.window().counts.violations >= before);
            let score = s.trust().score();
            prop_assert!((0..=1000).contains(&score), "score {}", score);
            let c = s.window().counts;
            prop_assert!(c.execs >= 0 && c.file_opens >= 0 && c.connects >= 0 && c.tool_calls >= 0);
            prop_assert!(s.recent().len() <= RECENT_ANOMALIES);
        }
        prop_assert_eq!(s.window().counts.violations, counted);
    }
}

#[test]
fn only_allow_and_would_deny_are_taken_at_their_word() {
    use super::sidecar::reported_effect;
    assert_eq!(reported_effect("allow"), Effect::Allow);
    assert_eq!(reported_effect("would-deny"), Effect::WouldDeny);
    for other in ["deny", "", "ALLOW", "allow ", "permit"] {
        assert_eq!(reported_effect(other), Effect::Deny, "{other:?}");
    }
}

#[test]
fn audit_subjects_name_the_kind_of_call() {
    use super::sidecar::call_subject;
    assert_eq!(call_subject(None, "search"), "tool:search");
    assert_eq!(call_subject(Some("tools/call"), "search"), "tool:search");
    assert_eq!(call_subject(Some("prompts/get"), "sum"), "prompt:sum");
    assert_eq!(
        call_subject(Some("resources/read"), "file:///a"),
        "resource:file:///a"
    );
    assert_eq!(call_subject(Some("x/y"), "z"), "x/y:z");
}
