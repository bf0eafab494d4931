//! Request-time context through the real Envoy: short-lived vendor credentials
//! (`max_svid_lifetime`), purpose-of-use headers, break-glass, and a forwarded certificate whose
//! URI SAN differs from the principal (sent as a direct gRPC Check, since Envoy itself always
//! reports the SAN of the certificate it verified).
//!
//! Needs Envoy (see tests/envoy_e2e.rs): skipped loudly without it, except under `CI=true`.

mod support;

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use support::client::{Protocol, RawRequest, Reply};
use support::{Sidecar, SidecarOptions};

async fn send(sidecar: &Sidecar, caller: &str, req: RawRequest) -> Reply {
    let client = sidecar
        .client(Some(caller), Protocol::Http1)
        .expect("client");
    client.send(&req).await.expect("request completes")
}

fn reason(r: &Reply) -> Option<&str> {
    r.header("x-wardgate-reason")
}

/// What the upstream saw of the last request that reached it.
fn upstream_header(sidecar: &Sidecar, name: &str) -> Option<String> {
    let last = sidecar.upstream.requests().last().cloned()?;
    last["headers"][name][0].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_certificate_lifetime_is_enforced() {
    let Some(envoy) = support::process::require_envoy("vendor_certificate_lifetime_is_enforced")
    else {
        return;
    };
    let sidecar = Sidecar::start(&envoy, &SidecarOptions::shipped("interface-engine"))
        .await
        .expect("start");
    let delivery = || RawRequest::new("POST", "/inbound/results");

    // reflab's SVID is valid for 50 minutes: under the vendor segment's 1h cap.
    let short = send(&sidecar, "reflab", delivery()).await;
    assert_eq!(
        short.status,
        200,
        "{:?}\n{}",
        reason(&short),
        sidecar.logs()
    );
    assert_eq!(
        upstream_header(&sidecar, "x-wardgate-rule").as_deref(),
        Some("reflab-delivers-results-to-interface-engine")
    );

    // The same identity with a certificate valid for a day.
    let hits = sidecar.upstream.hits();
    let long = send(&sidecar, "reflab-long-lived", delivery()).await;
    assert_eq!(long.status, 403);
    assert_eq!(reason(&long), Some("svid_lifetime"));
    assert_eq!(
        sidecar.upstream.hits(),
        hits,
        "a denied call never reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purpose_of_use_and_break_glass() {
    let Some(envoy) = support::process::require_envoy("purpose_of_use_and_break_glass") else {
        return;
    };
    let sidecar = Sidecar::start(&envoy, &SidecarOptions::shipped("pharmacy"))
        .await
        .expect("start");
    let prescribe = || RawRequest::new("POST", "/prescriptions");

    for (value, status) in [
        (Some("TREAT"), 200),
        (Some("ETREAT"), 200),
        (Some("treat"), 403),
        (Some("HMARKT"), 403),
        (None, 403),
    ] {
        let mut req = prescribe();
        if let Some(v) = value {
            req = req.header("x-purpose-of-use", v);
        }
        let reply = send(&sidecar, "ehr", req).await;
        assert_eq!(
            reply.status,
            status,
            "x-purpose-of-use: {value:?}: {:?}",
            reason(&reply)
        );
        if status == 403 {
            assert_eq!(reason(&reply), Some("default_deny"));
        }
    }

    // Break-glass: a clinical caller with a reason gets through where no rule allows it.
    let reply = send(
        &sidecar,
        "imaging",
        RawRequest::new("GET", "/dispensing-log")
            .header("x-break-glass-reason", "code blue, bed 4"),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reason(&reply));
    assert_eq!(
        upstream_header(&sidecar, "x-wardgate-rule").as_deref(),
        Some("clinical-emergency-override")
    );
    assert_eq!(
        upstream_header(&sidecar, "x-wardgate-break-glass").as_deref(),
        Some("clinical-emergency-override"),
        "the upstream is told which break-glass entry let the call through"
    );

    // Without a reason, or with an empty one: denied.
    let reply = send(
        &sidecar,
        "imaging",
        RawRequest::new("GET", "/dispensing-log"),
    )
    .await;
    assert_eq!((reply.status, reason(&reply)), (403, Some("default_deny")));
    let reply = send(
        &sidecar,
        "imaging",
        RawRequest::new("GET", "/dispensing-log").header("x-break-glass-reason", ""),
    )
    .await;
    assert_eq!((reply.status, reason(&reply)), (403, Some("default_deny")));

    // Never against a deny rule: a vendor with a reason, and the admin-console boundary.
    let reply = send(
        &sidecar,
        "remote-support",
        RawRequest::new("GET", "/dispensing-log").header("x-break-glass-reason", "code blue"),
    )
    .await;
    assert_eq!((reply.status, reason(&reply)), (403, Some("rule")));
    let reply = send(
        &sidecar,
        "imaging",
        RawRequest::new("GET", "/admin").header("x-break-glass-reason", "code blue"),
    )
    .await;
    assert_eq!((reply.status, reason(&reply)), (403, Some("rule")));
}

/// The gRPC status code of a Check answer and, for a denial, its `x-wardgate-reason`.
fn status_and_reason(resp: CheckResponse) -> (i32, Option<String>) {
    let code = resp.status.as_ref().map_or(-1, |s| s.code);
    (code, denial_reason(resp))
}

/// The `x-wardgate-reason` of a denied Check answer (`None` for an allow).
fn denial_reason(resp: CheckResponse) -> Option<String> {
    match resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-wardgate-reason")
            .map(|h| h.value.clone()),
        _ => None,
    }
}

/// URL-encode like Envoy does for `attributes.source.certificate`.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn check(principal: &str, cert_pem: &str, destination: &str) -> CheckRequest {
    let mut headers = HashMap::new();
    headers.insert(":authority".to_string(), "lab.clinical.svc".to_string());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.to_string(),
                certificate: url_encode(cert_pem),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: destination.to_string(),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/results/42".into(),
                    host: "lab.clinical.svc".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_certificate_must_match_the_principal() {
    let Some(envoy) =
        support::process::require_envoy("forwarded_certificate_must_match_the_principal")
    else {
        return;
    };
    let sidecar = Sidecar::start(&envoy, &SidecarOptions::shipped("lab"))
        .await
        .expect("start");
    let mut client = support::grpc::authorization(&sidecar.wardgate.socket)
        .await
        .expect("grpc");
    let ehr = sidecar.pki.svid("ehr").expect("ehr").clone();
    let imaging = sidecar.pki.svid("imaging").expect("imaging").clone();
    let lab = sidecar.destination.spiffe_id.clone();

    // The principal's own certificate: allowed (rule ehr-reads-lab-results).
    let ok = client
        .check(check(&ehr.spiffe_id, &ehr.cert_pem, &lab))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(status_and_reason(ok), (0, None));

    // ehr's principal with imaging's certificate: the SAN differs.
    let forged = client
        .check(check(&ehr.spiffe_id, &imaging.cert_pem, &lab))
        .await
        .expect("check")
        .into_inner();
    let (code, reason) = status_and_reason(forged);
    assert_ne!(code, 0);
    assert_eq!(reason.as_deref(), Some("bad_certificate"));

    // A certificate that is not one.
    let garbage = client
        .check(check(
            &ehr.spiffe_id,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &lab,
        ))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        status_and_reason(garbage).1.as_deref(),
        Some("bad_certificate")
    );
}

/// The shipped sidecar config verifies each caller at the handshake against the CA of the
/// trust domain its SPIFFE ID names (Envoy's SPIFFE certificate validator). ehr's SPIFFE ID
/// minted by partner-lab's CA (a CA Envoy trusts, but for partner-lab.example only) is refused
/// there, as is an ID in a trust domain Envoy has no bundle for, though hospital's CA signed it;
/// neither reaches wardgate or the app, while the genuine ehr SVID is allowed. Envoy logs each
/// refusal (connection logging raised to debug through its admin API); the test prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refuses_identities_minted_by_another_trust_domain() {
    let Some(envoy) = support::process::require_envoy(
        "handshake_refuses_identities_minted_by_another_trust_domain",
    ) else {
        return;
    };
    let mut sidecar = Sidecar::start(&envoy, &SidecarOptions::shipped("lab"))
        .await
        .expect("start");
    let ehr_id = sidecar.pki.svid("ehr").expect("ehr").spiffe_id.clone();
    sidecar
        .pki
        .issue(
            "partner-lab.example",
            "forged-ehr",
            &ehr_id,
            support::pki::Lifetime::DAY,
        )
        .expect("forged svid");
    sidecar
        .pki
        .issue(
            "hospital.example",
            "unlisted-domain",
            "spiffe://elsewhere.example/ns/clinical/sa/ehr",
            support::pki::Lifetime::DAY,
        )
        .expect("svid of an unlisted trust domain");
    let (code, body) = sidecar
        .envoy
        .admin_post("/logging?connection=debug")
        .await
        .expect("Envoy admin");
    assert_eq!(code, 200, "{body}");

    let genuine = send(&sidecar, "ehr", RawRequest::new("GET", "/results/42")).await;
    assert_eq!(
        genuine.status,
        200,
        "{:?}\n{}",
        reason(&genuine),
        sidecar.logs()
    );

    let admin = sidecar.wardgate.admin.expect("wardgate admin listener");
    let checks = |scrape: &support::metrics::Scrape| -> f64 {
        scrape.series("wardgate_checks_total").values().sum()
    };
    let (before, _) = support::metrics::scrape(admin).await.expect("metrics");
    let hits = sidecar.upstream.hits();
    for caller in ["forged-ehr", "unlisted-domain"] {
        let client = sidecar
            .client(Some(caller), Protocol::Http1)
            .expect("client");
        let outcome = client.send(&RawRequest::new("GET", "/results/42")).await;
        assert!(
            outcome.is_err(),
            "{caller}: Envoy answered instead of refusing the handshake: {:?}\n{}",
            outcome.map(|r| (r.status, r.text())),
            sidecar.logs()
        );
    }
    assert_eq!(
        sidecar.upstream.hits(),
        hits,
        "a refused caller reached the app"
    );
    let (after, _) = support::metrics::scrape(admin).await.expect("metrics");
    assert_eq!(
        checks(&after),
        checks(&before),
        "wardgate was asked about a caller the handshake refused"
    );

    // Envoy's own account: one verification failure per refused handshake.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refusals = loop {
        let log = sidecar.envoy.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("CERTIFICATE_VERIFY_FAILED"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Envoy logged no handshake refusal for each caller:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for line in &refusals {
        eprintln!("Envoy: {line}");
    }
}

/// `--verify-chain`, wardgate's own per-trust-domain check: a certificate minted by
/// partner-lab's CA for a hospital identity, with a SAN that matches the principal, as a proxy
/// that verifies callers against every federated CA at once would forward it (the shipped Envoy
/// config refuses it at the handshake already, see above). Only verification against the bundle
/// of the ID's own trust domain catches it. Sent as direct gRPC Checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_chain_refuses_identities_minted_by_another_trust_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pki = support::pki::Pki::generate(&dir.path().join("pki")).expect("pki");
    let ehr_id = pki.svid("ehr").expect("ehr").spiffe_id.clone();
    let genuine = pki.svid("ehr").expect("ehr").cert_pem.clone();
    let forged = pki
        .issue(
            "partner-lab.example",
            "forged-ehr",
            &ehr_id,
            support::pki::Lifetime::DAY,
        )
        .expect("forged svid")
        .cert_pem
        .clone();
    let lab = pki.svid("lab").expect("lab").spiffe_id.clone();
    let bundle_args: Vec<String> = ["hospital.example", "partner-lab.example", "medtech.example"]
        .iter()
        .flat_map(|td| {
            [
                "--trust-bundle".to_string(),
                format!(
                    "{td}={}",
                    dir.path()
                        .join("pki")
                        .join(format!("ca-{td}.pem"))
                        .display()
                ),
            ]
        })
        .collect();

    for (verify, want_forged) in [(false, None), (true, Some("bad_certificate"))] {
        let mut args: Vec<&str> = bundle_args.iter().map(String::as_str).collect();
        if verify {
            args.push("--verify-chain");
        }
        let socket = dir.path().join(format!("wardgate-{verify}.sock"));
        let wardgate = support::process::Wardgate::start(
            &support::shipped_bundle(),
            &socket,
            dir.path(),
            &args,
        )
        .await
        .expect("start wardgate");
        let mut client = support::grpc::authorization(&wardgate.socket)
            .await
            .expect("grpc");
        let ok = client
            .check(check(&ehr_id, &genuine, &lab))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            denial_reason(ok),
            None,
            "verify={verify}: the genuine SVID is allowed"
        );
        let bad = client
            .check(check(&ehr_id, &forged, &lab))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            denial_reason(bad).as_deref(),
            want_forged,
            "verify={verify}: the forged SVID"
        );
    }
}
