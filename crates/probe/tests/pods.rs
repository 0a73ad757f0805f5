//! Pod names and identities come from a watch of the API server restricted to the node
//! (`spec.nodeName=<node>`); reports carry them next to the UID. The API server here is a
//! loopback stand-in that answers the list and holds the watch open.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Layout, TestPod, TrustServer, config, require_root};
use http_body_util::Full;
use meshlogic_probe::config::KubeAccess;
use serde_json::json;

async fn fake_api_server(pod_uid: String, requests: Arc<Mutex<Vec<String>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let pod_uid = pod_uid.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let pod_uid = pod_uid.clone();
                        let requests = requests.clone();
                        async move {
                            let uri = request.uri().to_string();
                            requests.lock().unwrap().push(uri.clone());
                            if uri.contains("watch=true") {
                                // Nothing changes: hold the watch, then end it.
                                tokio::time::sleep(Duration::from_secs(20)).await;
                                return Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                    Bytes::new(),
                                )));
                            }
                            let list = json!({
                                "apiVersion": "v1", "kind": "PodList",
                                "metadata": {"resourceVersion": "7"},
                                "items": [{
                                    "metadata": {
                                        "name": "agent-0", "namespace": "agents", "uid": pod_uid,
                                        "resourceVersion": "7",
                                        "labels": {"agentmesh.io/identity": "research-agent"}
                                    },
                                    "spec": {"nodeName": "test-node", "containers": [{"name": "a"}]}
                                }]
                            });
                            Ok(hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(list.to_string())))
                                .unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_name_the_pod_and_its_identity_from_a_node_scoped_watch() {
    if !require_root() {
        return;
    }
    let pod = TestPod::new(Layout::Systemd);
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let api = fake_api_server(pod.uid.clone(), requests.clone()).await;
    let kubeconfig =
        std::env::temp_dir().join(format!("meshlogic-kubeconfig-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {api}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
             users:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .unwrap();
    let server = TrustServer::start().await;
    let mut config = config(&server, json!({}));
    config.kube = KubeAccess::Kubeconfig(kubeconfig.clone());
    let probe = meshlogic_probe::run::start(config).await.unwrap();
    common::wait_watched(&probe, &[&pod]).await;
    assert!(pod.run("cat /etc/hostname > /dev/null").success());

    let start = std::time::Instant::now();
    let window = loop {
        let named = server
            .pod_windows(&pod.uid)
            .into_iter()
            .find(|w| w.pod.is_some());
        if let Some(window) = named {
            break window;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no named window; API requests {:?}",
            requests.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(window.pod.as_deref(), Some("agents/agent-0"));
    assert_eq!(window.identity.as_deref(), Some("research-agent"));
    let requests = requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dtest-node")),
        "{requests:?}"
    );
    probe.shutdown();
    let _ = std::fs::remove_file(kubeconfig);
}
