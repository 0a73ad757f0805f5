//! The webhook's AdmissionReview decoder, and the injector behind it: whatever the body, the
//! decoder answers or refuses without panicking; a pod it accepts gets a patch that applies to
//! the pod as sent, and the patched pod needs no second injection.
#![no_main]

// The operator's pure modules, compiled as they are (they use serde, k8s-openapi and the
// names of agentmesh-api only), so the fuzzer does not build tokio, kube or rustls.
#[path = "../../crates/operator/src/webhook/inject/mod.rs"]
#[allow(dead_code)]
mod inject;
#[path = "../../crates/operator/src/webhook/review.rs"]
#[allow(dead_code)]
mod review;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = review::decode(data) else {
        return;
    };
    let request = match decoded {
        review::Decoded::Answered { uid, answer } => {
            let body = review::encode(&uid, &answer);
            assert!(review::decode_response(&body).is_some());
            return;
        }
        review::Decoded::Pod(request) => request,
    };
    let settings = inject::Settings::seed("agentmesh", data.len() % 2 == 0);
    let pod = &request.pod;
    let spec = pod
        .spec
        .as_ref()
        .expect("the decoder refuses pods without a spec");
    if inject::skip_reason(pod, &request.namespace, &settings).is_some()
        || inject::already_injected(pod)
    {
        let _ = inject::proxy_env_ops(spec);
        return;
    }
    let identity = inject::identity_of(pod);
    // Both key sources: the operator's (fetched by the sidecar) and the identity's own (a
    // Secret volume, an fsGroup when the pod has none).
    let key = if data.len() % 3 == 0 {
        inject::Key::UserSupplied
    } else {
        inject::Key::Managed
    };
    let ops = inject::patch(pod, spec, &settings, &identity, &key, None);
    let body = review::encode(&request.uid, &review::Answer::Patch(ops.clone()));
    let (allowed, decoded_ops) = review::decode_response(&body).expect("our own answer reads");
    assert!(allowed);
    assert_eq!(decoded_ops, ops);

    // The patch applies to the pod as the decoder read it, and the result is injected.
    let mut value = serde_json::to_value(pod).expect("a pod serializes");
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("a patch");
    json_patch::patch(&mut value, &patch).expect("the patch applies");
    let patched: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(value).expect("still a pod");
    assert!(inject::already_injected(&patched));
    assert!(inject::proxy_env_ops(patched.spec.as_ref().unwrap()).is_empty());
});
