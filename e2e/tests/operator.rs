//! The operator end to end on the real API server: identities get keys and DIDs, delegations
//! are verified, authorized reports move scores (forged ones change nothing), sidecar reports
//! count only when signed by the identity's key, fresh and new, with positive credit capped,
//! scores survive restarts and leader changes, conflicting policies are refused.

use std::time::Duration;

use agentmesh_api::names::objects::key_secret_name;
use agentmesh_e2e::operator::{
    OperatorProcess, http_request, http_request_with, plain_http_request,
};
use agentmesh_e2e::{TestNamespace, cluster, condition};
use serde_json::{Value, json};

/// Short leases so that a killed leader is replaced within seconds.
const FAST_LEASE: [(&str, &str); 2] = [
    ("MESHLOGIC_LEASE_SECONDS", "3"),
    ("MESHLOGIC_STATUS_INTERVAL_SECONDS", "1"),
];

/// Polls `kind/name` until `check` holds on it; panics with the last object seen and the logs.
fn wait_for(
    operator: &mut OperatorProcess,
    kind: &str,
    name: &str,
    namespace: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let start = std::time::Instant::now();
    loop {
        let last = cluster()
            .get(kind, name, Some(namespace))
            .unwrap_or(Value::Null);
        if check(&last) {
            return last;
        }
        assert!(
            operator.is_running(),
            "operator {} exited while waiting for {kind}/{name}: {what}:\n{}",
            operator.name,
            operator.logs()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "operator {}: timed out waiting for {kind}/{name}: {what}; last seen: {last}\n{}",
            operator.name,
            operator.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn condition_is(object: &Value, type_: &str, status: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == status)
}

fn apply(namespace: &str, object: Value) {
    cluster().apply(namespace, &object.to_string());
}

fn identity(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": name, "labels": {"team": "e2e"}}, "spec": spec})
}

/// The pod `agent-0` of identity `agent` on the fake node kwok-node-0; its UID.
fn agent_pod(ns: &str) -> String {
    pod_on(ns, "agent-0", "agent", "kwok-node-0")
}

/// A pod of identity `identity` on `node`; its UID.
/// It runs as the identity's ServiceAccount (of the identity's name).
fn pod_on(ns: &str, name: &str, identity: &str, node: &str) -> String {
    cluster().service_account(ns, identity);
    apply(
        ns,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"agentmesh.io/identity": identity}},
        "spec": {"nodeName": node, "serviceAccountName": identity, "tolerations": agentmesh_e2e::fake_node_tolerations(), "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}),
    );
    cluster().get("pod", name, Some(ns)).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn identities_get_a_key_secret_a_did_a_score_and_verified_delegations() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("identity", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(
        ns,
        "op",
        &[
            FAST_LEASE[0],
            FAST_LEASE[1],
            ("MESHLOGIC_KEY_SWEEP_SECONDS", "1"),
        ],
    );
    apply(
        ns,
        identity(
            "parent",
            json!({"capabilities": ["read:documents", "tools:search:*"], "delegates": ["narrow", "wide"]}),
        ),
    );
    let parent = wait_for(
        &mut operator,
        "agentidentity",
        "parent",
        ns,
        "a DID, a score and KeyReady",
        |o| {
            o["status"]["did"]
                .as_str()
                .is_some_and(|d| d.starts_with("did:mesh:"))
                && o["status"]["trustScore"] == 800
                && condition_is(o, "KeyReady", "True")
        },
    );
    assert_eq!(parent["status"]["tier"], "trusted");
    assert_eq!(parent["status"]["quarantined"], false);
    let secret_name = key_secret_name(ns, "parent");
    assert_eq!(parent["status"]["keySecretName"], secret_name.as_str());
    // In the operator's namespace (here the same as the identity's), naming its identity.
    let secret = cluster()
        .get("secret", &secret_name, Some(ns))
        .expect("the key Secret exists");
    assert!(secret["data"]["private-key"].is_string());
    assert_eq!(
        secret["metadata"]["annotations"]["agentmesh.io/identity-uid"], parent["metadata"]["uid"],
        "the Secret names its identity"
    );
    // The printer columns show it.
    let table = cluster().kubectl_ok(&["get", "agentidentities", "-n", ns]);
    let row = table
        .lines()
        .find(|l| l.starts_with("parent "))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(
        &row[1..4],
        [parent["status"]["did"].as_str().unwrap(), "800", "trusted"]
    );

    // A delegation that narrows is verified; one that widens is refused with its reason.
    apply(
        ns,
        identity(
            "narrow",
            json!({"delegation": {"parent": "parent", "capabilities": ["tools:search:web"]}}),
        ),
    );
    apply(
        ns,
        identity(
            "wide",
            json!({"delegation": {"parent": "parent", "capabilities": ["write:everything"]}}),
        ),
    );
    let narrow = wait_for(
        &mut operator,
        "agentidentity",
        "narrow",
        ns,
        "DelegationValid=True",
        |o| condition_is(o, "DelegationValid", "True"),
    );
    assert_eq!(narrow["status"]["delegationDepth"], 1);
    // Verified at its first reconcile: never refused on the way (its own DID, not yet in its
    // status then, counts for the parent's consent).
    let refusals = cluster().kubectl_ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.name=narrow,reason=NotConsented",
        "-o",
        "name",
    ]);
    assert!(
        refusals.trim().is_empty(),
        "narrow was refused on the way: {refusals}"
    );
    assert_eq!(
        narrow["status"]["delegationChain"][0]["issuer"],
        parent["status"]["did"]
    );
    let wide = wait_for(
        &mut operator,
        "agentidentity",
        "wide",
        ns,
        "DelegationValid=False",
        |o| condition_is(o, "DelegationValid", "False"),
    );
    let refused = condition(&wide, "DelegationValid").unwrap();
    assert_eq!(refused["reason"], "CapabilitiesWidened", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("write:everything"),
        "{refused}"
    );
    delegation_needs_the_parents_consent(&mut operator, ns, &narrow);

    // A deleted identity's key Secret goes (no owner reference across namespaces: the leader
    // sweeps it); the others' stay.
    let wide_secret = key_secret_name(ns, "wide");
    assert!(cluster().get("secret", &wide_secret, Some(ns)).is_some());
    cluster().kubectl_ok(&["delete", "agentidentity", "wide", "-n", ns]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster().get("secret", &wide_secret, Some(ns)).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the key Secret of a deleted identity stayed:\n{}",
            operator.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        cluster()
            .get("secret", &key_secret_name(ns, "parent"), Some(ns))
            .is_some(),
        "the sweep took a live identity's key"
    );
}

fn no_links(identity: &Value) -> bool {
    identity["status"]["delegationChain"]
        .as_array()
        .is_none_or(|links| links.is_empty())
}

/// The attack: anyone who may create an AgentIdentity names a parent and gets a link signed
/// with the parent's key. Without the parent's consent (`spec.delegates`) nothing is signed,
/// and taking a name off the list revokes the link its holder has.
fn delegation_needs_the_parents_consent(operator: &mut OperatorProcess, ns: &str, narrow: &Value) {
    apply(
        ns,
        identity(
            "uninvited",
            json!({"delegation": {"parent": "parent", "capabilities": ["tools:search:web"]}}),
        ),
    );
    let uninvited = wait_for(
        operator,
        "agentidentity",
        "uninvited",
        ns,
        "DelegationValid=False",
        |o| condition_is(o, "DelegationValid", "False"),
    );
    let refused = condition(&uninvited, "DelegationValid").unwrap();
    assert_eq!(refused["reason"], "NotConsented", "{refused}");
    assert!(no_links(&uninvited), "no link signed for it: {uninvited}");

    // The link carries its issue time, which stays as it is while the link does.
    let issued = narrow["status"]["delegationChain"][0]["issuedAt"].clone();
    assert!(issued.is_string(), "{narrow}");

    // The parent withdraws its consent: the held link is revoked at once (the parent's change
    // wakes its children), well before the child's own 30 s requeue.
    cluster().kubectl_ok(&[
        "patch",
        "agentidentity",
        "parent",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"delegates":["wide"]}}"#,
    ]);
    let started = std::time::Instant::now();
    let revoked = wait_for(
        operator,
        "agentidentity",
        "narrow",
        ns,
        "DelegationValid=False after the consent is withdrawn",
        |o| condition_is(o, "DelegationValid", "False"),
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "revocation took {:?}",
        started.elapsed()
    );
    assert_eq!(
        condition(&revoked, "DelegationValid").unwrap()["reason"],
        "NotConsented"
    );
    assert!(no_links(&revoked), "{revoked}");
    assert_eq!(revoked["status"]["delegationDepth"], 0);
}

/// The token of a probe on kwok-node-0: with `allowed`, of the ServiceAccount `probe` that
/// the MeshLogicAgent `probe` runs its probes as (and a ClusterRole that lets it post reports
/// at once, before the agent's own RBAC is made); else of an account without that right.
fn reporter_token(namespace: &str, allowed: bool) -> String {
    let name = if allowed { "probe" } else { "intruder" };
    reporter_account(namespace, name, allowed);
    if allowed {
        apply(
            namespace,
            json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "MeshLogicAgent", "metadata": {"name": "probe"},
                   "spec": {"customerId": "e2e", "serviceAccount": {"create": false, "name": "probe"},
                            "nodeSelector": agentmesh_e2e::fake_nodes(), "tolerations": agentmesh_e2e::fake_node_tolerations()}}),
        );
    }
    cluster().node_token(namespace, name, "kwok-node-0")
}

/// The ServiceAccount `name`, allowed to post reports when `allowed`.
fn reporter_account(namespace: &str, name: &str, allowed: bool) {
    cluster().kubectl_ok(&["create", "serviceaccount", name, "-n", namespace]);
    if allowed {
        let role = format!("{namespace}-{name}-reports");
        apply(
            namespace,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
            "rules": [{"apiGroups": ["agentmesh.io"], "resources": ["reports"], "verbs": ["create"]}]}),
        );
        apply(
            namespace,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}),
        );
    }
}

fn report(pod_uid: &str, namespace: &str, executables: &[&str]) -> String {
    json!({
        "source": {"kind": "probe", "node": "kwok-node-0", "agent": format!("{namespace}/probe"), "tier": 2, "programsLoaded": 7, "ringBufferDrops": 0},
        "pods": [{"podUid": pod_uid, "windowStartMs": 0, "windowEndMs": 1000,
                  "counts": {"execs": executables.len(), "exits": 0, "fileOpens": 0, "connects": 0},
                  "executables": executables}]
    })
    .to_string()
}

/// Posts to whichever replica leads, retrying while none does.
fn post_report(operators: &mut [&mut OperatorProcess], token: &str, body: &str) -> (u16, String) {
    for _ in 0..100 {
        for operator in operators.iter_mut() {
            if let Some((code, answer)) = http_request(
                operator.trust_api,
                "POST",
                "/v1/reports",
                Some(token),
                Some(body),
            ) && code != 503
            {
                return (code, answer);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no replica accepted the report");
}

#[test]
fn reports_move_scores_forged_ones_do_not_and_scores_survive_restarts_and_leader_changes() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("trust", &[]);
    let ns = namespace.name.as_str();
    let mut first = OperatorProcess::start(ns, "op-a", &FAST_LEASE);
    let mut second = OperatorProcess::start(ns, "op-b", &FAST_LEASE);
    apply(
        ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "strict-exec"},
        "spec": {"trust": {"initialScore": 800, "decayRate": 0, "decayFloor": 100, "minThreshold": 700},
                 "behavior": {"exec": [{"path": "/usr/bin/curl", "action": "deny", "penalty": 150}]}}}),
    );
    apply(ns, identity("agent", json!({"capabilities": ["read:*"]})));
    let uid = agent_pod(ns);
    let leader = if first.is_leader() {
        &mut first
    } else {
        &mut second
    };
    wait_for(
        leader,
        "agentidentity",
        "agent",
        ns,
        "score 800 and one pod",
        |o| o["status"]["trustScore"] == 800 && o["status"]["podsMatched"] == 1,
    );
    let token = reporter_token(ns, true);
    let intruder = reporter_token(ns, false);

    // Forged: no token, a bad token, a token without the permission. Nothing changes.
    let body = report(&uid, ns, &["/usr/bin/curl"]);
    let mut replicas = [&mut first, &mut second];
    // Refused, and told nothing of why (the API server's reasons are for the operator's log).
    let (code, answer) = post_report(&mut replicas, "not-a-token", &body);
    assert_eq!(code, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"error": "the bearer token was not accepted"})
    );
    assert_eq!(post_report(&mut replicas, &intruder, &body).0, 403);
    let (code, answer) = post_report(&mut replicas, &token, "{\"source\": 1}");
    assert_eq!(code, 400, "{answer}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster().get("agentidentity", "agent", Some(ns)).unwrap()["status"]["trustScore"],
        800,
        "a refused report changed the score"
    );

    // Authorized: the deny rule costs 150 points, below the threshold of 700: quarantined.
    let (code, answer) = post_report(&mut replicas, &token, &body);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["accepted"],
        1
    );
    let leader = if first.is_leader() {
        &mut first
    } else {
        &mut second
    };
    let agent = wait_for(
        leader,
        "agentidentity",
        "agent",
        ns,
        "score 650, quarantined",
        |o| {
            o["status"]["trustScore"] == 650
                && o["status"]["quarantined"] == true
                && condition_is(o, "Quarantined", "True")
        },
    );
    assert_eq!(agent["status"]["tier"], "standard");
    assert_eq!(
        agent["status"]["behavior"]["recentAnomalies"][0]["kind"],
        "ruleMatch"
    );
    wait_for(
        leader,
        "trustpolicy",
        "strict-exec",
        ns,
        "one violation",
        |o| o["status"]["violations"] == 1,
    );
    // The seed's violation metric moved with it.
    assert_eq!(
        leader.metric(&format!(
            "agentmesh_policy_violation_count{{namespace=\"{ns}\",identity=\"agent\",mode=\"enforce\"}}"
        )),
        Some(1.0),
        "{}",
        leader.metrics_text()
    );
    let table = cluster().kubectl_ok(&["get", "agentidentities", "-n", ns]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("agent ") && l.contains(" 650 ") && l.contains("standard")),
        "{table}"
    );

    // Kill the leader: the other replica takes over from status and loses nothing.
    let (killed, survivor) = if first.is_leader() {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    killed.kill();
    survivor.wait_until(Duration::from_secs(30), "the survivor to lead", |o| {
        o.is_leader()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster().get("agentidentity", "agent", Some(ns)).unwrap()["status"]["trustScore"],
        650,
        "the new leader lost the score"
    );
    let mut replicas = [survivor];
    let (code, _) = post_report(&mut replicas, &token, &body);
    assert_eq!(code, 202);
    let survivor = &mut *replicas[0];
    wait_for(survivor, "agentidentity", "agent", ns, "score 500", |o| {
        o["status"]["trustScore"] == 500
    });

    // Kill the last replica and start a fresh one: the score stays.
    survivor.kill();
    let mut restarted = OperatorProcess::start(ns, "op-c", &FAST_LEASE);
    restarted.wait_until(
        Duration::from_secs(30),
        "the restarted operator to lead",
        |o| o.is_leader(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let agent = cluster().get("agentidentity", "agent", Some(ns)).unwrap();
    assert_eq!(
        agent["status"]["trustScore"], 500,
        "a restart changed the score: {agent}"
    );
    assert_eq!(agent["status"]["quarantined"], true);
    // Only leaders wrote status; violations continued from status too.
    wait_for(
        &mut restarted,
        "trustpolicy",
        "strict-exec",
        ns,
        "two violations",
        |o| o["status"]["violations"] == 2,
    );
}

#[test]
fn a_policy_conflicting_with_an_older_one_is_refused_with_its_reason() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("conflict", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(ns, "op", &FAST_LEASE);
    apply(ns, identity("agent", json!({})));
    let policy = |name: &str, mode: &str| {
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": name},
               "spec": {"mode": mode, "selector": {"matchLabels": {"team": "e2e"}}}})
    };
    apply(ns, policy("first-enforce", "enforce"));
    wait_for(
        &mut operator,
        "trustpolicy",
        "first-enforce",
        ns,
        "Accepted=True governing 1",
        |o| condition_is(o, "Accepted", "True") && o["status"]["identitiesMatched"] == 1,
    );
    std::thread::sleep(Duration::from_secs(1)); // a later creation timestamp
    apply(ns, policy("later-shadow", "shadow"));
    let refused = wait_for(
        &mut operator,
        "trustpolicy",
        "later-shadow",
        ns,
        "Accepted=False",
        |o| condition_is(o, "Accepted", "False"),
    );
    let accepted = condition(&refused, "Accepted").unwrap();
    assert_eq!(accepted["reason"], "ConflictingMode");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("first-enforce"),
        "{accepted}"
    );
    assert!(
        cluster().has_events(ns, "reason=PolicyRefused"),
        "no PolicyRefused Event"
    );
}

/// The attacks of a principal allowed to create reports: report a pod of another node (to
/// quarantine it), claim another node, speak for another MeshLogicAgent, present a token bound
/// to no node, read another node's enforcement set. Each refused, and the scores unmoved; the
/// probe's own report for its own node's pod counts.
#[test]
fn probe_reports_count_only_for_their_own_node_and_their_own_agent() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("binding", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(ns, "op", &FAST_LEASE);
    apply(
        ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "policy"},
        "spec": {"trust": {"decayRate": 0},
                 "behavior": {"exec": [{"path": "/usr/bin/curl", "action": "deny", "penalty": 300}]}}}),
    );
    apply(ns, identity("near", json!({})));
    apply(ns, identity("far", json!({})));
    let near = pod_on(ns, "near-0", "near", "kwok-node-0");
    let far = pod_on(ns, "far-0", "far", "kwok-node-1");
    for name in ["near", "far"] {
        wait_for(
            &mut operator,
            "agentidentity",
            name,
            ns,
            "score 800 and a pod",
            |o| o["status"]["trustScore"] == 800 && o["status"]["podsMatched"] == 1,
        );
    }
    // The probe of the MeshLogicAgent `probe` on kwok-node-0, and a rogue account that RBAC
    // also lets create reports, on kwok-node-1.
    let probe = reporter_token(ns, true);
    reporter_account(ns, "rogue", true);
    let rogue = cluster().node_token(ns, "rogue", "kwok-node-1");
    let unbound = cluster().token(ns, "probe", None);
    let body = |node: &str, uid: &str| {
        json!({"source": {"kind": "probe", "node": node, "agent": format!("{ns}/probe"), "tier": 2, "programsLoaded": 7, "ringBufferDrops": 0},
               "pods": [{"podUid": uid, "windowStartMs": 0, "windowEndMs": 1000,
                         "counts": {"execs": 1, "exits": 0, "fileOpens": 0, "connects": 0},
                         "executables": ["/usr/bin/curl"]}]})
        .to_string()
    };
    let mut replicas = [&mut operator];

    // Another node's pod, under the probe's true node: accepted as a batch, the pod refused.
    let (code, answer) = post_report(&mut replicas, &probe, &body("kwok-node-0", &far));
    assert_eq!(code, 202, "{answer}");
    let ack: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (&ack["accepted"], &ack["foreignPods"]),
        (&json!(0), &json!(1)),
        "{ack}"
    );
    // Claiming the other node in the body.
    let (code, answer) = post_report(&mut replicas, &probe, &body("kwok-node-1", &far));
    assert_eq!(code, 403, "{answer}");
    assert!(
        answer.contains("not the node of the caller's token"),
        "{answer}"
    );
    // A token bound to no pod, hence no node.
    let (code, answer) = post_report(&mut replicas, &unbound, &body("kwok-node-0", &near));
    assert_eq!(code, 403, "{answer}");
    // Another account on the far pod's own node, speaking for the agent `probe`.
    let (code, answer) = post_report(&mut replicas, &rogue, &body("kwok-node-1", &far));
    assert_eq!(code, 403, "{answer}");
    assert!(
        answer.contains("does not run the probes of MeshLogicAgent"),
        "{answer}"
    );
    // The probe's own account, pod and node, with a token for the API server (what every pod
    // has mounted): not meant for the trust API, so not believed.
    let holder = "probe-token-kwok-node-0";
    let uid = cluster().get("pod", holder, Some(ns)).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let for_the_api_server = cluster().token_for(ns, "probe", Some((holder, &uid)), None);
    let (code, answer) = post_report(
        &mut replicas,
        &for_the_api_server,
        &body("kwok-node-0", &near),
    );
    assert_eq!(code, 401, "{answer}");
    assert!(
        !answer.contains("audience"),
        "details to an unauthenticated caller: {answer}"
    );
    // Another node's enforcement set.
    let operator = &mut *replicas[0];
    let (code, view) = get_view(operator, "/v1/enforcement?node=kwok-node-1", &probe);
    assert_eq!(code, 403, "{view}");
    assert_eq!(
        get_view(operator, "/v1/enforcement?node=kwok-node-0", &probe).0,
        200
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster().get("agentidentity", "far", Some(ns)).unwrap()["status"]["trustScore"],
        800,
        "a forged report moved the far pod's score"
    );
    let refused = |reason: &str| {
        operator
            .metric(&format!(
                "meshlogic_operator_reports_refused_total{{reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert_eq!(
        [
            refused("foreign_pod"),
            refused("foreign_node"),
            refused("node_unbound"),
            refused("foreign_agent")
        ],
        [1.0, 2.0, 1.0, 1.0],
        "{}",
        operator.metrics_text()
    );

    // The probe's own node's pod: counted.
    let mut replicas = [operator];
    let (code, answer) = post_report(&mut replicas, &probe, &body("kwok-node-0", &near));
    assert_eq!(code, 202, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["accepted"],
        1
    );
    wait_for(replicas[0], "agentidentity", "near", ns, "score 500", |o| {
        o["status"]["trustScore"] == 500
    });
}

/// The attacks of a pod author and of whoever may create Secrets or AgentIdentities in a
/// namespace, on the real API server: a pod labelled with another account's identity, a key
/// Secret made ahead of the operator, a public key copied from another identity. Each is
/// refused; the identity's own pod counts.
#[test]
fn identities_are_bound_by_the_operator_not_chosen_by_the_pod_author() {
    use base64::Engine;
    cluster().ensure_crds();
    let namespace = TestNamespace::create("binding-id", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(ns, "op", &FAST_LEASE);

    // A key Secret made by someone else before the identity exists, with a key they know:
    // where the operator keeps keys (its namespace, here the identity's too), with its label,
    // and where they used to be (`<name>-agentmesh-key` beside the identity).
    let known = agentmesh_identity::SigningKey::from_bytes(&[42; 32]);
    let pem = agentmesh_identity::keys::private_key_to_pem(&known).unwrap();
    for name in [
        key_secret_name(ns, "squatted"),
        "squatted-agentmesh-key".into(),
    ] {
        apply(
            ns,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name,
                   "labels": {"app.kubernetes.io/managed-by": "meshlogic-operator"},
                   "annotations": {"agentmesh.io/identity": format!("{ns}/squatted")}},
                   "data": {"private-key": base64::engine::general_purpose::STANDARD.encode(&pem)}}),
        );
    }
    apply(ns, identity("payments", json!({})));
    apply(ns, identity("squatted", json!({})));
    let payments = wait_for(
        &mut operator,
        "agentidentity",
        "payments",
        ns,
        "a public key",
        |o| o["status"]["publicKey"].is_string(),
    );
    let squatted = wait_for(
        &mut operator,
        "agentidentity",
        "squatted",
        ns,
        "KeyReady=False",
        |o| condition_is(o, "KeyReady", "False"),
    );
    assert_eq!(
        condition(&squatted, "KeyReady").unwrap()["reason"],
        "SecretNotOwned",
        "{squatted}"
    );
    assert!(
        squatted["status"]["did"].is_null(),
        "the squatter's key was adopted: {squatted}"
    );

    // The same public key claimed by a newer identity.
    apply(
        ns,
        identity(
            "copycat",
            json!({"publicKey": payments["status"]["publicKey"]}),
        ),
    );
    let copycat = wait_for(
        &mut operator,
        "agentidentity",
        "copycat",
        ns,
        "KeyReady=False",
        |o| condition_is(o, "KeyReady", "False"),
    );
    assert_eq!(
        condition(&copycat, "KeyReady").unwrap()["reason"],
        "DuplicateKey"
    );
    assert!(copycat["status"]["did"].is_null(), "{copycat}");

    // A pod labelled `payments` but of the default account: not payments' pod, and its token
    // gets neither the identity's view nor a say in its score.
    apply(
        ns,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "thief", "labels": {"agentmesh.io/identity": "payments"}},
        "spec": {"nodeName": "kwok-node-0", "tolerations": agentmesh_e2e::fake_node_tolerations(), "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}),
    );
    let thief_uid = cluster().get("pod", "thief", Some(ns)).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let own_uid = pod_on(ns, "payments-0", "payments", "kwok-node-0");
    wait_for(
        &mut operator,
        "agentidentity",
        "payments",
        ns,
        "one pod, its own",
        |o| o["status"]["podsMatched"] == 1,
    );
    let thief = cluster().token(ns, "default", Some(("thief", &thief_uid)));
    let (code, view) = get_view(&operator, "/v1/sidecar/config", &thief);
    assert_eq!(code, 404, "the thief got payments' view: {view}");
    let own = cluster().token(ns, "payments", Some(("payments-0", &own_uid)));
    let (code, view) = get_view(&operator, "/v1/sidecar/config", &own);
    assert_eq!(
        (code, &view["identity"]["name"]),
        (200, &json!("payments")),
        "{view}"
    );

    // The key: handed to payments' own pod only. The thief's pod (labelled payments, another
    // account), a token of payments' account bound to no pod, and a pod-bound token of
    // payments' account naming the thief's pod (the API server refuses to issue it) get none.
    let (code, key) = get_view(&operator, "/v1/sidecar/key", &thief);
    assert_eq!(code, 404, "the thief got payments' key: {key}");
    let unbound = cluster().token(ns, "payments", None);
    let (code, key) = get_view(&operator, "/v1/sidecar/key", &unbound);
    assert_eq!(code, 403, "a token bound to no pod got a key: {key}");
    let (code, key) = get_view(&operator, "/v1/sidecar/key", &own);
    assert_eq!(code, 200, "{key}");
    assert_eq!(key["identity"], format!("{ns}/payments"));
    let pem = key["privateKey"].as_str().unwrap();
    let signing = agentmesh_identity::keys::private_key_from_pem(pem).unwrap();
    assert_eq!(
        agentmesh_identity::keys::Did::from_public_key(&signing.verifying_key()).to_string(),
        payments["status"]["did"].as_str().unwrap(),
        "the key handed out is payments' own"
    );
    // An identity with a key of its own: the operator holds none to give (once it knows the
    // pod, it says why).
    let copy_uid = pod_on(ns, "copycat-0", "copycat", "kwok-node-0");
    let token = cluster().token(ns, "copycat", Some(("copycat-0", &copy_uid)));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, answer) = get_view(&operator, "/v1/sidecar/key", &token);
        assert_eq!(code, 404, "{answer}");
        if answer.to_string().contains("spec.publicKey") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{answer}");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster()
            .get("agentidentity", "payments", Some(ns))
            .unwrap()["status"]["podsMatched"],
        1
    );
}

/// `GET` on the trust API of `operator`; the status and the JSON body.
fn get_view(operator: &OperatorProcess, path: &str, token: &str) -> (u16, Value) {
    let (code, body) =
        http_request(operator.trust_api, "GET", path, Some(token), None).expect("an answer");
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn sidecars_and_probes_get_their_views_and_changes_arrive_within_seconds() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("views", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(ns, "op", &FAST_LEASE);
    apply(
        ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "policy"},
        "spec": {"trust": {"decayRate": 0},
                 "behavior": {"exec": [{"path": "/usr/bin/curl", "action": "deny", "penalty": 300}],
                              "network": [{"cidr": "169.254.169.254/32", "action": "deny", "penalty": 100}]}}}),
    );
    apply(ns, identity("agent", json!({"capabilities": ["read:*"]})));
    apply(ns, identity("peer", json!({})));
    pod_on(ns, "agent-0", "agent", "kwok-node-0");
    for name in ["agent", "peer"] {
        wait_for(
            &mut operator,
            "agentidentity",
            name,
            ns,
            "a DID and a score",
            |o| o["status"]["did"].is_string() && o["status"]["trustScore"] == 800,
        );
    }
    let uid = cluster().get("pod", "agent-0", Some(ns)).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();

    // The sidecar presents its pod's bound token and gets its identity, policy and peers.
    let bound = cluster().token(ns, "agent", Some(("agent-0", &uid)));
    let (code, config) = get_view(&operator, "/v1/sidecar/config", &bound);
    assert_eq!(code, 200, "{config}");
    assert_eq!(config["identity"]["name"], "agent");
    assert_eq!(config["identity"]["score"], 800);
    assert_eq!(config["policyName"], format!("{ns}/policy"));
    assert_eq!(
        config["policy"]["behavior"]["exec"][0]["path"],
        "/usr/bin/curl"
    );
    let peer = config["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "peer")
        .expect("the peer is listed");
    let peer_status = cluster().get("agentidentity", "peer", Some(ns)).unwrap()["status"].clone();
    assert_eq!(
        (&peer["did"], &peer["publicKey"]),
        (&peer_status["did"], &peer_status["publicKey"])
    );
    // A token bound to no pod does not say which identity is asking.
    let unbound = cluster().token(ns, "default", None);
    assert_eq!(get_view(&operator, "/v1/sidecar/config", &unbound).0, 403);

    // Over plain HTTP the same port answers health only: the valid token and the enforcement
    // set never cross the network in the clear (the seed's `curl http://…:8080/health` and the
    // kubelet's probes still work). Each refusal is counted.
    let refused_before = operator
        .metric(r#"meshlogic_operator_reports_refused_total{reason="plain_http"}"#)
        .unwrap_or(0.0);
    for (method, path) in [
        ("GET", "/v1/sidecar/config"),
        ("GET", "/v1/enforcement?node=kwok-node-0"),
        ("POST", "/v1/reports"),
    ] {
        let (code, answer) =
            plain_http_request(operator.trust_api, method, path, Some(&bound), Some("{}"))
                .expect("an answer");
        assert_eq!(code, 403, "{method} {path} over plain HTTP: {answer}");
        assert!(answer.contains("TLS only"), "{answer}");
        assert!(!answer.contains("policy"), "{answer}");
    }
    assert_eq!(
        operator.metric(r#"meshlogic_operator_reports_refused_total{reason="plain_http"}"#),
        Some(refused_before + 3.0)
    );
    let (code, _) = plain_http_request(operator.trust_api, "GET", "/health", None, None).unwrap();
    assert_eq!(code, 200, "/health over plain HTTP");

    // The probe's view of the node: the pod's deny rules, not quarantined.
    let probe = reporter_token(ns, true);
    let (code, enforcement) = get_view(&operator, "/v1/enforcement?node=kwok-node-0", &probe);
    assert_eq!(code, 200, "{enforcement}");
    let pod = enforcement["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podUid"] == uid.as_str())
        .expect("the pod is enforced");
    assert_eq!(pod["deniedExecutables"], json!(["/usr/bin/curl"]));
    assert_eq!(pod["deniedNetworks"][0]["cidr"], "169.254.169.254/32");
    assert_eq!(pod["quarantined"], false);
    assert_eq!(
        get_view(&operator, "/v1/enforcement?node=kwok-node-0", &bound).0,
        403,
        "a sidecar is not a probe"
    );

    // Long-polls: both wait on their current version; a report changes the score (800 → 500)
    // and then quarantines (→ 200): each answers within seconds of the change.
    let since = config["version"].as_str().unwrap().to_owned();
    let addr = operator.trust_api;
    let sidecar_poll = {
        let (bound, since) = (bound.clone(), since.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let answer = http_request(
                addr,
                "GET",
                &format!("/v1/sidecar/config?since={since}"),
                Some(&bound),
                None,
            )
            .unwrap();
            (answer, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let reported = std::time::Instant::now();
    let body = report(&uid, ns, &["/usr/bin/curl"]);
    assert_eq!(post_report(&mut [&mut operator], &probe, &body).0, 202);
    let ((code, answer), waited) = sidecar_poll.join().unwrap();
    assert_eq!(code, 200);
    let changed: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(changed["identity"]["score"], 500, "{changed}");
    assert!(
        waited >= Duration::from_secs(2),
        "the long-poll answered before anything changed"
    );
    assert!(
        reported.elapsed() < Duration::from_secs(3),
        "the change took {:?} to arrive",
        reported.elapsed()
    );

    let version = enforcement["version"].as_str().unwrap().to_owned();
    let probe_poll = {
        let probe = probe.clone();
        std::thread::spawn(move || {
            http_request(
                addr,
                "GET",
                &format!("/v1/enforcement?node=kwok-node-0&since={version}"),
                Some(&probe),
                None,
            )
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let reported = std::time::Instant::now();
    assert_eq!(post_report(&mut [&mut operator], &probe, &body).0, 202);
    let (code, answer) = probe_poll.join().unwrap();
    assert_eq!(code, 200);
    assert!(
        reported.elapsed() < Duration::from_secs(3),
        "quarantine took {:?} to reach the probe",
        reported.elapsed()
    );
    let enforcement: Value = serde_json::from_str(&answer).unwrap();
    let pod = enforcement["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podUid"] == uid.as_str())
        .unwrap();
    assert_eq!(pod["quarantined"], true, "{enforcement}");
}

/// The private key of AgentIdentity `name`, from the Secret the operator made for it.
fn identity_key(namespace: &str, name: &str) -> agentmesh_identity::SigningKey {
    use base64::Engine;
    // The operator runs in the identity's namespace in these tests: its key Secrets are there.
    let secret = cluster()
        .get("secret", &key_secret_name(namespace, name), Some(namespace))
        .unwrap_or_else(|| panic!("no key Secret for {name}"));
    let pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["private-key"].as_str().unwrap())
        .unwrap();
    agentmesh_identity::keys::private_key_from_pem(std::str::from_utf8(&pem).unwrap()).unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A fresh batch id: 16 bytes (the time and a counter) in base64url without padding.
fn batch_id() -> String {
    use base64::Engine;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(now_ms() as u64).to_be_bytes());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A sidecar batch for `identity` sent at `sent_at_ms`.
fn sidecar_batch(identity: &str, batch: &str, sent_at_ms: i64, outcomes: Value) -> String {
    json!({"source": {"kind": "sidecar", "identity": identity, "batchId": batch, "sentAtMs": sent_at_ms},
           "outcomes": outcomes})
    .to_string()
}

fn tool_calls(effect: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"kind": "toolCall", "tool": "search", "effect": effect, "rule": "tools.allow[0]", "atMs": i}))
            .collect(),
    )
}

/// Posts a sidecar batch with the pod's token and, when given, a signature header.
fn post_signed(
    operator: &OperatorProcess,
    token: &str,
    body: &str,
    signature: Option<&str>,
) -> (u16, String) {
    let headers: Vec<(&str, &str)> = signature
        .map(|s| vec![(agentmesh_api::wire::REPORT_SIGNATURE_HEADER, s)])
        .unwrap_or_default();
    http_request_with(
        operator.trust_api,
        "POST",
        "/v1/reports",
        Some(token),
        &headers,
        Some(body),
    )
    .expect("an answer")
}

fn score(ns: &str, name: &str) -> Value {
    cluster().get("agentidentity", name, Some(ns)).unwrap()["status"]["trustScore"].clone()
}

#[test]
fn sidecar_reports_count_only_when_signed_by_the_identity_fresh_and_once_and_credit_is_capped() {
    use agentmesh_identity::report::sign_report;
    cluster().ensure_crds();
    let namespace = TestNamespace::create("signed", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(ns, "op", &FAST_LEASE);
    apply(
        ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "policy"},
        "spec": {"trust": {"decayRate": 0}, "tools": {"allow": ["search"]}}}),
    );
    apply(ns, identity("agent", json!({})));
    apply(ns, identity("other", json!({})));
    let uid = agent_pod(ns);
    for name in ["agent", "other"] {
        wait_for(
            &mut operator,
            "agentidentity",
            name,
            ns,
            "a public key and score 800",
            |o| o["status"]["publicKey"].is_string() && o["status"]["trustScore"] == 800,
        );
    }
    wait_for(
        &mut operator,
        "agentidentity",
        "agent",
        ns,
        "one pod",
        |o| o["status"]["podsMatched"] == 1,
    );
    let token = cluster().token(ns, "agent", Some(("agent-0", &uid)));
    let key = identity_key(ns, "agent");
    let other_key = identity_key(ns, "other");
    let me = format!("{ns}/agent");
    let violations = format!(
        "agentmesh_policy_violation_count{{namespace=\"{ns}\",identity=\"agent\",mode=\"enforce\"}}"
    );
    let refused = |operator: &OperatorProcess, reason: &str| {
        operator
            .metric(&format!(
                "meshlogic_operator_reports_refused_total{{reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0)
    };

    // Forged, each way: a denied call (−10) that must change nothing.
    let deny = sidecar_batch(&me, &batch_id(), now_ms(), tool_calls("deny", 1));
    let (code, answer) = post_signed(&operator, &token, &deny, None);
    assert_eq!(code, 401, "unsigned: {answer}");
    let (code, answer) = post_signed(&operator, &token, &deny, Some(""));
    assert_eq!(code, 401, "empty signature: {answer}");
    let by_other = sign_report(&other_key, deny.as_bytes());
    let (code, answer) = post_signed(&operator, &token, &deny, Some(&by_other));
    assert_eq!(code, 403, "signed by another identity's key: {answer}");
    let signed_allow = sidecar_batch(&me, &batch_id(), now_ms(), tool_calls("allow", 1));
    let signature_of_other_body = sign_report(&key, signed_allow.as_bytes());
    let (code, answer) = post_signed(&operator, &token, &deny, Some(&signature_of_other_body));
    assert_eq!(code, 403, "signature of another body: {answer}");
    let (code, answer) = post_signed(&operator, &token, &deny, Some("bm90IGEgc2lnbmF0dXJl"));
    assert_eq!(code, 403, "garbage signature: {answer}");
    let stale = sidecar_batch(&me, &batch_id(), now_ms() - 120_000, tool_calls("deny", 1));
    let (code, answer) = post_signed(
        &operator,
        &token,
        &stale,
        Some(&sign_report(&key, stale.as_bytes())),
    );
    assert_eq!(code, 403, "stale: {answer}");
    assert!(answer.contains("sentAtMs"), "{answer}");
    // A token bound to no pod cannot report for the identity, even with a valid signature.
    let unbound = cluster().token(ns, "default", None);
    let (code, _) = post_signed(
        &operator,
        &unbound,
        &deny,
        Some(&sign_report(&key, deny.as_bytes())),
    );
    assert_eq!(code, 403, "a token without the pod");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(score(ns, "agent"), 800, "a refused batch changed the score");
    assert_eq!(
        operator.metric(&violations),
        None,
        "a refused batch was counted"
    );
    for (reason, at_least) in [("unsigned", 2.0), ("bad_signature", 3.0), ("stale", 1.0)] {
        assert!(
            refused(&operator, reason) >= at_least,
            "{reason}:\n{}",
            operator.metrics_text()
        );
    }

    // Correctly signed: applied (800 − 10), counted as a violation and audited.
    let signature = sign_report(&key, deny.as_bytes());
    let (code, answer) = post_signed(&operator, &token, &deny, Some(&signature));
    assert_eq!(code, 202, "{answer}");
    wait_for(
        &mut operator,
        "agentidentity",
        "agent",
        ns,
        "score 790",
        |o| o["status"]["trustScore"] == 790,
    );
    assert_eq!(operator.metric(&violations), Some(1.0));
    assert_eq!(
        operator.metric("meshlogic_operator_audit_entries_total"),
        Some(1.0)
    );

    // Replayed, byte for byte: refused, nothing applied.
    let (code, answer) = post_signed(&operator, &token, &deny, Some(&signature));
    assert_eq!(code, 409, "replayed: {answer}");
    // The same batch id in a new, correctly signed body is the same batch.
    let same_id: Value = serde_json::from_str(&deny).unwrap();
    let same_id = sidecar_batch(
        &me,
        same_id["source"]["batchId"].as_str().unwrap(),
        now_ms(),
        tool_calls("deny", 1),
    );
    let (code, _) = post_signed(
        &operator,
        &token,
        &same_id,
        Some(&sign_report(&key, same_id.as_bytes())),
    );
    assert_eq!(code, 409, "a reused batch id");
    assert!(refused(&operator, "replayed") >= 2.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        score(ns, "agent"),
        790,
        "a replayed batch changed the score"
    );
    assert_eq!(operator.metric(&violations), Some(1.0));

    // The credit cap: 100 compliant calls and 20 successful handshakes in 11 signed batches
    // add 10 points (an hour's credit), not 140.
    let mut batches = vec![sidecar_batch(
        &me,
        &batch_id(),
        now_ms(),
        tool_calls("allow", 50),
    )];
    for _ in 0..10 {
        let outcomes = json!([
            {"kind": "toolCall", "tool": "search", "effect": "allow", "rule": "tools.allow[0]", "atMs": 1},
            {"kind": "toolCall", "method": "resources/read", "tool": "file:///doc", "effect": "allow", "rule": "tools.allow[0]", "atMs": 2},
            {"kind": "toolCall", "method": "prompts/get", "tool": "summary", "effect": "allow", "rule": "tools.allow[0]", "atMs": 3},
            {"kind": "toolCall", "tool": "search", "effect": "allow", "rule": "tools.allow[0]", "atMs": 4},
            {"kind": "toolCall", "tool": "search", "effect": "allow", "rule": "tools.allow[0]", "atMs": 5},
            {"kind": "handshake", "peerDid": "did:mesh:00112233445566778899aabbccddeeff", "succeeded": true, "atMs": 6},
            {"kind": "handshake", "peerDid": "did:mesh:00112233445566778899aabbccddeeff", "succeeded": true, "atMs": 7},
        ]);
        batches.push(sidecar_batch(&me, &batch_id(), now_ms(), outcomes));
    }
    for body in &batches {
        let (code, answer) = post_signed(
            &operator,
            &token,
            body,
            Some(&sign_report(&key, body.as_bytes())),
        );
        assert_eq!(code, 202, "{answer}");
    }
    wait_for(
        &mut operator,
        "agentidentity",
        "agent",
        ns,
        "score 800",
        |o| o["status"]["trustScore"] == 800,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(score(ns, "agent"), 800, "the credit cap did not hold");
    // Every decision is an audit entry: 1 + 50 + 10 × 7.
    assert_eq!(
        operator.metric("meshlogic_operator_audit_entries_total"),
        Some(121.0)
    );

    // Penalties are never capped, even with the credit spent; a changed tool is an anomaly
    // (a new executable's penalty, 20).
    let body = sidecar_batch(
        &me,
        &batch_id(),
        now_ms(),
        json!([
            {"kind": "handshake", "peerDid": "did:mesh:00112233445566778899aabbccddeeff", "succeeded": false, "reason": "bad signature", "atMs": 1},
            {"kind": "toolChanged", "server": "github", "tool": "create_issue", "atMs": 2},
        ]),
    );
    let (code, answer) = post_signed(
        &operator,
        &token,
        &body,
        Some(&sign_report(&key, body.as_bytes())),
    );
    assert_eq!(code, 202, "{answer}");
    let agent = wait_for(
        &mut operator,
        "agentidentity",
        "agent",
        ns,
        "score 755 (800 − 25 − 20)",
        |o| o["status"]["trustScore"] == 755,
    );
    let recent = &agent["status"]["behavior"]["recentAnomalies"][0];
    assert_eq!(recent["kind"], "toolChanged", "{agent}");
    assert_eq!(recent["penalty"], 20);
    assert_eq!(recent["pod"], "agent-0");
    assert_eq!(operator.metric(&violations), Some(2.0));
}

/// Counts from the network are summed with saturation: a probe reporting `u64::MAX` execs (a
/// bug or a hostile reporter) pins `behavior.execs` at the largest int64 the CRD accepts. Before,
/// the count wrapped to -1, the CRD's minimum refused it, and with it the whole status write: the
/// score of the same report (and every later one) never reached status.
#[test]
fn a_huge_count_saturates_and_the_status_write_still_lands() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("huge", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(ns, "op", &FAST_LEASE);
    apply(
        ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "p"},
        "spec": {"trust": {"initialScore": 800, "decayRate": 0},
                 "behavior": {"exec": [{"path": "/usr/bin/curl", "action": "alert", "penalty": 100}]}}}),
    );
    apply(ns, identity("agent", json!({})));
    let uid = agent_pod(ns);
    wait_for(
        &mut operator,
        "agentidentity",
        "agent",
        ns,
        "score 800 and one pod",
        |o| o["status"]["trustScore"] == 800 && o["status"]["podsMatched"] == 1,
    );
    let token = reporter_token(ns, true);
    let mut body: Value = serde_json::from_str(&report(&uid, ns, &["/usr/bin/curl"])).unwrap();
    body["pods"][0]["counts"]["execs"] = json!(u64::MAX);
    body["pods"][0]["counts"]["fileOpens"] = json!(u64::MAX);
    // Twice: each report's penalty reaches status, its window pinned at the maximum.
    for score in [700, 600] {
        let (code, answer) = post_report(&mut [&mut operator], &token, &body.to_string());
        assert_eq!(code, 202, "{answer}");
        wait_for(
            &mut operator,
            "agentidentity",
            "agent",
            ns,
            &format!("score {score} and saturated counts in status"),
            |o| {
                o["status"]["trustScore"] == score
                    && o["status"]["behavior"]["execs"] == i64::MAX
                    && o["status"]["behavior"]["fileOpens"] == i64::MAX
            },
        );
    }
}

/// Behaviour baselines survive a change of leader when the audit store is Redis: what the old
/// leader learned stays known (no anomaly), and the learning period is not started again (a
/// new executable is an anomaly at once). Without the store, the new leader would learn both
/// for free and the score would stay at 800.
#[test]
fn a_new_leader_continues_the_behaviour_baseline_from_the_store() {
    cluster().ensure_crds();
    let redis = agentmesh_store::testing::RedisServer::start(
        &std::env::temp_dir().join(format!("agentmesh-e2e-baseline-{}", std::process::id())),
    );
    let store_env = agentmesh_store::testing::store_env(&redis.remote());
    let env: Vec<(&str, &str)> = FAST_LEASE
        .iter()
        .copied()
        .chain(store_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    let namespace = TestNamespace::create("baseline", &[]);
    let ns = namespace.name.as_str();
    let mut first = OperatorProcess::start(ns, "op-a", &env);
    apply(
        ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "policy"},
        "spec": {"trust": {"decayRate": 0},
                 "behavior": {"anomalies": {"learningPeriodSeconds": 4, "newExecutable": 20}}}}),
    );
    apply(ns, identity("learner", json!({})));
    let pod = pod_on(ns, "learner-0", "learner", "kwok-node-0");
    wait_for(
        &mut first,
        "agentidentity",
        "learner",
        ns,
        "score 800 and a pod",
        |o| o["status"]["trustScore"] == 800 && o["status"]["podsMatched"] == 1,
    );
    let probe = reporter_token(ns, true);
    let body = |executable: &str| {
        json!({"source": {"kind": "probe", "node": "kwok-node-0", "agent": format!("{ns}/probe"), "tier": 2, "programsLoaded": 7, "ringBufferDrops": 0},
               "pods": [{"podUid": pod, "windowStartMs": 0, "windowEndMs": 1000,
                         "counts": {"execs": 1, "exits": 0, "fileOpens": 0, "connects": 0},
                         "executables": [executable]}]})
        .to_string()
    };
    // Learned while learning: free.
    let (code, answer) = post_report(&mut [&mut first], &probe, &body("/usr/bin/python3"));
    assert_eq!(code, 202, "{answer}");
    // Saved within the save interval (10 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !redis
        .cli(&["HGETALL", "agentmesh:baselines"])
        .contains("/usr/bin/python3")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the baseline never reached Redis\n{}",
            first.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The leader goes; a new one starts, past the learning period.
    first.kill();
    std::thread::sleep(Duration::from_secs(4));
    let mut second = OperatorProcess::start(ns, "op-b", &env);
    second.wait_until(
        Duration::from_secs(30),
        "leading, with the baselines loaded",
        |p| p.logs().contains("behaviour baselines loaded"),
    );
    let (code, answer) = post_report(&mut [&mut second], &probe, &body("/usr/bin/python3"));
    assert_eq!(code, 202, "{answer}");
    let (code, answer) = post_report(&mut [&mut second], &probe, &body("/bin/sh"));
    assert_eq!(code, 202, "{answer}");
    let identity = wait_for(
        &mut second,
        "agentidentity",
        "learner",
        ns,
        "score 780",
        |o| o["status"]["trustScore"] == 780,
    );
    let anomalies = identity["status"]["behavior"]["recentAnomalies"].to_string();
    assert!(anomalies.contains("/bin/sh"), "{anomalies}");
    assert!(
        !anomalies.contains("python3"),
        "a learned executable counted: {anomalies}"
    );
}

/// `AGENTMESH_CACHE_ENABLED` governs how long the trust API believes a review: with caching
/// off, a probe whose ServiceAccount is deleted (its tokens void) is refused at its very next
/// report; with the seed's cache (300 s, capped at 60 s for reviews), the token reviewed
/// before is still believed for a while — the cost the cache buys its API requests with.
#[test]
fn with_caching_off_a_voided_token_is_refused_at_once() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("nocache", &[]);
    let ns = namespace.name.as_str();
    let uncached: Vec<(&str, &str)> = FAST_LEASE
        .iter()
        .copied()
        .chain([("AGENTMESH_CACHE_ENABLED", "false")])
        .collect();
    let mut operator = OperatorProcess::start(ns, "op", &uncached);
    apply(ns, identity("watched", json!({})));
    let pod = pod_on(ns, "watched-0", "watched", "kwok-node-0");
    wait_for(
        &mut operator,
        "agentidentity",
        "watched",
        ns,
        "a pod",
        |o| o["status"]["podsMatched"] == 1,
    );
    let probe = reporter_token(ns, true);
    let (code, answer) = post_report(&mut [&mut operator], &probe, &report(&pod, ns, &[]));
    assert_eq!(code, 202, "{answer}");

    cluster().kubectl_ok(&["delete", "serviceaccount", "probe", "-n", ns, "--wait"]);
    // The API server's token cache may need a moment; ours adds nothing.
    let deleted = std::time::Instant::now();
    loop {
        let (code, answer) = post_report(&mut [&mut operator], &probe, &report(&pod, ns, &[]));
        if code == 401 {
            break;
        }
        assert_eq!(code, 202, "{answer}");
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "still accepted {:?} after the permission went",
            deleted.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "no cache: refused {:?} after the ClusterRoleBinding's deletion",
        deleted.elapsed()
    );

    // The same with the seed's cache on a second operator: the permission it reviewed before
    // the deletion is still believed.
    let cached_ns = TestNamespace::create("cache", &[]);
    let cns = cached_ns.name.as_str();
    let mut cached = OperatorProcess::start(cns, "op", &FAST_LEASE);
    apply(cns, identity("watched", json!({})));
    let pod = pod_on(cns, "watched-0", "watched", "kwok-node-0");
    wait_for(&mut cached, "agentidentity", "watched", cns, "a pod", |o| {
        o["status"]["podsMatched"] == 1
    });
    let probe = reporter_token(cns, true);
    let (code, _) = post_report(&mut [&mut cached], &probe, &report(&pod, cns, &[]));
    assert_eq!(code, 202);
    cluster().kubectl_ok(&["delete", "serviceaccount", "probe", "-n", cns, "--wait"]);
    std::thread::sleep(Duration::from_secs(3));
    let (code, answer) = post_report(&mut [&mut cached], &probe, &report(&pod, cns, &[]));
    assert_eq!(
        code, 202,
        "the cached review should still be believed: {answer}"
    );
}
