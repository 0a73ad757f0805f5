//! A sidecar's batch: the MCP calls it decided, the handshakes it made, the upstream tools it
//! saw change. The caller has checked the batch's signature; here it must also be fresh and
//! new ([`crate::replay`]), the credit it gives is capped ([`crate::credit`]), and every call
//! and handshake becomes an audit record.

use super::{AnomalyKind, MAX_DETAIL, MAX_TEXT, Standing, Verdict, Violation, truncate};
use crate::audit::AuditRecord;
use crate::credit::CreditCap;
use crate::replay::ReplayError;
use crate::{Effect, Policy, Signal, Timestamp};

/// One thing a sidecar reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarOutcome<'a> {
    /// An MCP call and the sidecar's decision on it.
    Call {
        /// The JSON-RPC method; `None` means `tools/call`.
        method: Option<&'a str>,
        /// The tool, prompt or resource it names.
        name: &'a str,
        /// The effect as reported: only `allow` and `would-deny` are taken at their word.
        effect: &'a str,
        rule: &'a str,
        at_ms: i64,
    },
    /// A mutual handshake with a peer.
    Handshake {
        peer_did: &'a str,
        succeeded: bool,
        reason: Option<&'a str>,
        at_ms: i64,
    },
    /// An upstream tool whose description or schema changed after it was first seen.
    ToolChanged { server: &'a str, tool: &'a str },
}

/// A batch from the sidecar of one pod.
#[derive(Clone, Debug)]
pub struct SidecarBatch<'a> {
    pub batch_id: &'a str,
    pub sent_at_ms: i64,
    /// The pod whose sidecar sent it.
    pub pod: &'a str,
    pub outcomes: Vec<SidecarOutcome<'a>>,
}

/// What a batch changed beyond the standing itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// To count against the governing policy.
    pub violations: Vec<Violation>,
    /// To append to the audit chain, in order.
    pub audit: Vec<AuditRecord>,
}

/// The effect a sidecar reported; anything but `allow` and `would-deny` counts as a deny.
pub fn reported_effect(effect: &str) -> Effect {
    match effect {
        "allow" => Effect::Allow,
        "would-deny" => Effect::WouldDeny,
        _ => Effect::Deny,
    }
}

/// The audit subject of an MCP call: `tool:`, `prompt:` or `resource:` and the name.
pub fn call_subject(method: Option<&str>, name: &str) -> String {
    match method {
        None | Some("tools/call") => format!("tool:{name}"),
        Some("prompts/get") => format!("prompt:{name}"),
        Some("resources/read") => format!("resource:{name}"),
        Some(other) => format!("{other}:{name}"),
    }
}

impl Standing {
    /// Applies the batch of identity `identity` (`namespace/name`) under `policy`: refused,
    /// changing nothing, when it is stale or was accepted before.
    pub fn apply_sidecar_batch(
        &mut self,
        policy: &Policy,
        identity: &str,
        batch: &SidecarBatch<'_>,
        now: Timestamp,
    ) -> Result<Applied, ReplayError> {
        self.replay.accept(batch.batch_id, batch.sent_at_ms, now)?;
        let mut applied = Applied::default();
        let pod = batch.pod;
        let audit =
            |standing: &Self, subject: &str, effect, rule: &str, detail: &str| AuditRecord {
                at: now,
                identity: identity.to_owned(),
                subject: truncate(subject, MAX_TEXT),
                decision: crate::audit::AuditDecision::from(effect),
                rule: truncate(rule, MAX_TEXT),
                score: standing.trust.score(),
                policy_version: policy.version().to_owned(),
                detail: truncate(detail, MAX_DETAIL),
            };
        for outcome in &batch.outcomes {
            match *outcome {
                SidecarOutcome::Call {
                    method,
                    name,
                    effect,
                    rule,
                    at_ms,
                } => {
                    let decided = reported_effect(effect);
                    self.call(policy, decided, now);
                    if decided != Effect::Allow {
                        applied.violations.push(Violation::new(
                            rule,
                            &format!("{} {name}", method.unwrap_or("tools/call")),
                            decided == Effect::WouldDeny,
                        ));
                    }
                    let subject = call_subject(method, name);
                    let detail = if decided.as_str() == effect {
                        format!("decided at {at_ms} by the sidecar of pod {pod}")
                    } else {
                        format!(
                            "decided at {at_ms} by the sidecar of pod {pod}; reported effect {effect:?} counted as deny"
                        )
                    };
                    let verdict = match decided {
                        Effect::Allow => Verdict::Allow,
                        Effect::WouldDeny => Verdict::WouldDeny,
                        Effect::Deny => Verdict::Deny,
                    };
                    self.decide(verdict, &subject, &format!("rule {rule}"), now);
                    applied
                        .audit
                        .push(audit(self, &subject, decided, rule, &detail));
                }
                SidecarOutcome::Handshake {
                    peer_did,
                    succeeded,
                    reason,
                    at_ms,
                } => {
                    self.handshake(policy, succeeded, now);
                    if !succeeded {
                        applied.violations.push(Violation::new(
                            "handshake",
                            &format!(
                                "handshake with {peer_did} failed: {}",
                                reason.unwrap_or_default()
                            ),
                            false,
                        ));
                    }
                    let (verdict, effect) = if succeeded {
                        (Verdict::Allow, Effect::Allow)
                    } else {
                        (Verdict::Deny, Effect::Deny)
                    };
                    let why = match reason {
                        Some(reason) => reason,
                        None if succeeded => "both keys proven",
                        None => "failed",
                    };
                    self.decide(verdict, &format!("handshake with {peer_did}"), why, now);
                    let detail = match reason {
                        Some(reason) => {
                            format!("handshake at {at_ms} by the sidecar of pod {pod}: {reason}")
                        }
                        None => format!("handshake at {at_ms} by the sidecar of pod {pod}"),
                    };
                    let subject = format!("peer:{peer_did}");
                    applied
                        .audit
                        .push(audit(self, &subject, effect, "handshake", &detail));
                }
                SidecarOutcome::ToolChanged { server, tool } => {
                    // New code behind a known name: it costs what a new executable costs.
                    let penalty = policy.spec().behavior.anomalies.new_executable;
                    self.charge_anomaly(
                        policy,
                        AnomalyKind::ToolChanged,
                        &format!(
                            "tool {tool} of MCP server {server} changed its description or schema"
                        ),
                        penalty,
                        pod,
                        now,
                    );
                }
            }
        }
        Ok(applied)
    }

    /// A decided call: an allowed one earns capped credit, any other costs a denied call.
    fn call(&mut self, policy: &Policy, decided: Effect, now: Timestamp) {
        self.window.counts.tool_call(decided != Effect::Allow);
        if decided == Effect::Allow {
            self.credit(policy, Signal::CompliantActivity, now);
        } else {
            self.trust.apply(policy.trust(), Signal::DeniedCall, now);
        }
    }

    /// A handshake: a success earns capped credit, a failure is a violation.
    fn handshake(&mut self, policy: &Policy, succeeded: bool, now: Timestamp) {
        if succeeded {
            self.credit(policy, Signal::HandshakeSucceeded, now);
        } else {
            self.window.counts.violation();
            self.trust
                .apply(policy.trust(), Signal::HandshakeFailed, now);
        }
    }

    /// A reward, within what the sidecar cap still allows ([`CreditCap::default`]).
    fn credit(&mut self, policy: &Policy, signal: Signal, now: Timestamp) {
        self.trust.apply_capped(
            policy.trust(),
            signal,
            &CreditCap::default(),
            &mut self.credit,
            now,
        );
    }
}
