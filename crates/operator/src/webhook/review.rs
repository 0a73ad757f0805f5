//! `admission.k8s.io/v1` AdmissionReview: decoding a request and encoding the answer. Pure
//! (serde only, no I/O, no async), so the fuzz crate includes this file as it is
//! (`fuzz/fuzz_targets/admission_review.rs`). Never panics: a body that is not an
//! AdmissionReview is a [`BadRequest`] (HTTP 400); a review the injector cannot act on is
//! answered inside an AdmissionReview.

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};

/// The only AdmissionReview version served (the webhook registers `admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T> {
    api_version: String,
    kind: String,
    request: Option<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypedRequest {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    dry_run: Option<bool>,
    object: Option<Pod>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LooseRequest {
    uid: String,
    #[serde(default)]
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    operation: Option<String>,
}

#[derive(Deserialize, Default)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

/// A pod creation to decide on.
#[derive(Debug)]
pub struct PodRequest {
    pub uid: String,
    pub namespace: String,
    pub dry_run: bool,
    pub pod: Pod,
}

/// What a body decodes to.
#[derive(Debug)]
pub enum Decoded {
    /// A pod creation, to decide on.
    Pod(Box<PodRequest>),
    /// A review the injector does not act on (another kind or operation: allowed unchanged), or
    /// one it refuses (a pod it cannot read): the answer is ready.
    Answered { uid: String, answer: Answer },
}

/// The body is not an AdmissionReview request at all: HTTP 400 with this message.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The verdict inside an AdmissionReview response.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Allowed unchanged.
    Allow,
    /// Allowed with this JSON patch (RFC 6902 operations).
    Patch(Vec<Value>),
    /// Refused with an HTTP-like code and a message the user sees.
    Deny { code: u16, message: String },
}

fn is_pod(kind: &GroupVersionKind) -> bool {
    kind.group.is_empty() && kind.version == "v1" && kind.kind == "Pod"
}

/// Decodes an AdmissionReview request body.
pub fn decode(body: &[u8]) -> Result<Decoded, BadRequest> {
    // The fast path: a well-formed pod review, straight into the typed pod.
    if let Ok(review) = serde_json::from_slice::<Envelope<TypedRequest>>(body) {
        check_envelope(&review.api_version, &review.kind)?;
        let Some(request) = review.request else {
            return Err(BadRequest("the AdmissionReview has no request".into()));
        };
        if !is_pod(&request.kind) || request.operation != "CREATE" {
            return Ok(Decoded::Answered {
                uid: request.uid,
                answer: Answer::Allow,
            });
        }
        let Some(pod) = request.object else {
            return Ok(Decoded::Answered {
                uid: request.uid,
                answer: deny(400, "the pod creation carries no object"),
            });
        };
        if pod.spec.is_none() {
            return Ok(Decoded::Answered {
                uid: request.uid,
                answer: deny(400, "the pod has no spec"),
            });
        }
        let namespace = request
            .namespace
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        if namespace.is_empty() {
            return Ok(Decoded::Answered {
                uid: request.uid,
                answer: deny(400, "the pod creation names no namespace"),
            });
        }
        return Ok(Decoded::Pod(Box::new(PodRequest {
            uid: request.uid,
            namespace,
            dry_run: request.dry_run.unwrap_or(false),
            pod,
        })));
    }
    // Slow path, to tell what is wrong: not JSON, not a review, or a review of something that
    // is not a readable pod.
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| BadRequest(format!("the body is not JSON: {error}")))?;
    let review: Envelope<LooseRequest> = serde_json::from_value(value.clone())
        .map_err(|error| BadRequest(format!("the body is not an AdmissionReview: {error}")))?;
    check_envelope(&review.api_version, &review.kind)?;
    let Some(request) = review.request else {
        return Err(BadRequest("the AdmissionReview has no request".into()));
    };
    let kind = request.kind.unwrap_or_default();
    if !is_pod(&kind) || request.operation.as_deref() != Some("CREATE") {
        return Ok(Decoded::Answered {
            uid: request.uid,
            answer: Answer::Allow,
        });
    }
    // A pod creation whose pod (or another field) does not read: refuse it, saying why.
    let error = match serde_json::from_value::<Envelope<TypedRequest>>(value) {
        Err(error) => error.to_string(),
        Ok(_) => "unreadable request".into(),
    };
    Ok(Decoded::Answered {
        uid: request.uid,
        answer: deny(400, &format!("cannot read the pod: {error}")),
    })
}

fn check_envelope(api_version: &str, kind: &str) -> Result<(), BadRequest> {
    if kind != KIND {
        return Err(BadRequest(format!("kind {kind:?} is not {KIND}")));
    }
    if api_version != API_VERSION {
        return Err(BadRequest(format!(
            "apiVersion {api_version:?} is not supported; the webhook serves {API_VERSION}"
        )));
    }
    Ok(())
}

fn deny(code: u16, message: &str) -> Answer {
    Answer::Deny {
        code,
        message: message.into(),
    }
}

/// The AdmissionReview response to request `uid`.
pub fn encode(uid: &str, answer: &Answer) -> Vec<u8> {
    let response = match answer {
        Answer::Allow => json!({"uid": uid, "allowed": true}),
        Answer::Patch(ops) if ops.is_empty() => json!({"uid": uid, "allowed": true}),
        Answer::Patch(ops) => {
            let patch = serde_json::to_vec(ops).unwrap_or_default();
            json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })
        }
        Answer::Deny { code, message } => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": code, "message": message},
        }),
    };
    serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND, "response": response}))
        .unwrap_or_default()
}

/// Reads an encoded response back: (allowed, patch operations). For tests and the fuzzer.
pub fn decode_response(body: &[u8]) -> Option<(bool, Vec<Value>)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let response = value.get("response")?;
    let allowed = response.get("allowed")?.as_bool()?;
    let patch = match response.get("patch").and_then(Value::as_str) {
        None => Vec::new(),
        Some(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            serde_json::from_slice(&bytes).ok()?
        }
    };
    Some((allowed, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND, "request": request}))
            .unwrap()
    }

    #[test]
    fn a_pod_creation_decodes() {
        let body = review(json!({
            "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team", "operation": "CREATE", "dryRun": true,
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "a-"},
                       "spec": {"containers": [{"name": "a", "image": "a"}]}},
        }));
        let Ok(Decoded::Pod(request)) = decode(&body) else {
            panic!("not a pod request")
        };
        assert_eq!(request.uid, "u1");
        assert_eq!(request.namespace, "team");
        assert!(request.dry_run);
        assert_eq!(request.pod.spec.unwrap().containers[0].name, "a");
    }

    #[test]
    fn garbage_is_a_bad_request() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{\"kind\":\"AdmissionReview\"}",
            b"{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"x\"}}",
            b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
        ] {
            assert!(decode(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn other_kinds_are_allowed_and_unreadable_pods_refused() {
        let body = review(json!({
            "uid": "u2", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "operation": "CREATE", "object": {"apiVersion": "apps/v1", "kind": "Deployment"},
        }));
        assert!(matches!(
            decode(&body),
            Ok(Decoded::Answered {
                answer: Answer::Allow,
                ..
            })
        ));
        let body = review(json!({
            "uid": "u3", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "n",
            "object": {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "nope"}},
        }));
        let Ok(Decoded::Answered {
            uid,
            answer: Answer::Deny { code, message },
        }) = decode(&body)
        else {
            panic!("not refused")
        };
        assert_eq!((uid.as_str(), code), ("u3", 400));
        assert!(message.contains("cannot read the pod"), "{message}");
    }

    #[test]
    fn answers_round_trip() {
        let ops = vec![json!({"op": "add", "path": "/a", "value": 1})];
        let body = encode("u", &Answer::Patch(ops.clone()));
        assert_eq!(decode_response(&body), Some((true, ops)));
        let body = encode(
            "u",
            &Answer::Deny {
                code: 400,
                message: "no".into(),
            },
        );
        assert_eq!(decode_response(&body), Some((false, vec![])));
    }
}
