//! Reports to the operator's trust API: one batch per window, queued in a bounded queue (the
//! oldest batch is dropped, and counted, when it is full), POSTed with the ServiceAccount token,
//! retried with exponential backoff and jitter ([`Backoff`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use agentmesh_api::wire::{REPORTS_PATH, ReportBatch};
use backon::Retryable;
use hyper::Method;
use tokio::sync::Notify;

use crate::http::{HttpError, JsonClient};
use crate::metrics::Metrics;
pub use crate::retry::Backoff;

/// The bounded queue of batches waiting to be sent.
#[derive(Debug)]
pub struct ReportQueue {
    batches: Mutex<VecDeque<ReportBatch>>,
    capacity: usize,
    ready: Notify,
    metrics: Arc<Metrics>,
}

impl ReportQueue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            batches: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            ready: Notify::new(),
            metrics,
        }
    }

    /// Queues a batch; when full, the oldest batch is dropped and counted.
    pub fn push(&self, batch: ReportBatch) {
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        if batches.len() >= self.capacity {
            batches.pop_front();
            self.metrics.report_drops.inc();
            tracing::warn!(
                capacity = self.capacity,
                "report queue full: oldest batch dropped"
            );
        }
        batches.push_back(batch);
        drop(batches);
        self.ready.notify_one();
    }

    pub fn len(&self) -> usize {
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn front(&self) -> Option<ReportBatch> {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .cloned()
    }

    /// Removes the front batch if it is still `sent` (it may have been dropped meanwhile).
    fn pop_sent(&self, sent: &ReportBatch) {
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        if batches.front() == Some(sent) {
            batches.pop_front();
        }
    }

    /// Sends batches in order, forever; each is retried until it is delivered, refused for
    /// good, or dropped from the queue meanwhile.
    pub async fn run_sender(
        self: Arc<Self>,
        client: JsonClient,
        trust_api: String,
        backoff: Backoff,
    ) {
        let url = format!("{trust_api}{REPORTS_PATH}");
        loop {
            if self.is_empty() {
                self.ready.notified().await;
                continue;
            }
            let span = tracing::info_span!("report send", queued = self.len());
            let _ = (|| self.send_front(&client, &url))
                .retry(backoff.schedule())
                .notify(|error, delay| {
                    self.metrics.report_failures.inc();
                    tracing::warn!(%error, %url, retry_in = ?delay, "report not delivered");
                })
                .instrument(span)
                .await;
        }
    }

    /// One attempt at the batch at the front of the queue (whichever it is by now). Fails only
    /// when sending it again may succeed: a batch that cannot be serialized or that the trust
    /// API refuses for good is dropped and counted.
    async fn send_front(&self, client: &JsonClient, url: &str) -> Result<(), HttpError> {
        let Some(batch) = self.front() else {
            return Ok(());
        };
        let body = match serde_json::to_vec(&batch) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "report batch not serializable; dropped");
                self.pop_sent(&batch);
                self.metrics.report_drops.inc();
                return Ok(());
            }
        };
        let started = Instant::now();
        match client
            .send(Method::POST, url, Some(body), Duration::from_secs(10))
            .await
        {
            Ok(_) => {
                self.metrics
                    .report_latency
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.reports_sent.inc();
                self.pop_sent(&batch);
                Ok(())
            }
            Err(error) if error.is_permanent() => {
                tracing::error!(%error, %url, "trust API refused a report batch; dropped");
                self.metrics.report_drops.inc();
                self.pop_sent(&batch);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_api::wire::ReportSource;

    use super::*;

    fn batch(n: u32) -> ReportBatch {
        ReportBatch {
            source: ReportSource::Probe {
                node: "n".into(),
                agent: "a/b".into(),
                tier: 2,
                fallback_reason: None,
                programs_loaded: n,
                file_hook: None,
                ring_buffer_drops: 0,
            },
            pods: vec![],
            outcomes: vec![],
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let metrics = Arc::new(Metrics::new());
        let queue = ReportQueue::new(2, metrics.clone());
        for n in 0..5 {
            queue.push(batch(n));
        }
        assert_eq!(queue.len(), 2);
        assert_eq!(metrics.report_drops.get(), 3);
        assert_eq!(queue.front(), Some(batch(3)));
    }
}
