//! `trust status`'s rows, tables, JSON and watch changes, at a fixed instant.

use serde_json::{Value, json};

use super::*;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

const NOW: i64 = 1_750_000_000;

fn identity(value: Value) -> AgentIdentity {
    serde_json::from_value(value).unwrap()
}

fn bare(namespace: &str, name: &str) -> AgentIdentity {
    identity(json!({
        "apiVersion": "agentmesh.io/v1alpha1",
        "kind": "AgentIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"capabilities": ["read:*"]},
    }))
}

/// A delegated, quarantined identity with a last decision 75 s before NOW.
fn full() -> AgentIdentity {
    identity(json!({
        "apiVersion": "agentmesh.io/v1alpha1",
        "kind": "AgentIdentity",
        "metadata": {"name": "summarizer", "namespace": "agents"},
        "spec": {"delegation": {"parent": "planner", "capabilities": ["read:*"]}},
        "status": {
            "did": "did:mesh:0123456789abcdef0123456789abcdef",
            "trustScore": 240,
            "tier": "untrusted",
            "quarantined": true,
            "podsMatched": 2,
            "conditions": [{
                "type": "DelegationValid", "status": "False", "reason": "ParentNotFound",
                "message": "no AgentIdentity planner", "lastTransitionTime": "2025-06-15T00:00:00Z",
            }],
            "lastDecision": {
                "at": "2025-06-15T15:05:45Z",
                "decision": "deny",
                "subject": "tools/call fetch_url",
                "reason": "tools.rules[0].minScore: score 240 below 500",
            },
        },
    }))
}

fn to_json(row: &Row) -> Value {
    serde_json::to_value(row.json()).unwrap()
}

fn cells(row: &Row, output: Output, all_namespaces: bool) -> Vec<String> {
    Column::all(output, all_namespaces)
        .into_iter()
        .map(|c| row.cell(c, at(NOW), output == Output::Table))
        .collect()
}

#[test]
fn an_identity_without_status_shows_none_and_dashes() {
    let row = Row::of(&bare("default", "fresh"));
    assert_eq!(
        cells(&row, Output::Wide, false),
        [
            "fresh", "<none>", "<none>", "false", "0", "<none>", "-", "<none>", "-", "-", "-"
        ]
    );
}

#[test]
fn a_full_status_fills_every_column() {
    let row = Row::of(&full());
    assert_eq!(at(NOW).to_string(), "2025-06-15T15:06:40Z");
    assert_eq!(
        cells(&row, Output::Wide, true),
        [
            "agents",
            "summarizer",
            "240",
            "untrusted",
            "true",
            "2",
            "did:mesh:0123456789abcdef0123456789abcdef",
            "refused: ParentNotFound",
            "deny",
            "55s",
            "tools/call fetch_url",
            "tools.rules[0].minScore: score 240 below 500",
        ]
    );
}

#[test]
fn delegation_states() {
    let with = |conditions: Value| {
        let mut identity = full();
        identity.status.as_mut().unwrap().conditions = serde_json::from_value(conditions).unwrap();
        Row::of(&identity).cell(Column::Delegation, at(NOW), true)
    };
    let condition = |status: &str, reason: &str| {
        json!([{"type": "DelegationValid", "status": status, "reason": reason, "message": "m",
                "lastTransitionTime": "2025-06-15T00:00:00Z"}])
    };
    assert_eq!(with(condition("True", "Verified")), "valid");
    assert_eq!(with(condition("Unknown", "Checking")), "pending");
    assert_eq!(with(json!([])), "pending");
    assert_eq!(with(condition("False", "")), "refused: m");
    let long = "ParentCapabilitiesDoNotIncludeTheDelegatedOnes";
    assert_eq!(
        with(condition("False", long)),
        "refused: ParentCapabilitiesDoNotInclude…"
    );
    // No spec.delegation: not applicable, whatever the conditions say.
    let mut identity = bare("default", "root");
    identity.status = full().status;
    assert_eq!(
        Row::of(&identity).cell(Column::Delegation, at(NOW), true),
        "-"
    );
}

#[test]
fn the_last_decision_age_and_absence() {
    let mut identity = full();
    let row = Row::of(&identity);
    assert_eq!(row.cell(Column::Last, at(NOW + 3600), true), "60m");
    identity.status.as_mut().unwrap().last_decision = None;
    let row = Row::of(&identity);
    assert_eq!(
        [
            Column::Decision,
            Column::Last,
            Column::Subject,
            Column::Reason
        ]
        .map(|c| row.cell(c, at(NOW), true)),
        ["<none>", "-", "-", "-"]
    );
}

#[test]
fn table_mode_shortens_subject_and_reason_on_character_boundaries() {
    let mut identity = full();
    let decision = last_decision(&mut identity);
    decision.subject = format!("exec /opt/{}", "é".repeat(60));
    decision.reason = "ü\nnew line".repeat(10);
    let row = Row::of(&identity);
    let subject = row.cell(Column::Subject, at(NOW), true);
    assert_eq!(subject.chars().count(), SUBJECT_MAX);
    assert!(subject.starts_with("exec /opt/éé") && subject.ends_with("é…"));
    let reason = row.cell(Column::Reason, at(NOW), true);
    assert_eq!(reason.chars().count(), REASON_MAX);
    assert!(reason.starts_with("ü new lineü new line"), "{reason}");
    // wide: whole, but still printable.
    let reason = row.cell(Column::Reason, at(NOW), false);
    assert_eq!(reason.chars().count(), 100);
    assert!(!reason.contains('\n'));
}

#[test]
fn truncate_counts_characters() {
    assert_eq!(truncate("abc", 3), "abc");
    assert_eq!(truncate("abcd", 3), "ab…");
    assert_eq!(truncate("日本語のテキスト", 4), "日本語…");
    assert_eq!(truncate("🦀🦀🦀", 2), "🦀…");
    assert_eq!(truncate("", 0), "");
    assert_eq!(truncate("ab", 1), "…");
}

#[test]
fn ages_read_like_kubectl() {
    let cases = [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (12, "12s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (599, "9m59s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 20 * 60, "3h20m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (76 * 3600, "3d4h"),
        (40 * 86400, "40d"),
        (2 * 365 * 86400, "2y"),
        (2 * 365 * 86400 + 10 * 86400, "2y10d"),
        (9 * 365 * 86400, "9y"),
    ];
    for (seconds, age) in cases {
        assert_eq!(human_age(seconds), age, "{seconds}s");
    }
}

#[test]
fn a_fitted_table_with_namespaces() {
    let mut other = bare("default", "a-much-longer-name");
    other.status = Some(Default::default());
    let rows = sorted(&[full(), other]);
    let table = Table::fitted(Output::Table, true, &rows, at(NOW));
    let lines: Vec<_> = [table.header()]
        .into_iter()
        .chain(rows.iter().map(|r| table.row(r, at(NOW))))
        .collect();
    assert_eq!(
        lines,
        [
            "NAMESPACE   NAME                 SCORE    TIER        QUARANTINED   DELEGATION                DECISION   LAST   SUBJECT                REASON",
            "agents      summarizer           240      untrusted   true          refused: ParentNotFound   deny       55s    tools/call fetch_url   tools.rules[0].minScore: score 240 below 500",
            "default     a-much-longer-name   <none>   <none>      false         -                         <none>     -      -                      -",
        ]
    );
}

#[test]
fn rows_sort_by_namespace_then_name() {
    let rows = sorted(&[bare("b", "a"), bare("a", "z"), bare("a", "b")]);
    let keys: Vec<_> = rows.iter().map(Row::key).collect();
    assert_eq!(
        keys,
        [("a", "b"), ("a", "z"), ("b", "a")].map(|(n, m)| (n.to_owned(), m.to_owned()))
    );
}

#[test]
fn watch_widths_have_minimums_so_later_rows_line_up() {
    let rows = sorted(&[bare("default", "a")]);
    let table = Table::for_watch(Output::Table, false, &rows, at(NOW));
    let header = table.header();
    let later = table.row(&Row::of(&full()), at(NOW));
    for column in ["SCORE", "TIER", "DECISION", "LAST", "SUBJECT", "REASON"] {
        let start = header.find(column).unwrap();
        assert_eq!(&later[start - 3..start], "   ", "{column}: {later}");
        assert_ne!(&later[start..start + 1], " ", "{column}: {later}");
    }
}

#[test]
fn json_fields_keep_their_order() {
    let text = serde_json::to_string(&Row::of(&full()).json()).unwrap();
    assert!(text.starts_with(r#"{"namespace":"agents","name":"summarizer","score":240,"#));
    assert!(text.ends_with(r#""deleted":false}"#));
}

#[test]
fn json_shape() {
    assert_eq!(
        to_json(&Row::of(&full())),
        json!({
            "namespace": "agents",
            "name": "summarizer",
            "score": 240,
            "tier": "untrusted",
            "quarantined": true,
            "podsMatched": 2,
            "did": "did:mesh:0123456789abcdef0123456789abcdef",
            "delegation": {"valid": false, "reason": "ParentNotFound", "message": "no AgentIdentity planner"},
            "lastDecision": {
                "at": "2025-06-15T15:05:45Z",
                "decision": "deny",
                "subject": "tools/call fetch_url",
                "reason": "tools.rules[0].minScore: score 240 below 500",
            },
            "deleted": false,
        })
    );
    assert_eq!(
        to_json(&Row::of(&bare("default", "fresh"))),
        json!({
            "namespace": "default", "name": "fresh", "score": null, "tier": null,
            "quarantined": false, "podsMatched": 0, "did": null, "delegation": null,
            "lastDecision": null, "deleted": false,
        })
    );
}

#[test]
fn a_watch_prints_only_what_changes() {
    let first = sorted(&[full(), bare("default", "a")]);
    let mut changes = Changes::new(Output::Table, &first);
    let now = at(NOW);
    // The watcher's own initial list repeats what was printed: nothing new.
    assert!(changes.observe(Event::Init, now).is_empty());
    assert!(changes.observe(Event::InitApply(full()), now).is_empty());
    assert!(
        changes
            .observe(Event::InitApply(bare("default", "a")), now)
            .is_empty()
    );
    assert!(changes.observe(Event::InitDone, now).is_empty());
    // PODS is not in the table: a change of pods alone prints nothing.
    let mut pods = full();
    pods.status.as_mut().unwrap().pods_matched = 3;
    assert!(changes.observe(Event::Apply(pods.clone()), now).is_empty());
    // ...but does in wide.
    let mut wide = Changes::new(Output::Wide, &first);
    assert_eq!(wide.observe(Event::Apply(pods), now).len(), 1);
    // The same decision again, later: a new row.
    let mut again = full();
    let decision = last_decision(&mut again);
    decision.at = at(NOW).into();
    let rows = changes.observe(Event::Apply(again.clone()), now);
    assert_eq!(rows, [Row::of(&again)]);
    assert!(changes.observe(Event::Apply(again), now).is_empty());
}

#[test]
fn a_watch_reports_deletions_also_those_a_relist_reveals() {
    let first = sorted(&[full(), bare("default", "a")]);
    let mut changes = Changes::new(Output::Table, &first);
    let now = at(NOW);
    let rows = changes.observe(Event::Delete(bare("default", "a")), now);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].deleted_at, Some(now));
    let table = Table::for_watch(Output::Table, false, &first, now);
    let line = table.row(&rows[0], now);
    assert!(line.starts_with("a   "), "{line}");
    assert!(line.contains("   deleted      0s "), "{line}");
    assert_eq!(to_json(&rows[0])["deleted"], true);
    // Created again: printed again.
    assert_eq!(
        changes
            .observe(Event::Apply(bare("default", "a")), now)
            .len(),
        1
    );
    // The watch restarts and lists only `a`: summarizer went while it was away.
    changes.observe(Event::Init, now);
    assert!(
        changes
            .observe(Event::InitApply(bare("default", "a")), now)
            .is_empty()
    );
    let rows = changes.observe(Event::InitDone, now);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].name.as_str(), rows[0].deleted_at),
        ("summarizer", Some(now))
    );
    assert_eq!(rows[0].cell(Column::Decision, now, true), "deleted");
    assert_eq!(rows[0].cell(Column::Subject, now, true), "-");
}

/// The last decision of an identity from [`full`].
fn last_decision(identity: &mut AgentIdentity) -> &mut DecisionRecord {
    identity
        .status
        .as_mut()
        .and_then(|s| s.last_decision.as_mut())
        .expect("full() has a last decision")
}
