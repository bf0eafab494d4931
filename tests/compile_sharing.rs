//! Generated bundles repeat a few path lists across thousands of rules; the compiler parses a
//! repeated list once. These tests show the shortcut never lets a problem through: a list is
//! reused only when its texts are exactly those of a list that compiled without a problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use wardgate::policy::{Policy, Request};

const HEAD: &str = "version: 1\nrevision: 1\ntrust_domains: [td.example]\nrules:\n";

fn rule(name: &str, paths: &str) -> String {
    format!("  - name: {name}\n    from: [\"spiffe://td.example/{name}\"]\n    paths: {paths}\n")
}

#[test]
fn a_list_with_a_problem_is_refused_wherever_it_appears_even_after_a_good_one() {
    let bundle = [
        HEAD.to_string(),
        rule("good", r#"["/a", "/b/**"]"#),
        // The same texts run together, and the good list with one bad pattern added.
        rule("joined", r#"["/a/b/**"]"#),
        rule("bad-one", r#"["/a", "/b/**", "/c/../d"]"#),
        rule("bad-two", r#"["/a", "/b/**", "/c/../d"]"#),
    ]
    .concat();
    let error = Policy::from_yaml_str("b.yaml", &bundle)
        .expect_err("the bad lists are refused")
        .to_string();
    assert_eq!(
        error.matches("/c/../d").count(),
        2,
        "each rule listing the bad path is named: {error}"
    );
    assert!(!error.contains("/a/b/**"), "{error}");
}

#[test]
fn rules_sharing_a_list_each_match_only_their_own_caller() {
    let bundle = [
        HEAD.to_string(),
        rule("one", r#"["/api/**"]"#),
        rule("two", r#"["/api/**"]"#),
        rule("three", r#"["/api/v2/**"]"#),
    ]
    .concat();
    let policy = Policy::from_yaml_str("b.yaml", &bundle).unwrap();
    let ask = |caller: &str, path: &str| {
        let source = format!("spiffe://td.example/{caller}");
        let mut request = Request::new("GET", path);
        request.source = Some(&source);
        request.destination = Some("spiffe://td.example/server");
        let decision = policy.decide(&request);
        decision.rule.map(str::to_owned)
    };
    assert_eq!(ask("two", "/api/x").as_deref(), Some("two"));
    assert_eq!(ask("one", "/api/x").as_deref(), Some("one"));
    assert_eq!(ask("three", "/api/x"), None);
    assert_eq!(ask("three", "/api/v2/x").as_deref(), Some("three"));
}
