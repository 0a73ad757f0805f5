//! The operator end to end on the real API server: identities get keys and DIDs, delegations
//! are verified, authorized reports move scores (forged ones change nothing), scores survive
//! restarts and leader changes, conflicting policies are refused.

use std::time::Duration;

use agentmesh_e2e::operator::{OperatorProcess, http_request};
use agentmesh_e2e::{TestNamespace, cluster, condition};
use serde_json::{Value, json};

/// Short leases so that a killed leader is replaced within seconds.
const FAST_LEASE: [(&str, &str); 2] = [
    ("MESHLOGIC_LEASE_SECONDS", "3"),
    ("MESHLOGIC_STATUS_INTERVAL_SECONDS", "1"),
];

/// Polls `kind/name` until `check` holds on it; panics with the last object and the logs.
fn wait_for(
    operator: &mut OperatorProcess,
    kind: &str,
    name: &str,
    namespace: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    operator.wait_until(
        Duration::from_secs(60),
        &format!("{kind}/{name}: {what} (last: {last})"),
        |_| {
            last = cluster()
                .get(kind, name, Some(namespace))
                .unwrap_or(Value::Null);
            check(&last)
        },
    );
    last
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

#[test]
fn identities_get_a_key_secret_a_did_a_score_and_verified_delegations() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("identity", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(ns, "op", &FAST_LEASE);
    apply(
        ns,
        identity(
            "parent",
            json!({"capabilities": ["read:documents", "tools:search:*"]}),
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
    assert_eq!(parent["status"]["keySecretName"], "parent-agentmesh-key");
    let secret = cluster()
        .get("secret", "parent-agentmesh-key", Some(ns))
        .expect("the key Secret exists");
    assert!(secret["data"]["private-key"].is_string());
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["name"], "parent",
        "the Secret is owned by its identity"
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
}

/// A ServiceAccount allowed to post reports (as the MeshLogicAgent's RBAC allows its probe),
/// and its token.
fn reporter_token(namespace: &str, allowed: bool) -> String {
    let name = if allowed { "probe" } else { "intruder" };
    cluster().kubectl_ok(&["create", "serviceaccount", name, "-n", namespace]);
    if allowed {
        let role = format!("{namespace}-reports");
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
    cluster().token(namespace, name, None)
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
    apply(
        ns,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-0", "labels": {"agentmesh.io/identity": "agent"}},
        "spec": {"containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}),
    );
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
    let pod = cluster().get("pod", "agent-0", Some(ns)).unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let token = reporter_token(ns, true);
    let intruder = reporter_token(ns, false);

    // Forged: no token, a bad token, a token without the permission. Nothing changes.
    let body = report(&uid, ns, &["/usr/bin/curl"]);
    let mut replicas = [&mut first, &mut second];
    assert_eq!(post_report(&mut replicas, "not-a-token", &body).0, 401);
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
    apply(
        ns,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-0", "labels": {"agentmesh.io/identity": "agent"}},
        "spec": {"nodeName": "kwok-node-0", "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}),
    );
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
    let bound = cluster().token(ns, "default", Some(("agent-0", &uid)));
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
