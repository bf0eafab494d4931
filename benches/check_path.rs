//! What metrics and decision logging cost on the check path.
//!
//! Calls `AuthzService::respond` in-process (CheckRequest in, CheckResponse out: identity
//! parsing, the decision, rendering, and whatever telemetry is attached) against the shipped
//! bundle, three ways:
//!
//! * `bare`: no telemetry at all;
//! * `metrics`: counters, latency histogram and rule hits, decision log off;
//! * `metrics+log`: the same plus a decision-log entry per check, queued for a writer thread
//!   that writes JSON lines to `/dev/null`.
//!
//! Each is measured twice: `check_path` is wall-clock time per call, as criterion always
//! measures it; `check_path_cpu` is the checking thread's own CPU time per call
//! (`CLOCK_THREAD_CPUTIME_ID`), which is what a check actually pays: it leaves out time the
//! thread spends preempted, which on a small loaded machine includes the decision-log writer
//! thread's turn on the CPU. The writer's CPU per entry is reported separately.
//!
//! Run with `cargo bench --bench check_path`. At the end it prints each variant's median and its
//! ratio to `bare` measured in the same run, the writer's CPU time per entry, and how many log
//! entries were dropped because the queue was full (dropping is cheaper than logging, so the
//! bench says when that happened).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use criterion::{BenchmarkId, Criterion};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use wardgate::extauthz::{AuthzConfig, AuthzService};
use wardgate::policy::Policy;
use wardgate::policy::PolicyHandle;
use wardgate::telemetry::{DecisionLogConfig, Telemetry, TelemetryConfig};

const BUNDLE: &str = include_str!("../deploy/bundles/hospital.yaml");
const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";
const VARIANTS: [&str; 3] = ["bare", "metrics", "metrics+log"];
const CASES: [&str; 2] = ["allow", "deny"];

fn check(source: &str, path: &str) -> CheckRequest {
    let headers = [
        ("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
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
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: 1_795_000_000,
                    nanos: 0,
                }),
                http: Some(HttpRequest {
                    id: "1234567890".into(),
                    method: "GET".into(),
                    path: path.into(),
                    host: "lab.clinical.svc".into(),
                    headers,
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time used so far by the decision-log writer thread (from /proc; tick resolution, fine
/// over a whole run).
fn writer_cpu() -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() == "wardgate-decisi" {
            let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
            return Some(Duration::from_nanos(ns));
        }
    }
    None
}

fn counter(telemetry: &Telemetry, name: &str) -> f64 {
    telemetry
        .registry()
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .and_then(|f| f.get_metric().first().map(|m| m.get_counter().get_value()))
        .unwrap_or(0.0)
}

fn main() {
    let policy = Policy::from_yaml_str("hospital.yaml", BUNDLE).expect("shipped bundle");
    let digest_source = "deploy/bundles/hospital.yaml";
    let handle: PolicyHandle = Arc::new(ArcSwapOption::from_pointee(policy));
    let in_force = handle.load_full().expect("policy");

    let metrics = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    metrics.bundle_swapped(&in_force, digest_source, Duration::ZERO);
    let sink = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    let logged = Telemetry::new(TelemetryConfig {
        decision_log: Some(DecisionLogConfig {
            sink: Box::new(sink),
            description: "/dev/null".into(),
            queue: 65_536,
            sample_allows: 1.0,
            redaction: wardgate::telemetry::Redaction::default(),
        }),
    })
    .expect("telemetry");
    logged.bundle_swapped(&in_force, digest_source, Duration::ZERO);

    let service = |telemetry: Option<&Arc<Telemetry>>| {
        AuthzService::new(
            Arc::clone(&handle),
            AuthzConfig {
                telemetry: telemetry.cloned(),
                ..AuthzConfig::default()
            },
        )
    };
    let services = [
        service(None),
        service(Some(&metrics)),
        service(Some(&logged)),
    ];
    let requests = [
        check(
            "spiffe://hospital.example/ns/clinical/sa/ehr",
            "/results/42",
        ),
        check(
            "spiffe://partner-lab.example/ns/vendor/sa/reflab",
            "/results/42",
        ),
    ];
    for (case, request) in CASES.iter().zip(&requests) {
        let code = services[0]
            .respond(request)
            .status
            .map(|s| s.code)
            .unwrap_or(-1);
        assert_eq!(code == 0, *case == "allow", "{case}");
    }

    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut group = c.benchmark_group("check_path");
    for (case, request) in CASES.iter().zip(&requests) {
        for (variant, service) in VARIANTS.iter().zip(&services) {
            group.bench_with_input(BenchmarkId::new(*variant, case), request, |b, request| {
                b.iter(|| black_box(service.respond(black_box(request))))
            });
        }
    }
    group.finish();
    let writer_before = writer_cpu();
    let written_before = counter(&logged, "wardgate_decision_log_written_total");
    let mut group = c.benchmark_group("check_path_cpu");
    for (case, request) in CASES.iter().zip(&requests) {
        for (variant, service) in VARIANTS.iter().zip(&services) {
            group.bench_with_input(BenchmarkId::new(*variant, case), request, |b, request| {
                b.iter_custom(|iters| {
                    let start = thread_cpu();
                    for _ in 0..iters {
                        black_box(service.respond(black_box(request)));
                    }
                    thread_cpu() - start
                })
            });
        }
    }
    group.finish();
    c.final_summary();

    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` smoke run: nothing was measured
    }
    // Let the writer drain what is queued before reading its counters.
    std::thread::sleep(Duration::from_millis(500));
    print_ratios("check_path", "wall-clock time");
    print_ratios("check_path_cpu", "CPU time of the checking thread");
    if let (Some(before), Some(after)) = (writer_before, writer_cpu()) {
        let entries = counter(&logged, "wardgate_decision_log_written_total") - written_before;
        println!(
            "\ndecision-log writer thread: {:.0} ns of CPU per entry written ({entries:.0} entries \
             during the CPU-time group: JSON encoding, buffered write to /dev/null)",
            (after - before).as_nanos() as f64 / entries.max(1.0)
        );
    }
    let written = counter(&logged, "wardgate_decision_log_written_total");
    let dropped = counter(&logged, "wardgate_decision_log_dropped_total");
    println!(
        "\ndecision log (metrics+log): {written:.0} entries written to /dev/null, {dropped:.0} dropped \
         because the queue was full ({:.1}% of those offered)",
        100.0 * dropped / (written + dropped).max(1.0)
    );
}

/// Read criterion's median estimates of `group` back and print each variant relative to `bare`.
fn print_ratios(group: &str, what: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/criterion")
        .join(group);
    let median = |variant: &str, case: &str| -> Option<f64> {
        let dir = root.join(variant).join(case);
        let text = std::fs::read_to_string(dir.join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    println!("\nAuthzService::respond median {what}, and ratio to `bare` in this run:");
    for case in CASES {
        let Some(base) = median("bare", case) else {
            println!("  {case}: no estimates found (run without --test)");
            continue;
        };
        let row: Vec<String> = VARIANTS
            .iter()
            .filter_map(|v| {
                median(v, case)
                    .map(|m| format!("{v}: {m:.0} ns ({:.2}x, +{:.0} ns)", m / base, m - base))
            })
            .collect();
        println!("  {case:<6} {}", row.join("  "));
    }
}
