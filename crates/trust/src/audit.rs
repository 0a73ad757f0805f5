//! Audit: every decision (allow, deny, would-deny, handshake, quarantine, release) as an entry
//! of a sha256 hash chain.
//!
//! Each entry's hash covers, under the prefix `agentmesh-audit-v1`, the previous entry's hash,
//! its sequence number and every field of the record — the policy version included — each
//! length-prefixed. [`verify`] recomputes every hash and checks that sequence numbers follow
//! and that each entry names its predecessor's hash, so an altered, dropped, inserted or
//! reordered entry is found and its index reported. Dropping entries from the end is only
//! visible against a head hash kept elsewhere ([`verify_with_head`]).
//!
//! Retention drops entries from the front. A store does it in two steps: it first appends a
//! *retention checkpoint* ([`retention_checkpoint`]) naming the first entry it keeps (its
//! sequence number and `prevHash`), then deletes what comes before. [`verify_store`] accepts a
//! chain that does not start at the genesis only when such a checkpoint, itself in the chain
//! and so covered by every later hash, accounts for the missing prefix: deleting old entries by
//! hand, without rewriting every hash after them, is found.

use std::collections::VecDeque;

use agentmesh_identity::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::Effect;

const DOMAIN: &[u8] = b"agentmesh-audit-v1\0";
/// `prevHash` of the first entry of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What was decided. The first three are a policy's effects; the others are the operator's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditDecision {
    Allow,
    Deny,
    /// Shadow mode: would have been denied; allowed.
    WouldDeny,
    /// The identity's score fell below the policy's threshold.
    Quarantine,
    /// The identity's score is back at or above the threshold.
    Release,
    /// Entries before the one named were deleted by retention ([`retention_checkpoint`]).
    Retention,
}

impl AuditDecision {
    pub const ALL: [Self; 6] = [
        Self::Allow,
        Self::Deny,
        Self::WouldDeny,
        Self::Quarantine,
        Self::Release,
        Self::Retention,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would-deny",
            Self::Quarantine => "quarantine",
            Self::Release => "release",
            Self::Retention => "retention",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

impl From<Effect> for AuditDecision {
    fn from(effect: Effect) -> Self {
        match effect {
            Effect::Allow => Self::Allow,
            Effect::Deny => Self::Deny,
            Effect::WouldDeny => Self::WouldDeny,
        }
    }
}

/// What is recorded about one decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub at: Timestamp,
    /// The identity (DID or namespace/name) the decision was about.
    pub identity: String,
    /// What was attempted: `tool:fetch_url`, `exec:/bin/sh`, `peer:did:mesh:…`.
    pub subject: String,
    pub decision: AuditDecision,
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
    #[error(
        "entry {index}: the chain starts at sequence {seq}, and no retention checkpoint in it accounts for the entries before (deleted)"
    )]
    Unanchored { index: usize, seq: u64 },
}

impl AuditError {
    /// The index of the entry found wrong; `None` when the fault is the missing end.
    pub const fn index(&self) -> Option<usize> {
        match *self {
            Self::HashMismatch { index }
            | Self::BrokenLink { index }
            | Self::SequenceGap { index, .. }
            | Self::Unanchored { index, .. } => Some(index),
            Self::HeadMismatch => None,
        }
    }
}

/// Where a chain ends: the next sequence number and the newest entry's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    pub next_seq: u64,
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            next_seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

impl Head {
    /// Chains `records` after this head; returns the entries and the head they lead to.
    pub fn chain(&self, records: impl IntoIterator<Item = AuditRecord>) -> (Vec<AuditEntry>, Head) {
        let mut head = self.clone();
        let entries = records
            .into_iter()
            .map(|record| {
                let hash = entry_hash(head.next_seq, &record, &head.hash);
                let entry = AuditEntry {
                    seq: head.next_seq,
                    record,
                    prev_hash: std::mem::replace(&mut head.hash, hash.clone()),
                    hash,
                };
                head.next_seq += 1;
                entry
            })
            .collect();
        (entries, head)
    }
}

/// The identity retention checkpoints are recorded under.
pub const CHECKPOINT_IDENTITY: &str = "agentmesh:audit";

/// The record a store appends before deleting every entry older than `first_kept` (its
/// sequence number and `prevHash`).
pub fn retention_checkpoint(
    at: Timestamp,
    first_kept_seq: u64,
    first_kept_prev_hash: &str,
    retention_days: u32,
) -> AuditRecord {
    AuditRecord {
        at,
        identity: CHECKPOINT_IDENTITY.to_owned(),
        subject: format!("seq:{first_kept_seq}"),
        decision: AuditDecision::Retention,
        rule: format!("retentionDays:{retention_days}"),
        score: 0,
        policy_version: String::new(),
        detail: format!("prevHash:{first_kept_prev_hash}"),
    }
}

/// The first kept entry a retention checkpoint names: its sequence number and `prevHash`.
pub fn checkpoint_of(record: &AuditRecord) -> Option<(u64, &str)> {
    if record.decision != AuditDecision::Retention || record.identity != CHECKPOINT_IDENTITY {
        return None;
    }
    let seq = record.subject.strip_prefix("seq:")?.parse().ok()?;
    let prev = record.detail.strip_prefix("prevHash:")?;
    Some((seq, prev))
}

/// Verifies what a store holds, end to end: the chain from its first entry, that first entry
/// anchored at the genesis or by a retention checkpoint in the chain, and the last entry's hash
/// against the store's `head` when it keeps one.
pub fn verify_store(entries: &[AuditEntry], head: Option<&str>) -> Result<(), AuditError> {
    if let Some(first) = entries.first() {
        let anchored = if first.seq == 0 {
            first.prev_hash == GENESIS
        } else {
            entries
                .iter()
                .filter_map(|e| checkpoint_of(&e.record))
                .any(|(seq, prev)| seq == first.seq && prev == first.prev_hash)
        };
        if !anchored {
            return Err(if first.seq == 0 {
                AuditError::BrokenLink { index: 0 }
            } else {
                AuditError::Unanchored {
                    index: 0,
                    seq: first.seq,
                }
            });
        }
    }
    verify(entries)?;
    match head {
        Some(head) if entries.last().map_or(GENESIS, |e| e.hash.as_str()) != head => {
            Err(AuditError::HeadMismatch)
        }
        _ => Ok(()),
    }
}

/// The CloudEvents `type` of an entry, after the event types AgentMesh's audit log used.
pub fn event_type(record: &AuditRecord) -> &'static str {
    let handshake = record.subject.starts_with("peer:");
    let tool = record.subject.starts_with("tool:");
    match record.decision {
        _ if handshake => "ai.agentmesh.trust.handshake",
        AuditDecision::Allow if tool => "ai.agentmesh.tool.invoked",
        AuditDecision::Allow => "ai.agentmesh.policy.evaluation",
        AuditDecision::Deny if tool => "ai.agentmesh.tool.blocked",
        AuditDecision::Deny | AuditDecision::WouldDeny => "ai.agentmesh.policy.violation",
        AuditDecision::Quarantine | AuditDecision::Release => "ai.agentmesh.trust.score.updated",
        AuditDecision::Retention => "ai.agentmesh.audit.retention",
    }
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
    put(&mut h, record.decision.as_str().as_bytes());
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
    end: Head,
}

impl AuditLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn append(&mut self, record: AuditRecord) -> &AuditEntry {
        let (entries, end) = self.end.chain([record]);
        self.end = end;
        self.entries.extend(entries);
        self.entries.back().expect("just pushed")
    }

    /// Where the chain ends.
    pub fn end(&self) -> &Head {
        &self.end
    }

    /// Hash of the newest entry.
    pub fn head(&self) -> &str {
        &self.end.hash
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
        self.end.next_seq
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
            decision: if i % 2 == 0 {
                AuditDecision::Allow
            } else {
                AuditDecision::Deny
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
            ("decision", |e| e.record.decision = AuditDecision::WouldDeny),
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
    fn chaining_in_batches_continues_one_chain() {
        let whole = log(6);
        let (first, middle) = Head::default().chain((0..2).map(record));
        let (rest, end) = middle.chain((2..6).map(record));
        let entries: Vec<_> = first.into_iter().chain(rest).collect();
        assert_eq!(entries, whole.to_vec());
        assert_eq!(&end, whole.end());
        assert_eq!(verify_store(&entries, Some(&end.hash)), Ok(()));
    }

    /// What a store does on retention: a checkpoint naming the first kept entry, then the
    /// deletion of what precedes it.
    fn pruned(mut entries: Vec<AuditEntry>, keep_from: usize) -> Vec<AuditEntry> {
        let first = entries[keep_from].clone();
        let end = Head {
            next_seq: entries.len() as u64,
            hash: entries.last().unwrap().hash.clone(),
        };
        let checkpoint = retention_checkpoint(
            Timestamp::from_secs(1_900_000_000),
            first.seq,
            &first.prev_hash,
            90,
        );
        let (added, _) = end.chain([checkpoint]);
        entries.extend(added);
        entries.split_off(keep_from)
    }

    #[test]
    fn a_prefix_deleted_with_a_checkpoint_verifies_and_one_deleted_by_hand_does_not() {
        let kept = pruned(log(6).to_vec(), 3);
        assert_eq!(kept[0].seq, 3);
        let head = kept.last().unwrap().hash.clone();
        assert_eq!(verify_store(&kept, Some(&head)), Ok(()));
        assert_eq!(
            checkpoint_of(&kept.last().unwrap().record),
            Some((3, kept[0].prev_hash.as_str()))
        );

        // One more entry deleted by hand at the front: the checkpoint names entry 3.
        let by_hand = kept[1..].to_vec();
        assert_eq!(
            verify_store(&by_hand, Some(&head)),
            Err(AuditError::Unanchored { index: 0, seq: 4 })
        );
        // Deleted by hand with no checkpoint at all.
        let no_checkpoint = log(6).to_vec().split_off(2);
        assert_eq!(
            verify_store(&no_checkpoint, None),
            Err(AuditError::Unanchored { index: 0, seq: 2 })
        );
        // A genesis entry edited to point elsewhere.
        let mut rebased = log(3).to_vec();
        rebased[0].prev_hash = "ab".repeat(32);
        assert_eq!(
            verify_store(&rebased, None),
            Err(AuditError::BrokenLink { index: 0 })
        );
    }

    #[test]
    fn a_checkpoint_cannot_be_forged_or_edited_without_breaking_the_chain() {
        let kept = pruned(log(6).to_vec(), 3);
        // Someone deletes entry 3 too and edits the checkpoint to name entry 4.
        let mut forged = kept[1..].to_vec();
        let last = forged.len() - 1;
        forged[last].record.subject = "seq:4".into();
        forged[last].record.detail = format!("prevHash:{}", forged[0].prev_hash);
        assert_eq!(
            verify_store(&forged, None),
            Err(AuditError::HashMismatch { index: last })
        );
        // A record that only looks like a checkpoint (another identity) anchors nothing.
        let mut lookalike = retention_checkpoint(Timestamp::from_secs(1), 3, GENESIS, 1);
        lookalike.identity = "did:mesh:attacker".into();
        assert_eq!(checkpoint_of(&lookalike), None);
    }

    #[test]
    fn the_store_head_catches_entries_dropped_from_the_end() {
        let entries = log(4).to_vec();
        let head = entries.last().unwrap().hash.clone();
        assert_eq!(
            verify_store(&entries[..3], Some(&head)),
            Err(AuditError::HeadMismatch)
        );
        assert_eq!(AuditError::HeadMismatch.index(), None);
        assert_eq!(verify_store(&[], Some(GENESIS)), Ok(()));
        assert_eq!(
            verify_store(&[], Some(&head)),
            Err(AuditError::HeadMismatch)
        );
    }

    #[test]
    fn decisions_spell_and_parse_one_way_and_map_to_event_types() {
        for decision in AuditDecision::ALL {
            assert_eq!(AuditDecision::parse(decision.as_str()), Some(decision));
            let json = serde_json::to_string(&decision).unwrap();
            assert_eq!(json, format!("\"{}\"", decision.as_str()));
        }
        assert_eq!(AuditDecision::parse("Allow"), None);
        let mut r = record(0);
        r.subject = "tool:fetch".into();
        assert_eq!(event_type(&r), "ai.agentmesh.tool.invoked");
        r.decision = AuditDecision::Deny;
        assert_eq!(event_type(&r), "ai.agentmesh.tool.blocked");
        r.decision = AuditDecision::WouldDeny;
        assert_eq!(event_type(&r), "ai.agentmesh.policy.violation");
        r.subject = "peer:did:mesh:ab".into();
        assert_eq!(event_type(&r), "ai.agentmesh.trust.handshake");
        r.subject = "prompt:p".into();
        r.decision = AuditDecision::Deny;
        assert_eq!(event_type(&r), "ai.agentmesh.policy.violation");
        r.decision = AuditDecision::Quarantine;
        assert_eq!(event_type(&r), "ai.agentmesh.trust.score.updated");
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
