//! `agentmesh audit tail|verify|export` against real Redis and PostgreSQL servers (started on
//! loopback), holding a chain written as the operator writes it; then edited by hand.

use std::process::{Command, Output};

use agentmesh_store::testing::{PostgresServer, RedisServer, store_env};
use agentmesh_store::{AuditStore, Remote};
use agentmesh_trust::Timestamp;
use agentmesh_trust::audit::{AuditDecision, AuditRecord};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agentmesh-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `agentmesh audit ...` with the operator's variables for `remote`.
fn audit(remote: &Remote, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .arg("audit")
        .args(args)
        .envs(store_env(remote))
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn records() -> Vec<AuditRecord> {
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let r = |minutes_ago: i64, identity: &str, subject: &str, decision| AuditRecord {
        at: Timestamp::from_millis(now - minutes_ago * 60_000),
        identity: identity.into(),
        subject: subject.into(),
        decision,
        rule: "tools.deny[0]".into(),
        score: 780,
        policy_version: "0123456789abcdef".into(),
        detail: "denied by tools.deny[0]".into(),
    };
    vec![
        r(
            300,
            "default/payments",
            "tool:fetch_url",
            AuditDecision::Allow,
        ),
        r(200, "default/payments", "tool:shell", AuditDecision::Deny),
        r(
            100,
            "default/search",
            "tool:fetch_url",
            AuditDecision::WouldDeny,
        ),
        r(
            50,
            "default/search",
            "peer:did:mesh:00",
            AuditDecision::Allow,
        ),
        r(
            10,
            "default/payments",
            "tool:fetch_url",
            AuditDecision::Allow,
        ),
        r(
            5,
            "default/payments",
            "prompt:summary",
            AuditDecision::Quarantine,
        ),
    ]
}

fn check_reading(remote: &Remote) {
    let verified = audit(remote, &["verify"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    assert!(stdout(&verified).starts_with("verified: 6 entries, sequence 0..=5"));

    let tail = audit(
        remote,
        &["tail", "-n", "2", "--identity", "default/payments"],
    );
    let lines: Vec<String> = stdout(&tail).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("SEQ"));
    assert!(lines[1].starts_with("4 ") && lines[1].contains("tool:fetch_url"));
    assert!(lines[2].starts_with("5 ") && lines[2].contains("quarantine"));

    let json = audit(
        remote,
        &[
            "tail",
            "-o",
            "json",
            "--decision",
            "deny,would-deny",
            "--since",
            "4h",
        ],
    );
    let seqs: Vec<u64> = stdout(&json)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2], "deny at 200 min ago and would-deny at 100");

    let export = audit(remote, &["export", "--until", "30m"]);
    let events: Vec<serde_json::Value> = stdout(&export)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "ai.agentmesh.tool.invoked",
            "ai.agentmesh.tool.blocked",
            "ai.agentmesh.policy.violation",
            "ai.agentmesh.trust.handshake"
        ]
    );
    assert_eq!(events[1]["specversion"], "1.0");
    assert_eq!(events[1]["source"], "default/payments");
    assert_eq!(events[1]["subject"], "tool:shell");
    assert_eq!(events[1]["data"]["decision"], "deny");
    assert_eq!(events[1]["id"], events[1]["data"]["hash"]);
    assert!(events[1]["time"].as_str().unwrap().ends_with('Z'));
}

fn failed_at(remote: &Remote, seq: u64) {
    let out = audit(remote, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with(&format!("FAILED at entry seq {seq} ")),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reads_verify_and_an_edit_by_hand_is_named() {
    let redis = RedisServer::start(&scratch("redis"));
    let remote = redis.remote();
    AuditStore::remote(&remote)
        .append_records(records())
        .await
        .unwrap();
    check_reading(&remote);

    // The score of entry 3 raised by hand.
    let entry = redis.cli(&["LINDEX", "agentmesh:audit:entries", "3"]);
    let edited = entry.replace("\"score\":780", "\"score\":1000");
    assert_ne!(entry, edited);
    assert_eq!(
        redis.cli(&["LSET", "agentmesh:audit:entries", "3", &edited]),
        "OK"
    );
    failed_at(&remote, 3);
    assert!(stdout(&audit(&remote, &["verify"])).contains("altered"));
    // Put back: verifies again; then the newest entry deleted: the head says so.
    assert_eq!(
        redis.cli(&["LSET", "agentmesh:audit:entries", "3", &entry]),
        "OK"
    );
    assert!(audit(&remote, &["verify"]).status.success());
    redis.cli(&["RPOP", "agentmesh:audit:entries"]);
    let out = audit(&remote, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("dropped from the end"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_verify_and_deleted_or_edited_rows_are_named() {
    let postgres = PostgresServer::start(&scratch("pg"));
    let remote = postgres.remote();
    AuditStore::remote(&remote)
        .append_records(records())
        .await
        .unwrap();
    check_reading(&remote);

    postgres.psql("UPDATE agentmesh_audit SET decision = 'allow' WHERE seq = 1");
    failed_at(&remote, 1);
    postgres.psql("UPDATE agentmesh_audit SET decision = 'deny' WHERE seq = 1");
    assert!(audit(&remote, &["verify"]).status.success());
    // The two oldest deleted by hand, with no retention checkpoint.
    postgres.psql("DELETE FROM agentmesh_audit WHERE seq < 2");
    failed_at(&remote, 2);
    assert!(stdout(&audit(&remote, &["verify"])).contains("no retention checkpoint"));
}

#[test]
fn the_memory_backend_and_a_bad_backend_are_explained() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args(["audit", "verify"])
        .env("AGENTMESH_STORAGE_BACKEND", "memory")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("operator's process"));
    let out = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args(["audit", "tail", "--backend", "mongo"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("one of redis, postgres"));
    let out = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args([
            "audit",
            "tail",
            "--backend",
            "redis",
            "--decision",
            "approve",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("one of allow, deny"));
}
