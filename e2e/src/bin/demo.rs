//! `make demo`'s driver (demo/run.sh starts the local cluster and calls it): installs AgentMesh
//! as a user would, starts the scripted agents of `demo/agents.yaml`, shows what they do and
//! what the product decides while `agentmesh trust status --watch` prints the scores, then
//! prints a summary and checks the story's outcomes (exit 1 when one did not happen).
//!
//!   demo [--duration SECONDS] [--check]
//!
//! It stops 60 s after every outcome happened (15 s with `--check`), at `--duration` (default
//! 300 s), or at Ctrl-C. `--check` (`make demo DEMO_CHECK=1`): the same story, 240 s at most.
//! Commands it runs are printed as `$ …` lines, so a reader can run them by hand.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentmesh_e2e::{cluster, condition, repo_root};
use serde_json::Value;

const NAMESPACE: &str = "agentmesh-demo";
const OPERATOR_NAMESPACE: &str = "agentmesh";
const PROBE_NAMESPACE: &str = "meshlogic";
/// The agents the story is about (AgentIdentity = Deployment name).
const AGENTS: [&str; 4] = ["researcher", "summarizer", "scraper", "helper"];
/// The agents whose own lines (demo/agent.mjs) are shown.
const SCRIPTED: [&str; 3] = ["researcher", "scraper", "helper"];
/// The demo policy's minimum score (examples/demo-trustpolicy.yaml).
const THRESHOLD: i64 = 500;

fn main() {
    let mut duration = Duration::from_secs(300);
    let mut check = std::env::var("DEMO_CHECK").is_ok_and(|v| v == "1");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--duration" => {
                let value = args.next().and_then(|v| v.parse::<u64>().ok());
                let Some(seconds) = value.filter(|s| *s > 0) else {
                    eprintln!("demo: --duration takes a number of seconds");
                    std::process::exit(2);
                };
                duration = Duration::from_secs(seconds);
            }
            other => {
                eprintln!(
                    "demo: unknown argument {other:?}; usage: demo [--duration SECONDS] [--check]"
                );
                std::process::exit(2);
            }
        }
    }
    if check {
        duration = duration.min(Duration::from_secs(240));
    }
    let stop = Arc::new(AtomicBool::new(false));
    on_ctrl_c(stop.clone());

    let start_scores = install();
    let mut children = Children::default();
    let linger = Duration::from_secs(if check { 15 } else { 60 });
    let story = watch_story(&mut children, duration, linger, &stop, start_scores);
    children.stop();
    let ok = summary(&story);
    if !ok {
        std::process::exit(1);
    }
}

/// Sets `stop` at the first Ctrl-C (the demo then prints its summary and tears down).
fn on_ctrl_c(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the signal");
        runtime.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
            }
        });
    });
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn note(text: &str) {
    println!("    {text}");
}

/// Runs a command as a user would type it (printed first); exits the demo when it fails.
fn run(program: &str, shown: &str, args: &[&str]) -> String {
    println!("$ {shown} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if !output.status.success() {
        eprintln!(
            "demo: `{shown} {}` failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::process::exit(1);
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn kubectl(args: &[&str]) -> String {
    run(&cluster().kubectl.to_string_lossy(), "kubectl", args)
}

/// kubectl without printing the command (the driver's own polling).
fn quiet(args: &[&str]) -> Option<String> {
    let output = cluster().kubectl(args);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn json(args: &[&str]) -> Option<Value> {
    serde_json::from_str(&quiet(args)?).ok()
}

fn wait(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > timeout {
            eprintln!("demo: timed out after {timeout:?} waiting for {what}");
            let pods = cluster().kubectl(&["get", "pods", "-A", "-o", "wide"]);
            eprintln!("{}", String::from_utf8_lossy(&pods.stdout));
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    note(&format!("{what}: {:.0?}", start.elapsed()));
}

/// The product, the probe, the policy and the agents; returns each agent's first score.
fn install() -> BTreeMap<String, i64> {
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    step("Install the operator with its Helm chart (CRDs, webhook, trust API, RBAC)");
    run(
        &helm,
        "helm",
        &[
            "install",
            "agentmesh",
            "./charts/agentmesh",
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
        ],
    );
    kubectl(&[
        "rollout",
        "status",
        "deployment/agentmesh-server",
        "-n",
        OPERATOR_NAMESPACE,
        "--timeout=180s",
    ]);

    step("Roll out the eBPF probe on every node: a MeshLogicAgent at safety tier 3");
    kubectl(&["create", "namespace", PROBE_NAMESPACE]);
    kubectl(&["apply", "-f", "examples/demo-meshlogicagent.yaml"]);
    wait(
        "the probe reports tier 3 from every node",
        Duration::from_secs(180),
        || {
            json(&[
                "get",
                "meshlogicagent",
                "meshlogic-agent",
                "-n",
                PROBE_NAMESPACE,
                "-o",
                "json",
            ])
            .is_some_and(|agent| {
                let nodes = agent["status"]["nodes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                !nodes.is_empty() && nodes.iter().all(|n| n["tier"] == 3)
            })
        },
    );

    step("A namespace for the agents, labelled for sidecar injection; their policy; the agents");
    kubectl(&["create", "namespace", NAMESPACE]);
    kubectl(&["label", "namespace", NAMESPACE, "agentmesh-inject=enabled"]);
    kubectl(&["apply", "-f", "examples/demo-trustpolicy.yaml"]);
    // The servers first, so that the agents' first calls find them.
    kubectl(&["apply", "-n", NAMESPACE, "-f", "demo/servers.yaml"]);
    for deployment in ["everything", "summarizer"] {
        rollout(deployment);
    }
    kubectl(&["apply", "-n", NAMESPACE, "-f", "demo/agents.yaml"]);
    // Each agent's score as the operator first writes it (the policy's initial score), before
    // its pod does anything.
    let mut start_scores = BTreeMap::new();
    wait(
        "every agent's first trust score",
        Duration::from_secs(60),
        || {
            for identity in json(&["get", "agentidentities", "-n", NAMESPACE, "-o", "json"])
                .and_then(|list| list["items"].as_array().cloned())
                .unwrap_or_default()
            {
                if let (Some(name), Some(score)) = (
                    identity["metadata"]["name"].as_str(),
                    identity["status"]["trustScore"].as_i64(),
                ) {
                    start_scores.entry(name.to_owned()).or_insert(score);
                }
            }
            AGENTS.iter().all(|a| start_scores.contains_key(*a))
        },
    );
    for deployment in SCRIPTED {
        rollout(deployment);
    }
    let containers = quiet(&[
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "app=researcher",
        "-o",
        "jsonpath={.items[0].spec.initContainers[*].name} {.items[0].spec.containers[*].name}",
    ])
    .unwrap_or_default();
    note(&format!(
        "researcher's pod runs: {} (the sidecar was injected by the webhook)",
        containers.trim()
    ));
    start_scores
}

fn rollout(deployment: &str) {
    kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{deployment}"),
        "-n",
        NAMESPACE,
        "--timeout=180s",
    ]);
}

/// What the driver saw of one agent.
#[derive(Default, Debug)]
struct Seen {
    start: Option<i64>,
    end: Option<i64>,
    min: Option<i64>,
    quarantined_ever: bool,
    quarantined: bool,
    delegation: Option<(String, String)>,
    /// Distinct decisions seen in status.lastDecision, by kind.
    decisions: BTreeMap<String, u32>,
    last_decision_at: Option<String>,
}

#[derive(Default, Debug)]
struct Story {
    agents: BTreeMap<String, Seen>,
    /// Per agent, from its sidecar's metrics: tool calls by decision and handshakes by status.
    sidecar: BTreeMap<String, BTreeMap<String, f64>>,
    /// The probes' kernel refusals, by kind.
    kernel: BTreeMap<String, f64>,
}

impl Story {
    fn outcomes(&self) -> Vec<(String, bool)> {
        let agent = |name: &str| self.agents.get(name);
        let researcher = agent("researcher");
        let scraper = agent("scraper");
        let helper = agent("helper");
        let metric = |agent: &str, key: &str| {
            self.sidecar
                .get(agent)
                .and_then(|m| m.get(key))
                .copied()
                .unwrap_or(0.0)
        };
        vec![
            (
                format!(
                    "researcher (well-behaved) stays at or above the threshold {THRESHOLD}, its score held or rose, and it handshook with the summarizer"
                ),
                researcher.is_some_and(|s| {
                    !s.quarantined_ever
                        && s.end.zip(s.start).is_some_and(|(e, st)| e >= st && e >= THRESHOLD)
                }) && metric("researcher", "handshake success") >= 1.0,
            ),
            (
                "scraper (misbehaving) had a tool call denied and was quarantined".into(),
                scraper.is_some_and(|s| s.quarantined)
                    && metric("scraper", "tools/call deny") >= 1.0,
            ),
            (
                "the kernel killed scraper's denied executable, also run through the dynamic loader, and refused its connects once quarantined (tier 3)".into(),
                self.kernel.get("exec").copied().unwrap_or(0.0) >= 2.0
                    && self.kernel.get("connect").copied().unwrap_or(0.0) >= 1.0,
            ),
            (
                "helper's widened delegation was refused, and so was its handshake with the summarizer".into(),
                helper.is_some_and(|s| {
                    s.delegation
                        .as_ref()
                        .is_some_and(|(status, reason)| status == "False" && reason == "CapabilitiesWidened")
                }) && metric("helper", "handshake success") == 0.0
                    && metric("helper", "handshake failed") >= 1.0,
            ),
        ]
    }
}

#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn stop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `agentmesh` CLI built next to this binary.
fn agentmesh_cli() -> PathBuf {
    let own = std::env::current_exe().expect("own path");
    own.with_file_name("agentmesh")
}

/// Copies a child's output lines to stdout with a prefix.
fn relay(mut child: Child, prefix: String) -> Child {
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{prefix}{line}");
        }
    });
    child
}

fn watch_story(
    children: &mut Children,
    duration: Duration,
    linger: Duration,
    stop: &AtomicBool,
    start_scores: BTreeMap<String, i64>,
) -> Story {
    step("Watch: trust scores as the operator writes them, and what each agent does");
    note(&format!(
        "live table: agentmesh trust status -n {NAMESPACE} --watch   (also: kubectl get agentidentities -n {NAMESPACE} -w)"
    ));
    note(&format!(
        "agents' lines: kubectl logs -f -n {NAMESPACE} deployment/<agent> -c agent   (what it did -> what came back)"
    ));
    note(&format!(
        "metrics: kubectl get --raw /api/v1/namespaces/{OPERATOR_NAMESPACE}/services/agentmesh:9090/proxy/metrics   (agentmesh_trust_score_gauge, agentmesh_policy_violation_count, meshlogic_operator_audit_entries)"
    ));
    note(&format!(
        "         a sidecar's: kubectl get --raw /api/v1/namespaces/{NAMESPACE}/pods/<pod>:9091/proxy/metrics; the probe's: {PROBE_NAMESPACE} pods, port 9090 (meshlogic_probe_kernel_blocked_total)"
    ));
    note(
        "audit: every sidecar decision is appended to the operator's hash chain, kept in its memory (the audit store and `agentmesh audit` are not built yet)",
    );
    println!();
    let watch = Command::new(agentmesh_cli())
        .args(["trust", "status", "-n", NAMESPACE, "--watch"])
        .env("KUBECONFIG", &cluster().kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("agentmesh trust status --watch starts");
    children.0.push(relay(watch, "trust  | ".into()));
    for agent in SCRIPTED {
        let logs = Command::new(&cluster().kubectl)
            .args([
                "logs",
                "-f",
                "-n",
                NAMESPACE,
                &format!("deployment/{agent}"),
                "-c",
                "agent",
            ])
            .env("KUBECONFIG", &cluster().kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl logs starts");
        children.0.push(relay(logs, format!("{agent:<10} | ")));
    }

    let mut story = Story::default();
    for (name, score) in start_scores {
        let seen = story.agents.entry(name).or_default();
        seen.start = Some(score);
        seen.min = Some(score);
    }
    let start = Instant::now();
    let mut done_at: Option<Instant> = None;
    let mut told = BTreeMap::<String, bool>::new();
    let mut tell = |key: &str, text: String| {
        if !told.insert(key.to_owned(), true).unwrap_or(false) {
            println!("▶ {text}");
        }
    };
    while start.elapsed() < duration && !stop.load(Ordering::SeqCst) {
        observe(&mut story);
        for (name, seen) in &story.agents {
            if seen.quarantined {
                tell(
                    &format!("{name} quarantined"),
                    format!(
                        "{name} is quarantined (score {} < {THRESHOLD}): its sidecar denies its tool calls, and at tier 3 the kernel refuses its connects",
                        seen.end.unwrap_or_default()
                    ),
                );
            }
            if let Some((status, reason)) = &seen.delegation
                && status == "False"
            {
                tell(
                    &format!("{name} delegation"),
                    format!(
                        "{name}'s delegation was refused by the operator: {reason} (DelegationValid=False); peers refuse its handshake"
                    ),
                );
            }
        }
        for (kind, count) in &story.kernel {
            if *count >= 1.0 {
                tell(
                    &format!("kernel {kind}"),
                    format!(
                        "the probe refused {count} {kind}(s) in the kernel (meshlogic_probe_kernel_blocked_total{{kind=\"{kind}\"}})"
                    ),
                );
            }
        }
        if story.outcomes().iter().all(|(_, ok)| *ok) {
            let at = *done_at.get_or_insert_with(Instant::now);
            tell(
                "done",
                format!(
                    "every scripted outcome happened; watching {} s more (Ctrl-C ends it now)",
                    linger.as_secs()
                ),
            );
            if at.elapsed() > linger {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    if stop.load(Ordering::SeqCst) {
        println!("\n(stopped by Ctrl-C)");
    }
    observe(&mut story);
    story
}

/// Reads the identities, the sidecars' and the probes' metrics.
fn observe(story: &mut Story) {
    if let Some(list) = json(&["get", "agentidentities", "-n", NAMESPACE, "-o", "json"]) {
        for identity in list["items"].as_array().into_iter().flatten() {
            let name = identity["metadata"]["name"].as_str().unwrap_or_default();
            let seen = story.agents.entry(name.to_owned()).or_default();
            let status = &identity["status"];
            if let Some(score) = status["trustScore"].as_i64() {
                seen.start.get_or_insert(score);
                seen.end = Some(score);
                seen.min = Some(seen.min.map_or(score, |m| m.min(score)));
            }
            seen.quarantined = status["quarantined"] == true;
            seen.quarantined_ever |= seen.quarantined;
            if let Some(c) = condition(identity, "DelegationValid")
                && identity["spec"]["delegation"].is_object()
            {
                seen.delegation = Some((
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["reason"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            let decision = &status["lastDecision"];
            if let Some(at) = decision["at"].as_str() {
                let key = format!("{at} {}", decision["subject"]);
                if seen.last_decision_at.as_deref() != Some(key.as_str()) {
                    seen.last_decision_at = Some(key);
                    *seen
                        .decisions
                        .entry(decision["decision"].as_str().unwrap_or("?").to_owned())
                        .or_default() += 1;
                }
            }
        }
    }
    for agent in AGENTS {
        let Some(pod) = quiet(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app={agent}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]) else {
            continue;
        };
        let path = format!(
            "/api/v1/namespaces/{NAMESPACE}/pods/{}:9091/proxy/metrics",
            pod.trim()
        );
        if let Some(text) = quiet(&["get", "--raw", &path]) {
            story
                .sidecar
                .insert(agent.to_owned(), sidecar_counts(&text));
        }
    }
    let probes = quiet(&[
        "get",
        "pods",
        "-n",
        PROBE_NAMESPACE,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])
    .unwrap_or_default();
    let mut kernel = BTreeMap::new();
    for pod in probes.split_whitespace() {
        let path = format!("/api/v1/namespaces/{PROBE_NAMESPACE}/pods/{pod}:9090/proxy/metrics");
        if let Some(text) = quiet(&["get", "--raw", &path]) {
            for (labels, value) in samples(&text, "meshlogic_probe_kernel_blocked_total") {
                let kind = label(&labels, "kind").unwrap_or_default();
                *kernel.entry(kind).or_insert(0.0) += value;
            }
        }
    }
    if !kernel.is_empty() {
        story.kernel = kernel;
    }
}

/// `name{labels} value` samples of one metric in a Prometheus text exposition.
fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let (labels, value) = inner.split_once('}')?;
                    (labels.to_owned(), value)
                }
                None if rest.starts_with(' ') => (String::new(), rest),
                None => return None,
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

fn label(labels: &str, key: &str) -> Option<String> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// A sidecar's counts the summary uses: `tools/call allow|deny` and `handshake <status>`.
fn sidecar_counts(text: &str) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for (labels, value) in samples(text, "agentmesh_sidecar_requests_total") {
        let method = label(&labels, "method").unwrap_or_default();
        let decision = label(&labels, "decision").unwrap_or_default();
        *counts.entry(format!("{method} {decision}")).or_insert(0.0) += value;
    }
    for (labels, value) in samples(text, "agentmesh_handshake_total") {
        let status = label(&labels, "status").unwrap_or_default();
        *counts.entry(format!("handshake {status}")).or_insert(0.0) += value;
    }
    counts
}

fn summary(story: &Story) -> bool {
    step("Summary");
    println!(
        "{:<11} {:>6} {:>6} {:>6}  {:<11}  {:<38}  LAST DECISIONS SEEN (SAMPLED)",
        "AGENT", "START", "END", "LOWEST", "QUARANTINED", "SIDECAR: CALLS / HANDSHAKES"
    );
    let show = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    for agent in AGENTS {
        let seen = story.agents.get(agent);
        let metrics = story.sidecar.get(agent);
        let count = |key: &str| metrics.and_then(|m| m.get(key)).copied().unwrap_or(0.0);
        let sidecar = format!(
            "{} allowed, {} denied / {} ok, {} failed",
            count("tools/call allow"),
            count("tools/call deny"),
            count("handshake success"),
            count("handshake failed")
        );
        let decisions = seen
            .map(|s| {
                s.decisions
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        println!(
            "{:<11} {:>6} {:>6} {:>6}  {:<11}  {:<38}  {}",
            agent,
            show(seen.and_then(|s| s.start)),
            show(seen.and_then(|s| s.end)),
            show(seen.and_then(|s| s.min)),
            if seen.is_some_and(|s| s.quarantined) {
                "yes"
            } else {
                "no"
            },
            sidecar,
            decisions
        );
    }
    println!(
        "kernel refusals (probe, tier 3): {}",
        if story.kernel.is_empty() {
            "none".to_owned()
        } else {
            story
                .kernel
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!();
    let mut ok = true;
    for (outcome, happened) in story.outcomes() {
        println!("{} {outcome}", if happened { "✔" } else { "✘" });
        ok &= happened;
    }
    if !ok {
        println!("\ndemo: some scripted outcomes did not happen (✘ above)");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_labels_are_read_from_an_exposition() {
        let text = "# HELP x\nagentmesh_handshake_total{status=\"success\"} 2\nagentmesh_handshake_total{status=\"failed\",peer=\"a\"} 1\nagentmesh_handshake_totalx 9\n";
        let found = samples(text, "agentmesh_handshake_total");
        assert_eq!(found.len(), 2);
        assert_eq!(label(&found[1].0, "status").as_deref(), Some("failed"));
        let counts = sidecar_counts(text);
        assert_eq!(counts["handshake success"], 2.0);
        assert_eq!(counts["handshake failed"], 1.0);
    }
}
