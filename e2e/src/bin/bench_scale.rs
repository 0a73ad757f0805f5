//! `make bench-scale` (`e2e/bench-scale.sh`): the operator at scale, on kwok's fake nodes.
//!
//! For each operator binary given (`--run LABEL=PATH`, in that order, one after the other in the
//! same cluster), the same scenario:
//!
//! - Set-up, before the clock: `BENCH_SCALE_NAMESPACES` (5) namespaces, a TrustPolicy selecting
//!   every identity in each, and the operator as a host process watching every namespace, under
//!   a ServiceAccount of its own (so that the API server's audit log names its requests), waited
//!   for until it leads and has written every policy's status.
//! - The apply: `BENCH_SCALE_N` (5,000) AgentIdentities and as many pods, one per identity
//!   (labelled `agentmesh.io/identity: <identity>`, the label the operator maps pods by), spread
//!   over the namespaces, the pods on the fake nodes. They are created by
//!   `BENCH_SCALE_CONCURRENCY` (32) parallel creates, identity and pod interleaved.
//! - Converged: every identity's status written by both of its writers. The AgentIdentity
//!   reconciler's part: `observedGeneration` = `metadata.generation`, a DID, `KeyReady=True` and
//!   `podsMatched = 1` (it saw the pod). The trust engine's part: `trustScore` and
//!   `scoreUpdatedAt` set and a `Trusted` condition. A watch of the identities decides, so
//!   polling does not load the API server.
//!
//! Figures per run:
//!
//! - `create`: from the first create to the last answer (the client's side of the apply).
//! - `converge`: from the first create to the moment the watch shows every identity converged
//!   (goal ≤ 60 s, reported, not enforced); also when the reconciler's and the engine's parts
//!   were each complete. Not converged within `BENCH_SCALE_TIMEOUT` (600 s) is reported as such
//!   and the exit status is then 1.
//! - `api requests`: the requests the API server's audit log records for the operator's user
//!   between the start of the apply and convergence (each request once, by audit ID; a watch
//!   counts once, when it starts), per second, with the verbs and resources that make them up;
//!   then the same over `BENCH_SCALE_SETTLE` (30) seconds after convergence (`idle`: requeues,
//!   resyncs, nothing to do). Needs the audit policy `--print-audit-policy` prints, given to
//!   up.sh by `AGENTMESH_AUDIT_POLICY`, and the audit log in `BENCH_SCALE_AUDIT_LOG`.
//! - `peak RSS`: the operator process's `VmHWM` (`/proc/<pid>/status`) at convergence and after
//!   the idle window.
//!
//! Between runs the run's namespaces are deleted and waited for, so that the next operator
//! starts on an empty cluster. With two runs or more, `ratio (last/first)` lines compare the
//! last run with the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_api::identity::AgentIdentity;
use agentmesh_e2e::operator::OperatorProcess;
use agentmesh_e2e::{cluster, fake_node_tolerations, fake_nodes};
use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

/// The namespace of the operators' ServiceAccounts; the audit policy records its group only.
const AUTH_NAMESPACE: &str = "agentmesh-bench-scale";
/// Label of every object of a run (its value: the run's label).
const RUN_LABEL: &str = "bench.agentmesh.io/run";

fn audit_policy() -> String {
    format!(
        "# make bench-scale: the requests of the operators under test (ServiceAccounts of \
         {AUTH_NAMESPACE}), one event per stage after the request is received; nothing else.\n\
         apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  \
         - level: Metadata\n    userGroups: [\"system:serviceaccounts:{AUTH_NAMESPACE}\"]\n  \
         - level: None\n"
    )
}

struct Settings {
    identities: usize,
    namespaces: usize,
    concurrency: usize,
    timeout: Duration,
    settle: Duration,
    /// The operator is stopped when its RSS exceeds this (KiB): the machine is shared.
    max_rss_kib: u64,
    audit_log: Option<PathBuf>,
    work: PathBuf,
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .with_context(|| format!("{name}={value} is not a number")),
        _ => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let settings = Self {
            identities: env_number("BENCH_SCALE_N", 5000)? as usize,
            namespaces: env_number("BENCH_SCALE_NAMESPACES", 5)?.max(1) as usize,
            concurrency: env_number("BENCH_SCALE_CONCURRENCY", 32)?.max(1) as usize,
            timeout: Duration::from_secs(env_number("BENCH_SCALE_TIMEOUT", 600)?),
            settle: Duration::from_secs(env_number("BENCH_SCALE_SETTLE", 30)?),
            max_rss_kib: env_number("BENCH_SCALE_MAX_RSS_MIB", 8192)? * 1024,
            audit_log: std::env::var_os("BENCH_SCALE_AUDIT_LOG").map(PathBuf::from),
            work: std::env::var_os("BENCH_SCALE_WORK")
                .map_or_else(std::env::temp_dir, PathBuf::from),
        };
        if settings.identities == 0 {
            bail!("BENCH_SCALE_N must be at least 1");
        }
        Ok(settings)
    }
}

/// Requests of one user in a stretch of the audit log.
#[derive(Default)]
struct Requests {
    total: u64,
    /// `verb resource[/subresource]` → count.
    by_kind: BTreeMap<String, u64>,
}

impl Requests {
    fn top(&self, n: usize) -> String {
        let mut kinds: Vec<_> = self.by_kind.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut parts: Vec<String> = kinds
            .iter()
            .take(n)
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        let rest: u64 = kinds.iter().skip(n).map(|(_, c)| **c).sum();
        if rest > 0 {
            parts.push(format!("other {rest}"));
        }
        parts.join(", ")
    }
}

/// Follows the API server's audit log from where it ends when opened.
struct AuditReader {
    path: PathBuf,
    offset: u64,
    user: String,
    seen: HashSet<String>,
}

impl AuditReader {
    fn open(path: &Path, user: &str) -> Option<Self> {
        let offset = std::fs::metadata(path).ok()?.len();
        Some(Self {
            path: path.to_owned(),
            offset,
            user: user.to_owned(),
            seen: HashSet::new(),
        })
    }

    /// The user's requests logged since the last call (whole lines only).
    fn take(&mut self) -> anyhow::Result<Requests> {
        let mut file = std::fs::File::open(&self.path)?;
        if file.metadata()?.len() < self.offset {
            bail!(
                "{} is shorter than where it was read last: rotated? (up.sh keeps one file)",
                self.path.display()
            );
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        let mut requests = Requests::default();
        for line in bytes[..complete].split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let Ok(event) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if event["user"]["username"] != self.user.as_str() {
                continue;
            }
            let Some(id) = event["auditID"].as_str() else {
                continue;
            };
            if !self.seen.insert(id.to_owned()) {
                continue; // the same request's later stage (a watch's end)
            }
            let verb = event["verb"].as_str().unwrap_or("?");
            let object = &event["objectRef"];
            let mut resource = object["resource"].as_str().unwrap_or("-").to_owned();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            requests.total += 1;
            *requests
                .by_kind
                .entry(format!("{verb} {resource}"))
                .or_default() += 1;
        }
        Ok(requests)
    }
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            line.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// The 1-minute load average (the machine is shared: it says how busy it was).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What the watch of the run's identities has seen.
#[derive(Default)]
struct Progress {
    synced: bool,
    /// key → (reconciler's part written, engine's part written).
    states: HashMap<String, (bool, bool)>,
    reconciled: usize,
    scored: usize,
    both: usize,
    reconciled_at: Option<Instant>,
    scored_at: Option<Instant>,
    converged_at: Option<Instant>,
}

impl Progress {
    fn set(&mut self, key: String, state: Option<(bool, bool)>, expected: usize) {
        let old = self.states.remove(&key).unwrap_or_default();
        let new = state.unwrap_or_default();
        let adjust = |count: &mut usize, was: bool, is: bool| {
            if was && !is {
                *count -= 1;
            } else if is && !was {
                *count += 1;
            }
        };
        adjust(&mut self.reconciled, old.0, new.0);
        adjust(&mut self.scored, old.1, new.1);
        adjust(&mut self.both, old.0 && old.1, new.0 && new.1);
        if state.is_some() {
            self.states.insert(key, new);
        }
        let now = Instant::now();
        if self.reconciled >= expected {
            self.reconciled_at.get_or_insert(now);
        }
        if self.scored >= expected {
            self.scored_at.get_or_insert(now);
        }
        if self.both >= expected {
            self.converged_at.get_or_insert(now);
        }
    }
}

fn condition_status<'a>(identity: &'a AgentIdentity, type_: &str) -> Option<&'a str> {
    identity
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// (the reconciler's part written, the engine's part written).
fn converged(identity: &AgentIdentity) -> (bool, bool) {
    let Some(status) = &identity.status else {
        return (false, false);
    };
    let reconciled = status.observed_generation == identity.metadata.generation
        && status.did.is_some()
        && status.pods_matched == 1
        && condition_status(identity, "KeyReady") == Some("True");
    let scored = status.trust_score.is_some()
        && status.score_updated_at.is_some()
        && condition_status(identity, "Trusted").is_some();
    (reconciled, scored)
}

async fn watch_identities(
    client: kube::Client,
    label: String,
    expected: usize,
    progress: Arc<Mutex<Progress>>,
) {
    let api: Api<AgentIdentity> = Api::all(client);
    let config = watcher::Config::default().labels(&format!("{RUN_LABEL}={label}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                eprintln!("bench-scale: identity watch: {error}");
                continue;
            }
        };
        let mut progress = progress.lock().unwrap();
        match event {
            watcher::Event::Apply(identity) | watcher::Event::InitApply(identity) => {
                let key = format!(
                    "{}/{}",
                    identity.metadata.namespace.as_deref().unwrap_or_default(),
                    identity.metadata.name.as_deref().unwrap_or_default()
                );
                progress.set(key, Some(converged(&identity)), expected);
            }
            watcher::Event::Delete(identity) => {
                let key = format!(
                    "{}/{}",
                    identity.metadata.namespace.as_deref().unwrap_or_default(),
                    identity.metadata.name.as_deref().unwrap_or_default()
                );
                progress.set(key, None, expected);
            }
            watcher::Event::Init => {}
            watcher::Event::InitDone => progress.synced = true,
        }
    }
}

/// One run's plan: where its objects go.
struct Plan {
    label: String,
    namespaces: Vec<String>,
    identities: usize,
}

impl Plan {
    fn object(&self, index: usize) -> (ApiResource, String, Value) {
        let n = index / 2;
        let name = format!("agent-{n:05}");
        let namespace = self.namespaces[n % self.namespaces.len()].clone();
        if index.is_multiple_of(2) {
            let identity = json!({
                "apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity",
                "metadata": {"name": name, "namespace": namespace, "labels": {RUN_LABEL: self.label}},
                // The pods run as `default`: the identity admits that account's pods (the
                // binding a user makes with one account for all agents of a namespace).
                "spec": {"capabilities": ["read:documents"], "serviceAccountName": "default"},
            });
            (
                ApiResource::erase::<AgentIdentity>(&()),
                namespace,
                identity,
            )
        } else {
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace,
                    "labels": {"agentmesh.io/identity": name, RUN_LABEL: self.label}},
                "spec": {
                    "nodeSelector": fake_nodes(),
                    "tolerations": fake_node_tolerations(),
                    "automountServiceAccountToken": false,
                    "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}],
                },
            });
            (ApiResource::erase::<Pod>(&()), namespace, pod)
        }
    }
}

/// Creates every object of the plan with `concurrency` parallel creates; how long it took.
async fn create_all(
    client: kube::Client,
    plan: Arc<Plan>,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let total = plan.identities * 2;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, plan, next) = (client.clone(), plan.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let (resource, namespace, value) = plan.object(index);
                let object: DynamicObject = serde_json::from_value(value)?;
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &namespace, &resource);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match api.create(&PostParams::default(), &object).await {
                        Ok(_) => break,
                        // An earlier attempt that timed out on our side did create it.
                        Err(kube::Error::Api(e)) if e.code == 409 && attempt > 1 => break,
                        Err(error) if attempt < 5 => {
                            eprintln!(
                                "bench-scale: creating {}/{} (attempt {attempt}): {error}",
                                namespace,
                                object.metadata.name.as_deref().unwrap_or_default()
                            );
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(error) => {
                            return Err(error).with_context(|| {
                                format!(
                                    "creating {}/{}",
                                    namespace,
                                    object.metadata.name.as_deref().unwrap_or_default()
                                )
                            });
                        }
                    }
                }
            }
        });
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    Ok(started.elapsed())
}

/// The figures of one run.
struct Figures {
    label: String,
    /// Whether an operator ran (not: the apply alone).
    with_operator: bool,
    objects: usize,
    /// `None`: stopped before every object was created.
    create: Option<Duration>,
    converge: Option<Duration>,
    reconciled: Option<Duration>,
    scored: Option<Duration>,
    /// (reconciled, scored, both) at the end of the wait.
    counts: (usize, usize, usize),
    /// From the start of the apply to the audit log's reading at convergence.
    window: Duration,
    requests: Option<Requests>,
    idle: Option<(Duration, Requests)>,
    /// VmHWM at convergence, VmHWM after the idle window, VmRSS before the apply (KiB).
    rss_converged: Option<u64>,
    rss_peak: Option<u64>,
    rss_before: Option<u64>,
    /// Why the operator was stopped before convergence, if it was.
    stopped: Option<String>,
    /// The 1-minute load average before the apply and at convergence.
    load: (String, String),
}

impl Figures {
    fn request_rate(&self) -> Option<f64> {
        self.requests
            .as_ref()
            .map(|r| r.total as f64 / self.window.as_secs_f64())
    }

    fn idle_rate(&self) -> Option<f64> {
        self.idle
            .as_ref()
            .map(|(window, r)| r.total as f64 / window.as_secs_f64())
    }
}

fn apply_json(value: &Value) {
    let args = ["apply", "-f", "-"];
    let output = cluster().kubectl_with_input(&args, Some(&value.to_string()));
    assert!(
        output.status.success(),
        "kubectl apply {value}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Polls `ready` every 500 ms; an error after `timeout`.
fn wait(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// A kubeconfig for the ServiceAccount `account` of [`AUTH_NAMESPACE`], bound to cluster-admin.
fn operator_kubeconfig(label: &str, work: &Path) -> anyhow::Result<(PathBuf, String)> {
    let account = format!("operator-{label}");
    apply_json(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": account, "namespace": AUTH_NAMESPACE}}));
    apply_json(
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("{AUTH_NAMESPACE}-{label}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": AUTH_NAMESPACE}]}),
    );
    let token = cluster()
        .kubectl_ok(&[
            "create",
            "token",
            &account,
            "-n",
            AUTH_NAMESPACE,
            "--duration=4h",
        ])
        .trim()
        .to_owned();
    let path = work.join(format!("bench-scale-{label}.kubeconfig"));
    let admin = cluster().kubectl_ok(&["config", "view", "--raw", "--minify", "--flatten"]);
    std::fs::write(&path, admin)?;
    let file = format!("--kubeconfig={}", path.display());
    cluster().kubectl_ok(&[
        &file,
        "config",
        "set-credentials",
        "bench-operator",
        &format!("--token={token}"),
    ]);
    cluster().kubectl_ok(&[
        &file,
        "config",
        "set-context",
        "--current",
        "--user=bench-operator",
    ]);
    Ok((
        path,
        format!("system:serviceaccount:{AUTH_NAMESPACE}:{account}"),
    ))
}

/// One run of the scenario with the operator `binary`, or with none (`None`: the apply alone,
/// the floor any operator's convergence sits on).
fn run(
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
    settings: &Settings,
    label: &str,
    binary: Option<&Path>,
) -> anyhow::Result<Figures> {
    let log = |message: String| eprintln!("bench-scale [{label}]: {message}");
    let system = format!("bench-scale-{label}-system");
    let namespaces: Vec<String> = (0..settings.namespaces)
        .map(|k| format!("bench-scale-{label}-{k}"))
        .collect();
    for namespace in namespaces.iter().chain([&system]) {
        apply_json(&json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"agentmesh.io/e2e": "true", RUN_LABEL: label}}}));
    }
    for namespace in &namespaces {
        wait(
            &format!("the default ServiceAccount of {namespace}"),
            Duration::from_secs(60),
            || {
                cluster()
                    .kubectl(&["get", "serviceaccount", "default", "-n", namespace])
                    .status
                    .success()
            },
        )?;
        apply_json(
            &json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy",
            "metadata": {"name": "bench", "namespace": namespace, "labels": {RUN_LABEL: label}},
            "spec": {}}),
        );
    }
    let pidfile = settings.work.join("operator.pid");
    let mut user = String::new();
    let mut operator = None;
    if let Some(binary) = binary {
        let (kubeconfig, operator_user) = operator_kubeconfig(label, &settings.work)?;
        user = operator_user;
        let kubeconfig = kubeconfig.display().to_string();
        let started = OperatorProcess::start_binary(
            binary,
            &system,
            None,
            "bench-scale",
            &[
                ("KUBECONFIG", &kubeconfig),
                ("AGENTMESH_LOG_LEVEL", "warn"),
                ("RUST_LOG", "warn"),
            ],
        );
        std::fs::write(&pidfile, started.pid().to_string())?;
        log(format!(
            "operator {} (pid {}), log {}",
            binary.display(),
            started.pid(),
            started.log.display()
        ));
        operator = Some(started);
    } else {
        log("no operator: the apply alone".into());
    }
    if let Some(operator) = &mut operator {
        wait_for_operator(operator, label, namespaces.len());
    }
    let pid = operator.as_ref().map(OperatorProcess::pid);
    let progress = Arc::new(Mutex::new(Progress::default()));
    let watch = runtime.spawn(watch_identities(
        client.clone(),
        label.to_owned(),
        settings.identities,
        progress.clone(),
    ));
    wait("the identity watch", Duration::from_secs(60), || {
        progress.lock().unwrap().synced
    })?;
    let mut audit = settings
        .audit_log
        .as_deref()
        .filter(|_| operator.is_some())
        .and_then(|path| AuditReader::open(path, &user));
    if audit.is_none() && operator.is_some() {
        log("no audit log (BENCH_SCALE_AUDIT_LOG): API requests are not counted".into());
    }
    let rss_before = pid.and_then(memory_kib).map(|(_, rss)| rss);
    let load_before = load_average();

    // The clock starts with the first create.
    let plan = Arc::new(Plan {
        label: label.to_owned(),
        namespaces: namespaces.clone(),
        identities: settings.identities,
    });
    log(format!(
        "creating {} AgentIdentities and {} pods in {} namespaces",
        settings.identities,
        settings.identities,
        namespaces.len()
    ));
    let started = Instant::now();
    let mut creating = Some(runtime.spawn(create_all(client.clone(), plan, settings.concurrency)));
    let mut create = None;

    let mut last_report = Instant::now();
    let mut stopped: Option<String> = None;
    loop {
        if creating.as_ref().is_some_and(|task| task.is_finished()) {
            let took = runtime.block_on(creating.take().expect("checked"))??;
            log(format!("created in {:.1} s", took.as_secs_f64()));
            create = Some(took);
        }
        let (done, counts) = {
            let p = progress.lock().unwrap();
            (p.converged_at.is_some(), (p.reconciled, p.scored, p.both))
        };
        if (done || operator.is_none()) && create.is_some() {
            break;
        }
        if let Some((_, rss)) = pid.and_then(memory_kib)
            && rss > settings.max_rss_kib
        {
            stopped = Some(format!(
                "its RSS reached {:.0} MiB, over BENCH_SCALE_MAX_RSS_MIB ({:.0} MiB)",
                mib(rss),
                mib(settings.max_rss_kib)
            ));
            log(format!("operator STOPPED: {}", stopped.as_deref().unwrap()));
            break;
        }
        if let Some(operator) = &mut operator
            && !operator.is_running()
        {
            stopped = Some("it exited".into());
            log(format!(
                "the operator EXITED before convergence; its log:\n{}",
                operator.logs()
            ));
            break;
        }
        if started.elapsed() > settings.timeout {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            log(format!(
                "{:.0} s: reconciler part {}/{n}, engine part {}/{n}, both {}/{n}",
                started.elapsed().as_secs_f64(),
                counts.0,
                counts.1,
                counts.2,
                n = settings.identities
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(task) = creating.take() {
        task.abort();
    }
    let requests = audit.as_mut().map(AuditReader::take).transpose()?;
    let window = started.elapsed();
    let rss_converged = pid.and_then(memory_kib).map(|(hwm, _)| hwm);
    let load_converged = load_average();
    let (converge, reconciled, scored, counts) = {
        let p = progress.lock().unwrap();
        let since = |at: Option<Instant>| at.map(|at| at.duration_since(started));
        (
            since(p.converged_at),
            since(p.reconciled_at),
            since(p.scored_at),
            (p.reconciled, p.scored, p.both),
        )
    };
    match converge {
        _ if operator.is_none() => {}
        Some(converge) => log(format!(
            "converged in {:.1} s; idle for {} s",
            converge.as_secs_f64(),
            settings.settle.as_secs()
        )),
        None => log(format!(
            "NOT CONVERGED after {:.0} s",
            started.elapsed().as_secs_f64()
        )),
    }

    let idle = if converge.is_some() && !settings.settle.is_zero() {
        let idle_started = Instant::now();
        std::thread::sleep(settings.settle);
        let requests = audit.as_mut().map(AuditReader::take).transpose()?;
        requests.map(|r| (idle_started.elapsed(), r))
    } else {
        None
    };
    let rss_peak = pid.and_then(memory_kib).map(|(hwm, _)| hwm);
    let with_operator = operator.is_some();
    if let Some(mut operator) = operator {
        operator.kill();
    }
    let _ = std::fs::remove_file(&pidfile);
    watch.abort();

    // Clean up for the next run: the namespaces, gone before it starts.
    let cleanup = Instant::now();
    for namespace in namespaces.iter().chain([&system]) {
        cluster().kubectl_ok(&["delete", "namespace", namespace, "--wait=false"]);
    }
    cluster().kubectl(&[
        "delete",
        "clusterrolebinding",
        &format!("{AUTH_NAMESPACE}-{label}"),
        "--ignore-not-found",
    ]);
    wait(
        "the run's namespaces to be deleted",
        Duration::from_secs(600),
        || {
            namespaces
                .iter()
                .chain([&system])
                .all(|namespace| cluster().get("namespace", namespace, None).is_none())
        },
    )?;
    log(format!(
        "namespaces deleted in {:.1} s",
        cleanup.elapsed().as_secs_f64()
    ));
    Ok(Figures {
        label: label.to_owned(),
        with_operator,
        objects: settings.identities * 2,
        create,
        converge,
        reconciled,
        scored,
        counts,
        window,
        requests,
        idle,
        rss_converged,
        rss_peak,
        rss_before,
        stopped,
        load: (load_before, load_converged),
    })
}

/// Waits until `operator` leads and has written the status of every TrustPolicy of the run.
fn wait_for_operator(operator: &mut OperatorProcess, label: &str, namespaces: usize) {
    operator.wait_until(Duration::from_secs(60), "leadership", |o| o.is_leader());
    let selector = format!("{RUN_LABEL}={label}");
    operator.wait_until(
        Duration::from_secs(60),
        "every TrustPolicy's status (the reconcilers run)",
        |_| {
            let out = cluster().kubectl_ok(&[
                "get",
                "trustpolicies",
                "-A",
                "-l",
                &selector,
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[0].type}{\"\\n\"}{end}",
            ]);
            out.lines().filter(|l| !l.trim().is_empty()).count() == namespaces
        },
    );
}

fn seconds(duration: Option<Duration>) -> String {
    duration.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn print_figures(f: &Figures, settings: &Settings) {
    let n = settings.identities;
    let l = &f.label;
    if !f.with_operator {
        match f.create {
            Some(create) => println!(
                "[{l}] create: {} objects in {:.1} s = {:.0} objects/s ({} parallel creates, no \
                 operator: the floor under any operator's convergence on this machine)",
                f.objects,
                create.as_secs_f64(),
                f.objects as f64 / create.as_secs_f64(),
                settings.concurrency
            ),
            None => println!("[{l}] create: NOT FINISHED"),
        }
        return;
    }
    match f.create {
        Some(create) => println!(
            "[{l}] create: {} objects in {:.1} s = {:.0} objects/s ({} parallel creates, the operator running)",
            f.objects,
            create.as_secs_f64(),
            f.objects as f64 / create.as_secs_f64(),
            settings.concurrency
        ),
        None => println!("[{l}] create: NOT FINISHED when the run stopped"),
    }
    match f.converge {
        Some(converge) => println!(
            "[{l}] converge: {:.1} s from the start of the apply to every status written \
             (reconciler's part {}, engine's score {}); goal <= 60 s: {}",
            converge.as_secs_f64(),
            seconds(f.reconciled),
            seconds(f.scored),
            if converge <= Duration::from_secs(60) {
                "met"
            } else {
                "NOT met"
            }
        ),
        None => println!(
            "[{l}] converge: NOT CONVERGED {} after {:.1} s: reconciler's part {}/{n}, engine's score {}/{n}, both {}/{n}",
            f.stopped.as_ref().map_or_else(
                || format!("within the timeout ({} s)", settings.timeout.as_secs()),
                |why| format!("(the operator was stopped: {why})")
            ),
            f.window.as_secs_f64(),
            f.counts.0,
            f.counts.1,
            f.counts.2
        ),
    }
    match (&f.requests, f.request_rate()) {
        (Some(requests), Some(rate)) => println!(
            "[{l}] api requests: {} in {:.1} s = {rate:.1} req/s ({})",
            requests.total,
            f.window.as_secs_f64(),
            requests.top(6)
        ),
        _ => println!("[{l}] api requests: not measured (no audit log)"),
    }
    if let (Some((window, requests)), Some(rate)) = (&f.idle, f.idle_rate()) {
        println!(
            "[{l}] api requests idle: {} in {:.1} s after convergence = {rate:.1} req/s ({})",
            requests.total,
            window.as_secs_f64(),
            requests.top(6)
        );
    }
    let show = |kib: Option<u64>| kib.map_or("-".into(), |k| format!("{:.1} MiB", mib(k)));
    println!(
        "[{l}] peak RSS: {} (VmHWM; {} at {}, {} RSS before the apply)",
        show(f.rss_peak),
        show(f.rss_converged),
        if f.converge.is_some() {
            "convergence"
        } else {
            "the end of the wait"
        },
        show(f.rss_before)
    );
    println!(
        "[{l}] machine: load average {} before the apply, {} at the end of the wait, {} CPUs",
        f.load.0,
        f.load.1,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

fn print_ratios(before: &Figures, after: &Figures) {
    let (b, a) = (&before.label, &after.label);
    let ratio = |name: &str, before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(before), Some(after)) if before > 0.0 => {
            println!(
                "ratio ({a}/{b}) {name}: {:.3} ({after:.1} / {before:.1})",
                after / before
            )
        }
        _ => println!("ratio ({a}/{b}) {name}: - (not measured in both runs)"),
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    ratio("converge time", secs(before.converge), secs(after.converge));
    ratio(
        "api requests",
        before.requests.as_ref().map(|r| r.total as f64),
        after.requests.as_ref().map(|r| r.total as f64),
    );
    ratio("api req/s", before.request_rate(), after.request_rate());
    ratio("idle api req/s", before.idle_rate(), after.idle_rate());
    ratio(
        "peak RSS",
        before.rss_peak.map(mib),
        after.rss_peak.map(mib),
    );
    if before.converge.is_none() || after.converge.is_none() {
        println!(
            "ratio note: a run did not converge, so its figures cover a different stretch (up to \
             the timeout or the RSS cap): these ratios do not compare like with like"
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--print-audit-policy") {
        print!("{}", audit_policy());
        return Ok(());
    }
    let mut runs: Vec<(String, Option<PathBuf>)> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--apply-only" {
            runs.push(("apply-only".into(), None));
            continue;
        }
        let value = match arg.as_str() {
            "--run" => args.next().context("--run needs LABEL=PATH")?.as_str(),
            other => other.strip_prefix("--run=").with_context(|| {
                format!("unknown argument {other}; usage: bench_scale --run LABEL=PATH ...")
            })?,
        };
        let (label, path) = value
            .split_once('=')
            .with_context(|| format!("--run {value}: expected LABEL=PATH"))?;
        if label.is_empty()
            || !label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("--run {value}: the label must be lowercase letters, digits and '-'");
        }
        runs.push((label.to_owned(), Some(PathBuf::from(path))));
    }
    if !runs.iter().any(|(_, binary)| binary.is_some()) {
        bail!(
            "usage: bench_scale [--apply-only] --run LABEL=PATH [--run LABEL=PATH] (make bench-scale)"
        );
    }
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    cluster().ensure_crds();
    apply_json(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": AUTH_NAMESPACE}}),
    );
    let client = runtime.block_on(cluster().client())?;
    let nodes = cluster().kubectl_ok(&["get", "nodes", "-l", "type=kwok", "-o", "name"]);
    println!(
        "bench-scale: {n} AgentIdentities + {n} pods (one per identity, agentmesh.io/identity label) \
         in {} namespaces with a TrustPolicy each, on {} kwok nodes; the operator watches every \
         namespace",
        settings.namespaces,
        nodes.lines().count(),
        n = settings.identities
    );
    let mut all = Vec::new();
    let mut floor = None;
    for (label, binary) in &runs {
        match binary {
            Some(binary) => println!("[{label}] operator: {}", binary.display()),
            None => println!("[{label}] no operator: the apply alone"),
        }
        let figures = run(&runtime, &client, &settings, label, binary.as_deref())?;
        print_figures(&figures, &settings);
        if figures.with_operator {
            all.push(figures);
        } else {
            floor = Some(figures);
        }
    }
    if all.len() >= 2 || floor.is_some() {
        println!(
            "== {} (same cluster, same run) ==",
            all.iter()
                .rev()
                .chain(&floor)
                .map(|f| f.label.as_str())
                .collect::<Vec<_>>()
                .join(" vs ")
        );
        for f in floor.iter().chain(&all) {
            print_figures(f, &settings);
        }
        if all.len() >= 2 {
            print_ratios(&all[0], &all[all.len() - 1]);
        }
        if let Some(floor) = &floor {
            for f in &all {
                match (f.converge, floor.create) {
                    (Some(converge), Some(create)) => println!(
                        "ratio ({}/{}) converge time / the apply alone: {:.3} ({:.1} / {:.1})",
                        f.label,
                        floor.label,
                        converge.as_secs_f64() / create.as_secs_f64(),
                        converge.as_secs_f64(),
                        create.as_secs_f64()
                    ),
                    _ => println!(
                        "ratio ({}/{}) converge time / the apply alone: - (not measured)",
                        f.label, floor.label
                    ),
                }
            }
        }
    }
    if all.iter().any(|f| f.converge.is_none()) {
        eprintln!("bench-scale: a run did not converge (NOT CONVERGED above)");
        std::process::exit(1);
    }
    Ok(())
}
