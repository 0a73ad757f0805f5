//! The audit stores against real servers: Redis and PostgreSQL on loopback (Debian's packages,
//! started here), and the memory store. Each property is checked on every backend.

use std::path::PathBuf;

use agentmesh_store::testing::{PostgresServer, RedisServer};
use agentmesh_store::{Appended, AuditStore, StoreError, prune};
use agentmesh_trust::Timestamp;
use agentmesh_trust::audit::{AuditDecision, AuditError, AuditRecord, Head, verify_store};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentmesh-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn record(i: u64, at_secs: i64) -> AuditRecord {
    AuditRecord {
        at: Timestamp::from_secs(at_secs),
        identity: format!("default/agent-{}", i % 3),
        subject: format!("tool:t{i}"),
        decision: if i.is_multiple_of(4) {
            AuditDecision::Deny
        } else {
            AuditDecision::Allow
        },
        rule: "preset:standard".into(),
        score: 800,
        policy_version: "0123456789abcdef".into(),
        detail: format!("call {i}"),
    }
}

/// Every backend, each with its server kept alive by the returned guard.
struct Backends {
    stores: Vec<AuditStore>,
    _redis: RedisServer,
    _postgres: PostgresServer,
}

fn backends(name: &str) -> Backends {
    let redis = RedisServer::start(&scratch(&format!("{name}-redis")));
    let postgres = PostgresServer::start(&scratch(&format!("{name}-pg")));
    Backends {
        stores: vec![
            AuditStore::memory(100_000),
            AuditStore::remote(&redis.remote()),
            AuditStore::remote(&postgres.remote()),
        ],
        _redis: redis,
        _postgres: postgres,
    }
}

async fn verified(store: &AuditStore) -> Result<usize, AuditError> {
    let entries = store.read_all().await.expect("read");
    let head = store.head().await.expect("head");
    verify_store(&entries, Some(&head.hash)).map(|()| entries.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_chain_from_the_stores_head_and_a_stale_head_is_refused() {
    let backends = backends("cas");
    for store in &backends.stores {
        let backend = store.backend();
        assert_eq!(store.head().await.unwrap(), Head::default(), "{backend}");
        let written = store
            .append_records((0..5).map(|i| record(i, 1_800_000_000)).collect())
            .await
            .unwrap();
        assert_eq!(written.len(), 5);
        let head = store.head().await.unwrap();
        assert_eq!(head.next_seq, 5, "{backend}");
        assert_eq!(head.hash, written[4].hash, "{backend}");

        // A writer that read the head before those five: refused, nothing written.
        let (stale, _) = Head::default().chain([record(99, 1_800_000_000)]);
        assert_eq!(
            store.append(&Head::default(), &stale).await.unwrap(),
            Appended::Conflict,
            "{backend}"
        );
        // A forged head naming the right number with another hash: refused too.
        let forged = Head {
            next_seq: 5,
            hash: "ab".repeat(32),
        };
        let (entries, _) = forged.chain([record(98, 1_800_000_000)]);
        assert_eq!(
            store.append(&forged, &entries).await.unwrap(),
            Appended::Conflict,
            "{backend}"
        );
        assert_eq!(verified(store).await, Ok(5), "{backend}");
        let read = store.read(2, 2).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3],
            "{backend}"
        );
        assert_eq!(read[0], written[2], "{backend}: read back as written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_at_once_make_one_chain_with_every_record() {
    let backends = backends("race");
    for store in &backends.stores[1..] {
        let backend = store.backend();
        // Two handles, two connections: an old leader still flushing and a new one.
        let (a, b) = (store.clone(), fresh_handle(store));
        let writer = |store: AuditStore, offset: u64| {
            tokio::spawn(async move {
                for batch in 0..20u64 {
                    let records = (0..5)
                        .map(|i| record(offset + batch * 5 + i, 1_800_000_000))
                        .collect();
                    store.append_records(records).await.unwrap();
                }
            })
        };
        let (x, y) = (writer(a, 0), writer(b, 1000));
        x.await.unwrap();
        y.await.unwrap();
        assert_eq!(
            verified(store).await,
            Ok(200),
            "{backend}: one unbroken chain"
        );
        let entries = store.read_all().await.unwrap();
        let mut details: Vec<_> = entries.iter().map(|e| e.record.detail.clone()).collect();
        details.sort();
        details.dedup();
        assert_eq!(details.len(), 200, "{backend}: no record lost or doubled");
    }
}

/// Another handle on the same server, with its own connection.
fn fresh_handle(store: &AuditStore) -> AuditStore {
    match store {
        AuditStore::Redis(s) => AuditStore::remote(s.remote()),
        AuditStore::Postgres(s) => AuditStore::remote(s.remote()),
        AuditStore::Memory(_) => store.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_entries_behind_a_checkpoint_that_verifies() {
    let backends = backends("retention");
    for store in &backends.stores {
        let backend = store.backend();
        let day = 86_400;
        let now = 1_800_000_000;
        let old = (0..4).map(|i| record(i, now - 10 * day)).collect();
        let new = (4..7).map(|i| record(i, now - day)).collect();
        store.append_records(old).await.unwrap();
        store.append_records(new).await.unwrap();
        let deleted = prune(
            store,
            Timestamp::from_secs(now - 7 * day),
            Timestamp::from_secs(now),
            7,
        )
        .await
        .unwrap();
        assert_eq!(deleted, 4, "{backend}");
        assert_eq!(
            verified(store).await,
            Ok(4),
            "{backend}: 3 kept + the checkpoint"
        );
        let entries = store.read_all().await.unwrap();
        assert_eq!(entries[0].seq, 4, "{backend}");
        assert_eq!(entries[3].record.decision, AuditDecision::Retention);
        // Nothing more to prune.
        let again = prune(
            store,
            Timestamp::from_secs(now - 7 * day),
            Timestamp::from_secs(now),
            7,
        )
        .await;
        assert_eq!(again.unwrap(), 0, "{backend}");
        // Everything older than the cutoff: the checkpoint anchors itself.
        let all = prune(
            store,
            Timestamp::from_secs(now + day),
            Timestamp::from_secs(now + day),
            7,
        )
        .await
        .unwrap();
        assert_eq!(all, 4, "{backend}");
        assert_eq!(verified(store).await, Ok(1), "{backend}");
        // Entries deleted by hand past the checkpoint: found.
        store
            .append_records((10..13).map(|i| record(i, now + day)).collect())
            .await
            .unwrap();
        let first = store.read(0, 2).await.unwrap()[1].seq;
        store.delete_before(first + 1).await.unwrap();
        assert!(
            matches!(
                verified(store).await,
                Err(AuditError::Unanchored { index: 0, .. })
            ),
            "{backend}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_edited_by_hand_in_the_store_is_named() {
    let redis = RedisServer::start(&scratch("edit-redis"));
    let postgres = PostgresServer::start(&scratch("edit-pg"));
    let (r, p) = (
        AuditStore::remote(&redis.remote()),
        AuditStore::remote(&postgres.remote()),
    );
    for store in [&r, &p] {
        store
            .append_records((0..6).map(|i| record(i, 1_800_000_000)).collect())
            .await
            .unwrap();
    }
    // Redis: the entry at index 3 of the list gets another decision, as `redis-cli LSET` would.
    let entry = r.read(3, 1).await.unwrap().remove(0);
    let edited = serde_json::to_string(&entry)
        .unwrap()
        .replace("\"decision\":\"deny\"", "\"decision\":\"allow\"")
        .replace("\"decision\":\"allow\",", "\"decision\":\"would-deny\",");
    assert_eq!(
        redis.cli(&["LSET", "agentmesh:audit:entries", "3", &edited]),
        "OK"
    );
    assert_eq!(
        verified(&r).await,
        Err(AuditError::HashMismatch { index: 3 })
    );

    // PostgreSQL: an UPDATE by hand.
    postgres.psql("UPDATE agentmesh_audit SET detail = 'nothing to see' WHERE seq = 2");
    assert_eq!(
        verified(&p).await,
        Err(AuditError::HashMismatch { index: 2 })
    );
    // A decision no AgentMesh wrote: the read names the entry.
    postgres.psql("UPDATE agentmesh_audit SET decision = 'approve' WHERE seq = 4");
    match p.read_all().await {
        Err(StoreError::Unreadable { what, .. }) => assert_eq!(what, "entry 4"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_goes_down_is_reported_and_used_again_when_back_with_its_data() {
    let mut redis = RedisServer::start(&scratch("down-redis"));
    let mut postgres = PostgresServer::start(&scratch("down-pg"));
    let (r, p) = (
        AuditStore::remote(&redis.remote()),
        AuditStore::remote(&postgres.remote()),
    );
    for store in [&r, &p] {
        store
            .append_records((0..3).map(|i| record(i, 1_800_000_000)).collect())
            .await
            .unwrap();
    }
    redis.stop();
    postgres.stop();
    for store in [&r, &p] {
        assert!(
            matches!(store.head().await, Err(StoreError::Unavailable(_))),
            "{}",
            store.backend()
        );
        assert!(store.check().await.is_err());
    }
    redis.restart();
    postgres.restart();
    for store in [&r, &p] {
        store.check().await.unwrap();
        store
            .append_records((3..5).map(|i| record(i, 1_800_000_000)).collect())
            .await
            .unwrap();
        assert_eq!(verified(store).await, Ok(5), "{}", store.backend());
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_the_servers_reason() {
    let redis = RedisServer::start(&scratch("auth-redis"));
    let postgres = PostgresServer::start(&scratch("auth-pg"));
    let mut wrong_redis = redis.remote();
    let mut wrong_pg = postgres.remote();
    if let agentmesh_store::Remote::Redis { password, .. } = &mut wrong_redis {
        *password = Some("not-the-password".into());
    }
    if let agentmesh_store::Remote::Postgres { password, .. } = &mut wrong_pg {
        *password = Some("not-the-password".into());
    }
    let error = AuditStore::remote(&wrong_redis).check().await.unwrap_err();
    assert!(
        error
            .to_string()
            .to_lowercase()
            .contains("authentication failed"),
        "{error}"
    );
    let error = AuditStore::remote(&wrong_pg).check().await.unwrap_err();
    assert!(
        error.to_string().contains("password authentication failed"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baselines_are_saved_replaced_listed_and_deleted() {
    let backends = backends("baselines");
    for store in &backends.stores {
        let backend = store.backend();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, j)| ((*k).to_owned(), (*j).to_owned()))
                .collect()
        };
        store
            .save_baselines(&pairs(&[
                ("ns/a/uid-a", "{\"v\":1}"),
                ("ns/b/uid-b", "{\"v\":1}"),
            ]))
            .await
            .unwrap();
        store
            .save_baselines(&pairs(&[("ns/a/uid-a", "{\"v\":2}")]))
            .await
            .unwrap();
        let mut loaded = store.load_baselines().await.unwrap();
        loaded.sort();
        assert_eq!(
            loaded,
            pairs(&[("ns/a/uid-a", "{\"v\":2}"), ("ns/b/uid-b", "{\"v\":1}")]),
            "{backend}"
        );
        store
            .delete_baselines(&["ns/b/uid-b".to_owned()])
            .await
            .unwrap();
        assert_eq!(
            store.load_baselines().await.unwrap(),
            pairs(&[("ns/a/uid-a", "{\"v\":2}")]),
            "{backend}"
        );
    }
}
