//! `wardgate replay` as a rollout gate, run as the real binary: it never passes on a log it
//! could not read (an Envoy access log given by mistake, an empty file, a mostly broken log: exit
//! 3 with a message saying so), it counts what it read, skipped and decided, and with
//! `--max-undetermined` it fails (exit 6) when too many records depend on data the log lacks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn wardgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(args)
        .output()
        .expect("run wardgate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
}

fn hospital() -> PathBuf {
    repo("deploy/bundles/hospital.yaml")
}

fn candidate() -> PathBuf {
    repo("docs/examples/candidate-2.yaml")
}

fn decisions() -> PathBuf {
    repo("docs/examples/decisions.jsonl")
}

/// The Envoy access log `scripts/demo.sh` wrote (the shipped sidecar config's JSON format), given
/// where a decision log belongs: nothing is read, the gate refuses and says why.
#[test]
fn an_envoy_access_log_is_refused_with_exit_3() {
    let access = repo("docs/examples/envoy-access.log");
    let lines = std::fs::read_to_string(&access)
        .expect("access log")
        .lines()
        .count();
    let o = wardgate(&["replay", s(&candidate()), "--log", s(&access)]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(3), "{out}{err}");
    assert!(
        out.contains(&format!(
            "read           0 of {lines} line(s)  ({lines} skipped)"
        )),
        "{out}"
    );
    assert!(
        out.contains("line 1: an Envoy access log line (JSON format), not a decision record"),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "log unusable: none of its {lines} line(s) is a decision record"
        )),
        "{err}"
    );
    assert!(out.contains("(exit 3)"), "{out}");
    // Whatever else is asked, an unreadable log is refused.
    let o = wardgate(&[
        "replay",
        s(&candidate()),
        "--log",
        s(&access),
        "--min-readable",
        "0%",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let v = json(&o);
    assert_eq!(v["read"], 0);
    assert_eq!(v["skipped"], lines);
    assert_eq!(v["exit"], 3);
    assert_eq!(v["skipped_lines"].as_array().map(Vec::len), Some(5));

    // Envoy's default text format is recognised too.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    std::fs::write(
        &log,
        "[2026-11-23T10:00:00.123Z] \"GET /results/1 HTTP/1.1\" 200 - 0 12 3 2 \"-\" \"curl/8.5\" \"9f1c\" \"lab\" \"127.0.0.1:8080\"\n",
    )
    .expect("write");
    let o = wardgate(&["replay", s(&candidate()), "--log", s(&log)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        text(&o.stdout).contains("line 1: an Envoy access log line, not a decision record"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn an_empty_log_is_refused_with_exit_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")] {
        let log = dir.path().join(name);
        std::fs::write(&log, content).expect("write");
        let o = wardgate(&["replay", s(&candidate()), "--log", s(&log)]);
        assert_eq!(o.status.code(), Some(3), "{name}");
        assert!(
            text(&o.stderr).contains("log unusable: it holds no lines at all"),
            "{name}: {}",
            text(&o.stderr)
        );
    }
}

/// A log with some broken lines passes only as far as `--min-readable` allows.
#[test]
fn too_few_readable_lines_are_refused_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log_text = std::fs::read_to_string(decisions()).expect("log");
    log_text.push_str("{\"truncated\n");
    let log = dir.path().join("d.jsonl");
    std::fs::write(&log, &log_text).expect("write");
    let args = |min: &'static str| {
        vec![
            "replay".to_string(),
            s(&candidate()).to_string(),
            "--log".into(),
            s(&log).to_string(),
            "--baseline".into(),
            s(&hospital()).to_string(),
            "--min-readable".into(),
            min.into(),
        ]
    };
    let run = |min| {
        Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .args(args(min))
            .output()
            .expect("run")
    };
    // 6 of 7 lines (85.7%): below the default 99%.
    let o = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(&args("99%")[..6])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("read 6 of 7 line(s) (85.7%), below --min-readable 99%"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains(&format!("warning: skipped {}:7: not JSON", s(&log))),
        "{}",
        text(&o.stderr)
    );
    // Allowed at 85%: the replay's own answer (new grants) decides.
    let o = run("85%");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("read           6 of 7 line(s)  (1 skipped)"),
        "{}",
        text(&o.stdout)
    );
    // A bad flag value is a usage error.
    let o = run("most");
    assert_eq!(o.status.code(), Some(2));
}

/// Without a baseline, the prescription (a header condition) and the reference lab's delivery (a
/// certificate lifetime bound) depend on data the log does not carry.
#[test]
fn undetermined_records_fail_only_above_max_undetermined() {
    let (bundle, log) = (hospital(), decisions());
    let base = ["replay", s(&bundle), "--log", s(&log), "--json"];
    // Replayed against the bundle that wrote it, nothing changes for certain, but three records
    // cannot be decided (the third: a clinical default denial that a break-glass reason, not
    // logged for denials, would have turned into an allow): exit 0 without a gate, and the
    // result says so.
    let o = wardgate(&base);
    let v = json(&o);
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v["undetermined"], 3);
    assert_eq!(v["changed"], 0);
    assert_eq!(v["decided"], 3);
    assert_eq!(
        v["result"],
        "no definite decision changes; 3 undetermined, not gated (see --max-undetermined)"
    );
    let gated = |limit: &str| {
        let mut a = base.to_vec();
        a.extend(["--max-undetermined", limit]);
        wardgate(&a)
    };
    for (limit, code) in [("0", 6), ("2", 6), ("3", 0), ("49%", 6), ("50%", 0)] {
        let o = gated(limit);
        assert_eq!(
            o.status.code(),
            Some(code),
            "--max-undetermined {limit}: {}",
            text(&o.stdout)
        );
        assert_eq!(json(&o)["exit"], code);
    }
    let o = gated("0");
    assert!(
        json(&o)["result"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3 of 6 decision(s) undetermined (50.0%), above --max-undetermined 0"),
        "{}",
        text(&o.stdout)
    );
    // With the baseline, the logged decisions resolve both: nothing undetermined, gate passes.
    let o = wardgate(&[
        "replay",
        s(&hospital()),
        "--log",
        s(&decisions()),
        "--baseline",
        s(&hospital()),
        "--max-undetermined",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains("result: no decision changes (exit 0)"));
    // A bad limit is a usage error.
    assert_eq!(gated("some").status.code(), Some(2));
}

/// With too many undetermined records, the grants found are not all there are: exit 6 outranks
/// exit 4, and the result line still names the grants.
#[test]
fn too_many_undetermined_outranks_new_grants() {
    let o = wardgate(&[
        "replay",
        s(&candidate()),
        "--log",
        s(&decisions()),
        "--max-undetermined",
        "0",
    ]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(out.contains("deny -> allow (1)"), "{out}");
    assert!(
        out.contains("; 1 denied request(s) would now be allowed (exit 6)"),
        "{out}"
    );
}
