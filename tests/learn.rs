//! `wardgate learn` on generated hospital traffic (tests/traffic), run as the real binary and
//! proven with the existing verbs, the way docs/bundle-workflow.md tells operators to: the
//! learned bundle validates, passes its own tests, `replay` of the same log against it changes
//! no allowed request except those the report lists as left out, `diff` against the base shows
//! only grants of observed conversations, and `analyze --findings` has no warning. Also: learning
//! from redacted logs proposes the same rules, learning without a base proposes segments, and
//! bad input is named.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use wardgate::policy::Policy;

mod traffic;

fn wardgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(args)
        .output()
        .expect("run wardgate")
}

fn hospital() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bundles/hospital.yaml")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", text(&o.stdout), text(&o.stderr)))
}

fn generated(requests: usize, seed: u64) -> Vec<String> {
    let policy = Policy::from_path(&hospital()).expect("hospital bundle");
    traffic::generate(&policy, requests, seed)
}

/// A learn run: its files and its JSON report.
struct Learned {
    _dir: tempfile::TempDir,
    log: PathBuf,
    bundle: PathBuf,
    tests: PathBuf,
    report: Value,
}

fn learn(lines: &[String], base: bool) -> Learned {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("decisions.jsonl");
    std::fs::write(&log, lines.join("\n") + "\n").expect("write log");
    let bundle = dir.path().join("learned.yaml");
    let tests = dir.path().join("learned.tests.yaml");
    let mut args = vec![
        "learn",
        "--log",
        s(&log),
        "-o",
        s(&bundle),
        "--tests",
        s(&tests),
        "--json",
    ];
    let h = hospital();
    if base {
        args.extend(["--base", s(&h)]);
    }
    let out = wardgate(&args);
    assert!(out.status.success(), "learn failed: {}", text(&out.stderr));
    let report = json(&out);
    Learned {
        _dir: dir,
        log,
        bundle,
        tests,
        report,
    }
}

fn rules(report: &Value) -> Vec<Value> {
    report["rules"].as_array().cloned().unwrap_or_default()
}

/// (from, to, methods, paths) of every proposed rule.
fn rule_shapes(report: &Value) -> BTreeSet<String> {
    rules(report)
        .iter()
        .map(|r| {
            format!(
                "{} -> {} {} {}",
                r["from"], r["to"], r["methods"], r["paths"]
            )
        })
        .collect()
}

fn paths_of(report: &Value, from: &str, to: &str) -> Vec<String> {
    rules(report)
        .iter()
        .filter(|r| r["from"] == from && r["to"] == to)
        .flat_map(|r| r["paths"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";
const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";
const IMAGING: &str = "spiffe://hospital.example/ns/clinical/sa/imaging";
const PHARMACY: &str = "spiffe://hospital.example/ns/clinical/sa/pharmacy";
const HR: &str = "spiffe://hospital.example/ns/admin/sa/hr";
const BILLING: &str = "spiffe://hospital.example/ns/admin/sa/billing";

/// Validate, test, replay, diff and analyze a learned bundle; panics naming the failed proof.
fn prove(l: &Learned) {
    let min_count = l.report["thresholds"]["min_count"]
        .as_u64()
        .expect("min_count");

    // 1. It validates.
    let v = wardgate(&["validate", s(&l.bundle)]);
    assert!(v.status.success(), "validate: {}", text(&v.stderr));

    // 2. It passes its own tests: one per rule, plus the observed denials.
    let t = wardgate(&["test", s(&l.bundle), s(&l.tests), "--json"]);
    let tj = json(&t);
    assert!(t.status.success(), "test: {}", text(&t.stdout));
    assert_eq!(tj["failed"], 0);
    let cases = &l.report["tests_file"];
    assert_eq!(
        tj["passed"].as_u64(),
        Some(
            cases["allow_cases"].as_u64().unwrap_or(0) + cases["deny_cases"].as_u64().unwrap_or(0)
        )
    );
    assert_eq!(
        cases["allow_cases"].as_u64(),
        Some(rules(&l.report).len() as u64)
    );
    assert!(
        cases["deny_cases"].as_u64() > Some(0),
        "observed denials become cases"
    );

    // 3. Replaying the same log: no allowed request is denied, except the ones left out.
    let left_out: BTreeSet<u64> = l.report["left_out"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|x| x["lines"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["line"].as_u64())
        .collect();
    let h = hospital();
    let r = wardgate(&[
        "replay",
        s(&l.bundle),
        "--log",
        s(&l.log),
        "--baseline",
        s(&h),
        "--examples",
        "1000000",
        "--json",
    ]);
    let rj = json(&r);
    assert_eq!(rj["undetermined"], 0, "{rj}");
    assert_eq!(rj["not_reproduced_by_baseline"], 0, "{rj}");
    let learned_names: BTreeSet<String> = rules(&l.report)
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    let mut revoked = 0;
    for g in rj["groups"].as_array().expect("groups") {
        match g["change"].as_str() {
            Some("allow -> deny") => {
                for e in g["examples"].as_array().expect("examples") {
                    let line = e["line"].as_u64().expect("line");
                    assert!(
                        left_out.contains(&line),
                        "line {line} was allowed and is now denied, but the report does not list it as left out: {g}"
                    );
                    revoked += 1;
                }
            }
            Some("deny -> allow") => {
                let after = g["after"].as_str().unwrap_or_default();
                let rule = after.split(' ').next().unwrap_or_default();
                assert!(
                    learned_names.contains(rule),
                    "granted by {after}, not a learned rule"
                );
            }
            other => panic!("unexpected replay group {other:?}: {g}"),
        }
    }
    assert_eq!(rj["newly_denied"].as_u64(), Some(revoked));

    // 4. Diff against the base: every new grant is a learned rule of an observed conversation,
    //    with methods it was seen using, observed at least --min-count times.
    let d = wardgate(&["diff", s(&h), s(&l.bundle), "--json"]);
    let dj = json(&d);
    for g in dj["grants"].as_array().expect("grants") {
        let name = g["rule"].as_str().expect("rule");
        let rule = rules(&l.report)
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("grant by `{name}`, which is not a learned rule: {g}"));
        assert_eq!(g["kind"], "allow", "{g}");
        assert_eq!(g["from"], serde_json::json!([rule["from"]]), "{g}");
        assert_eq!(g["to"], serde_json::json!([rule["to"]]), "{g}");
        for m in g["methods"].as_array().expect("grants name methods") {
            assert!(
                rule["methods"].as_array().is_some_and(|ms| ms.contains(m)),
                "{g}"
            );
        }
        assert!(rule["observed"].as_u64() >= Some(min_count), "{rule}");
    }

    // 5. No warning among the findings.
    let a = wardgate(&["analyze", s(&l.bundle), "--findings", "--json"]);
    let aj = json(&a);
    assert!(a.status.success(), "analyze: {}", text(&a.stderr));
    let warnings: Vec<&Value> = aj["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] == "warning")
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn a_week_of_hospital_traffic_becomes_a_bundle_that_passes_every_proof() {
    let lines = generated(10_000, 17);
    assert_eq!(lines.len(), 10_000);
    // The generated week holds what the scenario needs, or the proofs below prove little.
    let mix: BTreeSet<String> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("line");
            format!(
                "{} {}",
                v["decision"].as_str().unwrap_or(""),
                v["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    for want in [
        "allow rule",
        "allow break_glass",
        "deny default_deny",
        "deny rule",
        "deny unauthenticated",
        "deny bad_path",
        "deny svid_lifetime",
    ] {
        assert!(
            mix.contains(want),
            "no `{want}` in the generated log: {mix:?}"
        );
    }

    let l = learn(&lines, true);
    assert!(l.report["records"].as_u64() >= Some(10_000));
    prove(&l);

    // Identifiers became `*`, DICOM UIDs at three depths `**`, nothing else was widened.
    assert_eq!(
        paths_of(&l.report, EHR, LAB)
            .iter()
            .filter(|p| p.contains('*'))
            .collect::<Vec<_>>(),
        ["/results/*"]
    );
    assert_eq!(
        paths_of(&l.report, EHR, IMAGING),
        ["/healthz", "/studies/**"]
    );
    assert_eq!(
        paths_of(&l.report, PHARMACY, EHR),
        ["/patients/*/medications"]
    );
    assert!(rules(&l.report)
        .iter()
        .any(|r| r["name"] == "ehr-to-lab-get-head-results"));
    // The base's conditions stay on the traffic they let through.
    let rx = rules(&l.report)
        .into_iter()
        .find(|r| r["name"] == "ehr-to-pharmacy-post-prescriptions")
        .expect("prescriptions rule");
    assert_eq!(rx["conditions_from"], "ehr-sends-prescriptions");

    // Rare conversations are left out and listed with their lines, and stay denied.
    let rare: Vec<(String, String)> = l.report["left_out"]
        .as_array()
        .expect("left_out")
        .iter()
        .filter(|x| x["rare_conversation"] == true)
        .map(|x| {
            (
                x["from"].as_str().unwrap_or("").to_string(),
                x["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        rare.contains(&(HR.to_string(), BILLING.to_string())),
        "{rare:?}"
    );
    assert!(
        rare.contains(&(PHARMACY.to_string(), LAB.to_string())),
        "{rare:?}"
    );
    let c = wardgate(&[
        "check",
        s(&l.bundle),
        "--from",
        PHARMACY,
        "--to",
        LAB,
        "--path",
        "/results/4711",
        "--json",
    ]);
    assert_eq!(json(&c)["reason"], "default_deny");
    // The device vendor never called: named as never seen.
    let never = l.report["never_seen"]["identities"].to_string();
    assert!(
        never.contains("spiffe://medtech.example/ns/support/sa/remote-support"),
        "{never}"
    );
    // What was denied or used break-glass was not learned.
    assert!(!rules(&l.report).iter().any(|r| r["from"]
        == "spiffe://partner-lab.example/ns/vendor/sa/reflab"
        && r["to"] == LAB));
    assert_eq!(l.report["break_glass"], 5);
}

#[test]
fn redacted_logs_give_the_same_rules() {
    let lines = generated(3_000, 5);
    let redacted: Vec<String> = lines.iter().map(|l| traffic::redact_line(l)).collect();
    assert!(redacted.iter().any(|l| l.contains("/results/{}")));
    assert!(!redacted.iter().any(|l| l.contains("/results/1")));
    let plain = learn(&lines, true);
    let red = learn(&redacted, true);
    assert_eq!(rule_shapes(&red.report), rule_shapes(&plain.report));
    prove(&red);
    let tests = std::fs::read_to_string(&red.tests).expect("tests");
    assert!(
        tests.contains("path: \"/results/{}\""),
        "cases are real (redacted) requests"
    );
}

#[test]
fn without_a_base_segments_are_proposed_from_namespaces() {
    let l = learn(&generated(3_000, 9), false);
    let segs: Vec<(String, String)> = l.report["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s["members"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        segs,
        [
            (
                "admin".to_string(),
                "[\"spiffe://hospital.example/ns/admin/**\"]".to_string()
            ),
            (
                "clinical".to_string(),
                "[\"spiffe://hospital.example/ns/clinical/**\"]".to_string()
            ),
            (
                "vendor".to_string(),
                "[\"spiffe://partner-lab.example/ns/vendor/**\"]".to_string()
            ),
        ]
    );
    let v = wardgate(&["validate", s(&l.bundle)]);
    assert!(v.status.success(), "{}", text(&v.stderr));
    let t = wardgate(&["test", s(&l.bundle), s(&l.tests)]);
    assert!(t.status.success(), "{}", text(&t.stdout));
    // Without --output the bundle is stdout (and valid), the report stderr.
    let out = wardgate(&["learn", "--log", s(&l.log)]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("proposal: revision 1"),
        "{}",
        text(&out.stderr)
    );
    assert!(Policy::from_yaml_str("stdout", &text(&out.stdout)).is_ok());
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.jsonl");
    let out = wardgate(&["learn", "--log", s(&missing)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("nope.jsonl"),
        "{}",
        text(&out.stderr)
    );

    let log = dir.path().join("d.jsonl");
    let mut lines = generated(20, 3);
    lines.insert(1, "{\"time\": 1}".to_string());
    std::fs::write(&log, lines.join("\n")).expect("write");
    let out = wardgate(&[
        "learn",
        "--log",
        s(&log),
        "-o",
        s(&dir.path().join("b.yaml")),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("warning: skipped {}:2: ", log.display())),
        "{}",
        text(&out.stderr)
    );
    // Only refusals: nothing to learn, and no base to give trust domains.
    let refused: Vec<String> = generated(2_000, 3)
        .into_iter()
        .filter(|l| l.contains("\"decision\":\"deny\"") && !l.contains("default_deny"))
        .collect();
    assert!(!refused.is_empty());
    let only = dir.path().join("refused.jsonl");
    std::fs::write(&only, refused.join("\n")).expect("write");
    let out = wardgate(&["learn", "--log", s(&only)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("nothing to learn"),
        "{}",
        text(&out.stderr)
    );

    let out = wardgate(&["learn", "--log", s(&log), "--sensitive", "icu"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("--sensitive icu"),
        "{}",
        text(&out.stderr)
    );
}
