//! A 10-rule policy decision against same-run baselines (one string comparison, one HashMap
//! lookup), and one signal applied to a score; prints `ratio = X`. `make bench` runs it.

use std::collections::HashMap;
use std::hint::black_box;

use agentmesh_trust::policy::{Policy, PolicySpec, RateLimitSpec, ToolRuleSpec};
use agentmesh_trust::{Signal, Timestamp, TrustConfig, TrustState};
use criterion::Criterion;

#[path = "../../identity/benches/support/mod.rs"]
mod support;

/// Ten rules: three deny patterns, three allow patterns, four per-tool rules (two minimum
/// scores, two rate limits), all of which the benchmarked call walks through.
fn ten_rule_policy() -> Policy {
    let mut spec = PolicySpec::default();
    spec.tools.deny = vec!["shell_*".into(), "*_exec".into(), "delete_*".into()];
    spec.tools.allow = vec!["search_*".into(), "read_file".into(), "fetch_*".into()];
    let rule = |tool: &str, min: Option<i32>, limit: Option<i32>| ToolRuleSpec {
        tool: tool.into(),
        min_score: min,
        rate_limit: limit.map(|requests| RateLimitSpec {
            requests,
            period_seconds: 1,
        }),
    };
    spec.tools.rules = vec![
        rule("write_*", Some(700), None),
        rule("fetch_*", Some(500), None),
        rule("fetch_url", None, Some(1_000_000)),
        rule("*", None, Some(1_000_000)),
    ];
    Policy::compile(spec).unwrap()
}

fn benches(c: &mut Criterion) {
    let policy = ten_rule_policy();
    let t0 = Timestamp::from_secs(1_800_000_000);
    let mut rate = policy.new_rate_state(t0);
    let mut group = c.benchmark_group("policy");
    let mut now = t0;
    group.bench_function("decide_10_rules", |b| {
        b.iter(|| {
            now = now.plus_millis(1);
            let d = policy.decide_tool(black_box("fetch_url"), black_box(800), &mut rate, now);
            black_box(d.effect)
        })
    });
    let expected = String::from("fetch_url");
    group.bench_function("baseline_string_eq", |b| {
        b.iter(|| black_box(black_box("fetch_url") == expected.as_str()))
    });
    let map: HashMap<String, u32> = (0..10)
        .map(|i| (format!("tool_{i}"), i))
        .chain([("fetch_url".to_string(), 99)])
        .collect();
    group.bench_function("baseline_hashmap_lookup", |b| {
        b.iter(|| black_box(map.get(black_box("fetch_url"))))
    });
    group.finish();

    let config = TrustConfig::default();
    let mut group = c.benchmark_group("score");
    let mut state = TrustState::new(&config, None, t0);
    let mut now = t0;
    group.bench_function("apply_signal", |b| {
        b.iter(|| {
            now = now.plus_millis(3_000);
            state.apply(&config, black_box(Signal::CompliantActivity), now);
            black_box(state.score())
        })
    });
    group.finish();
}

fn main() {
    let mut c = support::criterion();
    benches(&mut c);
    c.final_summary();
    let decide = support::mean_ns("policy", "decide_10_rules");
    if let (Some(decide), Some(eq), Some(map)) = (
        decide,
        support::mean_ns("policy", "baseline_string_eq"),
        support::mean_ns("policy", "baseline_hashmap_lookup"),
    ) {
        println!(
            "policy: 10-rule decision {decide:.1} ns (goal <= 1000 ns), string eq {eq:.2} ns, HashMap lookup {map:.1} ns"
        );
        println!(
            "10-rule decision vs HashMap lookup: ratio = {:.1}",
            decide / map
        );
        println!(
            "10-rule decision vs string comparison: ratio = {:.1}",
            decide / eq
        );
    }
    if let (Some(signal), Some(map)) = (
        support::mean_ns("score", "apply_signal"),
        support::mean_ns("policy", "baseline_hashmap_lookup"),
    ) {
        println!(
            "score: one signal applied {signal:.1} ns; vs HashMap lookup: ratio = {:.2}",
            signal / map
        );
    }
}
