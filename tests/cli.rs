//! The `validate` and `check` verbs, run as the real binary the way bundle authors' scripts run
//! them: exit codes, `FILE:LINE:COL: message` diagnostics, and the JSON decision; and what any
//! verb owes a shell: `--version`, a closed pipe, and logs without escape codes in a file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wardgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(args)
        .output()
        .expect("run wardgate")
}

fn hospital() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bundles/hospital.yaml")
}

const HEADER: &str = "version: 1\nrevision: 3\ntrust_domains: [hospital.example]\n";
const SEGMENTS: &str =
    "segments:\n  clinical:\n    members: [\"spiffe://hospital.example/ns/clinical/**\"]\n";

/// Each broken bundle, the line the error must point at, and a phrase the message must contain.
fn broken_bundles() -> Vec<(&'static str, String, u64, &'static str)> {
    let h = HEADER;
    let s = SEGMENTS;
    vec![
        ("unknown top-level key", format!("{h}{s}colour: blue\n"), 7, "colour"),
        (
            "unknown rule key",
            format!("{h}{s}rules:\n  - name: a\n    from: [clinical]\n    pathz: [\"/x\"]\n"),
            10,
            "pathz",
        ),
        (
            "undefined segment",
            format!("{h}{s}rules:\n  - name: a\n    from: [clinical]\n    to: [billing]\n"),
            10,
            "billing",
        ),
        (
            "overlapping segment members",
            format!("{h}{s}  lab:\n    members: [\"spiffe://hospital.example/ns/*/sa/lab\"]\n"),
            8,
            "overlaps",
        ),
        (
            "duplicate rule names",
            format!("{h}{s}rules:\n  - name: a\n    from: [clinical]\n  - name: a\n    from: [clinical]\n"),
            10,
            "duplicate rule name",
        ),
        (
            "pattern outside trust_domains",
            format!("{h}{s}rules:\n  - name: a\n    from: [\"spiffe://evil.example/**\"]\n"),
            9,
            "outside the bundle's trust_domains",
        ),
        (
            "malformed pattern",
            format!("{h}{s}rules:\n  - name: a\n    from: [\"spiffe://hospital.example/ns/cl*/x\"]\n"),
            9,
            "whole segment",
        ),
        (
            "path not normalised",
            format!("{h}{s}rules:\n  - name: a\n    from: [clinical]\n    paths: [\"/results/../admin\"]\n"),
            10,
            "not allowed",
        ),
        (
            "bad time zone",
            format!("{h}{s}rules:\n  - name: a\n    from: [clinical]\n    when:\n      schedule: {{hours: \"06:00-20:00\", timezone: Mars/Olympus}}\n"),
            11,
            "unknown time zone",
        ),
        (
            "bad hours",
            format!("{h}{s}rules:\n  - name: a\n    from: [clinical]\n    when:\n      schedule: {{hours: \"6-20\", timezone: UTC}}\n"),
            11,
            "hours",
        ),
        (
            "empty from",
            format!("{h}{s}rules:\n  - name: a\n    from: []\n"),
            9,
            "empty `from`",
        ),
        (
            "bad rule name",
            format!("{h}{s}rules:\n  - name: Bad_Name\n    from: [clinical]\n"),
            8,
            "[a-z0-9][a-z0-9-]*",
        ),
        (
            "bad action",
            format!("{h}{s}rules:\n  - name: a\n    action: permit\n    from: [clinical]\n"),
            9,
            "permit",
        ),
        (
            "wrong version",
            "version: 2\nrevision: 1\ntrust_domains: [hospital.example]\n".to_string(),
            1,
            "version 2",
        ),
        (
            "invalid YAML",
            format!("{h}{s}rules: [\n"),
            7,
            "unclosed",
        ),
    ]
}

#[test]
fn validate_accepts_the_example_bundle() {
    let out = wardgate(&["validate", hospital().to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok: revision 1"), "{stdout}");
}

#[test]
fn validate_rejects_each_broken_bundle_at_the_right_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for (case, yaml, line, phrase) in broken_bundles() {
        let file = dir.path().join(format!("{}.yaml", case.replace(' ', "-")));
        std::fs::write(&file, &yaml).expect("write bundle");
        let out = wardgate(&["validate", file.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let prefix = format!("{}:{line}:", file.display());
        let ok = out.status.code() == Some(3)
            && stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(phrase));
        if !ok {
            failures.push(format!(
                "{case}: want exit 3 and a line starting `{prefix}` containing `{phrase}`; got exit {:?}:\n{stderr}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn validate_lists_every_error_not_just_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("many.yaml");
    let yaml = format!(
        "{HEADER}{SEGMENTS}rules:\n  - name: a\n    from: [nowhere]\n  - name: b\n    from: [clinical]\n    methods: [\"G E T\"]\n  - name: a\n    from: [clinical]\n"
    );
    std::fs::write(&file, yaml).expect("write");
    let out = wardgate(&["validate", file.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let located: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{}:", file.display())) && !l.contains("error(s)"))
        .collect();
    assert_eq!(located.len(), 3, "{stderr}");
}

#[test]
fn directory_bundles_merge_and_report_the_right_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("00-base.yaml"),
        format!("{HEADER}{SEGMENTS}"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("10-rules.yaml"),
        "rules:\n  - name: clinical-health\n    from: [clinical]\n    paths: [\"/healthz\"]\n",
    )
    .expect("write");
    let out = wardgate(&["validate", dir.path().to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(
        dir.path().join("20-more.yaml"),
        "rules:\n  - name: clinical-health\n    from: [clinical]\n",
    )
    .expect("write");
    let out = wardgate(&["validate", dir.path().to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("20-more.yaml:2:"), "{stderr}");
}

fn check_json(args: &[&str]) -> serde_json::Value {
    let bundle = hospital();
    let mut all = vec!["check", bundle.to_str().expect("utf-8 path"), "--json"];
    all.extend_from_slice(args);
    let out = wardgate(&all);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    let want = match v["decision"].as_str() {
        Some("allow") => 0,
        Some("deny") => 1,
        other => panic!("decision {other:?}"),
    };
    assert_eq!(
        out.status.code(),
        Some(want),
        "check exits 0 when allowed, 1 when denied: {v}"
    );
    v
}

#[test]
fn check_reports_decision_reason_rule_and_trace() {
    let ehr = "spiffe://hospital.example/ns/clinical/sa/ehr";
    let lab = "spiffe://hospital.example/ns/clinical/sa/lab";
    let v = check_json(&[
        "--from",
        ehr,
        "--to",
        lab,
        "--path",
        "/results/42?format=pdf",
    ]);
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["reason"], "rule");
    assert_eq!(v["rule"], "ehr-reads-lab-results");
    assert!(v["trace"].as_array().is_some_and(|t| !t.is_empty()));

    let v = check_json(&["--from", ehr, "--to", lab, "--path", "/%61dmin/"]);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"], "no-workload-reaches-admin-consoles");

    // A dot-segment is refused, not resolved: an upstream might read it differently.
    let v = check_json(&["--from", ehr, "--to", lab, "--path", "/results/../admin"]);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["reason"], "bad_path");
    assert_eq!(v["rule"], serde_json::Value::Null);

    let v = check_json(&[
        "--from",
        ehr,
        "--to",
        lab,
        "--path",
        "/results%2F..%2Fadmin",
    ]);
    assert_eq!(v["reason"], "bad_path");
    assert_eq!(v["rule"], serde_json::Value::Null);

    let v = check_json(&["--from", "spiffe://evil.example/x", "--to", lab]);
    assert_eq!(v["reason"], "unauthenticated");

    let v = check_json(&[
        "--from",
        ehr,
        "--to",
        lab,
        "--method",
        "DELETE",
        "--path",
        "/results/1",
    ]);
    assert_eq!(v["reason"], "default_deny");
}

#[test]
fn check_applies_headers_schedules_and_certificate_lifetime() {
    let ehr = "spiffe://hospital.example/ns/clinical/sa/ehr";
    let pharmacy = "spiffe://hospital.example/ns/clinical/sa/pharmacy";
    let base = [
        "--from",
        ehr,
        "--to",
        pharmacy,
        "--method",
        "POST",
        "--path",
        "/prescriptions",
    ];
    assert_eq!(check_json(&base)["reason"], "default_deny");
    let mut with = base.to_vec();
    with.extend_from_slice(&["--header", "X-Purpose-Of-Use=TREAT"]);
    assert_eq!(check_json(&with)["decision"], "allow");

    let hr = "spiffe://hospital.example/ns/admin/sa/hr";
    let sched = "spiffe://hospital.example/ns/admin/sa/scheduling";
    let roster = ["--from", hr, "--to", sched, "--path", "/rosters/week-48"];
    let mut monday_noon = roster.to_vec();
    monday_noon.extend_from_slice(&["--at", "2026-11-23T12:00:00+01:00"]);
    assert_eq!(
        check_json(&monday_noon)["rule"],
        "hr-reads-rosters-in-office-hours"
    );
    let mut sunday = roster.to_vec();
    sunday.extend_from_slice(&["--at", "2026-11-22T12:00:00+01:00"]);
    assert_eq!(check_json(&sunday)["reason"], "default_deny");

    let reflab = "spiffe://partner-lab.example/ns/vendor/sa/reflab";
    let engine = "spiffe://hospital.example/ns/admin/sa/interface-engine";
    let delivery = [
        "--from",
        reflab,
        "--to",
        engine,
        "--method",
        "POST",
        "--path",
        "/inbound/results",
    ];
    let mut short = delivery.to_vec();
    short.extend_from_slice(&["--cert-lifetime", "1h"]);
    assert_eq!(check_json(&short)["decision"], "allow");
    let mut long = delivery.to_vec();
    long.extend_from_slice(&["--cert-lifetime", "24h"]);
    assert_eq!(check_json(&long)["reason"], "svid_lifetime");
}

#[test]
fn check_break_glass_never_beats_a_deny_rule() {
    let ehr = "spiffe://hospital.example/ns/clinical/sa/ehr";
    let imaging = "spiffe://hospital.example/ns/clinical/sa/imaging";
    let v = check_json(&[
        "--from",
        ehr,
        "--to",
        imaging,
        "--method",
        "DELETE",
        "--path",
        "/studies/1",
        "--header",
        "x-break-glass-reason=patient coding in ER bay 2",
    ]);
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["reason"], "break_glass");
    assert_eq!(v["rule"], "clinical-emergency-override");

    let v = check_json(&[
        "--from",
        ehr,
        "--to",
        imaging,
        "--method",
        "DELETE",
        "--path",
        "/studies/1",
        "--header",
        "x-break-glass-reason=",
    ]);
    assert_eq!(v["reason"], "default_deny");

    let v = check_json(&[
        "--from",
        ehr,
        "--to",
        imaging,
        "--path",
        "/admin",
        "--header",
        "x-break-glass-reason=patient coding",
    ]);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"], "no-workload-reaches-admin-consoles");
}

#[test]
fn serve_without_a_bundle_says_so_in_its_first_log_line() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--decision-log",
            "off",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start serve");
    let mut first = String::new();
    let stderr = child.stderr.take().expect("stderr");
    BufReader::new(stderr)
        .read_line(&mut first)
        .expect("read a log line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.contains("serving the example bundle embedded in the binary"),
        "first log line: {first}"
    );
}

#[test]
fn check_prints_the_bundle_and_the_evaluation_instant_apart() {
    let bundle = hospital();
    let digest = wardgate::policy::Policy::from_path(&bundle)
        .expect("the example bundle compiles")
        .digest()
        .to_string();
    let at = "2026-11-23T12:00:00+01:00";
    let instant: jiff::Timestamp = at.parse().expect("instant");
    let args = [
        "check",
        bundle.to_str().expect("utf-8 path"),
        "--from",
        "spiffe://hospital.example/ns/clinical/sa/ehr",
        "--to",
        "spiffe://hospital.example/ns/clinical/sa/lab",
        "--path",
        "/results/1",
        "--at",
        at,
    ];
    let out = wardgate(&args);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
            .to_string()
    };
    assert_eq!(line("bundle:"), format!("bundle:   revision 1 ({digest})"));
    assert!(
        line("at:").starts_with(&format!("at:       {instant} (evaluation instant")),
        "{text}"
    );

    let v = check_json(&args[2..]);
    assert_eq!(v["revision"], 1);
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["at"], instant.to_string());
}

#[test]
fn version_names_the_crate_version_and_the_git_revision() {
    let out = wardgate(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // What the build saw: an explicit revision for builds without .git, else git's own answer.
    let expected = match option_env!("WARDGATE_GIT_REV").filter(|r| !r.trim().is_empty()) {
        Some(rev) => rev.trim().to_string(),
        None => {
            let git = |args: &[&str]| {
                Command::new("git")
                    .args(args)
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            };
            match git(&["rev-parse", "--short", "HEAD"]) {
                None => "unknown".to_string(),
                Some(rev) => {
                    let changes = git(&[
                        "status",
                        "--porcelain",
                        "--untracked-files=no",
                        "--",
                        "src",
                        "build.rs",
                        "Cargo.toml",
                        "Cargo.lock",
                        "deploy/bundles/hospital.yaml",
                    ])
                    .unwrap_or_default();
                    if changes.is_empty() {
                        rev
                    } else {
                        format!("{rev}-dirty")
                    }
                }
            }
        }
    };
    assert_eq!(
        line,
        format!("wardgate {} ({expected})", env!("CARGO_PKG_VERSION"))
    );
}

/// The write end of a pipe whose read end is already closed: every write to it fails with
/// EPIPE, as `wardgate check ... | head -1` does once `head` has its line.
fn closed_pipe() -> std::process::Stdio {
    let mut reader = Command::new("true")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run true");
    let writer = reader.stdin.take().expect("pipe");
    reader.wait().expect("true exits");
    std::process::Stdio::from(writer)
}

#[test]
fn every_verb_stops_quietly_at_a_closed_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = hospital();
    let bundle = bundle.to_str().expect("utf-8 path");
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bundles/hospital.tests.yaml");
    // The shipped example log: replay refuses an empty one (exit 3), and this case is about
    // a closed pipe not changing the exit of a replay that has something to report.
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/decisions.jsonl");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "version: 1\ncolour: blue\n").expect("write");
    let ehr = "spiffe://hospital.example/ns/clinical/sa/ehr";
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["validate", bundle], 0),
        (vec!["validate", broken.to_str().expect("utf-8")], 3),
        (vec!["check", bundle, "--from", ehr, "--path", "/admin"], 1),
        (
            vec!["check", bundle, "--from", ehr, "--path", "/admin", "--json"],
            1,
        ),
        (vec!["test", bundle, tests.to_str().expect("utf-8")], 0),
        (vec!["analyze", bundle], 0),
        (vec!["diff", bundle, bundle], 0),
        (
            vec!["replay", bundle, "--log", log.to_str().expect("utf-8")],
            0,
        ),
        (vec!["--help"], 0),
        (vec!["--version"], 0),
        (vec!["check", bundle], 2),
    ];
    for (args, code) in cases {
        let status = Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .args(&args)
            .env("WARDGATE_DOT", "/nonexistent/dot")
            .stdout(closed_pipe())
            .stderr(closed_pipe())
            .status()
            .expect("run wardgate");
        // A panic on the broken pipe would exit 101.
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}

#[test]
fn serve_logs_to_a_file_without_escape_codes_and_survives_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("wardgate.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--decision-log",
            "off",
        ])
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start serve");
    let signal = |name: &str| {
        Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .expect("kill")
    };
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no `{needle}` in:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for("serving ext_authz");
    assert!(signal("-HUP").success());
    wait_for("SIGHUP ignored");
    assert!(signal("-TERM").success());
    let status = child.wait().expect("serve exits");
    assert_eq!(status.code(), Some(0), "drained and stopped cleanly");
    let bytes = std::fs::read(&log).expect("log");
    assert!(!bytes.is_empty());
    assert!(
        !bytes.contains(&0x1b),
        "escape codes in a log file:\n{}",
        String::from_utf8_lossy(&bytes)
    );
}
