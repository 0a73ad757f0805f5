//! Telemetry records waiting for the sink. Each telemetry window makes one record (see
//! `privacy`); an export sends at most `spec.telemetry.batchSize` of the oldest ones (25 by
//! default, DynamoDB `BatchWriteItem`'s limit of items per request), and records not delivered
//! wait for the next export, oldest first. The backlog is bounded: past [`BACKLOG_CAPACITY`]
//! records the oldest is dropped and counted, so a sink that is down for long costs memory for
//! a bounded number of windows only.

use std::collections::VecDeque;

use serde_json::Value;

/// Records kept while the sink does not take them: four full batches.
pub const BACKLOG_CAPACITY: usize = 100;

/// The records not delivered yet, oldest first.
#[derive(Debug)]
pub struct Backlog {
    records: VecDeque<Value>,
    capacity: usize,
}

impl Backlog {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: VecDeque::with_capacity(capacity.min(BACKLOG_CAPACITY)),
            capacity: capacity.max(1),
        }
    }

    /// Adds a window's record; when full, drops the oldest. Returns how many were dropped.
    pub fn push(&mut self, record: Value) -> usize {
        let mut dropped = 0;
        while self.records.len() >= self.capacity {
            self.records.pop_front();
            dropped += 1;
        }
        self.records.push_back(record);
        dropped
    }

    /// What one export sends: the oldest records, at most `batch_size` (at least one).
    pub fn batch(&self, batch_size: usize) -> Vec<Value> {
        self.records
            .iter()
            .take(batch_size.max(1))
            .cloned()
            .collect()
    }

    /// Forgets the `delivered` oldest records, which the sink took.
    pub fn delivered(&mut self, delivered: usize) {
        let delivered = delivered.min(self.records.len());
        self.records.drain(..delivered);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// One export: sends the oldest records, at most `batch_size`, in order through `send` (true
/// when the sink took the record), stopping at the first failure so that nothing goes out of
/// order; the records sent are forgotten, the rest wait. Returns how many were delivered.
pub async fn export<F, Fut>(backlog: &mut Backlog, batch_size: usize, mut send: F) -> usize
where
    F: FnMut(Value) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut delivered = 0;
    for record in backlog.batch(batch_size) {
        if !send(record).await {
            break;
        }
        delivered += 1;
    }
    backlog.delivered(delivered);
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn window(i: u64) -> Value {
        json!({ "windowStartMs": i })
    }

    fn starts(records: &[Value]) -> Vec<u64> {
        records
            .iter()
            .map(|r| r["windowStartMs"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn an_export_sends_at_most_the_batch_size_oldest_first() {
        let mut backlog = Backlog::new(BACKLOG_CAPACITY);
        for i in 0..30 {
            backlog.push(window(i));
        }
        let first = backlog.batch(25);
        assert_eq!(starts(&first), (0..25).collect::<Vec<_>>());
        backlog.delivered(first.len());
        assert_eq!(starts(&backlog.batch(25)), (25..30).collect::<Vec<_>>());
        // A batch size of 1 sends one record per export.
        assert_eq!(starts(&backlog.batch(1)), [25]);
    }

    #[test]
    fn records_not_delivered_wait_for_the_next_export() {
        let mut backlog = Backlog::new(BACKLOG_CAPACITY);
        for i in 0..3 {
            backlog.push(window(i));
        }
        let batch = backlog.batch(25);
        // The sink took the first record only.
        backlog.delivered(1);
        assert_eq!(batch.len(), 3);
        backlog.push(window(3));
        assert_eq!(starts(&backlog.batch(25)), [1, 2, 3]);
        backlog.delivered(99);
        assert!(backlog.is_empty());
    }

    /// Runs one export against a sink that takes `accepts` records, then fails.
    fn export_to(backlog: &mut Backlog, batch_size: usize, accepts: usize) -> Vec<u64> {
        let mut sent = Vec::new();
        let delivered = block_on(export(backlog, batch_size, |record| {
            let ok = sent.len() < accepts;
            if ok {
                sent.push(record["windowStartMs"].as_u64().unwrap());
            }
            std::future::ready(ok)
        }));
        assert_eq!(delivered, sent.len());
        sent
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn each_export_sends_at_most_a_batch_and_keeps_what_fails() {
        let mut backlog = Backlog::new(BACKLOG_CAPACITY);
        for i in 0..7 {
            backlog.push(window(i));
        }
        // Batches of 3: the first export sends 0, 1, 2.
        assert_eq!(export_to(&mut backlog, 3, usize::MAX), [0, 1, 2]);
        // The sink fails after one record: 3 is sent, 4 waits.
        assert_eq!(export_to(&mut backlog, 3, 1), [3]);
        assert_eq!(export_to(&mut backlog, 3, usize::MAX), [4, 5, 6]);
        assert!(backlog.is_empty());
        assert_eq!(export_to(&mut backlog, 3, usize::MAX), Vec::<u64>::new());
    }

    #[test]
    fn a_full_backlog_drops_the_oldest_and_says_how_many() {
        let mut backlog = Backlog::new(3);
        for i in 0..3 {
            assert_eq!(backlog.push(window(i)), 0);
        }
        assert_eq!(backlog.push(window(3)), 1);
        assert_eq!(backlog.len(), 3);
        assert_eq!(starts(&backlog.batch(25)), [1, 2, 3]);
    }
}
