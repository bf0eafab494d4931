//! The demo `scripts/demo.sh` runs (`cargo test --test demo -- --nocapture`), and a test of it:
//! two services of the hospital example, the clinical lab and the administrative interface
//! engine, each behind a real Envoy running the shipped sidecar config
//! (deploy/envoy/envoy-sidecar.yaml) with wardgate and the shipped bundle on a Unix socket;
//! callers presenting real X.509 SVIDs from per-trust-domain test CAs; a handful of calls
//! (clinical, administrative, vendor, break-glass, a path trick) printed with each decision and
//! its reason; then where the metrics and the decision logs are. Every decision is also
//! asserted, so the demo cannot silently drift from what wardgate does.
//!
//! With `WARDGATE_DEMO_WAIT=1` (demo.sh sets it on a terminal) everything stays up until Enter
//! is pressed; everything stops when the test ends, whichever way it ends.

mod support;

use std::path::Path;
use std::time::Duration;

use support::client::{MtlsClient, Protocol, RawRequest};
use support::pki::Pki;
use support::process::{require_envoy, Envoy, EnvoySettings, Wardgate};
use support::shipped_bundle;
use support::upstream::EchoUpstream;

/// One service: echo app, wardgate, Envoy.
struct Service {
    name: &'static str,
    envoy: Envoy,
    wardgate: Wardgate,
    app: EchoUpstream,
    decision_log: std::path::PathBuf,
    dns_name: String,
}

async fn start_service(envoy_binary: &Path, pki: &Pki, name: &'static str, dir: &Path) -> Service {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let svid = pki.svid(name).unwrap();
    let app = EchoUpstream::start().await.unwrap();
    let socket = dir.join("wardgate.sock");
    let decision_log = dir.join("decisions.jsonl");
    let wardgate = Wardgate::start(
        &shipped_bundle(),
        &socket,
        &dir,
        &["--decision-log", decision_log.to_str().unwrap()],
    )
    .await
    .unwrap();
    let settings = EnvoySettings {
        svid_cert: svid.cert_path.clone(),
        svid_key: svid.key_path.clone(),
        trust_bundle_dir: pki.trust_bundle_dir.clone(),
        wardgate_socket: socket,
        app: app.addr,
    };
    let envoy = Envoy::start(envoy_binary, &settings, &dir).await.unwrap();
    Service {
        name,
        envoy,
        wardgate,
        app,
        decision_log,
        dns_name: svid.dns_name.clone(),
    }
}

/// The last decision-log entry of a service, once it has been written.
async fn last_decision(service: &Service, count: usize) -> serde_json::Value {
    for _ in 0..100 {
        let text = std::fs::read_to_string(&service.decision_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() >= count {
            if let Some(line) = lines.last() {
                return serde_json::from_str(line).unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{}: no decision logged", service.name);
}

struct Call {
    title: &'static str,
    caller: &'static str,
    service: usize,
    request: RawRequest,
    expect: (&'static str, &'static str, Option<&'static str>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo() {
    let Some(envoy_binary) = require_envoy("demo") else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("wardgate-demo-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let services = [
        start_service(&envoy_binary, &pki, "lab", dir.path()).await,
        start_service(&envoy_binary, &pki, "interface-engine", dir.path()).await,
    ];
    println!();
    println!("wardgate demo: the hospital example bundle (deploy/bundles/hospital.yaml)");
    for s in &services {
        println!(
            "  {:<17} {}  Envoy https://{} (mTLS) -> wardgate unix:{} -> app {}",
            s.name,
            pki.svid(s.name).unwrap().spiffe_id,
            s.envoy.listen,
            s.wardgate.socket.display(),
            s.app.addr
        );
    }
    println!("  callers present X.509 SVIDs from test CAs of hospital.example, partner-lab.example, medtech.example");
    println!();

    let lab = 0;
    let engine = 1;
    let calls = [
        Call {
            title: "clinical: the EHR reads a lab result",
            caller: "ehr",
            service: lab,
            request: RawRequest::new("GET", "/results/42"),
            expect: ("allow", "rule", Some("ehr-reads-lab-results")),
        },
        Call {
            title: "clinical: the EHR deletes a lab result",
            caller: "ehr",
            service: lab,
            request: RawRequest::new("DELETE", "/results/42"),
            expect: ("deny", "default_deny", None),
        },
        Call {
            title: "path trick: /results/../admin is /admin",
            caller: "ehr",
            service: lab,
            request: RawRequest::new("GET", "/results/../admin"),
            expect: ("deny", "rule", Some("no-workload-reaches-admin-consoles")),
        },
        Call {
            title: "administrative: billing reads a lab result",
            caller: "billing",
            service: lab,
            request: RawRequest::new("GET", "/results/42"),
            expect: ("deny", "default_deny", None),
        },
        Call {
            title: "administrative: scheduling calls the interface engine",
            caller: "scheduling",
            service: engine,
            request: RawRequest::new("POST", "/api/messages"),
            expect: ("allow", "rule", Some("admin-services-talk")),
        },
        Call {
            title: "vendor: the reference lab delivers results",
            caller: "reflab",
            service: engine,
            request: RawRequest::new("POST", "/inbound/results"),
            expect: (
                "allow",
                "rule",
                Some("reflab-delivers-results-to-interface-engine"),
            ),
        },
        Call {
            title: "vendor: the reference lab reads the clinical lab",
            caller: "reflab",
            service: lab,
            request: RawRequest::new("GET", "/results/42"),
            expect: ("deny", "rule", Some("vendor-never-reaches-clinical")),
        },
        Call {
            title: "vendor: the same call with a 24h SVID (limit 1h)",
            caller: "reflab-long-lived",
            service: engine,
            request: RawRequest::new("POST", "/inbound/results"),
            expect: ("deny", "svid_lifetime", None),
        },
        Call {
            title: "break-glass: pharmacy reads a lab result, with a reason",
            caller: "pharmacy",
            service: lab,
            request: RawRequest::new("GET", "/results/42")
                .header("x-break-glass-reason", "code blue, bed 4"),
            expect: ("allow", "break_glass", Some("clinical-emergency-override")),
        },
        Call {
            title: "break-glass never overrides a deny rule",
            caller: "pharmacy",
            service: lab,
            request: RawRequest::new("GET", "/admin")
                .header("x-break-glass-reason", "code blue, bed 4"),
            expect: ("deny", "rule", Some("no-workload-reaches-admin-consoles")),
        },
    ];
    let mut logged = [0usize; 2];
    let mut mismatches = Vec::new();
    for call in &calls {
        let service = &services[call.service];
        let client = MtlsClient::new(
            service.envoy.listen,
            &service.dns_name,
            &pki.trusted_roots(),
            Some(pki.svid(call.caller).unwrap()),
            Protocol::Http2,
        )
        .unwrap();
        let reply = client.send(&call.request).await.unwrap();
        logged[call.service] += 1;
        let decision = last_decision(service, logged[call.service]).await;
        let got = (
            decision["decision"].as_str().unwrap_or("?").to_owned(),
            decision["reason"].as_str().unwrap_or("?").to_owned(),
            decision["rule"].as_str().map(str::to_owned),
        );
        println!("{}", call.title);
        println!(
            "  {} -> {}  {} {}",
            call.caller, service.name, call.request.method, call.request.path
        );
        println!(
            "  HTTP {}  decision: {}  reason: {}{}",
            reply.status,
            got.0,
            got.1,
            got.2
                .as_deref()
                .map(|r| format!("  rule: {r}"))
                .unwrap_or_default()
        );
        let expected = (
            call.expect.0.to_owned(),
            call.expect.1.to_owned(),
            call.expect.2.map(str::to_owned),
        );
        let status_ok = (reply.status == 200) == (call.expect.0 == "allow");
        if got != expected || !status_ok {
            mismatches.push(format!(
                "{}: expected {expected:?}, got {got:?} (HTTP {})",
                call.title, reply.status
            ));
        }
    }

    println!();
    for s in &services {
        let admin = s.wardgate.admin.unwrap();
        let (scrape, _) = support::metrics::scrape(admin).await.unwrap();
        let total: f64 = scrape.series("wardgate_checks_total").values().sum();
        println!("{}:", s.name);
        println!("  metrics       http://{admin}/metrics   ({total} checks counted in wardgate_checks_total)");
        println!("  bundle, rules http://{admin}/v1/bundle  http://{admin}/v1/rules");
        println!("  decision log  {}", s.decision_log.display());
        println!("  Envoy access  {}", s.envoy.access_log.display());
    }
    if std::env::var("WARDGATE_DEMO_WAIT").is_ok_and(|v| v == "1") {
        println!();
        println!("Everything is still running: try the URLs above. Press Enter to stop.");
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await;
    }
    println!("stopping Envoy, wardgate and the apps");
    drop(services);
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
