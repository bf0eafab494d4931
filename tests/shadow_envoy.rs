//! Shadow bundles through the real Envoy: `serve --shadow-bundle` evaluates a candidate bundle
//! beside the enforced one on every check. Responses follow the enforced bundle only, and the
//! disagreement counter moves by exactly the number of requests the two bundles judge
//! differently, labelled by (enforced decision, shadow decision, shadow rule).
//!
//! Needs Envoy (see tests/envoy_e2e.rs): skipped loudly without it, except under `CI=true`.

mod support;

use support::client::{Protocol, RawRequest};
use support::metrics::scrape;
use support::{Sidecar, SidecarOptions};

const DISAGREEMENTS: &str = "wardgate_shadow_disagreements_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_disagreements_are_counted_and_never_enforced() {
    let Some(envoy) =
        support::process::require_envoy("shadow_disagreements_are_counted_and_never_enforced")
    else {
        return;
    };
    // The candidate drops GET from ehr-reads-lab-results (only HEAD stays) and adds a rule that
    // lets pharmacy read results: one route it would deny, one it would allow.
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = std::fs::read_to_string(support::shipped_bundle()).expect("bundle");
    let candidate = shipped
        .replacen("revision: 1\n", "revision: 2\n", 1)
        .replacen(
            "    methods: [GET, HEAD]\n    paths: [\"/results\", \"/results/**\"]",
            "    methods: [HEAD]\n    paths: [\"/results\", \"/results/**\"]",
            1,
        )
        .replacen(
            "  - name: ehr-orders-lab-tests\n",
            "  - name: pharmacy-reads-results\n    from: [\"spiffe://hospital.example/ns/clinical/sa/pharmacy\"]\n    to: [\"spiffe://hospital.example/ns/clinical/sa/lab\"]\n    methods: [GET]\n    paths: [\"/results/**\"]\n\n  - name: ehr-orders-lab-tests\n",
            1,
        );
    assert_ne!(candidate, shipped, "the candidate differs");
    let candidate_path = dir.path().join("candidate.yaml");
    std::fs::write(&candidate_path, &candidate).expect("write");

    let mut options = SidecarOptions::shipped("lab");
    options.wardgate_args = vec![
        "--shadow-bundle".into(),
        candidate_path.display().to_string(),
    ];
    let sidecar = Sidecar::start(&envoy, &options).await.expect("start");
    let admin = sidecar.wardgate.admin.expect("admin listener");

    let (before, _) = scrape(admin).await.expect("scrape");
    let ehr = sidecar
        .client(Some("ehr"), Protocol::Http1)
        .expect("client");
    let pharmacy = sidecar
        .client(Some("pharmacy"), Protocol::Http1)
        .expect("client");

    // 7 requests the shadow would deny: all still allowed.
    for i in 0..7 {
        let reply = ehr
            .send(&RawRequest::new("GET", &format!("/results/{i}")))
            .await
            .expect("send");
        assert_eq!(reply.status, 200, "the enforced bundle decides");
    }
    // 3 requests the shadow would allow: all still denied.
    for i in 0..3 {
        let reply = pharmacy
            .send(&RawRequest::new("GET", &format!("/results/{i}")))
            .await
            .expect("send");
        assert_eq!(reply.status, 403, "the enforced bundle decides");
    }
    // 5 requests both judge alike.
    for _ in 0..5 {
        let reply = ehr
            .send(&RawRequest::new("POST", "/orders"))
            .await
            .expect("send");
        assert_eq!(reply.status, 200);
    }

    let (after, text) = scrape(admin).await.expect("scrape");
    let moved = after.deltas(&before, DISAGREEMENTS);
    let get = |enforced: &str, shadow: &str, rule: &str| {
        moved
            .get(&support::metrics::labels(&[
                ("enforced", enforced),
                ("shadow", shadow),
                ("shadow_rule", rule),
            ]))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(get("allow", "deny", "none"), 7.0, "{moved:?}\n{text}");
    assert_eq!(
        get("deny", "allow", "pharmacy-reads-results"),
        3.0,
        "{moved:?}"
    );
    let total: f64 = moved.values().sum();
    assert_eq!(total, 10.0, "nothing else disagreed: {moved:?}");
}
