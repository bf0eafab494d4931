//! Bundles written as JSON (`*.json`, the encoding for generated bundles): the same rules as
//! YAML, the same validation, and problems that still name their line and column.
//!
//! The JSON texts are built from the shipped YAML bundle (read as data and written out by
//! serde_json), so both encodings hold exactly the same bundle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use wardgate::policy::{Policy, Request};

const HOSPITAL: &str = include_str!("../deploy/bundles/hospital.yaml");

/// The shipped bundle as JSON, pretty-printed (one value per line) or on one line.
fn hospital_json(pretty: bool) -> String {
    let value: serde_json::Value = serde_saphyr::from_str(HOSPITAL).expect("the YAML reads");
    if pretty {
        serde_json::to_string_pretty(&value).unwrap()
    } else {
        value.to_string()
    }
}

/// The 1-based line and column of the first `needle` in `text`.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in text");
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |nl| nl + 1) + 1;
    (line, column)
}

fn error_text(name: &str, text: &str) -> String {
    Policy::from_yaml_str(name, text)
        .expect_err("the bundle is refused")
        .to_string()
}

#[test]
fn a_json_bundle_decides_every_request_like_the_same_bundle_in_yaml() {
    let yaml = Policy::from_yaml_str("hospital.yaml", HOSPITAL).unwrap();
    for pretty in [true, false] {
        let json = Policy::from_yaml_str("hospital.json", &hospital_json(pretty)).unwrap();
        assert_eq!(json.revision(), yaml.revision());
        let names = |p: &Policy| {
            p.rules()
                .map(|r| (r.name.to_owned(), r.action))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&json), names(&yaml));

        let workloads = [
            "spiffe://hospital.example/ns/clinical/sa/ehr",
            "spiffe://hospital.example/ns/clinical/sa/lab",
            "spiffe://hospital.example/ns/clinical/sa/imaging",
            "spiffe://hospital.example/ns/admin/sa/billing",
            "spiffe://hospital.example/ns/admin/sa/scheduling",
            "spiffe://hospital.example/ns/admin/sa/interface-engine",
            "spiffe://partner-lab.example/ns/vendor/sa/reflab",
            "spiffe://medtech.example/ns/support/sa/remote-support",
            "spiffe://elsewhere.example/ns/x/sa/y",
        ];
        let paths = [
            "/",
            "/api/v1/results/7",
            "/admin",
            "/fhir/Patient/1",
            "/orders",
        ];
        let mut allowed = 0;
        for source in workloads {
            for destination in workloads {
                for method in ["GET", "POST", "DELETE"] {
                    for path in paths {
                        let mut request = Request::new(method, path);
                        request.source = Some(source);
                        request.destination = Some(destination);
                        let (a, b) = (yaml.decide(&request), json.decide(&request));
                        assert_eq!(
                            (a.verdict, a.reason, a.rule),
                            (b.verdict, b.reason, b.rule),
                            "{method} {path} from {source} to {destination}"
                        );
                        allowed += usize::from(a.is_allow());
                    }
                }
            }
        }
        assert!(
            allowed > 0,
            "the matrix exercises allows as well as denials"
        );
    }
}

#[test]
fn a_problem_in_a_json_bundle_names_its_line_and_column() {
    let text = hospital_json(true).replacen(
        "\"spiffe://hospital.example/ns/clinical/sa/lab\"",
        "\"no-such-segment\"",
        1,
    );
    let (line, column) = position_of(&text, "\"no-such-segment\"");
    let error = error_text("gen/hospital.json", &text);
    assert!(
        error.contains(&format!("gen/hospital.json:{line}:{column}")),
        "expected the position {line}:{column} in: {error}"
    );
    assert!(error.contains("no-such-segment"), "{error}");
}

#[test]
fn every_unknown_key_of_a_json_bundle_is_named_with_its_line() {
    let text = hospital_json(true)
        .replacen("\"trust_domains\"", "\"trust_domain\"", 1)
        .replacen("\"paths\"", "\"path\"", 1);
    let error = error_text("gen.json", &text);
    for key in ["trust_domain", "path"] {
        let (line, _) = position_of(&text, &format!("\"{key}\""));
        assert!(
            error.contains(&format!("gen.json:{line}:")) && error.contains(&format!("`{key}`")),
            "expected `{key}` at line {line} in: {error}"
        );
    }
}

#[test]
fn json_that_is_not_json_is_refused_at_its_line_and_column_even_where_yaml_would_accept_it() {
    // A trailing comma and an unquoted word are YAML, but not JSON.
    let trailing =
        "{\n  \"version\": 1,\n  \"revision\": 1,\n  \"trust_domains\": [\"td.example\"],\n}\n";
    let error = error_text("t.json", trailing);
    assert!(error.contains("t.json:5:1"), "{error}");
    let unquoted = "{\"version\": 1, \"revision\": 1, \"trust_domains\": [hospital.example]}";
    let error = error_text("u.json", unquoted);
    assert!(error.contains("u.json:1:"), "{error}");
    // The same texts named as YAML are YAML: they compile.
    Policy::from_yaml_str("t.yaml", trailing).expect("YAML accepts a trailing comma");
}

#[test]
fn repeated_keys_in_a_json_bundle_are_refused() {
    let twice = "{\"version\": 1, \"revision\": 1, \"revision\": 2}";
    let error = error_text("twice.json", twice);
    assert!(error.contains("revision"), "{error}");
    let segments = r#"{"version": 1, "revision": 1, "trust_domains": ["td.example"],
        "segments": {"a": {"members": ["spiffe://td.example/x"]},
                     "a": {"members": ["spiffe://td.example/y"]}}}"#;
    let error = error_text("segments.json", segments);
    assert!(error.contains("segments.json:3:"), "{error}");
    assert!(error.contains("duplicate"), "{error}");
}

#[test]
fn a_directory_bundle_may_mix_yaml_and_json_files() {
    let dir = tempfile::tempdir().unwrap();
    let (head, rules) = HOSPITAL
        .split_once("\nrules:\n")
        .expect("the bundle has rules");
    std::fs::write(dir.path().join("10-segments.yaml"), format!("{head}\n")).unwrap();
    let rules: serde_json::Value =
        serde_saphyr::from_str(&format!("rules:\n{rules}")).expect("the rules read");
    std::fs::write(dir.path().join("20-rules.json"), rules.to_string()).unwrap();
    let split = Policy::from_path(dir.path()).expect("the directory compiles");
    let whole = Policy::from_yaml_str("hospital.yaml", HOSPITAL).unwrap();
    assert_eq!(split.rule_count(), whole.rule_count());
    let file_of_first_rule = split.rules().next().unwrap().file.to_owned();
    assert!(
        file_of_first_rule.ends_with("20-rules.json"),
        "{file_of_first_rule}"
    );
}

#[test]
fn the_binary_validates_and_checks_a_json_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("hospital.json");
    std::fs::write(&good, hospital_json(false)).unwrap();
    let wardgate = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .args(args)
            .output()
            .expect("wardgate runs")
    };
    let good = good.to_str().unwrap();
    assert_eq!(wardgate(&["validate", good]).status.code(), Some(0));
    let ehr = "spiffe://hospital.example/ns/clinical/sa/ehr";
    let lab = "spiffe://hospital.example/ns/clinical/sa/lab";
    let allowed = wardgate(&[
        "check",
        good,
        "--from",
        ehr,
        "--to",
        lab,
        "--path",
        "/results/7",
    ]);
    let denied = wardgate(&[
        "check", good, "--from", ehr, "--to", lab, "--path", "/admin",
    ]);
    assert_eq!(
        (allowed.status.code(), denied.status.code()),
        (Some(0), Some(1))
    );

    let text = hospital_json(true).replacen("\"deny\"", "\"refuse\"", 1);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, &text).unwrap();
    let out = wardgate(&["validate", bad.to_str().unwrap()]);
    let (line, column) = position_of(&text, "\"refuse\"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(&format!("bad.json:{line}:{column}")),
        "expected {line}:{column} in: {stdout}{stderr}"
    );
}

/// A JSON bundle text of `revision`, with or without a second rule.
fn small_json(revision: u64, extra_rule: bool) -> String {
    let mut rules = vec![serde_json::json!({"name": "base", "from": ["a"], "paths": ["/base"]})];
    if extra_rule {
        rules.push(serde_json::json!({"name": "extra", "from": ["a"], "paths": ["/extra"]}));
    }
    serde_json::json!({
        "version": 1, "revision": revision, "trust_domains": ["td.example"],
        "segments": {"a": {"members": ["spiffe://td.example/a/**"]}},
        "rules": rules,
    })
    .to_string()
}

#[tokio::test]
async fn the_reloader_takes_json_files_and_directories_and_refuses_a_broken_one() {
    use std::sync::Arc;
    use std::time::Duration;
    use wardgate::reload::{BundleSource, NoObserver, Outcome, ReloadConfig, Reloader};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundle.json");
    let bundle_dir = dir.path().join("bundle.d");
    std::fs::create_dir(&bundle_dir).unwrap();
    std::fs::write(&file, small_json(1, false)).unwrap();
    std::fs::write(bundle_dir.join("10-rules.json"), small_json(1, true)).unwrap();

    for source in [file.clone(), bundle_dir.clone()] {
        let handle: wardgate::policy::PolicyHandle = Arc::new(arc_swap::ArcSwapOption::empty());
        let mut config = ReloadConfig::new(BundleSource::Path(source.clone()));
        config.settle = Duration::from_millis(20);
        config.rewrite_grace = Duration::ZERO;
        let mut reloader = Reloader::new(config, Arc::clone(&handle), Arc::new(NoObserver), "b");
        assert_eq!(reloader.reload(false).await, Outcome::Swapped, "{source:?}");
        let revision = || handle.load().as_ref().map(|p| p.revision());
        assert_eq!(revision(), Some(1));

        // JSON that YAML would take (a trailing comma) is refused; the policy stays.
        let broken = small_json(2, true).replacen("]}", "],}", 1);
        let target = if source.is_dir() {
            bundle_dir.join("10-rules.json")
        } else {
            file.clone()
        };
        std::fs::write(&target, &broken).unwrap();
        assert_eq!(reloader.reload(false).await, Outcome::Invalid, "{source:?}");
        assert_eq!(revision(), Some(1));

        std::fs::write(&target, small_json(2, true)).unwrap();
        assert_eq!(reloader.reload(false).await, Outcome::Swapped, "{source:?}");
        assert_eq!(revision(), Some(2));
        let names: Vec<String> = handle
            .load()
            .as_ref()
            .map(|p| p.rule_names().map(str::to_owned).collect())
            .unwrap_or_default();
        assert_eq!(names, ["base", "extra"]);
    }
}
