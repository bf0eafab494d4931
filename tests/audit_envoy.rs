//! Audit mode through the real Envoy: `serve --audit` decides and logs every check as when
//! enforcing, and Envoy lets every request through. A request the bundle denies reaches the
//! upstream carrying `x-wardgate-audit: would-deny <reason>` (and a client cannot forge or keep
//! that header); an allowed one carries only `x-wardgate-rule`. The mode shows in `/readyz`, in
//! the first log lines and in `wardgate_mode`; the would-be denials are counted in
//! `wardgate_audit_would_deny_total` while `wardgate_checks_total` keeps counting the verdicts
//! as decided; the decision log says `"decision":"deny"` with `"enforced":false`.
//!
//! Needs Envoy (see tests/envoy_e2e.rs): skipped loudly without it, except under `CI=true`.
//! The refusal of `--audit` with `--shadow-bundle` needs only the binary.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::{plain_get, Protocol, RawRequest};
use support::metrics::{labels, scrape};
use support::{Sidecar, SidecarOptions};

const WOULD_DENY: &str = "wardgate_audit_would_deny_total";

/// The `x-wardgate-*` headers the upstream received, from the echo body.
fn wardgate_headers(echo: &Value) -> Vec<(String, Value)> {
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

/// Decision-log lines once at least `n` are written (the writer runs on its own thread).
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a decision-log line is JSON"))
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_denials_through_marked_and_logs_them_as_decided() {
    let Some(envoy) = support::process::require_envoy(
        "audit_mode_lets_denials_through_marked_and_logs_them_as_decided",
    ) else {
        return;
    };
    let logs = tempfile::tempdir().expect("tempdir");
    let decision_log = logs.path().join("decisions.jsonl");
    let mut options = SidecarOptions::shipped("lab");
    options.wardgate_args = vec![
        "--audit".into(),
        "--decision-log".into(),
        decision_log.display().to_string(),
    ];
    let sidecar = Sidecar::start(&envoy, &options).await.expect("start");
    let admin = sidecar.wardgate.admin.expect("admin listener");
    let (before, _) = scrape(admin).await.expect("scrape");

    // Allowed by ehr-reads-lab-results: the upstream sees the rule, no audit mark.
    let ehr = sidecar
        .client(Some("ehr"), Protocol::Http1)
        .expect("client");
    let reply = ehr
        .send(&RawRequest::new("GET", "/results/1"))
        .await
        .expect("send");
    assert_eq!(reply.status, 200, "{}", sidecar.logs());
    let echo = reply.json().expect("the upstream's echo");
    assert_eq!(
        wardgate_headers(&echo),
        vec![(
            "x-wardgate-rule".to_owned(),
            json!(["ehr-reads-lab-results"])
        )]
    );

    // Denied by vendor-never-reaches-clinical: it reaches the upstream all the same, marked;
    // the client's own x-wardgate-audit header is replaced, never passed on.
    let reflab = sidecar
        .client(Some("reflab"), Protocol::Http1)
        .expect("client");
    let hits = sidecar.upstream.hits();
    let reply = reflab
        .send(&RawRequest::new("GET", "/results/2").header("x-wardgate-audit", "all good"))
        .await
        .expect("send");
    assert_eq!(
        reply.status,
        200,
        "audit mode never denies: {}",
        reply.text()
    );
    assert_eq!(sidecar.upstream.hits(), hits + 1, "the upstream saw it");
    assert!(reply.header("x-wardgate-reason").is_none());
    let echo = reply.json().expect("the upstream's echo");
    assert_eq!(
        wardgate_headers(&echo),
        vec![("x-wardgate-audit".to_owned(), json!(["would-deny rule"]))],
        "no rule name upstream for a would-be denial"
    );

    // Denied by default: marked with its own reason.
    let reply = ehr
        .send(&RawRequest::new("DELETE", "/results/3"))
        .await
        .expect("send");
    assert_eq!(reply.status, 200);
    let echo = reply.json().expect("the upstream's echo");
    assert_eq!(
        wardgate_headers(&echo),
        vec![(
            "x-wardgate-audit".to_owned(),
            json!(["would-deny default_deny"])
        )]
    );

    // Metrics: the mode, the would-be denials by reason, and the decided verdicts as before.
    let (after, text) = scrape(admin).await.expect("scrape");
    assert_eq!(
        after.get("wardgate_mode", &[("mode", "audit")]),
        Some(1.0),
        "{text}"
    );
    let moved = after.deltas(&before, WOULD_DENY);
    assert_eq!(
        moved.get(&labels(&[("reason", "rule")])).copied(),
        Some(1.0),
        "{moved:?}"
    );
    assert_eq!(
        moved.get(&labels(&[("reason", "default_deny")])).copied(),
        Some(1.0),
        "{moved:?}"
    );
    assert_eq!(moved.values().sum::<f64>(), 2.0, "{moved:?}");
    let checks = after.deltas(&before, "wardgate_checks_total");
    let denied: f64 = checks
        .iter()
        .filter(|(l, _)| l.iter().any(|(k, v)| k == "decision" && v == "deny"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        denied, 2.0,
        "checks_total counts the verdicts as decided: {checks:?}"
    );

    // /readyz and the start-up log say so.
    let (status, body) = plain_get(admin, "/readyz").await.expect("readyz");
    assert_eq!(status, 200);
    assert!(body.contains("AUDIT MODE"), "{body}");
    assert!(
        sidecar
            .wardgate
            .child
            .log_tail(20_000)
            .contains("AUDIT MODE"),
        "{}",
        sidecar.logs()
    );

    // The decision log: the verdict as decided, and that it was not enforced.
    let lines = log_lines(&decision_log, 3).await;
    let vendor = lines
        .iter()
        // Found by its source: the default log shows paths redacted (`/{}/{}` here).
        .find(|l| l["source_segment"] == "vendor")
        .unwrap_or_else(|| panic!("no line for the vendor's request: {lines:?}"));
    assert_eq!(vendor["decision"], "deny", "{vendor}");
    assert_eq!(vendor["reason"], "rule", "{vendor}");
    assert_eq!(vendor["rule"], "vendor-never-reaches-clinical", "{vendor}");
    assert_eq!(vendor["enforced"], false, "{vendor}");
    assert!(
        lines.iter().all(|l| l["enforced"] == false),
        "every decision in audit mode is unenforced: {lines:?}"
    );
}

#[test]
fn audit_mode_refuses_the_shadow_bundle_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args([
            "serve",
            "--audit",
            "--shadow-bundle",
            "/nonexistent/candidate.yaml",
            "--admin",
            "off",
        ])
        .output()
        .expect("wardgate runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "usage error: {stderr}");
    assert!(
        stderr.contains("--shadow-bundle cannot be combined with --audit"),
        "{stderr}"
    );
}
