//! What `agentmesh trust status` shows of an AgentIdentity, with no client in it: one row per
//! identity, kubectl-style ages, tables with fitted or fixed widths, the JSON shape, and which
//! watch events change what the user sees. Everything here takes the current time as an argument.

use std::collections::{BTreeMap, BTreeSet};

use agentmesh_api::AgentIdentity;
use agentmesh_api::common::find_condition;
use agentmesh_api::identity::DecisionRecord;
use agentmesh_api::names::conditions::DELEGATION_VALID;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;
use serde::Serialize;

/// `--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Columns fitted to the content, long subjects and reasons shortened.
    #[default]
    Table,
    /// The table with PODS and DID, nothing shortened.
    Wide,
    /// JSON: an array, or one object per line with --watch.
    Json,
}

/// What a table cell shows for a value the identity does not have (yet), as kubectl does.
const NONE: &str = "<none>";
/// What a table cell shows for a value that does not apply.
const NOT_APPLICABLE: &str = "-";
/// Gap between two columns, as kubectl's.
const GAP: &str = "   ";

/// The identity's delegation as verified by the operator (the `DelegationValid` condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegationCheck {
    /// `true` when the condition is True, `false` when False, `None` while it is absent or
    /// Unknown (not verified yet).
    pub valid: Option<bool>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// One identity as `trust status` shows it, apart from the age of its last decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub score: Option<i32>,
    pub tier: Option<&'static str>,
    pub quarantined: bool,
    pub pods: i32,
    pub did: Option<String>,
    /// `None` when the identity has no `spec.delegation`.
    pub delegation: Option<DelegationCheck>,
    pub last_decision: Option<DecisionRecord>,
    /// Set on the row a watch prints for a deleted identity: its deletion timestamp, or when the
    /// watch learnt of the deletion.
    pub deleted_at: Option<Timestamp>,
}

impl Row {
    pub fn of(identity: &AgentIdentity) -> Self {
        let status = identity.status.clone().unwrap_or_default();
        let delegation = identity.spec.delegation.as_ref().map(|_| {
            let condition = find_condition(&status.conditions, DELEGATION_VALID);
            let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
            DelegationCheck {
                valid: condition.and_then(|c| match c.status.as_str() {
                    "True" => Some(true),
                    "False" => Some(false),
                    _ => None,
                }),
                reason: condition.and_then(|c| non_empty(&c.reason)),
                message: condition.and_then(|c| non_empty(&c.message)),
            }
        });
        Self {
            namespace: identity.metadata.namespace.clone().unwrap_or_default(),
            name: identity.metadata.name.clone().unwrap_or_default(),
            score: status.trust_score,
            tier: status.tier.map(|t| t.as_str()),
            quarantined: status.quarantined,
            pods: status.pods_matched,
            did: status.did,
            delegation,
            last_decision: status.last_decision,
            deleted_at: None,
        }
    }

    /// The row for an identity a watch saw deleted at `now`.
    pub fn deleted(identity: &AgentIdentity, now: Timestamp) -> Self {
        let at = identity
            .metadata
            .deletion_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        Self {
            deleted_at: Some(at),
            ..Self::of(identity)
        }
    }

    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// The object `-o json` prints; the fields are documented in `trust status --help`.
    pub fn json(&self) -> JsonRow<'_> {
        JsonRow {
            namespace: &self.namespace,
            name: &self.name,
            score: self.score,
            tier: self.tier,
            quarantined: self.quarantined,
            pods_matched: self.pods,
            did: self.did.as_deref(),
            delegation: self.delegation.as_ref().map(|d| JsonDelegation {
                valid: d.valid,
                reason: d.reason.as_deref(),
                message: d.message.as_deref(),
            }),
            last_decision: self.last_decision.as_ref().map(|d| JsonDecision {
                at: &d.at,
                decision: d.decision.as_str(),
                subject: &d.subject,
                reason: &d.reason,
            }),
            deleted: self.deleted_at.is_some(),
        }
    }

    /// Whether `other` would look the same in `output`, the age column aside. A new decision
    /// (another `at`) counts as a change even when it repeats the last one.
    fn looks_like(&self, other: &Self, output: Output) -> bool {
        match output {
            Output::Wide | Output::Json => self == other,
            Output::Table => Self {
                pods: other.pods,
                did: other.did.clone(),
                ..self.clone()
            }
            .eq(other),
        }
    }

    fn cell(&self, column: Column, now: Timestamp, shorten: bool) -> String {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| NONE.into());
        let text = |s: &str, max: usize| {
            let s = printable(s);
            match s.is_empty() {
                true => NOT_APPLICABLE.into(),
                false if shorten => truncate(&s, max),
                false => s,
            }
        };
        let decision = self.last_decision.as_ref();
        match column {
            Column::Namespace => self.namespace.clone(),
            Column::Name => self.name.clone(),
            Column::Score => or_none(self.score.map(|s| s.to_string())),
            Column::Tier => or_none(self.tier.map(str::to_owned)),
            Column::Quarantined => self.quarantined.to_string(),
            Column::Pods => self.pods.to_string(),
            Column::Did => or_none(self.did.clone()),
            Column::Delegation => match &self.delegation {
                None => NOT_APPLICABLE.into(),
                Some(DelegationCheck {
                    valid: Some(true), ..
                }) => "valid".into(),
                Some(DelegationCheck { valid: None, .. }) => "pending".into(),
                Some(DelegationCheck {
                    valid: Some(false),
                    reason,
                    message,
                }) => {
                    let why = reason.as_ref().or(message.as_ref());
                    text(
                        &format!("refused: {}", why.map_or("unknown", String::as_str)),
                        DELEGATION_MAX,
                    )
                }
            },
            Column::Decision if self.deleted_at.is_some() => "deleted".into(),
            Column::Last => match (self.deleted_at, decision) {
                (Some(at), _) => human_age(now.as_second() - at.as_second()),
                (None, Some(d)) => human_age(now.as_second() - d.at.0.as_second()),
                (None, None) => NOT_APPLICABLE.into(),
            },
            _ if self.deleted_at.is_some() => NOT_APPLICABLE.into(),
            Column::Decision => {
                decision.map_or_else(|| NONE.into(), |d| d.decision.as_str().into())
            }
            Column::Subject => {
                decision.map_or_else(|| NOT_APPLICABLE.into(), |d| text(&d.subject, SUBJECT_MAX))
            }
            Column::Reason => {
                decision.map_or_else(|| NOT_APPLICABLE.into(), |d| text(&d.reason, REASON_MAX))
            }
        }
    }
}

/// `-o json`'s object. A struct rather than a `serde_json::Value`, which would sort the fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonRow<'a> {
    namespace: &'a str,
    name: &'a str,
    score: Option<i32>,
    tier: Option<&'a str>,
    quarantined: bool,
    pods_matched: i32,
    did: Option<&'a str>,
    delegation: Option<JsonDelegation<'a>>,
    last_decision: Option<JsonDecision<'a>>,
    deleted: bool,
}

#[derive(Serialize)]
struct JsonDelegation<'a> {
    valid: Option<bool>,
    reason: Option<&'a str>,
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonDecision<'a> {
    at: &'a Time,
    decision: &'a str,
    subject: &'a str,
    reason: &'a str,
}

/// Longest SUBJECT, REASON and DELEGATION cells in `-o table`, in characters.
pub const SUBJECT_MAX: usize = 48;
pub const REASON_MAX: usize = 60;
pub const DELEGATION_MAX: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Namespace,
    Name,
    Score,
    Tier,
    Quarantined,
    Pods,
    Did,
    Delegation,
    Decision,
    Last,
    Subject,
    Reason,
}

impl Column {
    /// The columns of `output` (table or wide), NAMESPACE first with `--all-namespaces`. The free
    /// text (SUBJECT, REASON) comes last so that a long value does not push other columns.
    pub fn all(output: Output, all_namespaces: bool) -> Vec<Self> {
        let mut columns = Vec::new();
        if all_namespaces {
            columns.push(Self::Namespace);
        }
        columns.extend([Self::Name, Self::Score, Self::Tier, Self::Quarantined]);
        if output == Output::Wide {
            columns.extend([Self::Pods, Self::Did]);
        }
        columns.extend([
            Self::Delegation,
            Self::Decision,
            Self::Last,
            Self::Subject,
            Self::Reason,
        ]);
        columns
    }

    pub fn header(self) -> &'static str {
        match self {
            Self::Namespace => "NAMESPACE",
            Self::Name => "NAME",
            Self::Score => "SCORE",
            Self::Tier => "TIER",
            Self::Quarantined => "QUARANTINED",
            Self::Pods => "PODS",
            Self::Did => "DID",
            Self::Delegation => "DELEGATION",
            Self::Decision => "DECISION",
            Self::Last => "LAST",
            Self::Subject => "SUBJECT",
            Self::Reason => "REASON",
        }
    }

    /// The least width a watch gives the column, so that rows printed later, with other
    /// values, still line up: the longest tier, decision, DID; room for typical names/subjects.
    fn watch_min(self) -> usize {
        match self {
            Self::Namespace => 16,
            Self::Name => 20,
            Self::Score => 5,
            Self::Tier => "probationary".len(),
            Self::Quarantined => "QUARANTINED".len(),
            Self::Pods => 4,
            Self::Did => "did:mesh:".len() + 32,
            Self::Delegation => 24,
            Self::Decision => "would-deny".len(),
            Self::Last => 6,
            Self::Subject => 32,
            Self::Reason => 0,
        }
    }
}

/// Columns and their widths; the last column is never padded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    columns: Vec<Column>,
    widths: Vec<usize>,
    shorten: bool,
}

impl Table {
    /// Widths fitted to the header and `rows`.
    pub fn fitted(output: Output, all_namespaces: bool, rows: &[Row], now: Timestamp) -> Self {
        let columns = Column::all(output, all_namespaces);
        let shorten = output == Output::Table;
        let widths = columns
            .iter()
            .map(|&c| {
                rows.iter()
                    .map(|r| width(&r.cell(c, now, shorten)))
                    .chain([width(c.header())])
                    .max()
                    .unwrap_or_default()
            })
            .collect();
        Self {
            columns,
            widths,
            shorten,
        }
    }

    /// Widths for a watch: fitted to the first list, but at least each column's minimum. A
    /// longer value later pushes the rest of its line to the right, as in `kubectl get -w`.
    pub fn for_watch(output: Output, all_namespaces: bool, rows: &[Row], now: Timestamp) -> Self {
        let mut table = Self::fitted(output, all_namespaces, rows, now);
        for (width, column) in table.widths.iter_mut().zip(&table.columns) {
            *width = (*width).max(column.watch_min());
        }
        table
    }

    pub fn header(&self) -> String {
        self.line(self.columns.iter().map(|c| c.header().to_owned()))
    }

    pub fn row(&self, row: &Row, now: Timestamp) -> String {
        self.line(self.columns.iter().map(|&c| row.cell(c, now, self.shorten)))
    }

    fn line(&self, cells: impl Iterator<Item = String>) -> String {
        let mut line = String::new();
        let last = self.columns.len().saturating_sub(1);
        for (i, (cell, &width)) in cells.zip(&self.widths).enumerate() {
            line.push_str(&cell);
            if i < last {
                line.extend(std::iter::repeat_n(
                    ' ',
                    width.saturating_sub(self::width(&cell)),
                ));
                line.push_str(GAP);
            }
        }
        line.truncate(line.trim_end().len());
        line
    }
}

/// Rows in the order `trust status` prints them: by namespace, then name.
pub fn sorted(identities: &[AgentIdentity]) -> Vec<Row> {
    let mut rows: Vec<Row> = identities.iter().map(Row::of).collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// Which watch events change what is shown: the rows to print for each.
#[derive(Debug)]
pub struct Changes {
    output: Output,
    shown: BTreeMap<(String, String), Row>,
    /// Identities listed since the watch (re)started listing, until its list is complete.
    relisted: Option<BTreeSet<(String, String)>>,
}

impl Changes {
    /// Starts from the rows already printed.
    pub fn new(output: Output, shown: &[Row]) -> Self {
        Self {
            output,
            shown: shown.iter().map(|r| (r.key(), r.clone())).collect(),
            relisted: None,
        }
    }

    /// The rows to print for `event`: a new or changed identity's row; a deleted identity's
    /// row marked deleted, also for those a re-list no longer returns.
    pub fn observe(&mut self, event: Event<AgentIdentity>, now: Timestamp) -> Vec<Row> {
        match event {
            Event::Init => {
                self.relisted = Some(BTreeSet::new());
                Vec::new()
            }
            Event::InitApply(identity) | Event::Apply(identity) => {
                let row = Row::of(&identity);
                if let Some(relisted) = &mut self.relisted {
                    relisted.insert(row.key());
                }
                match self.shown.get(&row.key()) {
                    Some(shown) if shown.looks_like(&row, self.output) => Vec::new(),
                    _ => {
                        self.shown.insert(row.key(), row.clone());
                        vec![row]
                    }
                }
            }
            Event::Delete(identity) => {
                let row = Row::deleted(&identity, now);
                self.shown.remove(&row.key());
                vec![row]
            }
            Event::InitDone => {
                let Some(relisted) = self.relisted.take() else {
                    return Vec::new();
                };
                let gone: Vec<_> = self
                    .shown
                    .keys()
                    .filter(|k| !relisted.contains(*k))
                    .cloned()
                    .collect();
                gone.iter()
                    .filter_map(|k| self.shown.remove(k))
                    .map(|row| Row {
                        deleted_at: Some(now),
                        ..row
                    })
                    .collect()
            }
        }
    }
}

/// kubectl's ages (apimachinery's `duration.HumanDuration`): `45s`, `2m5s`, `12m`, `3h20m`,
/// `20h`, `3d4h`, `40d`, `2y10d`, `9y`; `<invalid>` for a time more than a second ahead.
pub fn human_age(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// `s` cut to at most `max` characters (not bytes), the last one `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Control characters (newlines, tabs, escapes) as spaces, so that a status value cannot break
/// a table line or drive the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Width of a cell in characters (every character counted as one column).
fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests;
