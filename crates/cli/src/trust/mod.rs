//! `agentmesh trust status`: the live view of trust in a cluster, one row per AgentIdentity with
//! its score, tier, delegation and last decision. What a row shows is decided in [`view`], with
//! no cluster; [`cluster`] only fetches and watches.

mod cluster;
mod view;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;

use view::{Changes, Output, Row, Table};

#[derive(clap::Subcommand)]
pub enum TrustCommand {
    /// Show each AgentIdentity's trust and last decision; with --watch, a new line per change.
    ///
    /// Table columns: NAME, SCORE (0-1000), TIER, QUARANTINED, DELEGATION (`-` without
    /// spec.delegation, `valid`, `pending` until the operator has checked it, `refused: <reason>`
    /// from the DelegationValid condition), DECISION (allow, deny, would-deny, anomaly, blocked),
    /// LAST (how long ago it was taken), SUBJECT and REASON (of the last decision, shortened to
    /// 48 and 60 characters). --all-namespaces adds NAMESPACE first; `-o wide` adds PODS (pods
    /// matched) and DID and shortens nothing. `<none>`: not known yet; `-`: does not apply.
    ///
    /// --watch prints the list, then one line each time what an identity's line shows changes
    /// (its age aside; a new decision is a change even when it repeats the last one). A deleted
    /// identity gets a last line with DECISION `deleted` and LAST the time since its deletion.
    /// Columns keep the widths of the first list (with minimums); Ctrl-C or --duration ends the
    /// watch with status 0.
    ///
    /// `-o json`: an array (one object per line with --watch) of {namespace, name, score (null
    /// when not computed yet), tier (null likewise), quarantined, podsMatched, did (null until
    /// the key is ready), delegation (null without spec.delegation, else {valid: true|false|null
    /// (null: not checked yet), reason, message} from the DelegationValid condition),
    /// lastDecision (null, or {at (RFC 3339), decision, subject, reason}), deleted (true only on
    /// the line a watch prints for a deleted identity)}.
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Namespace to show. Default: the kubeconfig context's namespace.
    #[arg(short, long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Show the identities of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// After the list, print a line for each change until Ctrl-C or --duration.
    #[arg(short, long)]
    watch: bool,
    /// Stop watching after this many seconds, with status 0.
    #[arg(long, value_name = "SECONDS", requires = "watch")]
    duration: Option<u64>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    /// Kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, else the pod's service account.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context. Default: the current context.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

pub fn run(command: TrustCommand) -> anyhow::Result<ExitCode> {
    let TrustCommand::Status(args) = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(status(args)) {
        // The reader went away (`| head`): done, not failed.
        Err(err)
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        result => result,
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let cluster = cluster::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let namespace = match (args.all_namespaces, args.namespace) {
        (true, _) => None,
        (false, Some(namespace)) => Some(namespace),
        (false, None) => Some(cluster.default_namespace.clone()),
    };
    let all_namespaces = namespace.is_none();
    let api = cluster.api(namespace.as_deref());
    let rows = view::sorted(&cluster.list(&api).await?);
    let now = Timestamp::now();

    // As kubectl; a JSON list says it with `[]` on stdout instead.
    if rows.is_empty() && (args.watch || args.output != Output::Json) {
        match &namespace {
            Some(namespace) => eprintln!("No AgentIdentities found in namespace {namespace}."),
            None => eprintln!("No AgentIdentities found."),
        }
    }
    if !args.watch {
        match args.output {
            Output::Json => {
                let rows: Vec<_> = rows.iter().map(Row::json).collect();
                print_line(&serde_json::to_string_pretty(&rows)?)?;
            }
            Output::Table | Output::Wide => {
                if !rows.is_empty() {
                    let table = Table::fitted(args.output, all_namespaces, &rows, now);
                    print_line(&table.header())?;
                    for row in &rows {
                        print_line(&table.row(row, now))?;
                    }
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }

    let table = Table::for_watch(args.output, all_namespaces, &rows, now);
    let mut header_printed = false;
    let mut print = |row: &Row, now: Timestamp| -> io::Result<()> {
        if args.output == Output::Json {
            let line = serde_json::to_string(&row.json()).map_err(io::Error::other)?;
            return print_line(&line);
        }
        if !header_printed {
            print_line(&table.header())?;
            header_printed = true;
        }
        print_line(&table.row(row, now))
    };
    for row in &rows {
        print(row, now)?;
    }

    let mut changes = Changes::new(args.output, &rows);
    let mut events = std::pin::pin!(cluster::watch(api));
    let mut deadline = std::pin::pin!(async {
        match args.duration {
            Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
            None => std::future::pending().await,
        }
    });
    let mut interrupted = std::pin::pin!(interrupted());
    loop {
        tokio::select! {
            () = &mut deadline => break,
            () = &mut interrupted => break,
            event = events.next() => match event {
                None => break,
                Some(Ok(event)) => {
                    let now = Timestamp::now();
                    for row in changes.observe(event, now) {
                        print(&row, now)?;
                    }
                }
                // The watcher retries by itself; say why nothing comes meanwhile.
                Some(Err(err)) => {
                    eprintln!("warning: watching AgentIdentities at {}: {err}", cluster.url);
                }
            },
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `err` and its causes on one line, `what: why: cause`, each cause once: kube's and hyper's
/// errors repeat their source in their own message.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if previous.contains(&message) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&message);
        previous = message;
    }
    line
}

/// One line on stdout, flushed so that a watch shows it at once even through a pipe.
fn print_line(line: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; never when the handlers cannot be installed.
async fn interrupted() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_each_cause_once() {
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "ServiceError: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = anyhow::Error::new(Wrapper(io)).context("cannot reach the cluster at https://h/");
        assert_eq!(
            one_line(&err),
            "cannot reach the cluster at https://h/: ServiceError: connection refused"
        );
        let err = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(one_line(&err), "outer: middle: inner");
    }
}
