//! `agentmesh audit tail|verify|export`: the audit hash chain, read straight from its store
//! (Redis or PostgreSQL, configured by the operator's own variables), so that it can be checked
//! without trusting the operator that wrote it.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use agentmesh_store::{AuditStore, Remote, StoreError};
use agentmesh_trust::Timestamp;
use agentmesh_trust::audit::{AuditDecision, AuditEntry, event_type, verify_store};
use anyhow::{Context, bail};
use k8s_openapi::jiff;
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Print the newest audit entries that match the filters; with --follow, then each new one.
    ///
    /// Columns: SEQ, TIME, IDENTITY, DECISION, SUBJECT, RULE, SCORE. `-o json`: one entry per
    /// line, as stored ({seq, at (ms since the epoch), identity, subject, decision, rule, score,
    /// policyVersion, detail, prevHash, hash}).
    Tail(TailArgs),
    /// Check the whole chain in the store: every hash, every link, the sequence, the anchor of
    /// the oldest entry (the genesis or a retention checkpoint) and the head. Exits 1 naming the
    /// first bad entry.
    Verify(StoreArgs),
    /// Print the entries that match the filters as CloudEvents (JSON lines, structured mode),
    /// oldest first.
    ///
    /// type: ai.agentmesh.tool.invoked (allowed tool call), ai.agentmesh.tool.blocked (denied
    /// tool call), ai.agentmesh.policy.violation (denied prompt or resource, or a would-deny in
    /// shadow mode), ai.agentmesh.policy.evaluation (allowed prompt or resource),
    /// ai.agentmesh.trust.handshake (a handshake, either way), ai.agentmesh.trust.score.updated
    /// (quarantine, release), ai.agentmesh.audit.retention (a retention checkpoint). id: the
    /// entry's hash; source: the identity; subject: what was attempted; data: the entry.
    Export(ExportArgs),
}

/// Where the store is: the operator's variables, or flags.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// The store: redis or postgres (the memory backend lives in the operator's process and
    /// cannot be read from outside).
    #[arg(long, env = "AGENTMESH_STORAGE_BACKEND")]
    backend: String,
    #[arg(long, env = "AGENTMESH_REDIS_HOST", default_value = "localhost")]
    redis_host: String,
    #[arg(long, env = "AGENTMESH_REDIS_PORT", default_value_t = 6379)]
    redis_port: u16,
    #[arg(long, env = "AGENTMESH_REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,
    #[arg(long, env = "AGENTMESH_POSTGRES_HOST", default_value = "localhost")]
    postgres_host: String,
    #[arg(long, env = "AGENTMESH_POSTGRES_PORT", default_value_t = 5432)]
    postgres_port: u16,
    #[arg(long, env = "AGENTMESH_POSTGRES_USER", default_value = "agentmesh")]
    postgres_user: String,
    #[arg(long, env = "AGENTMESH_POSTGRES_DATABASE", default_value = "agentmesh")]
    postgres_database: String,
    #[arg(long, env = "AGENTMESH_POSTGRES_PASSWORD", hide_env_values = true)]
    postgres_password: Option<String>,
}

/// Which entries.
#[derive(clap::Args, Clone, Default)]
pub struct Filters {
    /// Only this identity (`namespace/name`, as recorded).
    #[arg(long)]
    identity: Option<String>,
    /// Only these decisions (allow, deny, would-deny, quarantine, release, retention); repeat
    /// or separate with commas.
    #[arg(long, value_delimiter = ',', value_parser = decision)]
    decision: Vec<AuditDecision>,
    /// Only entries at or after this instant: RFC 3339 (2026-12-01T00:00:00Z) or a time ago
    /// (90s, 15m, 2h, 36h).
    #[arg(long, value_parser = instant)]
    since: Option<Timestamp>,
    /// Only entries before this instant (same forms as --since).
    #[arg(long, value_parser = instant)]
    until: Option<Timestamp>,
}

#[derive(clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    filters: Filters,
    /// How many of the newest matching entries to print first.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: usize,
    /// Then print each new matching entry as it is appended, until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    filters: Filters,
}

#[derive(clap::ValueEnum, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Json,
}

fn decision(text: &str) -> Result<AuditDecision, String> {
    AuditDecision::parse(text).ok_or_else(|| {
        let known: Vec<&str> = AuditDecision::ALL.iter().map(|d| d.as_str()).collect();
        format!("not a decision; one of {}", known.join(", "))
    })
}

/// An RFC 3339 instant, or a duration before now (`90s`, `15m`, `2h`).
fn instant(text: &str) -> Result<Timestamp, String> {
    if let Ok(at) = Timestamp::parse_rfc3339(text) {
        return Ok(at);
    }
    let ago: jiff::SignedDuration = text.parse().map_err(|_| {
        format!("{text:?} is neither an RFC 3339 instant (2026-12-01T00:00:00Z) nor a time ago (15m, 2h)")
    })?;
    let now = jiff::Timestamp::now().as_millisecond();
    let ago = i64::try_from(ago.as_millis()).map_err(|_| format!("{text:?} is too long ago"))?;
    Ok(Timestamp::from_millis(now - ago))
}

impl Filters {
    fn admits(&self, entry: &AuditEntry) -> bool {
        let r = &entry.record;
        self.identity.as_ref().is_none_or(|i| *i == r.identity)
            && (self.decision.is_empty() || self.decision.contains(&r.decision))
            && self.since.is_none_or(|since| r.at >= since)
            && self.until.is_none_or(|until| r.at < until)
    }
}

impl StoreArgs {
    fn store(&self) -> anyhow::Result<AuditStore> {
        let remote = match self.backend.as_str() {
            "redis" => Remote::Redis {
                host: self.redis_host.clone(),
                port: self.redis_port,
                password: self.redis_password.clone().filter(|p| !p.is_empty()),
            },
            "postgres" => Remote::Postgres {
                host: self.postgres_host.clone(),
                port: self.postgres_port,
                user: self.postgres_user.clone(),
                database: self.postgres_database.clone(),
                password: self.postgres_password.clone().filter(|p| !p.is_empty()),
            },
            "memory" => bail!(
                "AGENTMESH_STORAGE_BACKEND=memory: the memory backend's entries live in the operator's process and cannot be read from outside; install with storage.backend=redis or postgres to read them"
            ),
            other => {
                bail!("--backend (AGENTMESH_STORAGE_BACKEND) {other:?}: one of redis, postgres")
            }
        };
        Ok(AuditStore::remote(&remote))
    }
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            AuditCommand::Tail(args) => tail(args).await,
            AuditCommand::Verify(args) => verify(args).await,
            AuditCommand::Export(args) => export(args).await,
        }
    })
}

async fn read_all(store: &AuditStore) -> anyhow::Result<Vec<AuditEntry>> {
    store
        .read_all()
        .await
        .with_context(|| format!("reading the {} audit store", store.backend()))
}

async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.store()?;
    let entries = read_all(&store).await?;
    let matching: Vec<&AuditEntry> = entries.iter().filter(|e| args.filters.admits(e)).collect();
    let mut out = io::stdout().lock();
    if args.output == Output::Table {
        writeln!(
            out,
            "{:<8} {:<24} {:<28} {:<11} {:<32} {:<20} SCORE",
            "SEQ", "TIME", "IDENTITY", "DECISION", "SUBJECT", "RULE"
        )?;
    }
    for entry in &matching[matching.len().saturating_sub(args.lines)..] {
        print_entry(&mut out, entry, args.output)?;
    }
    out.flush()?;
    drop(out);
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut next = entries.last().map_or(0, |e| e.seq + 1);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let new = match store.read(next, 1000).await {
            Ok(new) => new,
            Err(StoreError::Unavailable(error)) => {
                eprintln!("warning: audit store unavailable ({error}); retrying");
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let mut out = io::stdout().lock();
        for entry in &new {
            next = entry.seq + 1;
            if args.filters.admits(entry) {
                print_entry(&mut out, entry, args.output)?;
            }
        }
        out.flush()?;
    }
}

fn print_entry(out: &mut impl Write, entry: &AuditEntry, output: Output) -> io::Result<()> {
    let r = &entry.record;
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string(entry)?),
        Output::Table => writeln!(
            out,
            "{:<8} {:<24} {:<28} {:<11} {:<32} {:<20} {}",
            entry.seq,
            r.at.to_rfc3339(),
            r.identity,
            r.decision.as_str(),
            r.subject,
            r.rule,
            r.score
        ),
    }
}

async fn verify(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let store = args.store()?;
    let entries = match store.read_all().await {
        Ok(entries) => entries,
        Err(error @ StoreError::Unreadable { .. }) => {
            println!("FAILED: {error}");
            return Ok(ExitCode::FAILURE);
        }
        Err(error) => return Err(error).context("reading the audit store"),
    };
    let head = store
        .head()
        .await
        .context("reading the audit store's head")?;
    match verify_store(&entries, Some(&head.hash)) {
        Ok(()) => {
            match (entries.first(), entries.last()) {
                (Some(first), Some(last)) => println!(
                    "verified: {} entries, sequence {}..={}, head {}",
                    entries.len(),
                    first.seq,
                    last.seq,
                    head.hash
                ),
                _ => println!("verified: the chain is empty"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            match error.index().and_then(|i| entries.get(i)) {
                Some(entry) => println!(
                    "FAILED at entry seq {} ({} {} {} at {}): {error}",
                    entry.seq,
                    entry.record.identity,
                    entry.record.decision.as_str(),
                    entry.record.subject,
                    entry.record.at.to_rfc3339()
                ),
                None => println!(
                    "FAILED: {error}; the store's head is {} (sequence {})",
                    head.hash, head.next_seq
                ),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// An entry as a CloudEvent (structured content mode, JSON).
pub fn cloud_event(entry: &AuditEntry) -> serde_json::Value {
    let r = &entry.record;
    json!({
        "specversion": "1.0",
        "id": entry.hash,
        "type": event_type(r),
        "source": r.identity,
        "subject": r.subject,
        "time": r.at.to_rfc3339(),
        "datacontenttype": "application/json",
        "data": {
            "seq": entry.seq,
            "decision": r.decision.as_str(),
            "rule": r.rule,
            "score": r.score,
            "policyVersion": r.policy_version,
            "detail": r.detail,
            "prevHash": entry.prev_hash,
            "hash": entry.hash,
        },
    })
}

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.store()?;
    let entries = read_all(&store).await?;
    let mut out = io::stdout().lock();
    for entry in entries.iter().filter(|e| args.filters.admits(e)) {
        writeln!(out, "{}", cloud_event(entry))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
