//! Unit tests of `wardgate learn`: identifier detection, path generalisation, the proposal's
//! choices (rare families, folding, names, segments) and the written bundle and tests. The whole
//! verb on generated hospital traffic, with the proofs, is tests/learn.rs.

use std::io::Write as _;
use std::path::PathBuf;

use super::generalise::{generalise, identifier_kind, Thresholds, ValueKind};
use super::observe::{read, Observations, RefusedBy, Skip};
use super::propose::{propose, sanitize, Proposal, Settings};
use super::{emit, observe};
use crate::policy::{Action, Policy, Verdict};

const T: Thresholds = Thresholds {
    id_min_distinct: 2,
    max_literals: 32,
    deep_min_depths: 3,
};

const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";
const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";
const BILLING: &str = "spiffe://hospital.example/ns/admin/sa/billing";

fn hospital() -> Policy {
    Policy::from_yaml_str(
        "hospital.yaml",
        include_str!("../../../deploy/bundles/hospital.yaml"),
    )
    .expect("hospital bundle")
}

/// Patterns of `generalise` for `paths`, sorted.
fn patterns(paths: &[&str], t: &Thresholds) -> Vec<String> {
    let mut p: Vec<String> = generalise(paths, t)
        .into_iter()
        .map(|f| f.pattern)
        .collect();
    p.sort();
    p
}

fn line(
    from: &str,
    to: &str,
    method: &str,
    path: &str,
    outcome: (&str, &str, Option<&str>),
) -> String {
    let mut v = serde_json::json!({
        "time": "2026-11-23T10:00:00Z",
        "source": from,
        "destination": to,
        "method": method,
        "path": path,
        "decision": outcome.0,
        "reason": outcome.1,
        "latency_us": 3,
    });
    if let Some(r) = outcome.2 {
        v["rule"] = r.into();
    }
    v.to_string()
}

fn log(lines: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("decisions.jsonl");
    let mut f = std::fs::File::create(&path).expect("create");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
    (dir, path)
}

fn settings(min_count: usize) -> Settings {
    Settings {
        min_count,
        thresholds: T,
        sensitive: Vec::new(),
        revision: None,
    }
}

fn learn(lines: &[String], base: Option<&Policy>, min_count: usize) -> (Observations, Proposal) {
    let (_dir, path) = log(lines);
    let obs = read(&[path], base, false).expect("read");
    let p = propose(&obs, base, &settings(min_count)).expect("propose");
    (obs, p)
}

const ALLOW: (&str, &str, Option<&str>) = ("allow", "rule", Some("ehr-reads-lab-results"));
const DEFAULT_DENY: (&str, &str, Option<&str>) = ("deny", "default_deny", None);

#[test]
fn identifiers_are_recognised_and_words_are_not() {
    for (seg, kind) in [
        ("4711", ValueKind::Number),
        ("28ba4845-2dac-4466-a289-1ddd6cdbc7de", ValueKind::Uuid),
        ("1.2.840.113619.2.55", ValueKind::Numeric),
        ("2026-11-23", ValueKind::Numeric),
        ("9f86d081884c7d65", ValueKind::Hex),
        ("MRN00012345", ValueKind::Code),
        ("2026-W48", ValueKind::Code),
        ("{}", ValueKind::Redacted),
        ("%7B%7D", ValueKind::Redacted),
    ] {
        assert_eq!(identifier_kind(seg), Some(kind), "{seg}");
    }
    for seg in [
        "results",
        "v1",
        "v2",
        "billing-codes",
        "healthz",
        "deadbeef",
        "a%20b",
        "x1",
    ] {
        assert_eq!(identifier_kind(seg), None, "{seg}");
    }
}

#[test]
fn varying_identifiers_become_a_wildcard_and_nothing_else_does() {
    assert_eq!(
        patterns(&["/results/4711", "/results/4712", "/results"], &T),
        ["/results", "/results/*"]
    );
    // One value does not vary: it stays literal.
    assert_eq!(
        patterns(&["/results/4711", "/results/4711"], &T),
        ["/results/4711"]
    );
    // Words stay literal, next to a wildcard.
    assert_eq!(
        patterns(
            &["/patients/1/chart", "/patients/2/chart", "/patients/search"],
            &T
        ),
        ["/patients/*/chart", "/patients/search"]
    );
    // The threshold is a flag.
    let strict = Thresholds {
        id_min_distinct: 3,
        ..T
    };
    assert_eq!(
        patterns(&["/results/4711", "/results/4712"], &strict),
        ["/results/4711", "/results/4712"]
    );
    // The redaction marker is an identifier even alone, raw or normalised.
    assert_eq!(patterns(&["/results/%7B%7D"], &strict), ["/results/*"]);
    assert_eq!(patterns(&["/results/{}"], &strict), ["/results/*"]);
    // Too many different words: the position becomes `*` whatever they look like.
    let few = Thresholds {
        max_literals: 2,
        ..T
    };
    assert_eq!(patterns(&["/a", "/b"], &few), ["/a", "/b"]);
    assert_eq!(patterns(&["/a", "/b", "/c"], &few), ["/*"]);
}

#[test]
fn deep_wildcard_only_where_every_level_varies_at_enough_depths() {
    let deep = [
        "/studies/1.2.3",
        "/studies/1.2.4/1.5.1",
        "/studies/1.2.5/1.5.2/1.9.9",
        "/studies/1.2.6/1.5.3/1.9.8",
    ];
    assert_eq!(patterns(&deep, &T), ["/studies/**"]);
    // Two depths are not enough.
    assert_eq!(
        patterns(
            &[
                "/studies/1.2.3",
                "/studies/1.2.4/1.5.1",
                "/studies/1.2.5/1.5.2"
            ],
            &T
        ),
        ["/studies/*", "/studies/*/*"]
    );
    // A literal below stops it: the structure is kept.
    let structured = [
        "/studies/1/series/7",
        "/studies/2/series/8/instances/3",
        "/studies/4/series/9/instances/5",
        "/studies/3",
    ];
    assert_eq!(
        patterns(&structured, &T),
        [
            "/studies/*",
            "/studies/*/series/*",
            "/studies/*/series/*/instances/*"
        ]
    );
}

#[test]
fn every_observation_is_in_exactly_one_family_that_matches_it() {
    let paths = [
        "/",
        "/a",
        "/a/1",
        "/a/2",
        "/a/2/x",
        "/b/3/4/5",
        "/b/6",
        "/b/7/8",
        "/c/%7B%7D/d",
    ];
    let fams = generalise(&paths, &T);
    let mut seen = vec![0; paths.len()];
    for f in &fams {
        let pat = crate::policy::Pattern::parse_path(&f.pattern).expect("pattern");
        for &i in &f.members {
            seen[i] += 1;
            assert!(
                pat.matches_path(paths[i]),
                "{} must match {}",
                f.pattern,
                paths[i]
            );
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
}

#[test]
fn rare_requests_and_conversations_are_left_out_and_listed() {
    let mut lines = Vec::new();
    for i in 0..6 {
        lines.push(line(EHR, LAB, "GET", &format!("/results/{i}"), ALLOW));
    }
    lines.push(line(EHR, LAB, "DELETE", "/orders/1", DEFAULT_DENY));
    for _ in 0..2 {
        lines.push(line(BILLING, LAB, "GET", "/invoices", DEFAULT_DENY));
    }
    let (_, p) = learn(&lines, None, 5);
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].name, "ehr-to-lab-get-results");
    assert_eq!(p.rules[0].paths, ["/results/*"]);
    let left: Vec<(&str, &str, usize, bool)> = p
        .left_out
        .iter()
        .map(|l| {
            (
                l.method.as_str(),
                l.path.as_str(),
                l.count,
                l.rare_conversation,
            )
        })
        .collect();
    assert_eq!(
        left,
        [
            ("GET", "/invoices", 2, true),
            ("DELETE", "/orders/1", 1, false)
        ]
    );
    assert_eq!(
        p.left_out[0]
            .lines
            .iter()
            .map(|l| l.line)
            .collect::<Vec<_>>(),
        [8, 9]
    );
}

#[test]
fn families_covered_by_a_wider_one_are_folded_and_methods_kept_apart() {
    let mut lines = Vec::new();
    for i in 0..5 {
        lines.push(line(
            EHR,
            LAB,
            "GET",
            &format!("/patients/{i}"),
            DEFAULT_DENY,
        ));
        lines.push(line(EHR, LAB, "GET", "/patients/search", DEFAULT_DENY));
        lines.push(line(EHR, LAB, "POST", "/patients/search", DEFAULT_DENY));
    }
    let (_, p) = learn(&lines, None, 5);
    let rules: Vec<(&str, Vec<&str>, Vec<&str>, usize)> = p
        .rules
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.methods.iter().map(String::as_str).collect(),
                r.paths.iter().map(String::as_str).collect(),
                r.members.len(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            (
                "ehr-to-lab-get-patients",
                vec!["GET"],
                vec!["/patients/*"],
                10
            ),
            (
                "ehr-to-lab-post-patients-search",
                vec!["POST"],
                vec!["/patients/search"],
                5
            ),
        ]
    );
}

#[test]
fn names_and_segments_come_from_the_identities() {
    assert_eq!(sanitize("Interface Engine/v2"), "interface-engine-v2");
    let a = "spiffe://hospital.example/ns/clinical/sa/api";
    let b = "spiffe://hospital.example/ns/admin/sa/api";
    let v = "spiffe://partner.example/reflab";
    let mut lines = Vec::new();
    for _ in 0..5 {
        lines.push(line(a, b, "POST", "/inbound/results", DEFAULT_DENY));
        lines.push(line(v, b, "POST", "/inbound/results", DEFAULT_DENY));
    }
    let (_, p) = learn(&lines, None, 5);
    let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ns-clinical-sa-api-to-ns-admin-sa-api-post-inbound-results",
            "reflab-to-ns-admin-sa-api-post-inbound-results",
        ]
    );
    let segs: Vec<(&str, Vec<&str>, usize)> = p
        .segments
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.members.iter().map(String::as_str).collect(),
                s.identities.len(),
            )
        })
        .collect();
    assert_eq!(
        segs,
        [
            ("admin", vec!["spiffe://hospital.example/ns/admin/**"], 1),
            (
                "clinical",
                vec!["spiffe://hospital.example/ns/clinical/**"],
                1
            ),
            ("partner", vec!["spiffe://partner.example/**"], 1),
        ]
    );
    assert_eq!(p.trust_domains, ["hospital.example", "partner.example"]);
}

#[test]
fn the_log_is_classified_and_bad_lines_are_named() {
    let lines = vec![
        line(EHR, LAB, "GET", "/results/1", ALLOW),
        "not json".to_string(),
        line(
            EHR,
            LAB,
            "GET",
            "/admin",
            ("deny", "rule", Some("no-workload-reaches-admin-consoles")),
        ),
        line(EHR, "", "GET", "/x", DEFAULT_DENY).replace(",\"destination\":\"\"", ""),
        line(
            EHR,
            LAB,
            "GET",
            "/p/1",
            ("allow", "break_glass", Some("clinical-emergency-override")),
        ),
        line(EHR, LAB, "GET", "/results/2", ("maybe", "rule", None)),
        line(EHR, LAB, "POST", "/orders", DEFAULT_DENY),
    ];
    let (_dir, path) = log(&lines);
    let obs = read(std::slice::from_ref(&path), None, false).expect("read");
    assert_eq!(obs.records, 5);
    assert_eq!(obs.unreadable.len(), 2, "{:?}", obs.unreadable);
    assert!(
        obs.unreadable[0].starts_with(&format!("{}:2: ", path.display())),
        "{}",
        obs.unreadable[0]
    );
    assert!(
        obs.unreadable[1].contains(":6: `maybe` is not a decision"),
        "{}",
        obs.unreadable[1]
    );
    assert_eq!(obs.learnable(), 2);
    assert_eq!(
        obs.skipped.get(&Skip::NoDestination).map(|t| t.count),
        Some(1)
    );
    assert_eq!(obs.break_glass.values().map(|t| t.count).sum::<usize>(), 1);
    let denial = obs.denials.keys().next().expect("a denial");
    assert_eq!(denial.2, "rule");
    assert_eq!(denial.4, RefusedBy::Log);
    // --allowed-only: default-denied requests are denials, not learned.
    let strict = read(&[path], None, true).expect("read");
    assert_eq!(strict.learnable(), 1);
    assert!(strict.denials.keys().any(|k| k.2 == "default_deny"));
}

#[test]
fn what_the_base_refuses_is_never_learned() {
    let base = hospital();
    // Logged as allowed by a permissive bundle, but the base's deny rule refuses it.
    let vendor = "spiffe://partner-lab.example/ns/vendor/sa/reflab";
    let lines: Vec<String> = (0..6)
        .map(|i| {
            line(
                vendor,
                LAB,
                "GET",
                &format!("/results/{i}"),
                ("allow", "rule", Some("allow-all")),
            )
        })
        .collect();
    let (obs, p) = learn(&lines, Some(&base), 5);
    assert!(p.rules.is_empty());
    let (key, d) = obs.denials.iter().next().expect("denial");
    assert_eq!(
        (key.2.as_str(), key.3.as_deref(), key.4),
        (
            "rule",
            Some("vendor-never-reaches-clinical"),
            RefusedBy::Base
        )
    );
    assert_eq!(d.count, 6);
    assert_eq!(
        observe::base_decision(&base, &d.example, key.0.as_deref(), key.1.as_deref()).0,
        Verdict::Deny
    );
}

#[test]
fn the_bundle_keeps_the_base_and_its_conditions_and_compiles() {
    let base = hospital();
    let mut lines = Vec::new();
    for i in 0..5 {
        lines.push(line(
            EHR,
            "spiffe://hospital.example/ns/clinical/sa/pharmacy",
            "POST",
            "/prescriptions",
            ("allow", "rule", Some("ehr-sends-prescriptions")),
        ));
        lines.push(line(EHR, LAB, "GET", &format!("/results/{i}"), ALLOW));
    }
    let (obs, p) = learn(&lines, Some(&base), 5);
    let text = emit::bundle(&p, &obs, Some((&base, "hospital.yaml")));
    let learned =
        Policy::from_yaml_str("learned.yaml", &text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert_eq!(learned.revision(), 2);
    let deny: Vec<String> = base
        .view_rules()
        .filter(|r| r.action == Action::Deny)
        .map(|r| r.name.to_string())
        .collect();
    let kept: Vec<String> = learned
        .view_rules()
        .filter(|r| r.action == Action::Deny)
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(deny, kept);
    assert_eq!(
        learned.break_glass_names().collect::<Vec<_>>(),
        ["clinical-emergency-override"]
    );
    let rx = learned
        .view_rules()
        .find(|r| r.name == "ehr-to-pharmacy-post-prescriptions")
        .expect("learned rule");
    assert_eq!(rx.headers.len(), 1, "the purpose-of-use condition is kept");
    // The tests file is in the `wardgate test` format (tests/learn.rs runs it).
    let (tests, sum) = emit::tests(&p, &obs, Some(&base), "learned.yaml");
    assert_eq!((sum.allow_cases, sum.deny_cases), (2, 0));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("learned.tests.yaml");
    std::fs::write(&file, &tests).expect("write");
    let cases = crate::tooling::testing::parse_file(&file).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cases.len(), 2);
}

/// A log the writer redacted (the default): every patient id is `{}`, the host too. Learning
/// generalises the marker like an identifier, even when it is the only value seen.
#[test]
fn redacted_logs_are_learned_with_the_marker_as_an_identifier() {
    let lines: Vec<String> = (0..5)
        .map(|i| {
            let mut v: serde_json::Value = serde_json::from_str(&line(
                EHR,
                LAB,
                "GET",
                if i % 2 == 0 {
                    "/patients/{}/notes"
                } else {
                    "/patients/{}/notes/{}"
                },
                DEFAULT_DENY,
            ))
            .expect("json");
            v["host"] = "{}".into();
            v["path_form"] = "redacted".into();
            v["break_glass_header"] = false.into();
            v.to_string()
        })
        .collect();
    let (obs, p) = learn(&lines, None, 2);
    assert_eq!(obs.learnable(), 5);
    let paths: Vec<&str> = p
        .rules
        .iter()
        .flat_map(|r| r.paths.iter().map(String::as_str))
        .collect();
    assert_eq!(paths, ["/patients/*/notes", "/patients/*/notes/*"]);
}
