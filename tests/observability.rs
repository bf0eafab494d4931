//! Observability end to end: what an SRE reads from a running wardgate after real traffic.
//!
//! Real Envoy, real mTLS SVIDs, the shipped sidecar config and bundle (Envoy fronts the clinical
//! `lab` workload). The tests scrape `/metrics` over HTTP and parse the exposition strictly
//! (`support::metrics`), then assert that exactly the counters of the decisions made moved, by
//! exactly the number of requests, label set by label set; that the decision log holds one
//! well-formed JSON object per request with no header value, query or body in it; that a full
//! decision-log queue drops and counts entries while checks go on unhindered; that `/readyz`
//! follows the first valid bundle; and that the shipped alert rules, their unit tests, the
//! Grafana dashboard's queries and a real scrape all pass `promtool`.
//!
//! Needs Envoy and promtool (`scripts/install-test-deps.sh` installs both). Without them the
//! tests are skipped loudly, except under `CI=true`, where they fail.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wardgate::decision_log::DecisionRecord;
use wardgate::policy::Policy;

use support::client::{plain_get, Protocol, RawRequest};
use support::metrics::{labels, parse, scrape, Labels, Scrape};
use support::process::{require_envoy, WaitFor, Wardgate};
use support::{Sidecar, SidecarOptions};

const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";

/// A value no log line, metric or admin answer may ever contain.
const SECRET: &str = "SECRET-5f1c-jane-doe";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// promtool, or `None` when the test should be skipped; under `CI=true` missing is a failure.
fn require_promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("WARDGATE_PROMTOOL")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("promtool"))
                    .find(|candidate| candidate.is_file())
            })
        });
    if found.is_some() {
        return found;
    }
    let help = "promtool not found: run scripts/install-test-deps.sh (Debian package prometheus) \
                or set WARDGATE_PROMTOOL";
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {help} (CI=true: a missing promtool fails the build)");
    }
    let bar = "!".repeat(100);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! SKIPPED {test}: {help}\n{bar}\n"
    );
    None
}

/// Run promtool with `args` (and `stdin`), panicking with its output unless it succeeds.
fn promtool(binary: &Path, args: &[&str], stdin: Option<&str>, dir: &Path) -> String {
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feed promtool");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// One request of the traffic plan and the decision wardgate must make.
#[derive(Clone)]
struct Planned {
    caller: &'static str,
    method: &'static str,
    path: &'static str,
    break_glass: Option<&'static str>,
    decision: &'static str,
    reason: &'static str,
    rule: Option<&'static str>,
    source_segment: &'static str,
}

const fn plan(
    caller: &'static str,
    method: &'static str,
    path: &'static str,
    decision: &'static str,
    reason: &'static str,
    rule: Option<&'static str>,
    source_segment: &'static str,
) -> Planned {
    Planned {
        caller,
        method,
        path,
        break_glass: None,
        decision,
        reason,
        rule,
        source_segment,
    }
}

/// Requests through Envoy to `lab`, every one carrying the secret in a header and in the query.
fn traffic() -> Vec<Planned> {
    let ehr_reads = Some("ehr-reads-lab-results");
    let vendor = Some("vendor-never-reaches-clinical");
    let admin = Some("no-workload-reaches-admin-consoles");
    vec![
        plan(
            "ehr",
            "GET",
            "/results/42",
            "allow",
            "rule",
            ehr_reads,
            "clinical",
        ),
        plan(
            "ehr",
            "GET",
            "/results/43",
            "allow",
            "rule",
            ehr_reads,
            "clinical",
        ),
        plan(
            "ehr", "HEAD", "/results", "allow", "rule", ehr_reads, "clinical",
        ),
        plan(
            "ehr",
            "POST",
            "/orders",
            "allow",
            "rule",
            Some("ehr-orders-lab-tests"),
            "clinical",
        ),
        plan(
            "reflab",
            "GET",
            "/results/42",
            "deny",
            "rule",
            vendor,
            "vendor",
        ),
        plan(
            "remote-support",
            "GET",
            "/healthz",
            "deny",
            "rule",
            vendor,
            "vendor",
        ),
        plan(
            "ehr",
            "DELETE",
            "/results/42",
            "deny",
            "default_deny",
            None,
            "clinical",
        ),
        plan(
            "imaging",
            "GET",
            "/results/42",
            "deny",
            "default_deny",
            None,
            "clinical",
        ),
        plan(
            "billing",
            "GET",
            "/healthz",
            "deny",
            "default_deny",
            None,
            "administrative",
        ),
        plan("ehr", "GET", "/admin", "deny", "rule", admin, "clinical"),
        plan(
            "reflab-long-lived",
            "GET",
            "/results/1",
            "deny",
            "svid_lifetime",
            None,
            "vendor",
        ),
        Planned {
            break_glass: Some("code blue, bed 4"),
            ..plan(
                "ehr",
                "GET",
                "/patients/7",
                "allow",
                "break_glass",
                Some("clinical-emergency-override"),
                "clinical",
            )
        },
    ]
}

impl Planned {
    fn request(&self) -> RawRequest {
        let mut request = RawRequest::new(self.method, &format!("{}?ssn={SECRET}", self.path))
            .header("x-patient-name", SECRET)
            .header("authorization", &format!("Bearer {SECRET}"));
        if let Some(reason) = self.break_glass {
            request = request.header("x-break-glass-reason", reason);
        }
        request
    }

    fn expected_status(&self) -> u16 {
        if self.decision == "allow" {
            200
        } else {
            403
        }
    }
}

async fn send_all(sidecar: &Sidecar, plan: &[Planned]) {
    for p in plan {
        let client = sidecar.client(Some(p.caller), Protocol::Http1).unwrap();
        let started = Instant::now();
        let reply = client.send(&p.request()).await.unwrap_or_else(|e| {
            panic!(
                "{} {} {}: {e}\n{}",
                p.caller,
                p.method,
                p.path,
                sidecar.logs()
            )
        });
        assert_eq!(
            reply.status,
            p.expected_status(),
            "{} {} {}: {:?} {:?}\n{}",
            p.caller,
            p.method,
            p.path,
            reply.headers,
            reply.text(),
            sidecar.logs()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{} {} took {:?}",
            p.method,
            p.path,
            started.elapsed()
        );
    }
}

/// Expected increase of every `wardgate_checks_total` series: only those of the plan.
fn expected_checks(plan: &[Planned]) -> BTreeMap<Labels, f64> {
    let mut expected = BTreeMap::new();
    for p in plan {
        *expected
            .entry(labels(&[
                ("decision", p.decision),
                ("reason", p.reason),
                ("source_segment", p.source_segment),
                ("destination_segment", "clinical"),
            ]))
            .or_insert(0.0) += 1.0;
    }
    expected
}

/// Assert that every series of `name` moved by exactly `expected` (absent = 0).
fn assert_deltas(after: &Scrape, before: &Scrape, name: &str, expected: &BTreeMap<Labels, f64>) {
    let deltas = after.deltas(before, name);
    for series in expected.keys() {
        assert!(
            deltas.contains_key(series),
            "{name}{series:?} missing from the scrape"
        );
    }
    for (series, delta) in &deltas {
        let want = expected.get(series).copied().unwrap_or(0.0);
        assert_eq!(
            *delta, want,
            "{name}{series:?} moved by {delta}, expected {want}"
        );
    }
}

async fn scrape_until(
    admin: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> (Scrape, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (scraped, text) = scrape(admin).await.unwrap();
        if done(&scraped) {
            return (scraped, text);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_records(path: &Path) -> Vec<(Value, DecisionRecord)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
            let record: DecisionRecord = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("not a DecisionRecord ({e}): {line}"));
            (value, record)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_decision_log_account_for_every_check() {
    let Some(envoy) = require_envoy("metrics_and_decision_log_account_for_every_check") else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("decisions.jsonl");
    let options = SidecarOptions {
        // Paths as sent (never the query), so each record can be matched to its request; the
        // redacted default is tested in tests/decision_log_phi.rs.
        wardgate_args: vec![
            "--decision-log".into(),
            log.display().to_string(),
            "--decision-log-paths".into(),
            "full".into(),
        ],
        ..SidecarOptions::shipped("lab")
    };
    let mut sidecar = Sidecar::start(&envoy, &options).await.unwrap();
    let admin = sidecar.wardgate.admin.expect("admin listener");
    let (before, _) = scrape(admin).await.unwrap();

    let plan = traffic();
    send_all(&sidecar, &plan).await;
    let n = plan.len() as f64;
    let written = before
        .get("wardgate_decision_log_written_total", &[])
        .unwrap();
    let (after, text) = scrape_until(admin, "the decision log to catch up", |s| {
        s.get("wardgate_decision_log_written_total", &[]) == Some(written + n)
    })
    .await;

    // For release notes: `WARDGATE_DUMP_SCRAPE=/tmp/scrape.txt` keeps this scrape.
    if let Some(path) = std::env::var_os("WARDGATE_DUMP_SCRAPE") {
        std::fs::write(path, &text).unwrap();
    }

    // Checks: exactly the plan's label sets moved, each by its number of requests.
    assert_deltas(
        &after,
        &before,
        "wardgate_checks_total",
        &expected_checks(&plan),
    );
    // Rule hits and break-glass uses: exactly the deciding rules.
    let mut rule_hits = BTreeMap::new();
    let mut break_glass = BTreeMap::new();
    for p in &plan {
        match (p.rule, p.reason) {
            (Some(rule), "break_glass") => {
                *break_glass.entry(labels(&[("rule", rule)])).or_insert(0.0) += 1.0;
            }
            (Some(rule), _) => {
                let action = if p.decision == "allow" {
                    "allow"
                } else {
                    "deny"
                };
                *rule_hits
                    .entry(labels(&[("rule", rule), ("action", action)]))
                    .or_insert(0.0) += 1.0;
            }
            (None, _) => {}
        }
    }
    assert_deltas(&after, &before, "wardgate_rule_hits_total", &rule_hits);
    assert_deltas(
        &after,
        &before,
        "wardgate_break_glass_uses_total",
        &break_glass,
    );
    // Every rule of the bundle has a series (at zero until used): unused rules are visible.
    let shipped = Policy::from_path(&support::shipped_bundle()).unwrap();
    let rule_series = after.series("wardgate_rule_hits_total");
    for rule in shipped.rule_names() {
        assert!(
            rule_series
                .keys()
                .any(|l| l.get("rule").map(String::as_str) == Some(rule)),
            "no series for rule {rule}"
        );
    }
    // Latency: one observation per check, all under the top bucket.
    let count = |s: &Scrape| s.get("wardgate_check_duration_seconds_count", &[]).unwrap();
    assert_eq!(count(&after) - count(&before), n);
    let le = |s: &Scrape, le: &str| {
        s.get("wardgate_check_duration_seconds_bucket", &[("le", le)])
            .unwrap()
    };
    assert_eq!(le(&after, "0.1") - le(&before, "0.1"), n);
    assert_eq!(le(&after, "+Inf"), count(&after));
    // Bundle state and readiness.
    assert_eq!(after.get("wardgate_ready", &[]), Some(1.0));
    assert_eq!(after.get("wardgate_bundle_revision", &[]), Some(1.0));
    assert_eq!(
        after.get("wardgate_bundle_rules", &[]),
        Some(shipped.rule_count() as f64)
    );
    let info = after.series("wardgate_bundle_info");
    assert_eq!(info.len(), 1, "{info:?}");
    let (info_labels, one) = info.iter().next().unwrap();
    assert_eq!(*one, 1.0);
    assert_eq!(info_labels["digest"], shipped.digest());
    assert!(after.get("process_resident_memory_bytes", &[]).unwrap() > 0.0);
    assert_eq!(
        after.get("wardgate_decision_log_dropped_total", &[]),
        Some(0.0)
    );

    // /v1/rules agrees with the metrics; /v1/bundle names the bundle.
    let (status, body) = plain_get(admin, "/v1/rules").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let rules: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rules["digest"], shipped.digest());
    let listed = rules["rules"].as_array().unwrap();
    assert_eq!(listed.len(), shipped.rules().count());
    for entry in listed {
        let name = entry["name"].as_str().unwrap();
        let hits = entry["hits"].as_u64().unwrap() as f64;
        let want = plan.iter().filter(|p| p.rule == Some(name)).count() as f64;
        assert_eq!(hits, want, "/v1/rules {name}");
        assert_eq!(entry["last_hit"].is_string(), want > 0.0, "{entry}");
        assert!(entry["line"].as_u64().unwrap() > 0);
    }
    let (status, body) = plain_get(admin, "/v1/bundle").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let bundle: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bundle["revision"], 1);
    assert_eq!(bundle["digest"], shipped.digest());
    assert_eq!(bundle["rule_count"], shipped.rule_count());
    assert!(bundle["source"]
        .as_str()
        .unwrap()
        .ends_with("hospital.yaml"));
    assert!(bundle["loaded_at"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .is_ok());

    // The decision log: one well-formed object per request, in order, with the right fields.
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let records = read_records(&log);
        if records.len() >= plan.len() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records.len(), plan.len(), "one entry per request");
    let mut request_ids = std::collections::BTreeSet::new();
    for ((value, record), p) in records.iter().zip(&plan) {
        let what = format!("{} {} {}: {value}", p.caller, p.method, p.path);
        let caller = sidecar.pki.svid(p.caller).unwrap().spiffe_id.clone();
        assert!(record.time.parse::<jiff::Timestamp>().is_ok(), "{what}");
        assert_eq!(record.source.as_deref(), Some(caller.as_str()), "{what}");
        assert_eq!(record.destination.as_deref(), Some(LAB), "{what}");
        assert_eq!(
            record.source_segment.as_deref(),
            Some(p.source_segment),
            "{what}"
        );
        assert_eq!(
            record.destination_segment.as_deref(),
            Some("clinical"),
            "{what}"
        );
        assert_eq!(record.method, p.method, "{what}");
        assert_eq!(record.path, p.path, "{what}");
        assert!(!record.host.is_empty(), "{what}");
        assert_eq!(record.decision.as_str(), p.decision, "{what}");
        assert_eq!(record.reason.as_str(), p.reason, "{what}");
        assert_eq!(record.rule.as_deref(), p.rule, "{what}");
        assert_eq!(record.revision, Some(1), "{what}");
        assert!(record.latency_us < 1_000_000, "{what}");
        assert_eq!(
            record.break_glass_reason.as_deref(),
            p.break_glass,
            "{what}"
        );
        let id = record.request_id.clone().expect("request id");
        assert!(request_ids.insert(id), "request ids are unique: {what}");
        // Nothing beyond the documented fields.
        for key in value.as_object().unwrap().keys() {
            assert!(
                [
                    "time",
                    "request_id",
                    "source",
                    "source_segment",
                    "destination",
                    "destination_segment",
                    "method",
                    "path",
                    "host",
                    "decision",
                    "reason",
                    "rule",
                    "revision",
                    "latency_us",
                    "break_glass_reason",
                    "path_form",
                    "break_glass_header"
                ]
                .contains(&key.as_str()),
                "unexpected field {key}: {what}"
            );
        }
    }

    // The secret sent in headers and queries is nowhere: log, metrics, admin answers, stderr.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(!log_text.contains(SECRET), "secret in the decision log");
    assert!(
        !log_text.contains("Bearer"),
        "header value in the decision log"
    );
    assert!(!text.contains(SECRET), "secret in /metrics");
    assert!(!body.contains(SECRET));
    let (_, rules_text) = plain_get(admin, "/v1/rules").await.unwrap();
    assert!(!rules_text.contains(SECRET));

    // promtool reads the real scrape without complaint.
    if let Some(promtool_bin) = require_promtool("metrics_and_decision_log_account_for_every_check")
    {
        promtool(
            &promtool_bin,
            &["check", "metrics"],
            Some(&text),
            logs.path(),
        );
    }

    // SIGTERM: clean exit, the decision log flushed, the admin listener gone.
    let exit = sidecar.wardgate.child.terminate(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        sidecar.logs()
    );
    let stderr = std::fs::read_to_string(&sidecar.wardgate.child.stderr_path).unwrap();
    assert!(stderr.contains("decision log flushed"), "{stderr}");
    assert!(!stderr.contains(SECRET), "secret in the operational log");
    assert!(
        plain_get(admin, "/healthz").await.is_err(),
        "admin still up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_decision_log_queue_drops_entries_but_never_delays_checks() {
    let Some(envoy) =
        require_envoy("a_full_decision_log_queue_drops_entries_but_never_delays_checks")
    else {
        return;
    };
    // A FIFO whose reader never reads, already full: the writer blocks on its first write.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("decisions.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&fifo)
        .unwrap();
    let filler = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(&fifo)
        .unwrap();
    let junk = vec![b'\n'; 4096];
    let mut filled = 0;
    // Write until the pipe stays unwritable for a while: then it is full.
    while let Ok(ready) = tokio::time::timeout(Duration::from_millis(200), filler.writable()).await
    {
        ready.unwrap();
        match filler.try_write(&junk) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("filling the FIFO: {e}"),
        }
    }
    assert!(filled > 0);

    let options = SidecarOptions {
        wardgate_args: vec![
            "--decision-log".into(),
            fifo.display().to_string(),
            "--decision-log-queue".into(),
            "1".into(),
        ],
        ..SidecarOptions::shipped("lab")
    };
    let mut sidecar = Sidecar::start(&envoy, &options).await.unwrap();
    let admin = sidecar.wardgate.admin.expect("admin listener");
    let (before, _) = scrape(admin).await.unwrap();

    // Twenty checks, each answered correctly and promptly.
    let plan: Vec<Planned> = traffic().into_iter().cycle().take(20).collect();
    send_all(&sidecar, &plan).await;

    let (after, text) = scrape(admin).await.unwrap();
    assert_deltas(
        &after,
        &before,
        "wardgate_checks_total",
        &expected_checks(&plan),
    );
    let dropped = after
        .get("wardgate_decision_log_dropped_total", &[])
        .unwrap();
    // One entry is stuck in the writer's write, one waits in the queue: the rest are dropped.
    assert!(
        (18.0..=20.0).contains(&dropped),
        "dropped {dropped} of 20\n{text}"
    );
    assert_eq!(
        after.get("wardgate_decision_log_queue_capacity", &[]),
        Some(1.0)
    );
    assert_eq!(
        after.get("wardgate_decision_log_queue_depth", &[]),
        Some(1.0)
    );
    assert_eq!(
        after.get("wardgate_decision_log_written_total", &[]),
        Some(0.0)
    );

    // Shutdown does not hang on the stuck writer: it gives up after the flush timeout.
    let started = Instant::now();
    let exit = sidecar.wardgate.child.terminate(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        sidecar.logs()
    );
    assert!(started.elapsed() < Duration::from_secs(25));
    let stderr = std::fs::read_to_string(&sidecar.wardgate.child.stderr_path).unwrap();
    assert!(stderr.contains("did not finish in time"), "{stderr}");
    drop((reader, filler));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_first_valid_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.yaml");
    std::fs::write(&bundle, "version: 1\nrevision: 1\nnot_a_key: true\n").unwrap();
    let log = dir.path().join("decisions.jsonl");
    let socket = dir.path().join("wardgate.sock");
    let args = [
        "--poll-interval",
        "100ms",
        "--decision-log",
        log.to_str().unwrap(),
    ];
    let mut wardgate = Wardgate::launch(&bundle, &socket, dir.path(), &args, WaitFor::Alive)
        .await
        .unwrap();
    let admin = wardgate.admin.unwrap();

    // Not ready: no valid bundle yet. Alive all the same.
    assert_eq!(plain_get(admin, "/healthz").await.unwrap().0, 200);
    let (status, body) = plain_get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(plain_get(admin, "/v1/bundle").await.unwrap().0, 503);
    assert_eq!(plain_get(admin, "/v1/rules").await.unwrap().0, 503);
    assert_eq!(plain_get(admin, "/nothing-here").await.unwrap().0, 404);
    // A check now is denied with no_policy, and counted as such.
    let mut client = support::grpc::authorization(&socket).await.unwrap();
    let response = client
        .check(check_request(
            "spiffe://hospital.example/ns/clinical/sa/ehr",
            "/results/1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status.as_ref().map(|s| s.code),
        Some(tonic::Code::PermissionDenied as i32)
    );
    // The socket is bound before the first load, which waits for the file to settle: give the
    // refusal time to be counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (scraped, text) = loop {
        let (scraped, text) = scrape(admin).await.unwrap();
        let refused: f64 = scraped
            .series("wardgate_reload_attempts_total")
            .iter()
            .filter(|(l, _)| !matches!(l["result"].as_str(), "ok" | "unchanged"))
            .map(|(_, v)| v)
            .sum();
        if refused >= 1.0 || Instant::now() > deadline {
            break (scraped, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(scraped.get("wardgate_ready", &[]), Some(0.0), "{text}");
    let no_policy = [
        ("decision", "deny"),
        ("reason", "no_policy"),
        ("source_segment", "-"),
        ("destination_segment", "-"),
    ];
    assert_eq!(scraped.get("wardgate_checks_total", &no_policy), Some(1.0));
    let refused: f64 = scraped
        .series("wardgate_reload_attempts_total")
        .iter()
        .filter(|(l, _)| !matches!(l["result"].as_str(), "ok" | "unchanged"))
        .map(|(_, v)| v)
        .sum();
    assert!(refused >= 1.0, "the refused bundle is counted\n{text}");
    assert_eq!(scraped.get("wardgate_bundle_info", &[]), None);

    // The first valid bundle arrives: ready, and the bundle is described.
    let staged = dir.path().join("bundle.yaml.new");
    std::fs::copy(support::shipped_bundle(), &staged).unwrap();
    std::fs::rename(&staged, &bundle).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while plain_get(admin, "/readyz").await.unwrap().0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready 20 s after a valid bundle\n{}",
            wardgate.child.log_tail(3000)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected = Policy::from_path(&bundle).unwrap();
    let (status, body) = plain_get(admin, "/v1/bundle").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["digest"], expected.digest());
    assert_eq!(info["revision"], 1);
    assert_eq!(info["source"], bundle.display().to_string());
    let (scraped, text) = scrape(admin).await.unwrap();
    assert_eq!(scraped.get("wardgate_ready", &[]), Some(1.0), "{text}");
    assert_eq!(scraped.get("wardgate_bundle_revision", &[]), Some(1.0));
    assert_eq!(
        scraped.get(
            "wardgate_bundle_info",
            &[
                ("digest", expected.digest()),
                ("source", &bundle.display().to_string())
            ]
        ),
        Some(1.0)
    );
    assert!(scraped.get("wardgate_reload_attempts_total", &[("result", "ok")]) >= Some(1.0));
    assert!(scraped.get("wardgate_bundle_loaded_timestamp_seconds", &[]) > Some(1e9));

    let exit = wardgate.child.terminate(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    let records = read_records(&log);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1.reason.as_str(), "no_policy");
    assert_eq!(records[0].1.revision, None);
}

fn check_request(source: &str, path: &str) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    envoy_types::ext_authz::v3::pb::CheckRequest {
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
                    method: "GET".into(),
                    path: path.into(),
                    host: "lab.clinical.svc".into(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(binary) = require_promtool("alert_rules_pass_promtool_and_their_unit_tests") else {
        return;
    };
    let dir = repo("deploy/prometheus");
    let out = promtool(&binary, &["check", "rules", "alerts.yaml"], None, &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&binary, &["test", "rules", "alerts_test.yaml"], None, &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of alerts.yaml has a unit test.
    let rules = std::fs::read_to_string(dir.join("alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yaml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "alert {name} has no test in alerts_test.yaml"
            );
        }
    }
}

/// `wardgate_*` metric names mentioned in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("wardgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    // A real scrape of a wardgate that has decided one check.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wardgate.sock");
    let wardgate = Wardgate::start(&support::shipped_bundle(), &socket, dir.path(), &[])
        .await
        .unwrap();
    let mut client = support::grpc::authorization(&socket).await.unwrap();
    client
        .check(check_request(
            "spiffe://partner-lab.example/ns/vendor/sa/reflab",
            "/",
        ))
        .await
        .unwrap();
    let (scraped, text) = scrape(wardgate.admin.unwrap()).await.unwrap();
    let exported = scraped.names();
    // The SVID gauge appears once wardgate has an SVID of its own; alerts may use it.
    let optional = ["wardgate_svid_expiry_timestamp_seconds"];

    let dashboard_text = std::fs::read_to_string(repo("deploy/grafana/wardgate.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yaml")).unwrap();
    for name in exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .chain(metric_names(&alerts))
    {
        assert!(
            exported.contains(&name) || optional.contains(&name.as_str()),
            "{name} is queried but not exported:\n{text}"
        );
    }
    for title in [
        "Decisions by segment pair",
        "Decision latency percentiles",
        "Rule hits",
        "Bundle in force per instance",
    ] {
        assert!(dashboard_text.contains(title), "dashboard lacks {title}");
    }

    // Every dashboard query is valid PromQL once Grafana's variables are filled in.
    let Some(binary) = require_promtool("dashboard_and_alerts_query_only_exported_metrics") else {
        return;
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    std::fs::write(dir.path().join("dashboard_rules.yaml"), rules).unwrap();
    promtool(
        &binary,
        &["check", "rules", "dashboard_rules.yaml"],
        None,
        dir.path(),
    );
    promtool(&binary, &["check", "metrics"], Some(&text), dir.path());
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn exposition_parser_reads_what_prometheus_reads_and_refuses_the_rest() {
    let text = "# HELP x_total Things.\n# TYPE x_total counter\n\
                x_total{a=\"1\",b=\"q\\\"uote\\\\ \\n\"} 3\nx_total 4 1700000000000\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let s = parse(text).unwrap();
    assert_eq!(
        s.get("x_total", &[("a", "1"), ("b", "q\"uote\\ \n")]),
        Some(3.0)
    );
    assert_eq!(s.get("x_total", &[]), Some(4.0));
    assert_eq!(s.get("h_bucket", &[("le", "+Inf")]), Some(2.0));
    assert_eq!(s.get("h_count", &[]), Some(2.0));
    for bad in [
        "x 1\n",
        "# TYPE x counter\nx{a=1} 1\n",
        "# TYPE x counter\nx{a=\"1} 1\n",
        "# TYPE x counter\nx 1\nx 2\n",
        "# TYPE x counter\nx one\n",
        "# TYPE x counter\n1x 1\n",
        "# TYPE x counter\nx{a=\"\\q\"} 1\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn bad_observability_flags_stop_serve_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let missing_dir = dir.path().join("no/such/dir/decisions.jsonl");
    let socket = format!("unix:{}", dir.path().join("wardgate.sock").display());
    for (args, needle) in [
        (vec!["--admin", taken.as_str()], "--admin"),
        (vec!["--admin", "nonsense"], "--admin"),
        (
            vec!["--decision-log", missing_dir.to_str().unwrap()],
            "--decision-log",
        ),
        (vec!["--decision-log-queue", "0"], "--decision-log-queue"),
        (
            vec!["--decision-log-sample-allows", "1.5"],
            "--decision-log-sample-allows",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .args(["serve", "--listen", &socket])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
