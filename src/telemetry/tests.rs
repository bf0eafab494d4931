//! Tests of telemetry: metrics, rule statistics and the decision log, through `Telemetry`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;

use super::*;
use crate::decision_log::DecisionRecord;
use crate::policy::Request;

const BUNDLE: &str = r#"
version: 1
revision: 3
trust_domains: [hospital.example, partner-lab.example]
segments:
  clinical:
    members: ["spiffe://hospital.example/ns/clinical/**"]
  vendor:
    members: ["spiffe://partner-lab.example/**"]
rules:
  - name: vendor-never-reaches-clinical
    action: deny
    from: [vendor]
    to: [clinical]
  - name: ehr-reads-lab-results
    from: ["spiffe://hospital.example/ns/clinical/sa/ehr"]
    to: ["spiffe://hospital.example/ns/clinical/sa/lab"]
    methods: [GET]
    paths: ["/results/**"]
break_glass:
  header: x-break-glass-reason
  allow:
    - name: er-override
      from: [clinical]
      to: [clinical]
"#;

const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";
const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";
const IMAGING: &str = "spiffe://hospital.example/ns/clinical/sa/imaging";
/// An Envoy-generated request id (a UUID): logged as it is.
const REQUEST_ID: &str = "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
const VENDOR: &str = "spiffe://partner-lab.example/ns/vendor/sa/reflab";

/// A sink the test can read, optionally blocked until the test opens a gate per write.
#[derive(Clone, Default)]
struct Sink {
    out: Arc<Mutex<Vec<u8>>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Gated {
    gate: std_mpsc::Receiver<()>,
    inner: Sink,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.gate.recv();
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn telemetry_with(sink: Box<dyn Write + Send>, queue: usize, sample: f64) -> Arc<Telemetry> {
    Telemetry::new(TelemetryConfig {
        decision_log: Some(DecisionLogConfig {
            sink,
            description: "test".into(),
            queue,
            sample_allows: sample,
            redaction: Redaction::default(),
        }),
    })
    .expect("telemetry")
}

fn policy() -> Arc<Policy> {
    Arc::new(Policy::from_yaml_str("test.yaml", BUNDLE).unwrap())
}

/// Decide and record one request; returns the decision's reason.
fn run(
    telemetry: &Telemetry,
    policy: Option<&Arc<Policy>>,
    source: &str,
    destination: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> &'static str {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut request = Request::new("GET", path);
    request.source = Some(source);
    request.destination = Some(destination);
    request.host = "lab.clinical.svc";
    request.headers = &headers;
    request.time = jiff::Timestamp::now();
    let decision = policy.map_or(Decision::NO_POLICY, |p| p.decide(&request));
    telemetry.record_check(&CheckEvent {
        request: &request,
        decision: &decision,
        policy,
        revision: policy.map(|p| p.revision()),
        elapsed: Duration::from_micros(3),
        request_id: Some(REQUEST_ID),
        break_glass_reason: headers.get("x-break-glass-reason").map(String::as_str),
        enforced: true,
    });
    decision.reason.as_str()
}

/// The value of one sample, by metric name and exact label set.
fn sample(telemetry: &Telemetry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let families = telemetry.registry().gather();
    let family = families.iter().find(|f| f.name() == name)?;
    family
        .get_metric()
        .iter()
        .find(|m| {
            let have: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            have.len() == labels.len() && labels.iter().all(|l| have.contains(l))
        })
        .map(|m| match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
            prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
            _ => m.get_histogram().get_sample_count() as f64,
        })
}

fn checks(t: &Telemetry, decision: &str, reason: &str, src: &str, dst: &str) -> Option<f64> {
    sample(
        t,
        "wardgate_checks_total",
        &[
            ("decision", decision),
            ("reason", reason),
            ("source_segment", src),
            ("destination_segment", dst),
        ],
    )
}

fn lines(sink: &Sink) -> Vec<DecisionRecord> {
    let text = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn flush(telemetry: &Telemetry) {
    assert!(telemetry.close_decision_log(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn counts_checks_rules_and_latency_by_label() {
    let sink = Sink::default();
    let t = telemetry_with(Box::new(sink.clone()), 64, 1.0);
    let p = policy();
    // Before any bundle: no_policy, unsegmented, pre-registered.
    assert_eq!(checks(&t, "deny", "no_policy", "-", "-"), Some(0.0));
    assert_eq!(run(&t, None, EHR, LAB, "/results/1", &[]), "no_policy");
    t.bundle_swapped(&p, "test.yaml", Duration::from_millis(2));
    // Pre-registered at zero for every segment pair.
    assert_eq!(checks(&t, "deny", "rule", "vendor", "clinical"), Some(0.0));
    assert_eq!(checks(&t, "allow", "break_glass", "-", "vendor"), Some(0.0));
    assert_eq!(checks(&t, "deny", "unauthenticated", "vendor", "-"), None);

    for _ in 0..3 {
        assert_eq!(run(&t, Some(&p), EHR, LAB, "/results/1", &[]), "rule");
    }
    assert_eq!(run(&t, Some(&p), VENDOR, LAB, "/results/1", &[]), "rule");
    assert_eq!(run(&t, Some(&p), EHR, LAB, "/admin", &[]), "default_deny");
    assert_eq!(
        run(&t, Some(&p), "not a spiffe id", LAB, "/", &[]),
        "unauthenticated"
    );
    let bg = [("x-break-glass-reason", "cardiac arrest, bed 4")];
    assert_eq!(
        run(&t, Some(&p), IMAGING, LAB, "/results/1", &bg),
        "break_glass"
    );

    assert_eq!(checks(&t, "deny", "no_policy", "-", "-"), Some(1.0));
    assert_eq!(
        checks(&t, "allow", "rule", "clinical", "clinical"),
        Some(3.0)
    );
    assert_eq!(checks(&t, "deny", "rule", "vendor", "clinical"), Some(1.0));
    assert_eq!(
        checks(&t, "deny", "default_deny", "clinical", "clinical"),
        Some(1.0)
    );
    assert_eq!(checks(&t, "deny", "unauthenticated", "-", "-"), Some(1.0));
    assert_eq!(
        checks(&t, "allow", "break_glass", "clinical", "clinical"),
        Some(1.0)
    );
    let hits = |rule, action| {
        sample(
            &t,
            "wardgate_rule_hits_total",
            &[("rule", rule), ("action", action)],
        )
    };
    assert_eq!(hits("ehr-reads-lab-results", "allow"), Some(3.0));
    assert_eq!(hits("vendor-never-reaches-clinical", "deny"), Some(1.0));
    assert_eq!(
        sample(
            &t,
            "wardgate_break_glass_uses_total",
            &[("rule", "er-override")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&t, "wardgate_check_duration_seconds", &[]),
        Some(8.0)
    );
    let (_, rules) = t.rules().unwrap();
    let ehr = rules
        .iter()
        .find(|r| r.name == "ehr-reads-lab-results")
        .unwrap();
    assert_eq!((ehr.hits, ehr.kind, ehr.line), (3, RuleKind::Allow, 15));
    assert!(ehr.last_hit.is_some());
    let unused = rules
        .iter()
        .find(|r| r.name == "vendor-never-reaches-clinical")
        .unwrap();
    assert_eq!(unused.hits, 1);

    flush(&t).await;
    let records = lines(&sink);
    assert_eq!(records.len(), 8);
    let bg_record = &records[7];
    assert_eq!(bg_record.reason, Reason::BreakGlass);
    assert_eq!(bg_record.rule.as_deref(), Some("er-override"));
    assert_eq!(
        bg_record.break_glass_reason.as_deref(),
        Some("cardiac arrest, bed 4")
    );
    assert_eq!(bg_record.revision, Some(3));
    assert_eq!(bg_record.request_id.as_deref(), Some(REQUEST_ID));
    assert_eq!(bg_record.latency_us, 3);
    assert!(records[..7].iter().all(|r| r.break_glass_reason.is_none()));
    assert_eq!(records[0].reason, Reason::NoPolicy);
    assert_eq!(records[0].revision, None);
    assert_eq!(
        sample(&t, "wardgate_decision_log_written_total", &[]),
        Some(8.0)
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let (open, gate) = std_mpsc::channel();
    let sink = Sink::default();
    let t = telemetry_with(
        Box::new(Gated {
            gate,
            inner: sink.clone(),
        }),
        2,
        1.0,
    );
    let p = policy();
    t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
    let started = std::time::Instant::now();
    for _ in 0..50 {
        run(&t, Some(&p), VENDOR, LAB, "/x", &[]);
    }
    // The writer is blocked until the gate opens, so a check that waited for it would never
    // return: finishing at all proves no check waited. The bound only catches a hang early
    // (generous: a loaded 2-core CI machine runs debug checks slowly).
    assert!(started.elapsed() < Duration::from_secs(30));
    // The writer took what was queued when it woke (it is now blocked writing those), the
    // queue holds at most two more: everything else was dropped, not waited for.
    let dropped = sample(&t, "wardgate_decision_log_dropped_total", &[]).unwrap();
    assert!(dropped >= 40.0, "dropped {dropped}");
    t.render_metrics(true).unwrap();
    let depth = sample(&t, "wardgate_decision_log_queue_depth", &[]).unwrap();
    assert!(depth <= 2.0, "depth {depth}");
    assert_eq!(checks(&t, "deny", "rule", "vendor", "clinical"), Some(50.0));
    // Unblock the sink: what was queued is written, in order, and the log closes.
    for _ in 0..100 {
        let _ = open.send(());
    }
    flush(&t).await;
    assert_eq!(lines(&sink).len() as f64, 50.0 - dropped);
    // After close, entries are dropped and counted.
    run(&t, Some(&p), VENDOR, LAB, "/x", &[]);
    assert_eq!(
        sample(&t, "wardgate_decision_log_dropped_total", &[]),
        Some(dropped + 1.0)
    );
}

#[tokio::test]
async fn allows_are_sampled_denials_never() {
    let sink = Sink::default();
    let t = telemetry_with(Box::new(sink.clone()), 1024, 0.25);
    let p = policy();
    t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
    for _ in 0..100 {
        run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
        run(&t, Some(&p), VENDOR, LAB, "/results/1", &[]);
    }
    flush(&t).await;
    let records = lines(&sink);
    let allows = records
        .iter()
        .filter(|r| r.decision == Verdict::Allow)
        .count();
    let denials = records
        .iter()
        .filter(|r| r.decision == Verdict::Deny)
        .count();
    assert_eq!((allows, denials), (25, 100));
    assert_eq!(
        sample(&t, "wardgate_decision_log_sampled_out_total", &[]),
        Some(75.0)
    );
}

#[test]
fn a_swap_keeps_hits_of_rules_that_stay_and_removes_what_is_gone() {
    let t = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    let p = policy();
    t.bundle_swapped(
        &p,
        "https://user:secret@bundles.example/b.yaml?token=x",
        Duration::ZERO,
    );
    run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
    let info = t.bundle().unwrap();
    assert_eq!(info.source, "https://bundles.example/b.yaml");
    assert_eq!(
        sample(
            &t,
            "wardgate_bundle_info",
            &[
                ("digest", p.digest()),
                ("source", "https://bundles.example/b.yaml")
            ]
        ),
        Some(1.0)
    );

    // Revision 4: the vendor segment and its deny rule are gone; ehr-reads-lab-results stays.
    let next_yaml = BUNDLE
            .replace("revision: 3", "revision: 4")
            .replace(
                "  vendor:\n    members: [\"spiffe://partner-lab.example/**\"]\n",
                "",
            )
            .replace(
                "  - name: vendor-never-reaches-clinical\n    action: deny\n    from: [vendor]\n    to: [clinical]\n",
                "",
            );
    let next = Arc::new(Policy::from_yaml_str("test.yaml", &next_yaml).unwrap());
    t.bundle_swapped(&next, "test.yaml", Duration::ZERO);
    run(&t, Some(&next), EHR, LAB, "/results/1", &[]);
    let hits = |rule, action| {
        sample(
            &t,
            "wardgate_rule_hits_total",
            &[("rule", rule), ("action", action)],
        )
    };
    assert_eq!(hits("ehr-reads-lab-results", "allow"), Some(2.0));
    assert_eq!(hits("vendor-never-reaches-clinical", "deny"), None);
    assert_eq!(checks(&t, "deny", "rule", "vendor", "clinical"), None);
    assert_eq!(
        checks(&t, "allow", "rule", "clinical", "clinical"),
        Some(2.0)
    );
    assert_eq!(sample(&t, "wardgate_bundle_revision", &[]), Some(4.0));
    assert_eq!(
        sample(
            &t,
            "wardgate_bundle_info",
            &[
                ("digest", p.digest()),
                ("source", "https://bundles.example/b.yaml")
            ]
        ),
        None
    );
    let (info, rules) = t.rules().unwrap();
    assert_eq!(info.revision, 4);
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].hits, 2);
}

#[test]
fn checks_against_a_policy_not_yet_announced_are_still_counted() {
    let t = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    let p = policy();
    // The reloader stored `p` but has not called bundle_swapped yet.
    run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
    assert_eq!(
        checks(&t, "allow", "rule", "clinical", "clinical"),
        Some(1.0)
    );
    t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
    run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
    assert_eq!(
        checks(&t, "allow", "rule", "clinical", "clinical"),
        Some(2.0)
    );
    let (_, rules) = t.rules().unwrap();
    assert_eq!(rules[1].hits, 2, "{rules:?}");
}

#[test]
fn reload_attempts_track_failures_in_a_row() {
    let t = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    for outcome in Outcome::ALL {
        assert_eq!(
            sample(
                &t,
                "wardgate_reload_attempts_total",
                &[("result", outcome.as_str())]
            ),
            Some(0.0)
        );
    }
    t.reload_attempt(Outcome::FetchError);
    t.reload_attempt(Outcome::Invalid);
    assert_eq!(
        sample(&t, "wardgate_reload_consecutive_failures", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(&t, "wardgate_reload_last_success_timestamp_seconds", &[]),
        Some(0.0)
    );
    t.reload_attempt(Outcome::Unchanged);
    assert_eq!(
        sample(&t, "wardgate_reload_consecutive_failures", &[]),
        Some(0.0)
    );
    assert!(sample(&t, "wardgate_reload_last_success_timestamp_seconds", &[]).unwrap() > 1e9);
    assert_eq!(
        sample(
            &t,
            "wardgate_reload_attempts_total",
            &[("result", "invalid")]
        ),
        Some(1.0)
    );
}

#[test]
fn svid_expiry_is_exported_only_once_known() {
    let t = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    let text = t.render_metrics(false).unwrap();
    assert!(!text.contains("wardgate_svid_expiry_timestamp_seconds"));
    assert!(text.contains("wardgate_ready 0"));
    t.own_svid_expiry(jiff::Timestamp::from_second(2_000_000_000).unwrap());
    assert_eq!(
        sample(&t, "wardgate_svid_expiry_timestamp_seconds", &[]),
        Some(2e9)
    );
}

#[test]
fn sources_lose_credentials_and_queries() {
    assert_eq!(
        crate::reload::redact_url("/etc/wardgate/bundle"),
        "/etc/wardgate/bundle"
    );
    assert_eq!(
        crate::reload::redact_url("https://u:p@h.example:8443/b?sig=1#x"),
        "https://h.example:8443/b"
    );
    assert_eq!(
        crate::reload::redact_url("http://h.example?x"),
        "http://h.example"
    );
}

#[test]
fn sample_rates_parse() {
    assert_eq!(parse_sample_rate("0.5"), Ok(0.5));
    assert_eq!(parse_sample_rate("1"), Ok(1.0));
    assert!(parse_sample_rate("1.5").is_err());
    assert!(parse_sample_rate("-0.1").is_err());
    assert!(parse_sample_rate("NaN").is_err());
}

/// Record one request with everything a client controls made hostile, under `paths`.
async fn hostile_line(paths: PathLogging) -> String {
    let sink = Sink::default();
    let t = Telemetry::new(TelemetryConfig {
        decision_log: Some(DecisionLogConfig {
            sink: Box::new(sink.clone()),
            description: "test".into(),
            queue: 8,
            sample_allows: 1.0,
            redaction: Redaction {
                paths,
                key: Arc::new(RequestIdKey::from_bytes(b"0123456789abcdef")),
            },
        }),
    })
    .unwrap();
    let p = policy();
    t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
    let path = format!(
        "/results/MRN12345/{}?ssn=078-05-1120",
        "JaneDoe/".repeat(20_000)
    );
    let host = "JaneDoe.".repeat(10_000);
    let reason = "JaneDoe ".repeat(10_000);
    let request_id = "MRN-123-DOB-19700101-JaneDoe".repeat(1000);
    let method = "JANEDOE".repeat(100);
    let headers: HashMap<String, String> =
        [("x-break-glass-reason".to_string(), reason.clone())].into();
    let mut request = Request::new(&method, &path);
    request.source = Some(EHR);
    request.destination = Some(LAB);
    request.host = &host;
    request.headers = &headers;
    let decision = p.decide(&request);
    t.record_check(&CheckEvent {
        request: &request,
        decision: &decision,
        policy: Some(&p),
        revision: Some(p.revision()),
        elapsed: Duration::from_micros(3),
        request_id: Some(&request_id),
        // As if the reason had been accepted: the log caps it anyway.
        break_glass_reason: Some(&reason),
        enforced: true,
    });
    flush(&t).await;
    let text = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
    text.trim_end().to_string()
}

#[tokio::test]
async fn a_hostile_request_gives_a_bounded_line_without_its_identifiers() {
    let line = hostile_line(PathLogging::Redacted).await;
    assert!(line.len() < 4096, "{} bytes", line.len());
    for secret in ["JaneDoe", "JANEDOE", "MRN", "078-05"] {
        assert!(!line.contains(secret), "`{secret}` logged: {line:.300}");
    }
    let r: DecisionRecord = serde_json::from_str(&line).unwrap();
    assert_eq!((r.method.as_str(), r.host.as_str()), ("{}", "{}"));
    assert!(r.request_id.unwrap().starts_with("hmac-"));
    assert_eq!(r.path_form, Some(crate::decision_log::PathForm::Truncated));
    assert_eq!(r.break_glass_header, Some(true));

    // Full paths: the path is shown but still capped; the query and the rest stay out.
    let line = hostile_line(PathLogging::Full).await;
    assert!(line.len() < 4096, "{} bytes", line.len());
    let r: DecisionRecord = serde_json::from_str(&line).unwrap();
    assert!(
        r.path.starts_with("/results/MRN12345/JaneDoe/"),
        "{}",
        r.path
    );
    assert!(
        !line.contains("078-05") && !line.contains("JANEDOE"),
        "{line:.300}"
    );

    let line = hostile_line(PathLogging::Off).await;
    let r: DecisionRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (r.path.as_str(), r.path_form),
        ("", Some(crate::decision_log::PathForm::Off))
    );
}

#[tokio::test]
async fn the_deciding_rule_says_which_segments_are_logged() {
    let sink = Sink::default();
    let t = telemetry_with(Box::new(sink.clone()), 64, 1.0);
    let p = policy();
    t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
    assert_eq!(
        run(&t, Some(&p), EHR, LAB, "/results/12345?x=1", &[]),
        "rule"
    );
    assert_eq!(
        run(&t, Some(&p), EHR, LAB, "/patients/12345", &[]),
        "default_deny"
    );
    assert_eq!(run(&t, None, EHR, LAB, "/patients/12345", &[]), "no_policy");
    flush(&t).await;
    let records = lines(&sink);
    let paths: Vec<&str> = records.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/results/{}", "/{}/{}", "/{}/{}"]);
    // `lab.clinical.svc` is the Kubernetes name of the `lab` service the bundle names.
    assert_eq!(records[0].host, "lab.clinical.svc");
    assert_eq!(records[2].host, "{}", "without a policy no host is known");
    assert_eq!(records[0].break_glass_header, Some(false));
}

/// The lines of `name` in the text exposition (HELP, TYPE and samples).
fn exposition(t: &Telemetry, name: &str) -> Vec<String> {
    t.render_metrics(true)
        .unwrap()
        .lines()
        .filter(|l| {
            l.strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
                .unwrap_or(l)
                .split([' ', '{'])
                .next()
                == Some(name)
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_rule_and_break_glass_entry_is_exported_at_zero_then_counted() {
    let t = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    // No bundle yet: neither metric has a series, so neither is written.
    assert!(exposition(&t, "wardgate_rule_hits_total").is_empty());
    assert!(exposition(&t, "wardgate_break_glass_uses_total").is_empty());
    let p = policy();
    t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
    run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
    run(&t, Some(&p), EHR, LAB, "/results/2", &[]);
    assert_eq!(
        exposition(&t, "wardgate_rule_hits_total"),
        [
            "# HELP wardgate_rule_hits_total Checks decided by each rule of the bundle in force, by rule name and action.",
            "# TYPE wardgate_rule_hits_total counter",
            "wardgate_rule_hits_total{action=\"allow\",rule=\"ehr-reads-lab-results\"} 2",
            "wardgate_rule_hits_total{action=\"deny\",rule=\"vendor-never-reaches-clinical\"} 0",
        ]
    );
    assert_eq!(
        exposition(&t, "wardgate_break_glass_uses_total"),
        [
            "# HELP wardgate_break_glass_uses_total Checks allowed by each break-glass entry of the bundle in force.",
            "# TYPE wardgate_break_glass_uses_total counter",
            "wardgate_break_glass_uses_total{rule=\"er-override\"} 0",
        ]
    );
}

#[test]
fn a_rule_that_changes_kind_keeps_one_series_of_its_new_kind() {
    let t = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    let p = policy();
    t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
    run(&t, Some(&p), VENDOR, LAB, "/results/1", &[]);
    // Revision 4 turns the deny rule into an allow rule of the same name, and a check decided
    // by it arrives before the swap is announced (the slow path).
    let next_yaml = BUNDLE.replace("revision: 3", "revision: 4").replace(
        "  - name: vendor-never-reaches-clinical\n    action: deny\n",
        "  - name: vendor-never-reaches-clinical\n    action: allow\n",
    );
    let next = Arc::new(Policy::from_yaml_str("test.yaml", &next_yaml).unwrap());
    assert_eq!(run(&t, Some(&next), VENDOR, LAB, "/results/1", &[]), "rule");
    t.bundle_swapped(&next, "test.yaml", Duration::ZERO);
    run(&t, Some(&next), VENDOR, LAB, "/results/1", &[]);
    let hits = |action| {
        sample(
            &t,
            "wardgate_rule_hits_total",
            &[
                ("rule", "vendor-never-reaches-clinical"),
                ("action", action),
            ],
        )
    };
    assert_eq!(hits("allow"), Some(2.0));
    assert_eq!(hits("deny"), None);
    let (_, rules) = t.rules().unwrap();
    assert_eq!((rules[0].kind, rules[0].hits), (RuleKind::Allow, 2));
}
