//! Policy evaluation: tool calls, peers and behaviour, decided against a compiled policy.
//!
//! **Tool calls**, in this order (the first that decides wins):
//! 1. quarantine: score below `trust.minThreshold` and `quarantine.denyTools` → deny;
//! 2. `tools.deny` patterns → deny (a deny wins over an allow);
//! 3. `tools.allow` patterns → allowed; otherwise the preset:
//!    - `standard` denies shell-, exec- and eval-like names ([`STANDARD_DENIED_TOOLS`]);
//!    - `strict` allows only read-only names ([`STRICT_READ_ONLY_TOOLS`]);
//!    - `permissive` allows everything;
//! 4. every `tools.rules` entry whose pattern matches: `minScore` → deny below it;
//! 5. rate limits: every matching rule's and the global one must have room; the call then
//!    spends one from each (a denied call spends nothing).
//!
//! In `shadow` mode a deny becomes [`Effect::WouldDeny`]: reported, never enforced (the call
//! is allowed and spends rate-limit room like any allowed call). Every [`Decision`] says which
//! rule or preset decided and at which score, without allocating: it borrows the policy's
//! pattern texts and formats itself only when displayed.

mod behavior;
mod names;
mod pattern;
mod rate;
pub mod spec;

use std::fmt;
use std::net::IpAddr;

use agentmesh_identity::Timestamp;
use sha2::{Digest, Sha256};

pub use behavior::{Cidr, CidrError, RuleKind};
pub use names::canonical_name;
pub use pattern::{Glob, GlobSet};
pub use rate::RateState;
pub use spec::{
    AnomalySpec, BehaviorAction, BehaviorSpec, ExecRuleSpec, FileAccess, FileRuleSpec, Mode,
    NetworkRuleSpec, PolicySpec, Preset, QuarantineSpec, RateLimitSpec, ToolRuleSpec, ToolSpec,
    TrustSpec,
};

use crate::score::{MAX_SCORE, TrustConfig, TrustConfigError};
use behavior::{ExecRule, FileRule, NetworkRule, best, strictness};
use rate::{Bucket, Limit};

/// Tool names the `standard` preset denies: shells, command execution and code evaluation.
pub const STANDARD_DENIED_TOOLS: &[&str] = &[
    "shell",
    "shell_*",
    "*_shell",
    "*_shell_*",
    "bash*",
    "sh",
    "zsh",
    "powershell*",
    "cmd",
    "terminal*",
    "exec",
    "exec_*",
    "*_exec",
    "*_exec_*",
    "execute*",
    "*_execute*",
    "run_command*",
    "run_code*",
    "run_script*",
    "*subprocess*",
    "spawn*",
    "system",
    "eval",
    "eval_*",
    "*_eval",
    "*_eval_*",
    "python_repl*",
    "code_interpreter*",
];

/// Tool names the `strict` preset allows: read-only by their verb.
pub const STRICT_READ_ONLY_TOOLS: &[&str] = &[
    "read",
    "read_*",
    "get",
    "get_*",
    "list",
    "list_*",
    "search",
    "search_*",
    "find_*",
    "describe_*",
    "view_*",
    "lookup_*",
];

/// Why a policy was refused: what the CRD schema could not catch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("spec.trust: {0}")]
    Trust(#[from] TrustConfigError),
    #[error("spec.delegation.maxDepth: must be between 0 and 16, got {0}")]
    MaxDepth(i32),
    #[error("{field}: pattern {pattern:?} is empty or has characters outside A-Za-z0-9_.:/@*-")]
    BadPattern { field: String, pattern: String },
    #[error("{field}: minScore must be between 0 and 1000, got {value}")]
    BadScore { field: String, value: i32 },
    #[error(
        "{field}: rate limit needs requests in 1..=1000000 and periodSeconds in 1..=86400, got {requests} per {period_seconds} s"
    )]
    BadRateLimit {
        field: String,
        requests: i32,
        period_seconds: i32,
    },
    #[error("{field}: a tool rule needs minScore, rateLimit or both")]
    EmptyToolRule { field: String },
    #[error("{field}: {path:?} is not an absolute path")]
    BadPath { field: String, path: String },
    #[error(
        "{field}: {path:?} is not an executable pattern: an absolute path of at most 239 bytes, with a `*` only at its end"
    )]
    BadExecPath { field: String, path: String },
    #[error("{field}: {cidr:?} is not an IPv4 or IPv6 CIDR such as 10.0.0.0/8")]
    BadCidr { field: String, cidr: String },
    #[error("{field}: port {port} is not in 1..=65535")]
    BadPort { field: String, port: i32 },
    #[error("{field}: penalty must be between 0 and 1000, got {value}")]
    BadPenalty { field: String, value: i32 },
    #[error("{field}: an allow rule cannot carry a penalty")]
    AllowWithPenalty { field: String },
    #[error("{field}: must be between 0 and 604800, got {value}")]
    BadLearningPeriod { field: String, value: i32 },
}

/// What a decision does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Effect {
    Allow,
    Deny,
    /// Shadow mode: would have been denied; allowed.
    WouldDeny,
}

impl Effect {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would-deny",
        }
    }

    /// Whether the action goes ahead.
    pub const fn is_allowed(self) -> bool {
        !matches!(self, Self::Deny)
    }
}

/// Which rule or preset decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason<'p> {
    Quarantined {
        threshold: i32,
    },
    DenyList {
        index: usize,
        pattern: &'p str,
    },
    AllowList {
        index: usize,
        pattern: &'p str,
    },
    PresetDenies {
        preset: Preset,
        pattern: &'p str,
    },
    PresetNotReadOnly,
    PresetAllows {
        preset: Preset,
    },
    BelowMinScore {
        rule: usize,
        pattern: &'p str,
        required: i32,
    },
    RateLimited {
        rule: Option<usize>,
        requests: i64,
        period_seconds: i64,
    },
    PeerNotAllowed,
    PeerAllowed {
        index: Option<usize>,
        pattern: Option<&'p str>,
    },
    PeerScoreTooLow {
        required: i32,
    },
    BehaviorRule {
        kind: RuleKind,
        index: usize,
        pattern: &'p str,
        action: BehaviorAction,
    },
    NoBehaviorRule {
        kind: RuleKind,
    },
    QuarantineBlocksNetwork {
        threshold: i32,
    },
}

/// A decision and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'p> {
    pub effect: Effect,
    pub reason: Reason<'p>,
    /// The score the decision was taken at.
    pub score: i32,
    pub preset: Preset,
    pub mode: Mode,
    /// Trust points the event costs (behaviour rules; 0 otherwise).
    pub penalty: i32,
}

impl Decision<'_> {
    /// The rule that decided, as a short stable name (`tools.deny[1]`, `preset:standard`).
    pub fn rule(&self) -> String {
        match self.reason {
            Reason::Quarantined { .. } => "quarantine.denyTools".into(),
            Reason::DenyList { index, .. } => format!("tools.deny[{index}]"),
            Reason::AllowList { index, .. } => format!("tools.allow[{index}]"),
            Reason::PresetDenies { preset, .. } | Reason::PresetAllows { preset } => {
                format!("preset:{}", preset.as_str())
            }
            Reason::PresetNotReadOnly => "preset:strict".into(),
            Reason::BelowMinScore { rule, .. } => format!("tools.rules[{rule}].minScore"),
            Reason::RateLimited {
                rule: Some(rule), ..
            } => format!("tools.rules[{rule}].rateLimit"),
            Reason::RateLimited { rule: None, .. } => "tools.rateLimit".into(),
            Reason::PeerNotAllowed => "allowedPeers".into(),
            Reason::PeerAllowed { index: Some(i), .. } => format!("allowedPeers[{i}]"),
            Reason::PeerAllowed { index: None, .. } => {
                "allowedPeers (empty: any registered identity)".into()
            }
            Reason::PeerScoreTooLow { .. } => "minPeerScore".into(),
            Reason::BehaviorRule { kind, index, .. } => format!("{}[{index}]", kind.as_str()),
            Reason::NoBehaviorRule { kind } => format!("{} (no rule matched)", kind.as_str()),
            Reason::QuarantineBlocksNetwork { .. } => "quarantine.blockNetwork".into(),
        }
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by {}: ", self.effect.as_str(), self.rule())?;
        match self.reason {
            Reason::Quarantined { threshold } => write!(
                f,
                "score {} is below the minimum threshold {threshold}: quarantined",
                self.score
            ),
            Reason::DenyList { pattern, .. } => write!(f, "tool matches deny pattern {pattern:?}"),
            Reason::AllowList { pattern, .. } => {
                write!(f, "tool matches allow pattern {pattern:?}")
            }
            Reason::PresetDenies { preset, pattern } => write!(
                f,
                "the {} preset denies tools matching {pattern:?}",
                preset.as_str()
            ),
            Reason::PresetNotReadOnly => write!(
                f,
                "the strict preset allows read-only tools only, and this tool is neither read-only nor in tools.allow"
            ),
            Reason::PresetAllows { preset } => write!(
                f,
                "the {} preset allows it and no rule denies it",
                preset.as_str()
            ),
            Reason::BelowMinScore {
                pattern, required, ..
            } => write!(
                f,
                "tools matching {pattern:?} need score {required}, the score is {}",
                self.score
            ),
            Reason::RateLimited {
                requests,
                period_seconds,
                ..
            } => write!(f, "more than {requests} calls per {period_seconds} s"),
            Reason::PeerNotAllowed => write!(f, "peer matches no allowedPeers entry"),
            Reason::PeerAllowed {
                pattern: Some(p), ..
            } => write!(f, "peer matches {p:?}"),
            Reason::PeerAllowed { pattern: None, .. } => {
                write!(f, "any registered peer is allowed")
            }
            Reason::PeerScoreTooLow { required } => write!(
                f,
                "peer score {} is below minPeerScore {required}",
                self.score
            ),
            Reason::BehaviorRule {
                pattern, action, ..
            } => write!(
                f,
                "matches {pattern:?} (action {}, penalty {})",
                action.as_str(),
                self.penalty
            ),
            Reason::NoBehaviorRule { .. } => write!(f, "no behaviour rule matched"),
            Reason::QuarantineBlocksNetwork { threshold } => write!(
                f,
                "score {} is below the minimum threshold {threshold}: connections blocked",
                self.score
            ),
        }?;
        if self.mode == Mode::Shadow {
            f.write_str(" [shadow mode: recorded, not enforced]")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct ToolRule {
    pattern: Glob,
    min_score: Option<i32>,
    limit: Option<Limit>,
}

/// A compiled policy.
#[derive(Clone, Debug)]
pub struct Policy {
    spec: PolicySpec,
    version: String,
    trust: TrustConfig,
    preset_denied: GlobSet,
    preset_read_only: GlobSet,
    allow: GlobSet,
    deny: GlobSet,
    rules: Vec<ToolRule>,
    global_limit: Option<Limit>,
    peers: GlobSet,
    exec: Vec<ExecRule>,
    files: Vec<FileRule>,
    network: Vec<NetworkRule>,
}

/// What an MCP call asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// `tools/call`: the name is a tool's.
    Tool,
    /// `prompts/get`: the name is a prompt's.
    Prompt,
    /// `resources/read`: the name is a resource URI.
    Resource,
}

impl CallKind {
    /// The MCP method of this kind of call.
    pub const fn method(self) -> &'static str {
        match self {
            Self::Tool => "tools/call",
            Self::Prompt => "prompts/get",
            Self::Resource => "resources/read",
        }
    }

    /// The kind of call an MCP method is, when it is one that is decided.
    pub fn of_method(method: &str) -> Option<Self> {
        match method {
            "tools/call" => Some(Self::Tool),
            "prompts/get" => Some(Self::Prompt),
            "resources/read" => Some(Self::Resource),
            _ => None,
        }
    }
}

/// A peer, as the registry knows it.
#[derive(Clone, Copy, Debug)]
pub struct PeerRef<'a> {
    pub did: &'a str,
    /// AgentIdentity namespace and name, when known.
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

fn name_pattern_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 253
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/@*-".contains(&b))
}

fn check_patterns(field: &str, patterns: &[String]) -> Result<(), PolicyError> {
    for (i, p) in patterns.iter().enumerate() {
        if !name_pattern_ok(p) {
            return Err(PolicyError::BadPattern {
                field: format!("{field}[{i}]"),
                pattern: p.clone(),
            });
        }
    }
    Ok(())
}

fn check_limit(field: String, spec: RateLimitSpec) -> Result<Limit, PolicyError> {
    if !(1..=1_000_000).contains(&spec.requests) || !(1..=86_400).contains(&spec.period_seconds) {
        return Err(PolicyError::BadRateLimit {
            field,
            requests: spec.requests,
            period_seconds: spec.period_seconds,
        });
    }
    Limit::from_spec(spec).ok_or(PolicyError::BadRateLimit {
        field,
        requests: spec.requests,
        period_seconds: spec.period_seconds,
    })
}

fn check_penalty(field: &str, action: BehaviorAction, penalty: i32) -> Result<(), PolicyError> {
    if !(0..=MAX_SCORE).contains(&penalty) {
        return Err(PolicyError::BadPenalty {
            field: field.into(),
            value: penalty,
        });
    }
    if action == BehaviorAction::Allow && penalty != 0 {
        return Err(PolicyError::AllowWithPenalty {
            field: field.into(),
        });
    }
    Ok(())
}

/// Tool-name patterns in canonical spelling ([`canonical_name`]).
fn canonical_set<S: AsRef<str>>(patterns: &[S]) -> GlobSet {
    let canonical: Vec<String> = patterns
        .iter()
        .map(|p| canonical_name(p.as_ref()).into_owned())
        .collect();
    GlobSet::new(&canonical)
}

/// Longest executable pattern, in bytes: the kernel's deny key holds 240 bytes of path, its NUL
/// included (`EXEC_KEY_PATH` in `bpf/probe.h`).
pub const EXEC_PATTERN_MAX: usize = 239;

/// Whether `pattern` is an executable pattern with one meaning here and in the kernel: an
/// absolute path matched exactly, or a prefix ended by its only `*`, of at most
/// [`EXEC_PATTERN_MAX`] bytes. The kernel compares exact paths and prefixes only: a `*`
/// elsewhere would be a wildcard here and a literal there.
pub fn exec_pattern_ok(pattern: &str) -> bool {
    let literal = pattern.strip_suffix('*').unwrap_or(pattern);
    literal.starts_with('/') && !literal.contains(['*', '\0']) && pattern.len() <= EXEC_PATTERN_MAX
}

fn check_path(field: &str, path: &str) -> Result<(), PolicyError> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 255 {
        return Err(PolicyError::BadPath {
            field: field.into(),
            path: path.into(),
        });
    }
    Ok(())
}

impl Policy {
    /// Check and compile a policy. The error names the offending field.
    pub fn compile(spec: PolicySpec) -> Result<Self, PolicyError> {
        let t = &spec.trust;
        let trust = TrustConfig::new(
            t.initial_score,
            t.decay_rate,
            t.decay_floor,
            t.min_threshold,
            t.signals.clone(),
        )?;
        if !(0..=16).contains(&spec.max_delegation_depth) {
            return Err(PolicyError::MaxDepth(spec.max_delegation_depth));
        }
        check_patterns("spec.tools.allow", &spec.tools.allow)?;
        check_patterns("spec.tools.deny", &spec.tools.deny)?;
        check_patterns("spec.allowedPeers", &spec.allowed_peers)?;
        if let Some(score) = spec.min_peer_score
            && !(0..=MAX_SCORE).contains(&score)
        {
            return Err(PolicyError::BadScore {
                field: "spec.minPeerScore".into(),
                value: score,
            });
        }
        let mut rules = Vec::with_capacity(spec.tools.rules.len());
        for (i, rule) in spec.tools.rules.iter().enumerate() {
            let field = format!("spec.tools.rules[{i}]");
            if !name_pattern_ok(&rule.tool) {
                return Err(PolicyError::BadPattern {
                    field: format!("{field}.tool"),
                    pattern: rule.tool.clone(),
                });
            }
            if rule.min_score.is_none() && rule.rate_limit.is_none() {
                return Err(PolicyError::EmptyToolRule { field });
            }
            if let Some(score) = rule.min_score
                && !(0..=MAX_SCORE).contains(&score)
            {
                return Err(PolicyError::BadScore {
                    field: format!("{field}.minScore"),
                    value: score,
                });
            }
            let limit = rule
                .rate_limit
                .map(|l| check_limit(format!("{field}.rateLimit"), l))
                .transpose()?;
            rules.push(ToolRule {
                pattern: Glob::new(&canonical_name(&rule.tool)),
                min_score: rule.min_score,
                limit,
            });
        }
        let global_limit = spec
            .tools
            .rate_limit
            .map(|l| check_limit("spec.tools.rateLimit".into(), l))
            .transpose()?;

        let b = &spec.behavior;
        let mut exec = Vec::with_capacity(b.exec.len());
        for (i, r) in b.exec.iter().enumerate() {
            let field = format!("spec.behavior.exec[{i}]");
            if !exec_pattern_ok(&r.path) {
                return Err(PolicyError::BadExecPath {
                    field: format!("{field}.path"),
                    path: r.path.clone(),
                });
            }
            check_penalty(&format!("{field}.penalty"), r.action, r.penalty)?;
            exec.push(ExecRule {
                pattern: Glob::new(&r.path),
                action: r.action,
                penalty: r.penalty,
            });
        }
        let mut files = Vec::with_capacity(b.files.len());
        for (i, r) in b.files.iter().enumerate() {
            let field = format!("spec.behavior.files[{i}]");
            check_path(&format!("{field}.pathPrefix"), &r.path_prefix)?;
            check_penalty(&format!("{field}.penalty"), r.action, r.penalty)?;
            files.push(FileRule::new(&r.path_prefix, r.access, r.action, r.penalty));
        }
        let mut network = Vec::with_capacity(b.network.len());
        for (i, r) in b.network.iter().enumerate() {
            let field = format!("spec.behavior.network[{i}]");
            let cidr = Cidr::parse(&r.cidr).ok_or_else(|| PolicyError::BadCidr {
                field: format!("{field}.cidr"),
                cidr: r.cidr.clone(),
            })?;
            let mut ports = Vec::with_capacity(r.ports.len());
            for (j, &port) in r.ports.iter().enumerate() {
                let port = u16::try_from(port)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| PolicyError::BadPort {
                        field: format!("{field}.ports[{j}]"),
                        port,
                    })?;
                ports.push(port);
            }
            ports.sort_unstable();
            ports.dedup();
            check_penalty(&format!("{field}.penalty"), r.action, r.penalty)?;
            network.push(NetworkRule {
                source: r.cidr.clone().into(),
                cidr,
                ports: ports.into(),
                action: r.action,
                penalty: r.penalty,
            });
        }
        let a = &b.anomalies;
        for (name, value) in [
            ("newExecutable", a.new_executable),
            ("newDestination", a.new_destination),
            ("sensitiveWrite", a.sensitive_write),
            ("unobserved", a.unobserved),
        ] {
            if !(0..=MAX_SCORE).contains(&value) {
                return Err(PolicyError::BadPenalty {
                    field: format!("spec.behavior.anomalies.{name}"),
                    value,
                });
            }
        }
        for (i, p) in a.sensitive_paths.iter().enumerate() {
            check_path(&format!("spec.behavior.anomalies.sensitivePaths[{i}]"), p)?;
        }
        if !(0..=604_800).contains(&a.learning_period_seconds) {
            return Err(PolicyError::BadLearningPeriod {
                field: "spec.behavior.anomalies.learningPeriodSeconds".into(),
                value: a.learning_period_seconds,
            });
        }

        let version = policy_version(&spec);
        Ok(Self {
            preset_denied: canonical_set(STANDARD_DENIED_TOOLS),
            preset_read_only: canonical_set(STRICT_READ_ONLY_TOOLS),
            allow: canonical_set(&spec.tools.allow),
            deny: canonical_set(&spec.tools.deny),
            peers: GlobSet::new(&spec.allowed_peers),
            rules,
            global_limit,
            exec,
            files,
            network,
            trust,
            version,
            spec,
        })
    }

    /// The policy's version: the first 16 hex digits of sha256 over its canonical JSON. Audit
    /// entries cover it; the operator writes it to `status.policyVersion`.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    pub fn trust(&self) -> &TrustConfig {
        &self.trust
    }

    pub fn mode(&self) -> Mode {
        self.spec.mode
    }

    pub fn max_delegation_depth(&self) -> usize {
        self.spec.max_delegation_depth.max(0) as usize
    }

    /// Fresh rate-limit state for one identity.
    pub fn new_rate_state(&self, now: Timestamp) -> RateState {
        RateState {
            global: self.global_limit.as_ref().map(|l| Bucket::full(l, now)),
            per_rule: self
                .rules
                .iter()
                .map(|r| r.limit.as_ref().map(|l| Bucket::full(l, now)))
                .collect(),
        }
    }

    fn decision<'p>(
        &'p self,
        denied: bool,
        reason: Reason<'p>,
        score: i32,
        penalty: i32,
    ) -> Decision<'p> {
        let effect = match (denied, self.spec.mode) {
            (false, _) => Effect::Allow,
            (true, Mode::Enforce) => Effect::Deny,
            (true, Mode::Shadow) => Effect::WouldDeny,
        };
        Decision {
            effect,
            reason,
            score,
            preset: self.spec.preset,
            mode: self.spec.mode,
            penalty,
        }
    }

    /// Decide a tool call by an identity at `score`; spends rate-limit room when allowed.
    /// The name is matched in its canonical spelling ([`canonical_name`]).
    pub fn decide_tool(
        &self,
        tool: &str,
        score: i32,
        rate: &mut RateState,
        now: Timestamp,
    ) -> Decision<'_> {
        self.decide_call(CallKind::Tool, tool, score, rate, now)
    }

    /// Decide an MCP call (`tools/call`, `prompts/get`, `resources/read`) by an identity at
    /// `score`; spends rate-limit room when allowed. The same rules govern all three, with one
    /// difference: the presets judge tool names only. Getting a prompt or reading a resource
    /// runs nothing, so a preset allows it; `tools.deny`, `tools.allow` (under `strict`),
    /// per-rule minimum scores, rate limits and quarantine apply to every kind. Names and
    /// resource URIs are matched in canonical spelling, patterns too ([`canonical_name`]): a
    /// rule cannot be escaped by case or separators (`FILE:///etc/x` is `file:///etc/x`).
    pub fn decide_call(
        &self,
        kind: CallKind,
        name: &str,
        score: i32,
        rate: &mut RateState,
        now: Timestamp,
    ) -> Decision<'_> {
        let canonical = canonical_name(name);
        let tool: &str = &canonical;
        let quarantined = score < self.trust.min_threshold;
        if quarantined && self.spec.quarantine.deny_tools {
            return self.decision(
                true,
                Reason::Quarantined {
                    threshold: self.trust.min_threshold,
                },
                score,
                0,
            );
        }
        if let Some((index, g)) = self.deny.first_match(tool) {
            return self.decision(
                true,
                Reason::DenyList {
                    index,
                    pattern: g.as_str(),
                },
                score,
                0,
            );
        }
        let allowed_by = match self.allow.first_match(tool) {
            Some((index, g)) => Reason::AllowList {
                index,
                pattern: g.as_str(),
            },
            None if kind != CallKind::Tool => Reason::PresetAllows {
                preset: self.spec.preset,
            },
            None => match self.spec.preset {
                Preset::Permissive => Reason::PresetAllows {
                    preset: Preset::Permissive,
                },
                Preset::Standard => match self.preset_denied.first_match(tool) {
                    Some((_, g)) => {
                        return self.decision(
                            true,
                            Reason::PresetDenies {
                                preset: Preset::Standard,
                                pattern: g.as_str(),
                            },
                            score,
                            0,
                        );
                    }
                    None => Reason::PresetAllows {
                        preset: Preset::Standard,
                    },
                },
                Preset::Strict => match self.preset_read_only.first_match(tool) {
                    Some(_) => Reason::PresetAllows {
                        preset: Preset::Strict,
                    },
                    None => return self.decision(true, Reason::PresetNotReadOnly, score, 0),
                },
            },
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(required) = rule.min_score
                && score < required
                && rule.pattern.matches(tool)
            {
                return self.decision(
                    true,
                    Reason::BelowMinScore {
                        rule: i,
                        pattern: rule.pattern.as_str(),
                        required,
                    },
                    score,
                    0,
                );
            }
        }
        // Rate limits: check every applicable bucket, then spend from all of them.
        if let (Some(limit), Some(bucket)) = (&self.global_limit, rate.global.as_mut())
            && !bucket.has_room(limit, now)
        {
            return self.rate_limited(None, limit, score);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if let (Some(limit), Some(Some(bucket))) = (&rule.limit, rate.per_rule.get_mut(i))
                && rule.pattern.matches(tool)
                && !bucket.has_room(limit, now)
            {
                return self.rate_limited(Some(i), limit, score);
            }
        }
        if let (Some(limit), Some(bucket)) = (&self.global_limit, rate.global.as_mut()) {
            bucket.spend(limit);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if let (Some(limit), Some(Some(bucket))) = (&rule.limit, rate.per_rule.get_mut(i))
                && rule.pattern.matches(tool)
            {
                bucket.spend(limit);
            }
        }
        self.decision(false, allowed_by, score, 0)
    }

    fn rate_limited(&self, rule: Option<usize>, limit: &Limit, score: i32) -> Decision<'_> {
        let reason = Reason::RateLimited {
            rule,
            requests: limit.requests,
            period_seconds: limit.period_ms / 1000,
        };
        self.decision(true, reason, score, 0)
    }

    /// Decide whether an identity may talk to `peer`, whose registered score is `peer_score`.
    /// `local_namespace` is the namespace of the policy; a bare name in `allowedPeers` means an
    /// AgentIdentity of that namespace, `ns/name` one of another, `did:…` a DID.
    pub fn decide_peer(
        &self,
        peer: PeerRef<'_>,
        peer_score: i32,
        local_namespace: &str,
    ) -> Decision<'_> {
        if let Some(required) = self.spec.min_peer_score
            && peer_score < required
        {
            return self.decision(true, Reason::PeerScoreTooLow { required }, peer_score, 0);
        }
        if self.peers.is_empty() {
            return self.decision(
                false,
                Reason::PeerAllowed {
                    index: None,
                    pattern: None,
                },
                peer_score,
                0,
            );
        }
        for (index, glob) in self.peers.iter().enumerate() {
            let pattern = glob.as_str();
            let hit = if pattern.starts_with("did:") {
                glob.matches(peer.did)
            } else if pattern.contains('/') {
                match (peer.namespace, peer.name) {
                    (Some(ns), Some(name)) => glob_matches_qualified(glob, ns, name),
                    _ => false,
                }
            } else {
                peer.namespace == Some(local_namespace)
                    && peer.name.is_some_and(|n| glob.matches(n))
            };
            if hit {
                return self.decision(
                    false,
                    Reason::PeerAllowed {
                        index: Some(index),
                        pattern: Some(pattern),
                    },
                    peer_score,
                    0,
                );
            }
        }
        self.decision(true, Reason::PeerNotAllowed, peer_score, 0)
    }

    /// Decide an executed program. `Deny` rules deny (or would deny in shadow mode); `alert`
    /// rules allow and carry their penalty.
    pub fn decide_exec(&self, path: &str, score: i32) -> Decision<'_> {
        let hit = best(
            &self.exec,
            |r| r.pattern.matches(path),
            |r| (r.pattern.literal_len(), strictness(r.action)),
        );
        match hit {
            Some((index, r)) => self.behavior_decision(
                RuleKind::Exec,
                index,
                r.pattern.as_str(),
                r.action,
                r.penalty,
                score,
            ),
            None => self.decision(
                false,
                Reason::NoBehaviorRule {
                    kind: RuleKind::Exec,
                },
                score,
                0,
            ),
        }
    }

    /// Decide a file open.
    pub fn decide_file(&self, path: &str, access: FileAccess, score: i32) -> Decision<'_> {
        let hit = best(
            &self.files,
            |r| r.matches(path, access),
            |r| (r.prefix.len(), strictness(r.action)),
        );
        match hit {
            Some((index, r)) => {
                let pattern = self.spec.behavior.files[index].path_prefix.as_str();
                self.behavior_decision(RuleKind::File, index, pattern, r.action, r.penalty, score)
            }
            None => self.decision(
                false,
                Reason::NoBehaviorRule {
                    kind: RuleKind::File,
                },
                score,
                0,
            ),
        }
    }

    /// Decide an outbound connection. A quarantined identity's connections are denied when
    /// `quarantine.blockNetwork` is set.
    pub fn decide_connect(&self, ip: IpAddr, port: u16, score: i32) -> Decision<'_> {
        if score < self.trust.min_threshold && self.spec.quarantine.block_network {
            return self.decision(
                true,
                Reason::QuarantineBlocksNetwork {
                    threshold: self.trust.min_threshold,
                },
                score,
                0,
            );
        }
        let hit = best(
            &self.network,
            |r| r.matches(ip, port),
            |r| {
                (
                    usize::from(r.cidr.prefix_len()) * 2 + usize::from(!r.ports.is_empty()),
                    strictness(r.action),
                )
            },
        );
        match hit {
            Some((index, r)) => self.behavior_decision(
                RuleKind::Network,
                index,
                &r.source,
                r.action,
                r.penalty,
                score,
            ),
            None => self.decision(
                false,
                Reason::NoBehaviorRule {
                    kind: RuleKind::Network,
                },
                score,
                0,
            ),
        }
    }

    fn behavior_decision<'p>(
        &'p self,
        kind: RuleKind,
        index: usize,
        pattern: &'p str,
        action: BehaviorAction,
        penalty: i32,
        score: i32,
    ) -> Decision<'p> {
        let reason = Reason::BehaviorRule {
            kind,
            index,
            pattern,
            action,
        };
        self.decision(action == BehaviorAction::Deny, reason, score, penalty)
    }
}

fn glob_matches_qualified(glob: &Glob, namespace: &str, name: &str) -> bool {
    // Rare path (peer checks happen once per handshake, not per call): a small allocation.
    glob.matches(&format!("{namespace}/{name}"))
}

/// First 16 hex digits of sha256 over the spec's canonical JSON (fields in declaration order).
pub fn policy_version(spec: &PolicySpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(json);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `path` is `prefix` or lies under it (`/etc` covers `/etc/passwd`, not `/etcetera`).
pub fn path_is_under(prefix: &str, path: &str) -> bool {
    behavior::path_under(prefix, false, path)
}
