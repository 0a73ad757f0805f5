//! The operator's audit writer against a real Redis and PostgreSQL (started on loopback): the
//! store stopped while decisions flow loses none of them, and a new writer (a new leader, a
//! restarted operator) continues the one chain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_store::testing::{PostgresServer, RedisServer};
use agentmesh_store::{AuditStore, Remote};
use agentmesh_trust::Timestamp;
use agentmesh_trust::audit::{AuditDecision, AuditRecord, verify_store};
use meshlogic_operator::metrics::Metrics;
use meshlogic_operator::storage::Audit;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agentmesh-op-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        at: Timestamp::from_secs(1_800_000_000),
        identity: "default/payments".into(),
        subject: format!("tool:t{i}"),
        decision: AuditDecision::Allow,
        rule: "preset:standard".into(),
        score: 800,
        policy_version: "0123456789abcdef".into(),
        detail: format!("decision {i}"),
    }
}

fn writer(remote: &Remote, buffer: usize) -> (Arc<Audit>, Arc<Metrics>) {
    let (metrics, _) = Metrics::new();
    let audit = Arc::new(Audit::with_store(
        AuditStore::remote(remote),
        Some(remote.clone()),
        buffer,
        90,
        metrics.clone(),
    ));
    tokio::spawn(audit.clone().run());
    (audit, metrics)
}

async fn settled(audit: &Audit, within: Duration) {
    let deadline = Instant::now() + within;
    while audit.pending() > 0 {
        assert!(
            Instant::now() < deadline,
            "still {} pending",
            audit.pending()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn details(store: &AuditStore) -> Vec<String> {
    let entries = store.read_all().await.unwrap();
    let head = store.head().await.unwrap();
    verify_store(&entries, Some(&head.hash)).expect("one unbroken chain");
    entries.into_iter().map(|e| e.record.detail).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_for_30_s_while_decisions_flow_loses_none() {
    let mut redis = RedisServer::start(&scratch("redis-down"));
    let (audit, metrics) = writer(&redis.remote(), 10_000);
    let mut sent = 0u64;
    let mut send = |audit: &Audit, n: u64| {
        audit.record((sent..sent + n).map(record).collect());
        sent += n;
    };
    send(&audit, 10);
    settled(&audit, Duration::from_secs(10)).await;
    assert_eq!(audit.report()["up"], true);

    redis.stop();
    let stopped = Instant::now();
    let mut saw_down = false;
    while stopped.elapsed() < Duration::from_secs(30) {
        send(&audit, 5);
        tokio::time::sleep(Duration::from_millis(250)).await;
        saw_down |= audit.report()["up"] == false;
    }
    assert!(saw_down, "/ready's report never said the store was down");
    assert_eq!(metrics.storage_up.get(), 0);
    assert!(
        audit.pending() > 0,
        "records must wait while the store is down"
    );
    assert!(
        audit.report()["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{}",
        audit.report()
    );

    redis.restart();
    send(&audit, 10);
    settled(&audit, Duration::from_secs(30)).await;
    assert_eq!(metrics.audit_dropped.get(), 0);
    assert_eq!(metrics.storage_up.get(), 1);
    let written = details(&AuditStore::remote(&redis.remote())).await;
    let expected: Vec<String> = (0..sent).map(|i| format!("decision {i}")).collect();
    assert_eq!(written, expected, "every decision, once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_while_the_store_is_down_counts_exactly_what_it_dropped() {
    let mut postgres = PostgresServer::start(&scratch("pg-full"));
    let (audit, metrics) = writer(&postgres.remote(), 50);
    postgres.stop();
    // Wait until the writer has met the store down.
    let deadline = Instant::now() + Duration::from_secs(20);
    while audit.report()["up"] != false {
        assert!(Instant::now() < deadline, "{}", audit.report());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    audit.record((0..80).map(record).collect());
    assert_eq!(metrics.audit_dropped.get(), 30);
    assert_eq!(audit.report()["dropped"], 30);
    postgres.restart();
    settled(&audit, Duration::from_secs(30)).await;
    let written = details(&AuditStore::remote(&postgres.remote())).await;
    assert_eq!(written.len(), 50);
    assert_eq!(
        written.last().unwrap(),
        "decision 49",
        "the oldest kept, the newest dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_writer_continues_the_chain_and_two_at_once_never_fork_it() {
    let redis = RedisServer::start(&scratch("redis-leaders"));
    let postgres = PostgresServer::start(&scratch("pg-leaders"));
    for remote in [redis.remote(), postgres.remote()] {
        let (old, _) = writer(&remote, 10_000);
        old.record((0..20).map(record).collect());
        settled(&old, Duration::from_secs(10)).await;
        // A new leader starts while the old one still flushes: both append at once.
        let (new, _) = writer(&remote, 10_000);
        for i in 0..20 {
            old.record(vec![record(100 + i)]);
            new.record(vec![record(200 + i)]);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        settled(&old, Duration::from_secs(10)).await;
        settled(&new, Duration::from_secs(10)).await;
        let mut written = details(&AuditStore::remote(&remote)).await;
        assert_eq!(written.len(), 60, "{remote:?}");
        written.sort();
        written.dedup();
        assert_eq!(written.len(), 60, "{remote:?}: none twice");
    }
}
