//! The decision log holds no patient identifier by default, end to end.
//!
//! Real Envoy, real mTLS SVIDs: the `ehr` workload calls the `lab` sidecar with identifiers in
//! every place a client controls (the path, the query, `x-request-id`, Host, a break-glass
//! reason), and the decision log wardgate wrote is read back. By default none of them appears:
//! the path keeps only the segments the deciding rule names, a request id that is not Envoy's
//! UUID is a keyed hash that joins Envoy's access log for whoever holds the key, a host the
//! bundle does not name is redacted, and a hostile request cannot make a line long. With
//! `--decision-log-paths full` the path is shown (never the query), said loudly at start and in
//! a metric. `replay` of the redacted log against the bundle that wrote it finds no change.
//!
//! Needs Envoy (`scripts/install-test-deps.sh`); without it the tests are skipped loudly, except
//! under `CI=true`, where they fail.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use wardgate::decision_log::{DecisionRecord, PathForm};

use support::client::{Protocol, RawRequest};
use support::metrics::scrape;
use support::process::require_envoy;
use support::{Sidecar, SidecarOptions};

const BUNDLE: &str = r#"
version: 1
revision: 1
trust_domains: [hospital.example]
segments:
  clinical:
    members: ["spiffe://hospital.example/ns/clinical/**"]
rules:
  - name: ehr-reads-notes
    from: ["spiffe://hospital.example/ns/clinical/sa/ehr"]
    to: ["spiffe://hospital.example/ns/clinical/sa/lab"]
    methods: [GET]
    paths: ["/patients/*/notes"]
break_glass:
  header: x-break-glass-reason
  allow:
    - name: er-override
      from: [clinical]
      to: [clinical]
"#;

const MRN: &str = "12345";
const REQUEST_ID: &str = "MRN-123-DOB-19700101-JaneDoe";
const HOSTILE_HOST: &str = "jane-doe-dob-19700101.mrn-123.example";
const QUERY_SECRET: &str = "SSN-078-05-1120";
const KEY: &str = "decision-log-key-for-the-e2e-test";

/// HMAC-SHA256, written out here from RFC 2104 so the test does not trust the code it checks:
/// this is what an operator computes (`openssl dgst -sha256 -hmac KEY`) to join the logs.
fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Start the `lab` sidecar with the test bundle and `extra` flags; the decision log goes to
/// `dir/decisions.jsonl`.
async fn start(envoy: &Path, dir: &Path, extra: &[&str]) -> Sidecar {
    let bundle = dir.join("bundle.yaml");
    std::fs::write(&bundle, BUNDLE).unwrap();
    let key = dir.join("log.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let mut args = vec![
        "--decision-log".to_string(),
        dir.join("decisions.jsonl").display().to_string(),
        "--decision-log-key".to_string(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let options = SidecarOptions {
        bundle,
        wardgate_args: args,
        ..SidecarOptions::shipped("lab")
    };
    Sidecar::start(envoy, &options).await.unwrap()
}

/// The request with identifiers everywhere a client controls.
fn identifying() -> RawRequest {
    RawRequest::new("GET", &format!("/patients/{MRN}/notes?ssn={QUERY_SECRET}"))
        .header("x-request-id", REQUEST_ID)
        .header("host", HOSTILE_HOST)
}

/// Wait until the log has `n` lines; return them raw and parsed.
async fn read_log(dir: &Path, n: usize) -> Vec<(String, DecisionRecord)> {
    let path = dir.join("decisions.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            assert_eq!(lines.len(), n, "one line per request:\n{text}");
            return lines
                .into_iter()
                .map(|l| {
                    let r: DecisionRecord = serde_json::from_str(&l)
                        .unwrap_or_else(|e| panic!("not a DecisionRecord ({e}): {l}"));
                    (l, r)
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Envoy's access log entry for each request, in order (it flushes within a second here).
async fn access_log(sidecar: &Sidecar, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries = sidecar.envoy.access_log_entries();
        if entries.len() >= n || Instant::now() > deadline {
            assert_eq!(entries.len(), n, "access log: {entries:?}");
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_log_holds_no_identifier_a_client_sent() {
    let Some(envoy) = require_envoy("the_default_log_holds_no_identifier_a_client_sent") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(&envoy, dir.path(), &[]).await;
    let client = sidecar.client(Some("ehr"), Protocol::Http1).unwrap();

    // 1. Identifiers in the path, query, request id and Host: allowed by the notes rule.
    let reply = client.send(&identifying()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", sidecar.logs());
    // 2. A plain request: Envoy generates the request id.
    let plain = RawRequest::new("GET", "/patients/67890/notes");
    assert_eq!(client.send(&plain).await.unwrap().status, 200);
    // 3. Everything a client controls made huge: no rule, an over-long break-glass reason.
    let huge_path = format!("/patients/{}", "MRN12345/".repeat(1000));
    let hostile = RawRequest::new("GET", huge_path.trim_end_matches('/'))
        .header("x-request-id", &REQUEST_ID.repeat(300))
        .header("host", &format!("{}.example", "janedoe".repeat(30)))
        .header(
            "x-break-glass-reason",
            &format!("{REQUEST_ID} ").repeat(300),
        );
    assert_eq!(client.send(&hostile).await.unwrap().status, 403);
    // 4. A break-glass allow: its reason is audited, capped.
    let bg = RawRequest::new("GET", &format!("/patients/{MRN}/orders"))
        .header("x-break-glass-reason", "cardiac arrest, bed 4");
    assert_eq!(client.send(&bg).await.unwrap().status, 200);
    // 5. The shipped Envoy config replaces a caller's x-request-id with its own UUID, so the
    // identifying id above never reached wardgate. A deployment that preserves it (or an
    // internal caller) sends it on: the same Check, straight to wardgate's socket.
    let mut check = support::mtls::check_request();
    if let Some(http) = check
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.path = format!("/patients/{MRN}/notes?ssn={QUERY_SECRET}");
        http.host = HOSTILE_HOST.into();
        http.headers
            .insert("x-request-id".into(), REQUEST_ID.into());
    }
    let socket = sidecar.dir.path().join("wardgate.sock");
    let mut grpc = support::grpc::authorization(&socket).await.unwrap();
    let answer = grpc.check(check).await.unwrap().into_inner();
    assert!(support::mtls::is_allow(&answer), "{answer:?}");

    let lines = read_log(dir.path(), 5).await;
    for (line, _) in &lines {
        println!("redacted: {line}");
        for secret in [
            MRN,
            REQUEST_ID,
            "JaneDoe",
            HOSTILE_HOST,
            QUERY_SECRET,
            "janedoe",
        ] {
            assert!(!line.contains(secret), "`{secret}` logged: {line}");
        }
        assert!(line.len() <= 4096, "{} bytes: {line}", line.len());
    }
    let (r1, r2, r3, r4, r5) = (
        &lines[0].1,
        &lines[1].1,
        &lines[2].1,
        &lines[3].1,
        &lines[4].1,
    );
    assert_eq!(r1.path, "/patients/{}/notes");
    assert_eq!(r1.path_form, Some(PathForm::Redacted));
    assert_eq!(r1.rule.as_deref(), Some("ehr-reads-notes"));
    assert_eq!(r1.host, "{}", "a host the bundle does not name");
    assert_eq!(r1.break_glass_header, Some(false));
    // Envoy's own host name for the service is one the bundle names (the `lab` principal).
    assert!(r2.host.starts_with("lab.clinical.svc"), "{:?}", r2.host);
    assert_eq!(r3.reason.as_str(), "default_deny");
    assert_eq!(r3.path_form, Some(PathForm::Truncated));
    assert_eq!(r3.break_glass_header, Some(true), "the header was sent");
    assert_eq!(
        r3.break_glass_reason, None,
        "only accepted reasons are logged"
    );
    assert_eq!(r4.reason.as_str(), "break_glass");
    assert_eq!(r4.path, "/{}/{}/{}", "the break-glass entry names no path");
    assert_eq!(
        r4.break_glass_reason.as_deref(),
        Some("cardiac arrest, bed 4")
    );
    assert_eq!(r5.path, "/patients/{}/notes");
    assert_eq!(r5.host, "{}");
    let hashed = format!(
        "hmac-{}",
        &hmac_hex(KEY.as_bytes(), REQUEST_ID.as_bytes())[..32]
    );
    assert_eq!(
        r5.request_id.as_deref(),
        Some(hashed.as_str()),
        "keyed hash of the id sent"
    );

    // Request ids: Envoy's UUIDs as they are, anything else as the keyed hash of the value in
    // Envoy's access log, so that whoever holds the key can join the two logs.
    let access = access_log(&sidecar, 4).await;
    for ((line, record), entry) in lines.iter().zip(&access) {
        let sent = entry["request_id"].as_str().unwrap();
        let logged = record.request_id.as_deref().unwrap();
        if is_uuid(sent) {
            assert_eq!(logged, sent, "{line}");
        } else {
            let want = format!("hmac-{}", &hmac_hex(KEY.as_bytes(), sent.as_bytes())[..32]);
            assert_eq!(logged, want, "hash of {sent:.40}: {line}");
        }
    }
    let generated = access[1]["request_id"].as_str().unwrap();
    assert!(is_uuid(generated), "Envoy generated {generated}");
    assert_eq!(r2.request_id.as_deref(), Some(generated));

    // Replay decides the redacted records: against the bundle that wrote them, nothing changes.
    let bundle = dir.path().join("bundle.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .arg("replay")
        .arg(&bundle)
        .arg("--baseline")
        .arg(&bundle)
        .arg("--log")
        .arg(dir.path().join("decisions.jsonl"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("replay: {text}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let undetermined = text
        .lines()
        .filter(|l| l.trim_start().starts_with("undetermined"))
        .all(|l| l.split_whitespace().nth(1) == Some("0"));
    assert!(undetermined, "every redacted record is decided: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_paths_are_shown_only_when_asked_for_and_said_loudly() {
    let Some(envoy) = require_envoy("full_paths_are_shown_only_when_asked_for_and_said_loudly")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(&envoy, dir.path(), &["--decision-log-paths", "full"]).await;
    let client = sidecar.client(Some("ehr"), Protocol::Http1).unwrap();
    assert_eq!(client.send(&identifying()).await.unwrap().status, 200);
    let lines = read_log(dir.path(), 1).await;
    let (line, record) = &lines[0];
    println!("full: {line}");
    assert_eq!(record.path, format!("/patients/{MRN}/notes"));
    assert_eq!(record.path_form, Some(PathForm::Full));
    // Full paths are about paths only: the query, request id and host stay out.
    for secret in [QUERY_SECRET, REQUEST_ID, HOSTILE_HOST] {
        assert!(!line.contains(secret), "`{secret}` logged: {line}");
    }
    let log = sidecar.wardgate.child.log_tail(20_000);
    assert!(
        log.contains("--decision-log-paths full") && log.contains("MAY IDENTIFY PATIENTS"),
        "no loud warning at start:\n{log}"
    );
    let admin = sidecar.wardgate.admin.expect("admin listener");
    let (metrics, _) = scrape(admin).await.unwrap();
    assert_eq!(
        metrics.get("wardgate_decision_log_paths", &[("mode", "full")]),
        Some(1.0)
    );
}

#[test]
fn bad_decision_log_flags_stop_serve_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "too short\n").unwrap();
    let missing = dir.path().join("missing.key");
    let socket = format!("unix:{}", dir.path().join("wardgate.sock").display());
    for (args, needle) in [
        (
            vec!["--decision-log-paths", "partial"],
            "--decision-log-paths",
        ),
        (
            vec!["--decision-log-key", short.to_str().unwrap()],
            "holds 9 bytes",
        ),
        (
            vec!["--decision-log-key", missing.to_str().unwrap()],
            "--decision-log-key",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .args(["serve", "--listen", &socket])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
