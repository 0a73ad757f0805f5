//! The audit log's way to its store (`AGENTMESH_STORAGE_BACKEND`): the engine hands every
//! decision's record to [`Audit::record`]; one writer task chains them after the store's head
//! and appends them ([`agentmesh_store`]), retries while the store is down, and enforces
//! retention. The store's state is reported in `/ready` and in
//! `meshlogic_operator_storage_up`.
//!
//! A store that is down never stops the operator nor makes it unready — the webhook and the
//! trust API matter more than the audit copy. Records wait in a bounded buffer
//! (`MESHLOGIC_AUDIT_BUFFER`) and are written when the store is back; beyond the bound new
//! records are dropped and counted (`meshlogic_operator_audit_dropped_total`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use agentmesh_api::settings::StorageBackend;
use agentmesh_store::{Appended, AuditStore, Remote, StoreError};
use agentmesh_trust::audit::{AuditRecord, Head};
use serde_json::{Value, json};

use crate::config::Config;
use crate::metrics::Metrics;

/// Time between two connection checks while nothing is written.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Time between two retention passes (and the first, after leading starts).
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Records appended in one go.
const BATCH: usize = 500;
/// Entries the memory backend keeps.
pub const MEMORY_CAPACITY: usize = 100_000;
/// Waits after a failed write: from the first, doubling, to the last.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_LAST: Duration = Duration::from_secs(5);

/// The remote store of a configuration, `None` for the memory backend.
pub fn remote_of(config: &Config) -> Option<Remote> {
    let (settings, args) = (&config.settings, &config.args);
    match settings.storage_backend {
        StorageBackend::Memory => None,
        StorageBackend::Redis => Some(Remote::Redis {
            host: settings.redis_host.clone(),
            port: settings.redis_port,
            password: args.redis_password.clone().filter(|p| !p.is_empty()),
        }),
        StorageBackend::Postgres => Some(Remote::Postgres {
            host: args.postgres_host.clone().unwrap_or_default(),
            port: args.postgres_port,
            user: args.postgres_user.clone(),
            database: args.postgres_database.clone(),
            password: args.postgres_password.clone().filter(|p| !p.is_empty()),
        }),
    }
}

/// The audit log's writer and its store.
pub struct Audit {
    store: AuditStore,
    remote: Option<Remote>,
    pending: Mutex<VecDeque<AuditRecord>>,
    capacity: usize,
    wake: tokio::sync::Notify,
    /// `None` before the first contact; then `Ok` or the error.
    last: RwLock<Option<Result<(), String>>>,
    metrics: Arc<Metrics>,
    retention_days: u32,
    /// Set while this replica leads: only the leader prunes.
    leading: AtomicBool,
    /// One flush at a time (the writer task's, or [`Audit::drain`]'s before exit): two would
    /// write the same pending records twice.
    writer: tokio::sync::Mutex<Writer>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Audit({})", self.store.backend())
    }
}

impl Audit {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let remote = remote_of(config);
        Self::with_store(
            remote
                .as_ref()
                .map_or_else(|| AuditStore::memory(MEMORY_CAPACITY), AuditStore::remote),
            remote,
            usize::try_from(config.args.audit_buffer).unwrap_or(usize::MAX),
            config.settings.audit_retention_days,
            metrics,
        )
    }

    pub fn with_store(
        store: AuditStore,
        remote: Option<Remote>,
        capacity: usize,
        retention_days: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            remote,
            pending: Mutex::new(VecDeque::new()),
            capacity,
            wake: tokio::sync::Notify::new(),
            last: RwLock::new(None),
            metrics,
            retention_days,
            leading: AtomicBool::new(false),
            writer: tokio::sync::Mutex::new(Writer::default()),
        }
    }

    pub fn store(&self) -> &AuditStore {
        &self.store
    }

    /// Queues records for the store, in order; beyond the buffer's bound they are dropped and
    /// counted. Never waits.
    pub fn record(&self, records: Vec<AuditRecord>) {
        if records.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.capacity.saturating_sub(pending.len());
        let dropped = records.len().saturating_sub(room);
        pending.extend(records.into_iter().take(room));
        self.metrics.audit_pending.set(pending.len() as i64);
        drop(pending);
        if dropped > 0 {
            self.metrics.audit_dropped.inc_by(dropped as u64);
            tracing::warn!(
                dropped,
                capacity = self.capacity,
                "audit buffer full: records dropped"
            );
        }
        self.wake.notify_one();
    }

    /// Records waiting for the store.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// This replica leads (retention is its job) or not.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// What `/ready` says of the store: the backend, where it is, whether it answered (and
    /// why not), what waits for it and what was dropped.
    pub fn report(&self) -> Value {
        let mut report = json!({
            "backend": self.store.backend(),
            "pending": self.pending(),
            "dropped": self.metrics.audit_dropped.get(),
        });
        if let Some(remote) = &self.remote {
            report["at"] = json!(remote.describe());
            let last = self.last.read().unwrap_or_else(|e| e.into_inner()).clone();
            match last {
                None => report["up"] = Value::Null,
                Some(Ok(())) => report["up"] = json!(true),
                Some(Err(error)) => {
                    report["up"] = json!(false);
                    report["error"] = json!(error);
                }
            }
        }
        report
    }

    fn contact(&self, result: Result<(), &StoreError>) {
        let up = result.is_ok();
        let was = self
            .last
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Result::is_ok);
        let described = self
            .remote
            .as_ref()
            .map_or_else(|| "memory".to_owned(), Remote::describe);
        match (&result, was) {
            (Ok(()), Some(true)) | (Err(_), Some(false)) => {}
            (Ok(()), _) => tracing::info!(store = %described, "audit store reachable"),
            (Err(error), _) => {
                tracing::warn!(store = %described, %error, "audit store unreachable; audit records are buffered")
            }
        }
        self.metrics.storage_up.set(i64::from(up));
        *self.last.write().unwrap_or_else(|e| e.into_inner()) =
            Some(result.map_err(ToString::to_string));
    }

    /// Writes what is pending until nothing is (or the store fails); returns the failure.
    async fn flush(&self) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await;
        loop {
            let batch: Vec<AuditRecord> = {
                let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                pending.iter().take(BATCH).cloned().collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            let written = writer.append(&self.store, batch).await?;
            if written > 0 {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                pending.drain(..written);
                self.metrics.audit_pending.set(pending.len() as i64);
                drop(pending);
                self.metrics.audit_written.inc_by(written as u64);
            } else {
                self.metrics.audit_conflicts.inc();
            }
        }
    }

    /// Before the process exits (shutdown, lost leadership): writes what is pending, for at
    /// most `limit`.
    pub async fn drain(&self, limit: Duration) {
        let pending = self.pending();
        if pending == 0 {
            return;
        }
        match tokio::time::timeout(limit, self.flush()).await {
            Ok(Ok(())) => tracing::info!(records = pending, "audit records written before exit"),
            Ok(Err(error)) => {
                tracing::warn!(%error, lost = self.pending(), "audit records not written before exit")
            }
            Err(_) => {
                tracing::warn!(
                    lost = self.pending(),
                    "audit records not written before exit (time)"
                )
            }
        }
    }

    /// The writer: appends what is pending, checks the store while idle, prunes while leading.
    pub async fn run(self: Arc<Self>) {
        let mut retry = RETRY_FIRST;
        let mut next_check = tokio::time::Instant::now();
        let mut next_prune: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            let result = if self.pending() > 0 {
                Some(self.flush().await)
            } else if now >= next_check {
                next_check = now + CHECK_INTERVAL;
                Some(self.store.check().await)
            } else {
                None
            };
            if let Some(result) = &result {
                self.contact(result.as_ref().map(|_| ()));
            }
            if let Some(Err(_)) = result {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_LAST);
                continue;
            }
            retry = RETRY_FIRST;
            if self.leading.load(Ordering::Relaxed) && next_prune.is_none_or(|at| now >= at) {
                next_prune = Some(now + RETENTION_INTERVAL);
                self.prune().await;
            }
            if self.pending() == 0 {
                let idle = next_check.saturating_duration_since(tokio::time::Instant::now());
                let _ = tokio::time::timeout(idle, self.wake.notified()).await;
            }
        }
    }

    async fn prune(&self) {
        let now = crate::engine::now();
        let cutoff = now.plus_millis(-i64::from(self.retention_days) * 86_400_000);
        match agentmesh_store::prune(&self.store, cutoff, now, self.retention_days).await {
            Ok(0) => {}
            Ok(deleted) => {
                self.metrics.audit_pruned.inc_by(deleted);
                tracing::info!(
                    deleted,
                    retention_days = self.retention_days,
                    "audit entries past retention deleted behind a checkpoint"
                );
            }
            Err(error) => tracing::warn!(%error, "audit retention failed; retrying later"),
        }
    }
}

/// The writer's idea of the store's head, and the outcome of an append it does not know.
#[derive(Default)]
struct Writer {
    head: Option<Head>,
    /// An append that failed without an answer (a timeout, a dropped connection): the head it
    /// would have led to and how many records it held. If the store's head is that, it went in.
    /// (Had another writer appended after it too, the records would be written twice: both
    /// copies chained, verifiable, and told apart by their sequence numbers.)
    unsure: Option<(Head, usize)>,
}

impl Writer {
    /// Appends `batch` (or finds a previous unanswered append of its first records went in);
    /// returns how many of its records are now in the store, 0 after a conflict.
    async fn append(
        &mut self,
        store: &AuditStore,
        batch: Vec<AuditRecord>,
    ) -> Result<usize, StoreError> {
        let head = match self.head.take() {
            Some(head) => head,
            None => store.head().await?,
        };
        if let Some((led_to, count)) = self.unsure.take()
            && led_to == head
        {
            self.head = Some(head);
            return Ok(count);
        }
        let (entries, to) = head.chain(batch);
        let count = entries.len();
        match store.append(&head, &entries).await {
            Ok(Appended::Yes(_)) => {
                self.head = Some(to);
                Ok(count)
            }
            // Another writer appended: chain after its entries next time.
            Ok(Appended::Conflict) => Ok(0),
            Err(error) => {
                self.unsure = Some((to, count));
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_trust::Timestamp;
    use agentmesh_trust::audit::AuditDecision;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            at: Timestamp::from_secs(1_800_000_000),
            identity: "default/a".into(),
            subject: format!("tool:t{i}"),
            decision: AuditDecision::Allow,
            rule: "preset:standard".into(),
            score: 800,
            policy_version: "v".into(),
            detail: String::new(),
        }
    }

    fn audit(capacity: usize) -> Arc<Audit> {
        let (metrics, _) = Metrics::new();
        Arc::new(Audit::with_store(
            AuditStore::memory(100),
            None,
            capacity,
            90,
            metrics,
        ))
    }

    #[test]
    fn a_full_buffer_drops_new_records_and_counts_each() {
        let audit = audit(5);
        audit.record((0..3).map(record).collect());
        audit.record((3..9).map(record).collect());
        assert_eq!(audit.pending(), 5);
        assert_eq!(audit.metrics.audit_dropped.get(), 4);
        assert_eq!(audit.report()["dropped"], 4);
        assert_eq!(audit.report()["backend"], "memory");
    }

    #[tokio::test]
    async fn the_writer_chains_pending_records_into_the_store() {
        let audit = audit(100);
        audit.record((0..7).map(record).collect());
        audit.flush().await.unwrap();
        assert_eq!(audit.pending(), 0);
        let entries = audit.store.read_all().await.unwrap();
        assert_eq!(entries.len(), 7);
        let head = audit.store.head().await.unwrap();
        agentmesh_trust::audit::verify_store(&entries, Some(&head.hash)).unwrap();
        assert_eq!(audit.metrics.audit_written.get(), 7);
    }

    #[tokio::test]
    async fn an_unanswered_append_that_went_in_is_not_written_twice() {
        let store = AuditStore::memory(100);
        // The append went in, but the writer saw an error.
        let mut writer = Writer::default();
        let (entries, to) = Head::default().chain((0..3).map(record));
        store.append(&Head::default(), &entries).await.unwrap();
        writer.unsure = Some((to, 3));
        assert_eq!(
            writer
                .append(&store, (0..3).map(record).collect())
                .await
                .unwrap(),
            3
        );
        assert_eq!(store.read_all().await.unwrap().len(), 3);
        // One that did not go in is written.
        let (_, to) = store.head().await.unwrap().chain((3..5).map(record));
        writer.head = None;
        writer.unsure = Some((to, 2));
        assert_eq!(
            writer
                .append(&store, (3..5).map(record).collect())
                .await
                .unwrap(),
            2
        );
        assert_eq!(store.read_all().await.unwrap().len(), 5);
    }
}
