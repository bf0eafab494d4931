//! Property tests: the analysis and the engine must never disagree.
//!
//! Bundles and requests are generated in the style of `policy::reference` (segments, identity
//! and path patterns, methods, hosts, header conditions, schedules in two zones, deny rules,
//! break-glass entries, an SVID-lifetime cap). For every request, `Policy::decide` allows it
//! exactly when the who-can-reach data for its destination lists a grant covering it that no
//! listed carve-out covers; every matrix example, finding and diff example is confirmed by
//! `decide`; rules reported as never deciding never decide a generated request; and `diff` sees
//! every grant and revocation that a generated request exhibits.

use std::collections::HashMap;

use proptest::prelude::*;

use super::analyze::{Analyzer, OUTSIDE};
use super::budget::Budget;
use super::diff::diff;
use super::model::{missing_destination, pat_of, with_point, Model};
use super::timeline::TimeUniverse;
use crate::policy::{CertificateFacts, Pattern, PeerCertificate, Policy, Request, Verdict};

const IDS: &[&str] = &[
    "spiffe://a.example/ns/n1/sa/x",
    "spiffe://a.example/ns/n1/sa/y",
    "spiffe://a.example/ns/n2/sa/x",
    "spiffe://a.example/ns/n2/sa/y",
    "spiffe://a.example/ns/n3/sa/y",
    "spiffe://a.example/ns/n2",
    "spiffe://a.example",
    "spiffe://b.example/ns/n1/sa/z",
    "spiffe://b.example/w",
    "spiffe://c.example/ns/n1/sa/x",
    "not-an-id",
];
const SEGMENTS: &[(&str, &str)] = &[
    ("s0", "\"spiffe://a.example/ns/n1/**\""),
    (
        "s1",
        "\"spiffe://a.example/ns/n2/**\", \"spiffe://a.example/ns/n2\"",
    ),
    ("s2", "\"spiffe://b.example/**\""),
];
const PATTERNS: &[&str] = &[
    "spiffe://a.example/ns/n1/sa/x",
    "spiffe://a.example/ns/*/sa/y",
    "spiffe://a.example/**",
    "spiffe://a.example/ns/n2/**",
    "spiffe://b.example/ns/n1/sa/z",
    "spiffe://a.example/ns/n2",
    "spiffe://a.example",
];
const PATHS: &[&str] = &["/a", "/a/*", "/a/**", "/b", "/", "/a/*/c", "/**"];
const REQ_PATHS: &[&str] = &[
    "/a",
    "/a/b",
    "/a/b/c",
    "/b",
    "/",
    "/a/../b",
    "/a%2Fb",
    "/a//b?q=1",
    "/x/y/z",
    "/a/x/c",
];

fn list(items: &[&str]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn endpoint_strategy(n_segments: usize) -> impl Strategy<Value = Vec<String>> {
    let n = n_segments;
    prop::collection::vec(
        prop_oneof![
            (0..n.max(1)).prop_map(move |i| if n == 0 {
                PATTERNS[0].to_string()
            } else {
                SEGMENTS[i].0.to_string()
            }),
            prop::sample::select(PATTERNS).prop_map(str::to_string),
        ],
        1..3,
    )
}

fn subset(items: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<&'static str>>> {
    prop::option::of(prop::sample::subsequence(items, 1..=items.len().min(3)))
}

#[derive(Debug, Clone)]
struct RuleSpec {
    deny: bool,
    from: Vec<String>,
    to: Option<Vec<String>>,
    methods: Option<Vec<&'static str>>,
    paths: Option<Vec<&'static str>>,
    hosts: Option<Vec<&'static str>>,
    header: bool,
    sched: Option<(u8, &'static str)>,
}

fn rule_strategy(n_seg: usize) -> impl Strategy<Value = RuleSpec> {
    (
        any::<bool>(),
        endpoint_strategy(n_seg),
        prop::option::of(endpoint_strategy(n_seg)),
        subset(&["GET", "post", "PUT"]),
        subset(PATHS),
        subset(&["h1", "H2"]),
        prop::bool::weighted(0.2),
        prop::option::of((0u8..4, prop::sample::select(&["UTC", "Europe/Berlin"][..]))),
    )
        .prop_map(
            |(deny, from, to, methods, paths, hosts, header, sched)| RuleSpec {
                deny,
                from,
                to,
                methods,
                paths,
                hosts,
                header,
                sched,
            },
        )
}

fn rule_yaml(name: &str, r: &RuleSpec, bg: bool, indent: &str) -> String {
    let mut y = format!("{indent}- name: {name}\n");
    let i = format!("{indent}  ");
    if r.deny && !bg {
        y.push_str(&format!("{i}action: deny\n"));
    }
    let from: Vec<&str> = r.from.iter().map(String::as_str).collect();
    y.push_str(&format!("{i}from: {}\n", list(&from)));
    if let Some(to) = &r.to {
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        y.push_str(&format!("{i}to: {}\n", list(&to)));
    }
    if let Some(m) = &r.methods {
        y.push_str(&format!("{i}methods: {}\n", list(m)));
    }
    if let Some(p) = &r.paths {
        y.push_str(&format!("{i}paths: {}\n", list(p)));
    }
    if let Some(h) = &r.hosts {
        y.push_str(&format!("{i}hosts: {}\n", list(h)));
    }
    if r.header || r.sched.is_some() {
        y.push_str(&format!("{i}when:\n"));
        if r.header {
            y.push_str(&format!("{i}  headers: {{X-P: [T, E]}}\n"));
        }
        if let Some((s, tz)) = r.sched {
            let (days, hours) = [
                ("[mon, wed, sat]", "08:00-18:00"),
                ("[mon, wed, sat]", "22:00-06:00"),
                ("[sun]", "00:00-24:00"),
                ("[mon, tue, wed, thu, fri]", "12:00-13:00"),
            ][s as usize];
            y.push_str(&format!(
                "{i}  schedule: {{days: {days}, hours: \"{hours}\", timezone: {tz}}}\n"
            ));
        }
    }
    y
}

#[derive(Debug, Clone)]
struct BundleSpec {
    n_seg: usize,
    lifetime: bool,
    rules: Vec<RuleSpec>,
    bg: Vec<RuleSpec>,
}

impl BundleSpec {
    fn yaml(&self) -> String {
        let mut y =
            String::from("version: 1\nrevision: 7\ntrust_domains: [a.example, b.example]\n");
        if self.n_seg > 0 {
            y.push_str("segments:\n");
            for (i, (name, members)) in SEGMENTS.iter().take(self.n_seg).enumerate() {
                y.push_str(&format!("  {name}:\n    members: [{members}]\n"));
                if self.lifetime && i == 0 {
                    y.push_str("    max_svid_lifetime: 1h\n");
                }
            }
        }
        if self.rules.is_empty() {
            y.push_str("rules: []\n");
        } else {
            y.push_str("rules:\n");
            for (i, r) in self.rules.iter().enumerate() {
                y.push_str(&rule_yaml(&format!("r{i}"), r, false, "  "));
            }
        }
        if !self.bg.is_empty() {
            y.push_str("break_glass:\n  header: x-bg\n  allow:\n");
            for (i, r) in self.bg.iter().enumerate() {
                y.push_str(&rule_yaml(&format!("bg{i}"), r, true, "    "));
            }
        }
        y
    }
}

fn bundle_strategy() -> impl Strategy<Value = BundleSpec> {
    (0usize..=3, any::<bool>(), any::<bool>()).prop_flat_map(|(n_seg, with_bg, lifetime)| {
        (
            prop::collection::vec(rule_strategy(n_seg), 0..14),
            prop::collection::vec(rule_strategy(n_seg), if with_bg { 1..3 } else { 0..1 }),
        )
            .prop_map(move |(rules, bg)| BundleSpec {
                n_seg,
                lifetime,
                rules,
                bg,
            })
    })
}

#[derive(Debug, Clone)]
struct Req {
    source: Option<&'static str>,
    destination: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    header: Option<&'static str>,
    bg: Option<&'static str>,
    time: i64,
    /// Lifetime of a well-formed forwarded certificate, in minutes.
    cert: Option<i64>,
}

fn req_strategy() -> impl Strategy<Value = Req> {
    (
        prop::option::of(prop::sample::select(IDS)),
        prop::option::of(prop::sample::select(IDS)),
        prop::sample::select(&["GET", "POST", "get", "DELETE", "PUT"][..]),
        prop::sample::select(REQ_PATHS),
        prop::sample::select(&["h1", "h1:8443", "H2", "h3", ""][..]),
        prop::option::of(prop::sample::select(&["T", "E", "t"][..])),
        prop::option::of(prop::sample::select(
            &["", "fire in ward 3", "bad\u{7}"][..],
        )),
        1_700_000_000i64..1_800_000_000,
        prop::option::of(prop::sample::select(&[1i64, 30, 60, 61, 600][..])),
    )
        .prop_map(
            |(source, destination, method, path, host, header, bg, time, cert)| Req {
                source,
                destination,
                method,
                path,
                host,
                header,
                bg,
                time,
                cert,
            },
        )
}

/// Build the request and hand it to `f`.
fn with_request<T>(r: &Req, f: impl FnOnce(&Request<'_>) -> T) -> T {
    let mut headers = HashMap::new();
    if let Some(h) = r.header {
        headers.insert("x-p".to_string(), h.to_string());
    }
    if let Some(b) = r.bg {
        headers.insert("x-bg".to_string(), b.to_string());
    }
    let time = jiff::Timestamp::from_second(r.time).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let facts = r.cert.map(|mins| {
        let life = jiff::SignedDuration::from_mins(mins);
        let not_before = time - life / 2;
        CertificateFacts {
            uri_sans: vec![r.source.unwrap_or("").to_string()],
            is_ca: false,
            not_before,
            not_after: not_before + life,
        }
    });
    let mut req = Request::new(r.method, r.path);
    req.source = r.source;
    req.destination = r.destination;
    req.host = r.host;
    req.headers = &headers;
    req.time = time;
    if let Some(fa) = &facts {
        req.peer_certificate = PeerCertificate::Parsed(fa);
    }
    f(&req)
}

fn compile(spec: &BundleSpec) -> Result<Policy, TestCaseError> {
    let yaml = spec.yaml();
    Policy::from_yaml_str("gen.yaml", &yaml)
        .map_err(|e| TestCaseError::fail(format!("generated bundle rejected: {e}\n{yaml}")))
}

/// The who-can-reach target(s) for a request's destination: the exact ID, and its segment.
fn targets(policy: &Policy, dst: Option<&str>) -> Vec<Vec<super::space::Pat>> {
    let tds: Vec<&str> = policy.trust_domains().collect();
    let id = dst
        .and_then(|d| crate::identity::parse_spiffe_id(d).ok())
        .filter(|d| tds.contains(&d.trust_domain_name()));
    match (id, dst) {
        (Some(_), Some(d)) => {
            let exact = Pattern::parse_spiffe(d).map(|p| pat_of(&p));
            let mut out: Vec<Vec<super::space::Pat>> = exact.into_iter().map(|p| vec![p]).collect();
            for s in policy.view_segments() {
                let pats: Vec<_> = s.members.iter().map(pat_of).collect();
                if let Some(first) = out.first() {
                    if pats.iter().any(|p| p.overlaps(&first[0])) {
                        out.push(pats);
                    }
                }
            }
            out
        }
        _ => vec![vec![missing_destination()]],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn who_can_reach_agrees_with_decide(spec in bundle_strategy(), reqs in prop::collection::vec(req_strategy(), 1..24)) {
        let policy = compile(&spec)?;
        // The default budget: generated bundles must fit in it as the shipped one does.
        let budget = Budget::default_limits();
        let time = TimeUniverse::new(&[&policy], &budget).expect("budget");
        let model = Model::new(&policy, &time, &budget).expect("budget");
        let an = Analyzer::new(&model, &time, &budget);
        let matrix = an.matrix().expect("budget");
        let tds: Vec<&str> = policy.trust_domains().collect();
        for r in &reqs {
            let (verdict, reason, rule, segs) = with_request(r, |req| {
                let d = policy.decide(req);
                (d.verdict, d.reason, d.rule.map(str::to_string), (d.source_segment.map(str::to_string), d.destination_segment.map(str::to_string)))
            });
            for target in targets(&policy, r.destination) {
                let reach = an.who_can_reach("t", &target).expect("budget");
                let covered = with_request(r, |req| {
                    with_point(req, &tds, policy.break_glass_header(), |p| {
                        reach.grants.iter().any(|g| {
                            g.cubes.iter().any(|c| c.contains(p, &|a, t| time.matches(a, t)))
                                && !g.except.iter().any(|e| {
                                    e.cubes.iter().any(|c| c.contains(p, &|a, t| time.matches(a, t)))
                                })
                        })
                    })
                })
                .unwrap_or(false);
                prop_assert_eq!(
                    covered,
                    verdict == Verdict::Allow,
                    "request {:?} decided {:?} {:?} {:?}; target {:?}\nbundle:\n{}",
                    r, verdict, reason, rule,
                    target.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    spec.yaml()
                );
            }
            if verdict == Verdict::Allow {
                let from = segs.0.clone().unwrap_or_else(|| OUTSIDE.to_string());
                let to = match (&segs.1, r.destination.and_then(|d| crate::identity::parse_spiffe_id(d).ok()).filter(|d| tds.contains(&d.trust_domain_name()))) {
                    (Some(s), _) => s.clone(),
                    (None, Some(_)) => OUTSIDE.to_string(),
                    (None, None) => super::analyze::NO_DESTINATION.to_string(),
                };
                prop_assert!(matrix.cell(&from, &to).is_some(), "allowed {:?} but matrix has no {} -> {}\n{}", r, from, to, spec.yaml());
            }
        }
        let findings = an.findings(&matrix, &["s0".to_string()]).expect("budget");
        for f in &findings {
            if matches!(f.kind, "redundant-allow" | "redundant-deny" | "shadowed-by-deny" | "redundant-break-glass") {
                let name = f.rule.clone().unwrap_or_default();
                for r in &reqs {
                    let decided = with_request(r, |req| policy.decide(req).rule.map(str::to_string));
                    prop_assert_ne!(decided.as_deref(), Some(name.as_str()), "{} reported as never deciding, but decides {:?}\n{}", name, r, spec.yaml());
                }
            }
        }
        let dis = an.disagreements.borrow().clone();
        prop_assert!(dis.is_empty(), "{:?}\n{}", dis, spec.yaml());
    }

    #[test]
    fn diff_sees_every_changed_request(old in bundle_strategy(), edits in prop::collection::vec((0usize..6, any::<prop::sample::Index>()), 0..3), reqs in prop::collection::vec(req_strategy(), 1..24)) {
        let mut new = old.clone();
        let mut expect_zero = true;
        for (kind, at) in edits {
            match kind {
                // Reorder: never a change.
                0 | 1 if new.rules.len() > 1 => {
                    let n = new.rules.len();
                    let i = at.index(n);
                    new.rules.swap(i, (i + 1) % n);
                }
                2 if !new.rules.is_empty() => {
                    new.rules.remove(at.index(new.rules.len()));
                    expect_zero = false;
                }
                3 if !new.rules.is_empty() => {
                    let i = at.index(new.rules.len());
                    new.rules[i].deny = !new.rules[i].deny;
                    expect_zero = false;
                }
                4 if !new.rules.is_empty() => {
                    let i = at.index(new.rules.len());
                    new.rules[i].paths = None;
                    expect_zero = false;
                }
                5 => {
                    new.lifetime = !new.lifetime;
                    expect_zero = false;
                }
                _ => {}
            }
        }
        let po = compile(&old)?;
        let pn = compile(&new)?;
        let budget = Budget::default_limits();
        let time = TimeUniverse::new(&[&po, &pn], &budget).expect("budget");
        let mo = Model::new(&po, &time, &budget).expect("budget");
        let mn = Model::new(&pn, &time, &budget).expect("budget");
        let d = diff(&mo, &mn, &time, &budget).expect("budget");
        prop_assert!(d.disagreements.is_empty(), "{:?}", d.disagreements);
        if expect_zero {
            prop_assert_eq!(d.exit(), super::Exit::Ok, "a pure reorder changed something: {:?}", d.grants.iter().chain(&d.revocations).map(|c| c.example.describe()).collect::<Vec<_>>());
        }
        for r in &reqs {
            let (a, b) = with_request(r, |req| (po.decide(req).verdict, pn.decide(req).verdict));
            if a == Verdict::Deny && b == Verdict::Allow {
                prop_assert!(!d.grants.is_empty(), "{:?} newly allowed but diff reports no grant\nold:\n{}\nnew:\n{}", r, old.yaml(), new.yaml());
            }
            if a == Verdict::Allow && b == Verdict::Deny {
                prop_assert!(!d.revocations.is_empty(), "{:?} newly denied but diff reports no revocation\nold:\n{}\nnew:\n{}", r, old.yaml(), new.yaml());
            }
        }
    }
}
