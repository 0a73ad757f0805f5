//! The audit store named by `AGENTMESH_STORAGE_BACKEND`: where the audit hash chain's entries
//! and its head live — in memory, in Redis or in PostgreSQL — and how they are appended, read
//! and pruned. The operator writes through it; `agentmesh audit` reads through it.
//!
//! The store is the arbiter of the chain's order. An append names the head it chains from and
//! succeeds only if the store's head is still that one (compare-and-set: a Lua script in Redis,
//! a conditional `UPDATE` of the head row in the same transaction as the inserts in
//! PostgreSQL). Two writers — an old leader still flushing and a new one — therefore never fork
//! the chain: the loser of a race re-reads the head and chains its records after the winner's.
//!
//! Layout:
//! - Redis: the list `agentmesh:audit:entries` (one JSON entry per element, oldest first) and the
//!   string `agentmesh:audit:head` (`<next sequence number> <hash>`).
//! - PostgreSQL: the tables `agentmesh_audit` (one row per entry, `seq` its primary key) and
//!   `agentmesh_audit_head` (one row), created when missing.
//!
//! The same store keeps the identities' behaviour baselines (the hash `agentmesh:baselines` in
//! Redis, the table `agentmesh_baselines` in PostgreSQL: key → JSON), so that they survive a
//! change of leader.
//!
//! Retention ([`prune`]) first appends a retention checkpoint naming the first entry kept, then
//! deletes what precedes it, so the kept chain still verifies
//! ([`agentmesh_trust::audit::verify_store`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_trust::Timestamp;
use agentmesh_trust::audit::{AuditDecision, AuditEntry, AuditRecord, Head, retention_checkpoint};

mod postgres;
mod redis_store;
#[cfg(feature = "testing")]
pub mod testing;

pub use postgres::PostgresStore;
pub use redis_store::RedisStore;

/// Longest one operation on a remote store may take before the store counts as down.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached, refused the login or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// What the store holds cannot be read as an entry or a head: edited by hand, or not
    /// written by AgentMesh. `what` says where (`entry 12`, `the head`).
    #[error("{what} cannot be read: {reason}")]
    Unreadable { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where a remote store is and how to log in.
#[derive(Clone)]
pub enum Remote {
    Redis {
        host: String,
        port: u16,
        password: Option<String>,
    },
    Postgres {
        host: String,
        port: u16,
        user: String,
        database: String,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Remote {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Remote {
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Redis { .. } => "redis",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// `redis://host:port` or `postgres://user@host:port/database`, without the password.
    pub fn describe(&self) -> String {
        match self {
            Self::Redis { host, port, .. } => format!("redis://{host}:{port}"),
            Self::Postgres {
                host,
                port,
                user,
                database,
                ..
            } => format!("postgres://{user}@{host}:{port}/{database}"),
        }
    }
}

/// Whether an append went in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Appended; the store's head is now this.
    Yes(Head),
    /// The store's head was not the one the entries chain from: nothing was written.
    Conflict,
}

/// The entries kept in memory (the `memory` backend), at most `capacity`: beyond it the oldest
/// go, as with retention, and the kept tail still verifies from its first entry.
#[derive(Debug)]
pub struct Memory {
    entries: VecDeque<AuditEntry>,
    head: Head,
    capacity: usize,
    baselines: std::collections::BTreeMap<String, String>,
}

/// An audit store.
#[derive(Clone, Debug)]
pub enum AuditStore {
    Memory(Arc<Mutex<Memory>>),
    Redis(RedisStore),
    Postgres(PostgresStore),
}

impl AuditStore {
    /// A memory store keeping at most `capacity` entries.
    pub fn memory(capacity: usize) -> Self {
        Self::Memory(Arc::new(Mutex::new(Memory {
            entries: VecDeque::new(),
            head: Head::default(),
            capacity: capacity.max(1),
            baselines: Default::default(),
        })))
    }

    /// The store at `remote`; connects on first use (and again after a failure).
    pub fn remote(remote: &Remote) -> Self {
        match remote {
            Remote::Redis { .. } => Self::Redis(RedisStore::new(remote)),
            Remote::Postgres { .. } => Self::Postgres(PostgresStore::new(remote)),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Connects, logs in and runs a trivial command (`PING`, `SELECT 1`).
    pub async fn check(&self) -> Result<()> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(store) => store.check().await,
            Self::Postgres(store) => store.check().await,
        }
    }

    /// Where the chain ends now.
    pub async fn head(&self) -> Result<Head> {
        match self {
            Self::Memory(memory) => Ok(lock(memory).head.clone()),
            Self::Redis(store) => store.head().await,
            Self::Postgres(store) => store.head().await,
        }
    }

    /// Appends `entries`, which chain from `from`, if the store's head is still `from`.
    pub async fn append(&self, from: &Head, entries: &[AuditEntry]) -> Result<Appended> {
        let Some(last) = entries.last() else {
            return Ok(Appended::Yes(from.clone()));
        };
        let to = Head {
            next_seq: last.seq + 1,
            hash: last.hash.clone(),
        };
        match self {
            Self::Memory(memory) => {
                let mut memory = lock(memory);
                if memory.head != *from {
                    return Ok(Appended::Conflict);
                }
                memory.entries.extend(entries.iter().cloned());
                let excess = memory.entries.len().saturating_sub(memory.capacity);
                memory.entries.drain(..excess);
                memory.head = to.clone();
                Ok(Appended::Yes(to))
            }
            Self::Redis(store) => store.append(from, &to, entries).await,
            Self::Postgres(store) => store.append(from, &to, entries).await,
        }
    }

    /// Up to `limit` entries from sequence number `from_seq` on, oldest first.
    pub async fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        match self {
            Self::Memory(memory) => Ok(lock(memory)
                .entries
                .iter()
                .filter(|e| e.seq >= from_seq)
                .take(limit)
                .cloned()
                .collect()),
            Self::Redis(store) => store.read(from_seq, limit).await,
            Self::Postgres(store) => store.read(from_seq, limit).await,
        }
    }

    /// Every entry kept, oldest first, read in pages.
    pub async fn read_all(&self) -> Result<Vec<AuditEntry>> {
        const PAGE: usize = 1000;
        let mut all: Vec<AuditEntry> = Vec::new();
        loop {
            let from = all.last().map_or(0, |e| e.seq + 1);
            let page = self.read(from, PAGE).await?;
            let full = page.len() == PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Deletes every entry whose sequence number is below `seq`; returns how many.
    pub async fn delete_before(&self, seq: u64) -> Result<u64> {
        match self {
            Self::Memory(memory) => {
                let mut memory = lock(memory);
                let before = memory.entries.len();
                memory.entries.retain(|e| e.seq >= seq);
                Ok((before - memory.entries.len()) as u64)
            }
            Self::Redis(store) => store.delete_before(seq).await,
            Self::Postgres(store) => store.delete_before(seq).await,
        }
    }

    /// Saves behaviour baselines: (key, JSON) pairs, each replacing what the key held.
    pub async fn save_baselines(&self, baselines: &[(String, String)]) -> Result<()> {
        if baselines.is_empty() {
            return Ok(());
        }
        match self {
            Self::Memory(memory) => {
                lock(memory).baselines.extend(baselines.iter().cloned());
                Ok(())
            }
            Self::Redis(store) => store.save_baselines(baselines).await,
            Self::Postgres(store) => store.save_baselines(baselines).await,
        }
    }

    /// Every saved baseline: (key, JSON).
    pub async fn load_baselines(&self) -> Result<Vec<(String, String)>> {
        match self {
            Self::Memory(memory) => Ok(lock(memory)
                .baselines
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()),
            Self::Redis(store) => store.load_baselines().await,
            Self::Postgres(store) => store.load_baselines().await,
        }
    }

    /// Deletes the baselines of these keys.
    pub async fn delete_baselines(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        match self {
            Self::Memory(memory) => {
                let mut memory = lock(memory);
                for key in keys {
                    memory.baselines.remove(key);
                }
                Ok(())
            }
            Self::Redis(store) => store.delete_baselines(keys).await,
            Self::Postgres(store) => store.delete_baselines(keys).await,
        }
    }

    /// Appends `records` after the store's head, re-reading it after a conflict; returns the
    /// entries as written.
    pub async fn append_records(&self, records: Vec<AuditRecord>) -> Result<Vec<AuditEntry>> {
        loop {
            let head = self.head().await?;
            let (entries, _) = head.chain(records.iter().cloned());
            if let Appended::Yes(_) = self.append(&head, &entries).await? {
                return Ok(entries);
            }
        }
    }
}

fn lock(memory: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
    memory.lock().unwrap_or_else(|e| e.into_inner())
}

/// Retention: deletes the entries older than `cutoff`, after appending a checkpoint that names
/// the first entry kept (the checkpoint itself when every entry is older). Returns how many
/// entries went.
pub async fn prune(
    store: &AuditStore,
    cutoff: Timestamp,
    now: Timestamp,
    retention_days: u32,
) -> Result<u64> {
    let entries = store.read(0, 1).await?;
    let Some(oldest) = entries.first() else {
        return Ok(0);
    };
    if oldest.record.at >= cutoff {
        return Ok(0);
    }
    loop {
        let head = store.head().await?;
        let first_kept = first_at_or_after(store, oldest.seq, cutoff).await?;
        let (seq, prev_hash) = first_kept.unwrap_or((head.next_seq, head.hash.clone()));
        let checkpoint = retention_checkpoint(now, seq, &prev_hash, retention_days);
        let (written, _) = head.chain([checkpoint]);
        if let Appended::Yes(_) = store.append(&head, &written).await? {
            return store.delete_before(seq).await;
        }
    }
}

/// The sequence number and `prevHash` of the first entry, from `from_seq` on, recorded at or
/// after `cutoff`.
async fn first_at_or_after(
    store: &AuditStore,
    from_seq: u64,
    cutoff: Timestamp,
) -> Result<Option<(u64, String)>> {
    const PAGE: usize = 1000;
    let mut from = from_seq;
    loop {
        let page = store.read(from, PAGE).await?;
        if let Some(entry) = page.iter().find(|e| e.record.at >= cutoff) {
            return Ok(Some((entry.seq, entry.prev_hash.clone())));
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.seq + 1,
            _ => return Ok(None),
        }
    }
}

/// An entry's fields as text, for a store's row (PostgreSQL) and filters.
pub(crate) fn parse_decision(text: &str, seq: u64) -> Result<AuditDecision> {
    AuditDecision::parse(text).ok_or_else(|| StoreError::Unreadable {
        what: format!("entry {seq}"),
        reason: format!("unknown decision {text:?}"),
    })
}

pub(crate) async fn timed<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, future).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {} s",
            OPERATION_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_never_carry_the_password() {
        let remote = Remote::Redis {
            host: "agentmesh-redis-master".into(),
            port: 6379,
            password: Some("s3cret".into()),
        };
        assert_eq!(remote.describe(), "redis://agentmesh-redis-master:6379");
        assert!(!format!("{remote:?}").contains("s3cret"));
        assert!(!format!("{:?}", AuditStore::remote(&remote)).contains("s3cret"));
    }

    #[tokio::test]
    async fn a_store_nobody_listens_on_is_unavailable_with_the_reason() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for remote in [
            Remote::Redis {
                host: "127.0.0.1".into(),
                port,
                password: None,
            },
            Remote::Postgres {
                host: "127.0.0.1".into(),
                port,
                user: "agentmesh".into(),
                database: "agentmesh".into(),
                password: None,
            },
        ] {
            let store = AuditStore::remote(&remote);
            match store.head().await {
                Err(StoreError::Unavailable(reason)) => assert!(!reason.is_empty()),
                other => panic!("{remote:?}: {other:?}"),
            }
        }
    }
}
