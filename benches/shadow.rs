//! What a shadow bundle costs on the check path: `AuthzService::respond` in-process on the
//! shipped bundle, without a shadow and with a shadow bundle (the shipped bundle with one route
//! changed, so some checks disagree), interleaved in one run; prints medians and the ratio.
//!
//! `cargo bench --bench shadow`; without `--bench` (as `cargo test` runs it) a short smoke run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use wardgate::extauthz::{AuthzConfig, AuthzService};
use wardgate::policy::Policy;
use wardgate::shadow::Shadow;

const BUNDLE: &str = include_str!("../deploy/bundles/hospital.yaml");
const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";

fn check(source: &str, method: &str, path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: source.to_owned(),
                ..Peer::default()
            }),
            destination: Some(Peer {
                principal: LAB.to_owned(),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "lab.clinical.svc".to_owned(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn service(shadow: Option<Arc<Shadow>>) -> AuthzService {
    let policy = Policy::from_yaml_str("hospital.yaml", BUNDLE).expect("bundle");
    let handle = Arc::new(ArcSwapOption::from_pointee(policy));
    AuthzService::new(
        handle,
        AuthzConfig {
            shadow,
            ..AuthzConfig::default()
        },
    )
}

fn median_ns(svc: &AuthzService, reqs: &[CheckRequest], rounds: usize) -> f64 {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for r in reqs {
            black_box(svc.respond(black_box(r)));
        }
        samples.push(t.elapsed().as_nanos() as f64 / reqs.len() as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 400 } else { 5 };
    let candidate = BUNDLE.replacen("    methods: [GET, HEAD]\n", "    methods: [HEAD]\n", 1);
    let shadow = Shadow::new(Arc::new(ArcSwapOption::empty()), None).expect("shadow");
    shadow.handle().store(Some(Arc::new(
        Policy::from_yaml_str("candidate.yaml", &candidate).expect("candidate"),
    )));
    let plain = service(None);
    let shadowed = service(Some(shadow));
    let reqs = vec![
        check(
            "spiffe://hospital.example/ns/clinical/sa/ehr",
            "GET",
            "/results/42",
        ), // disagrees
        check(
            "spiffe://hospital.example/ns/clinical/sa/ehr",
            "POST",
            "/orders",
        ),
        check(
            "spiffe://hospital.example/ns/clinical/sa/pharmacy",
            "GET",
            "/results/42",
        ),
        check(
            "spiffe://partner-lab.example/ns/vendor/sa/reflab",
            "GET",
            "/results/42",
        ),
    ];
    // Interleave the two so drift on a shared machine hits both alike.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..if full { 10 } else { 1 } {
        a.push(median_ns(&plain, &reqs, rounds));
        b.push(median_ns(&shadowed, &reqs, rounds));
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (a, b) = (a[a.len() / 2], b[b.len() / 2]);
    println!("respond() per check, shipped bundle, 1 in 4 checks disagreeing:");
    println!("  without shadow {a:8.0} ns");
    println!("  with shadow    {b:8.0} ns   ratio {:.2}x", b / a);
}
