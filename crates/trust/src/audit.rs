//! Audit: every decision (allow, deny, would-deny) as an entry of a sha256 hash chain.
//!
//! Each entry's hash covers, under the prefix `agentmesh-audit-v1`, the previous entry's hash,
//! its sequence number and every field of the record — the policy version included — each
//! length-prefixed. [`verify`] recomputes every hash and checks that sequence numbers follow
//! and that each entry names its predecessor's hash, so an altered, dropped, inserted or
//! reordered entry is found and its index reported. Dropping entries from the end is only
//! visible against a head hash kept elsewhere ([`verify_with_head`]); retention
//! ([`AuditLog::prune_before`]) drops from the front, and the first kept entry's `prevHash`
//! then anchors the rest.

use std::collections::VecDeque;

use agentmesh_identity::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::Effect;

const DOMAIN: &[u8] = b"agentmesh-audit-v1\0";
/// `prevHash` of the first entry of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is recorded about one decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub at: Timestamp,
    /// The identity (DID or namespace/name) the decision was about.
    pub identity: String,
    /// What was attempted: `tool:fetch_url`, `exec:/bin/sh`, `peer:did:mesh:…`.
    pub subject: String,
    pub effect: Effect,
    /// The rule or preset that decided (`tools.deny[0]`, `preset:standard`).
    pub rule: String,
    pub score: i32,
    /// The policy's version ([`crate::Policy::version`]).
    pub policy_version: String,
    /// The decision's explanation.
    pub detail: String,
}

/// A record in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Hex sha256 of the previous entry ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// Hex sha256 of this entry.
    pub hash: String,
}

/// What [`verify`] found wrong, with the index of the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("entry {index}: hash does not match its content (altered)")]
    HashMismatch { index: usize },
    #[error(
        "entry {index}: does not follow the previous entry's hash (dropped, inserted or reordered)"
    )]
    BrokenLink { index: usize },
    #[error("entry {index}: sequence {got} where {expected} was expected (dropped or reordered)")]
    SequenceGap {
        index: usize,
        expected: u64,
        got: u64,
    },
    #[error("the last entry's hash is not the expected head (entries dropped from the end)")]
    HeadMismatch,
}

fn put(hasher: &mut Sha256, field: &[u8]) {
    hasher.update((field.len() as u64).to_be_bytes());
    hasher.update(field);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash an entry must carry.
pub fn entry_hash(seq: u64, record: &AuditRecord, prev_hash: &str) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    put(&mut h, prev_hash.as_bytes());
    put(&mut h, &seq.to_be_bytes());
    put(&mut h, &record.at.as_millis().to_be_bytes());
    put(&mut h, record.identity.as_bytes());
    put(&mut h, record.subject.as_bytes());
    put(&mut h, record.effect.as_str().as_bytes());
    put(&mut h, record.rule.as_bytes());
    put(&mut h, &record.score.to_be_bytes());
    put(&mut h, record.policy_version.as_bytes());
    put(&mut h, record.detail.as_bytes());
    hex(&h.finalize())
}

/// An in-memory audit log (the `memory` storage backend).
#[derive(Clone, Debug, Default)]
pub struct AuditLog {
    entries: VecDeque<AuditEntry>,
    next_seq: u64,
    head: Option<String>,
}

impl AuditLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn append(&mut self, record: AuditRecord) -> &AuditEntry {
        let prev_hash = self.head.clone().unwrap_or_else(|| GENESIS.to_owned());
        let seq = self.next_seq;
        let hash = entry_hash(seq, &record, &prev_hash);
        self.next_seq += 1;
        self.head = Some(hash.clone());
        self.entries.push_back(AuditEntry {
            seq,
            record,
            prev_hash,
            hash,
        });
        self.entries.back().expect("just pushed")
    }

    /// Hash of the newest entry.
    pub fn head(&self) -> &str {
        self.head.as_deref().unwrap_or(GENESIS)
    }

    pub fn entries(&self) -> impl ExactSizeIterator<Item = &AuditEntry> {
        self.entries.iter()
    }

    pub fn to_vec(&self) -> Vec<AuditEntry> {
        self.entries.iter().cloned().collect()
    }

    /// Retention: drop entries older than `cutoff` (`retentionDays` before now).
    pub fn prune_before(&mut self, cutoff: Timestamp) {
        while self.entries.front().is_some_and(|e| e.record.at < cutoff) {
            self.entries.pop_front();
        }
    }

    /// A memory bound: drop the oldest entries beyond the newest `max`. As with retention, the
    /// kept tail still verifies from its first entry's `prevHash`.
    pub fn keep_newest(&mut self, max: usize) {
        while self.entries.len() > max {
            self.entries.pop_front();
        }
    }

    /// Entries appended since the log was created (kept or pruned).
    pub fn appended(&self) -> u64 {
        self.next_seq
    }
}

/// Verify a run of entries, anchored at the first one's `seq` and `prevHash`.
pub fn verify(entries: &[AuditEntry]) -> Result<(), AuditError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let mut expected_seq = first.seq;
    let mut prev = first.prev_hash.as_str();
    for (index, entry) in entries.iter().enumerate() {
        if entry.seq != expected_seq {
            return Err(AuditError::SequenceGap {
                index,
                expected: expected_seq,
                got: entry.seq,
            });
        }
        if entry.prev_hash != prev {
            return Err(AuditError::BrokenLink { index });
        }
        if entry_hash(entry.seq, &entry.record, &entry.prev_hash) != entry.hash {
            return Err(AuditError::HashMismatch { index });
        }
        expected_seq = expected_seq.wrapping_add(1);
        prev = &entry.hash;
    }
    Ok(())
}

/// Verify a whole log from its genesis and against a head hash kept elsewhere.
pub fn verify_with_head(entries: &[AuditEntry], head: &str) -> Result<(), AuditError> {
    if let Some(first) = entries.first()
        && (first.seq != 0 || first.prev_hash != GENESIS)
    {
        return Err(AuditError::BrokenLink { index: 0 });
    }
    verify(entries)?;
    let last = entries.last().map_or(GENESIS, |e| e.hash.as_str());
    if last == head {
        Ok(())
    } else {
        Err(AuditError::HeadMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64) -> AuditRecord {
        AuditRecord {
            at: Timestamp::from_secs(1_800_000_000 + i),
            identity: "did:mesh:00112233445566778899aabbccddeeff".into(),
            subject: format!("tool:t{i}"),
            effect: if i % 2 == 0 {
                Effect::Allow
            } else {
                Effect::Deny
            },
            rule: "preset:standard".into(),
            score: 800 - i as i32,
            policy_version: "0123456789abcdef".into(),
            detail: "because".into(),
        }
    }

    fn log(n: i64) -> AuditLog {
        let mut log = AuditLog::new();
        for i in 0..n {
            log.append(record(i));
        }
        log
    }

    #[test]
    fn an_honest_log_verifies() {
        let log = log(5);
        assert_eq!(verify(&log.to_vec()), Ok(()));
        assert_eq!(verify_with_head(&log.to_vec(), log.head()), Ok(()));
    }

    #[test]
    fn altering_any_field_breaks_verification() {
        type Alteration = fn(&mut AuditEntry);
        let alterations: Vec<(&str, Alteration)> = vec![
            ("at", |e| e.record.at = e.record.at.plus_millis(1)),
            ("identity", |e| e.record.identity.push('x')),
            ("subject", |e| e.record.subject = "tool:other".into()),
            ("effect", |e| e.record.effect = Effect::WouldDeny),
            ("rule", |e| e.record.rule = "tools.allow[0]".into()),
            ("score", |e| e.record.score += 1),
            ("policyVersion", |e| {
                e.record.policy_version = "fedcba9876543210".into()
            }),
            ("detail", |e| e.record.detail.clear()),
            ("hash", |e| e.hash = GENESIS.into()),
        ];
        for (name, alter) in alterations {
            let mut entries = log(4).to_vec();
            alter(&mut entries[2]);
            assert_eq!(
                verify(&entries),
                Err(AuditError::HashMismatch { index: 2 }),
                "{name}"
            );
        }
    }

    #[test]
    fn rehashing_an_altered_entry_breaks_the_next_link() {
        let mut entries = log(4).to_vec();
        entries[1].record.policy_version = "fedcba9876543210".into();
        entries[1].hash = entry_hash(entries[1].seq, &entries[1].record, &entries[1].prev_hash);
        assert_eq!(verify(&entries), Err(AuditError::BrokenLink { index: 2 }));
    }

    #[test]
    fn dropped_and_reordered_entries_are_found() {
        let mut dropped = log(5).to_vec();
        dropped.remove(2);
        assert_eq!(
            verify(&dropped),
            Err(AuditError::SequenceGap {
                index: 2,
                expected: 2,
                got: 3
            })
        );

        let mut swapped = log(5).to_vec();
        swapped.swap(1, 3);
        assert!(matches!(
            verify(&swapped),
            Err(AuditError::SequenceGap { index: 1, .. })
        ));

        // Renumbered after a drop: the link still gives it away.
        let mut renumbered = log(5).to_vec();
        renumbered.remove(2);
        for (i, e) in renumbered.iter_mut().enumerate() {
            e.seq = i as u64;
        }
        assert!(matches!(
            verify(&renumbered),
            Err(AuditError::BrokenLink { index: 2 }) | Err(AuditError::HashMismatch { index: 2 })
        ));

        let full = log(5);
        let mut truncated = full.to_vec();
        truncated.pop();
        assert_eq!(verify(&truncated), Ok(()));
        assert_eq!(
            verify_with_head(&truncated, full.head()),
            Err(AuditError::HeadMismatch)
        );
    }

    #[test]
    fn retention_keeps_a_verifiable_tail() {
        let mut log = log(6);
        log.prune_before(Timestamp::from_secs(1_800_000_003));
        let entries = log.to_vec();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].seq, 3);
        assert_eq!(verify(&entries), Ok(()));
    }

    #[test]
    fn a_size_bound_keeps_the_newest_verifiable_tail() {
        let mut log = log(6);
        log.keep_newest(2);
        let entries = log.to_vec();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(verify(&entries), Ok(()));
        assert_eq!(log.appended(), 6);
        assert_eq!(entries.last().unwrap().hash, log.head());
    }
}
