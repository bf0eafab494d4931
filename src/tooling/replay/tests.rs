//! Unit tests of `wardgate replay`: the lazy per-record step against an exhaustive reference,
//! the bounded line reader, and the gates.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Cursor;

use super::decide::{Outcome, Replayer};
use super::gate::{self, Counts, Limit};
use super::read::{Line, LogReader, MAX_LINE_BYTES};
use super::Exit;
use crate::decision_log::DecisionRecord;
use crate::policy::{
    CertificateFacts, Decision, PeerCertificate, Policy, Reason, Request, Verdict,
};

fn hospital_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/bundles/hospital.yaml");
    std::fs::read_to_string(path).expect("hospital bundle")
}

fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the bundle no longer contains {from:?}"
    );
    text.replacen(from, to, 1)
}

/// The hospital bundle with more for replay to be unsure about: a second header condition, a
/// narrower purpose-of-use list, a lifetime bound on the clinical segment, a dropped rule.
fn candidate() -> Policy {
    let h = hospital_text();
    let h = edit(
        &h,
        "    members: [\"spiffe://hospital.example/ns/clinical/**\"]\n",
        "    members: [\"spiffe://hospital.example/ns/clinical/**\"]\n    max_svid_lifetime: 24h\n",
    );
    let h = edit(
        &h,
        "headers: {x-purpose-of-use: [TREAT, ETREAT]}",
        "headers: {x-purpose-of-use: [TREAT], x-tenant: [north, south]}",
    );
    let h = edit(
        &h,
        "  - name: ehr-orders-lab-tests\n    from: [\"spiffe://hospital.example/ns/clinical/sa/ehr\"]\n    to: [\"spiffe://hospital.example/ns/clinical/sa/lab\"]\n    methods: [POST]\n    paths: [\"/orders\"]\n",
        "  - name: lab-reads-imaging-studies\n    from: [\"spiffe://hospital.example/ns/clinical/sa/lab\"]\n    to: [\"spiffe://hospital.example/ns/clinical/sa/imaging\"]\n    methods: [GET]\n    paths: [\"/studies/**\"]\n    when:\n      headers: {x-tenant: [north]}\n",
    );
    let h = edit(&h, "revision: 1", "revision: 2");
    Policy::from_yaml_str("candidate.yaml", &h).expect("candidate compiles")
}

fn hospital() -> Policy {
    Policy::from_yaml_str("hospital.yaml", &hospital_text()).expect("hospital compiles")
}

const IDS: [&str; 7] = [
    "spiffe://hospital.example/ns/clinical/sa/ehr",
    "spiffe://hospital.example/ns/clinical/sa/lab",
    "spiffe://hospital.example/ns/clinical/sa/imaging",
    "spiffe://hospital.example/ns/clinical/sa/pharmacy",
    "spiffe://hospital.example/ns/admin/sa/billing",
    "spiffe://partner-lab.example/ns/vendor/sa/reflab",
    "spiffe://hospital.example/ns/admin/sa/interface-engine",
];
const REQUESTS: [(&str, &str); 8] = [
    ("GET", "/results/1"),
    ("POST", "/orders"),
    ("GET", "/studies/7"),
    ("POST", "/prescriptions"),
    ("GET", "/admin"),
    ("GET", "/encounters/3/billing-codes"),
    ("POST", "/inbound/results"),
    ("GET", "/formulary"),
];

/// Logged records: every pair and request, decided by the hospital bundle under a few sets of
/// headers and certificates (what the server would have logged), plus some the hospital bundle
/// cannot have written (a flipped verdict).
fn records() -> Vec<DecisionRecord> {
    let policy = hospital();
    let time: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().expect("time");
    let header_sets: [&[(&str, &str)]; 4] = [
        &[],
        &[("x-purpose-of-use", "TREAT"), ("x-tenant", "north")],
        &[("x-break-glass-reason", "code blue")],
        &[("x-purpose-of-use", "ETREAT")],
    ];
    let mut out = Vec::new();
    for from in IDS {
        for to in IDS {
            for (method, path) in REQUESTS {
                for (h, headers) in header_sets.iter().enumerate() {
                    let headers: HashMap<String, String> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    let cert = (h % 2 == 1).then(|| {
                        CertificateFacts::simulated(from, time, jiff::SignedDuration::from_mins(30))
                    });
                    let mut req = Request::new(method, path);
                    req.source = Some(from);
                    req.destination = Some(to);
                    req.headers = &headers;
                    req.time = time;
                    if let Some(c) = &cert {
                        req.peer_certificate = PeerCertificate::Parsed(c);
                    }
                    let d = policy.decide(&req);
                    let mut rec = DecisionRecord {
                        time: time.to_string(),
                        request_id: None,
                        source: Some(from.to_string()),
                        source_segment: d.source_segment.map(str::to_string),
                        destination: Some(to.to_string()),
                        destination_segment: d.destination_segment.map(str::to_string),
                        method: method.to_string(),
                        path: path.to_string(),
                        host: String::new(),
                        decision: d.verdict,
                        reason: d.reason,
                        rule: d.rule.map(str::to_string),
                        revision: Some(1),
                        latency_us: 1,
                        break_glass_reason: (d.reason == Reason::BreakGlass)
                            .then(|| headers.get("x-break-glass-reason").cloned())
                            .flatten(),
                        enforced: true,
                        path_form: None,
                        break_glass_header: None,
                    };
                    if h == 3 {
                        // Not what the hospital bundle decides for this request.
                        rec.decision = match rec.decision {
                            Verdict::Allow => Verdict::Deny,
                            Verdict::Deny => Verdict::Allow,
                        };
                    }
                    out.push(rec);
                }
            }
        }
    }
    out
}

// --- the exhaustive reference: every completion of every unknown --------------------------------

enum RefUnknown {
    Header(String, Vec<Option<String>>),
    Certificate(Vec<Option<jiff::SignedDuration>>),
}

impl RefUnknown {
    fn name(&self) -> String {
        match self {
            RefUnknown::Header(h, _) => format!("header {h}"),
            RefUnknown::Certificate(_) => "forwarded certificate".to_string(),
        }
    }
    fn len(&self) -> usize {
        match self {
            RefUnknown::Header(_, v) => v.len(),
            RefUnknown::Certificate(v) => v.len(),
        }
    }
}

fn ref_unknowns(policies: &[&Policy], rec: &DecisionRecord) -> Vec<RefUnknown> {
    let mut headers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut bg: BTreeSet<String> = BTreeSet::new();
    let mut lifetimes: BTreeSet<jiff::SignedDuration> = BTreeSet::new();
    for p in policies {
        for r in p.view_rules().chain(p.view_break_glass()) {
            for (name, values) in r.headers {
                headers
                    .entry(name.to_string())
                    .or_default()
                    .extend(values.iter().map(|v| v.to_string()));
            }
        }
        if let Some(h) = p.break_glass_header() {
            bg.insert(h.to_string());
        }
        for s in p.view_segments() {
            lifetimes.extend(s.max_svid_lifetime);
        }
    }
    let mut out = Vec::new();
    for (name, values) in headers {
        if bg.contains(&name) {
            continue;
        }
        let mut v = vec![None];
        v.extend(values.into_iter().map(Some));
        v.push(Some("\u{1}other".to_string()));
        out.push(RefUnknown::Header(name, v));
    }
    if rec.break_glass_reason.is_none() {
        for h in bg {
            out.push(RefUnknown::Header(
                h,
                vec![None, Some("replayed break-glass request".to_string())],
            ));
        }
    }
    if !lifetimes.is_empty() {
        let mut v = vec![None];
        for l in lifetimes {
            v.push(Some(l));
            v.push(Some(l + jiff::SignedDuration::from_secs(1)));
        }
        out.push(RefUnknown::Certificate(v));
    }
    out
}

fn ref_decide<'p>(
    policy: &'p Policy,
    others: &[&Policy],
    rec: &DecisionRecord,
    unknown: &[RefUnknown],
    choice: &[usize],
) -> Decision<'p> {
    let time: jiff::Timestamp = rec.time.parse().expect("time");
    let mut headers: HashMap<String, String> = HashMap::new();
    if let Some(reason) = &rec.break_glass_reason {
        for p in others {
            if let Some(h) = p.break_glass_header() {
                headers.insert(h.to_string(), reason.clone());
            }
        }
    }
    let mut cert = None;
    for (u, &c) in unknown.iter().zip(choice) {
        match u {
            RefUnknown::Header(name, values) => {
                if let Some(Some(v)) = values.get(c) {
                    headers.insert(name.clone(), v.clone());
                }
            }
            RefUnknown::Certificate(values) => cert = values.get(c).copied().flatten(),
        }
    }
    let source = rec.source.clone().unwrap_or_default();
    let facts = cert.map(|life| CertificateFacts::simulated(&source, time, life));
    let mut req = Request::new(&rec.method, &rec.path);
    req.source = rec.source.as_deref();
    req.destination = rec.destination.as_deref();
    req.host = &rec.host;
    req.headers = &headers;
    req.time = time;
    if let Some(f) = &facts {
        req.peer_certificate = PeerCertificate::Parsed(f);
    }
    policy.decide(&req)
}

/// What `replay` concluded, comparable across implementations (lists sorted).
#[derive(Debug, PartialEq, Eq)]
enum Summary {
    Unchanged,
    Changed(Verdict, Reason, Option<String>),
    Undetermined(BTreeSet<String>, BTreeSet<String>),
    NotReproduced,
}

fn summary(o: Outcome) -> Summary {
    match o {
        Outcome::Unchanged => Summary::Unchanged,
        Outcome::Changed(v, r, rule) => Summary::Changed(v, r, rule),
        Outcome::Undetermined(on, outs) => {
            Summary::Undetermined(on.into_iter().collect(), outs.into_iter().collect())
        }
        Outcome::NotReproduced => Summary::NotReproduced,
    }
}

/// Every completion decided, as `replay` did before it explored lazily.
fn reference(candidate: &Policy, baseline: Option<&Policy>, rec: &DecisionRecord) -> Summary {
    if rec.reason == Reason::BadCertificate {
        return Summary::Unchanged;
    }
    let policies: Vec<&Policy> = std::iter::once(candidate).chain(baseline).collect();
    let unknown = ref_unknowns(&policies, rec);
    let mut all: Vec<Vec<usize>> = vec![Vec::new()];
    for u in &unknown {
        all = all
            .into_iter()
            .flat_map(|p| {
                (0..u.len()).map(move |i| {
                    let mut p = p.clone();
                    p.push(i);
                    p
                })
            })
            .collect();
    }
    let same = |d: &Decision<'_>| {
        d.verdict == rec.decision && d.reason == rec.reason && d.rule == rec.rule.as_deref()
    };
    let consistent: Vec<&Vec<usize>> = match baseline {
        None => all.iter().collect(),
        Some(b) => all
            .iter()
            .filter(|c| same(&ref_decide(b, &policies, rec, &unknown, c)))
            .collect(),
    };
    if consistent.is_empty() {
        return Summary::NotReproduced;
    }
    let decided: Vec<(Vec<usize>, Decision<'_>)> = consistent
        .iter()
        .map(|c| {
            (
                (*c).clone(),
                ref_decide(candidate, &policies, rec, &unknown, c),
            )
        })
        .collect();
    let verdicts: HashSet<Verdict> = decided.iter().map(|(_, d)| d.verdict).collect();
    let first = decided[0].1;
    if verdicts.len() > 1 {
        let mut matter = BTreeSet::new();
        for (k, u) in unknown.iter().enumerate() {
            let mut groups: HashMap<Vec<usize>, HashSet<Verdict>> = HashMap::new();
            for (c, d) in &decided {
                let mut key = c.clone();
                key.remove(k);
                groups.entry(key).or_default().insert(d.verdict);
            }
            if groups.values().any(|v| v.len() > 1) {
                matter.insert(u.name());
            }
        }
        let outcomes = decided
            .iter()
            .map(|(_, d)| {
                format!(
                    "{} by {}",
                    d.verdict,
                    super::decide::decided_by(d.reason, d.rule)
                )
            })
            .collect();
        return Summary::Undetermined(matter, outcomes);
    }
    if first.verdict == rec.decision {
        Summary::Unchanged
    } else {
        Summary::Changed(first.verdict, first.reason, first.rule.map(str::to_string))
    }
}

/// Lazy exploration reaches exactly what deciding every completion reaches, with and without a
/// baseline, on records the hospital bundle wrote and on records it cannot have written.
#[test]
fn lazy_replay_agrees_with_every_completion_decided() {
    let base = hospital();
    let cand = candidate();
    let recs = records();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for baseline in [Some(&base), None] {
        let replayer = Replayer::new(&cand, baseline);
        // Every third record: the reference decides every completion (160 of them per bundle
        // here), which takes a while in a debug build.
        for rec in recs.iter().step_by(3) {
            let (got, _) = replayer.replay(rec).expect("replayable");
            let got = summary(got);
            let want = reference(&cand, baseline, rec);
            *seen
                .entry(match &got {
                    Summary::Unchanged => "unchanged",
                    Summary::Changed(..) => "changed",
                    Summary::Undetermined(..) => "undetermined",
                    Summary::NotReproduced => "not reproduced",
                })
                .or_default() += 1;
            match (&got, &want) {
                // With a baseline excluding completions, no single unknown may flip the verdict
                // on its own; both then name every unknown read, which the reference cannot tell
                // from every unknown there is.
                (Summary::Undetermined(on, outs), Summary::Undetermined(ref_on, ref_outs))
                    if ref_on.is_empty() =>
                {
                    assert_eq!(outs, ref_outs, "{rec:?}");
                    assert!(!on.is_empty(), "{rec:?}");
                }
                _ => assert_eq!(got, want, "{rec:?} (baseline: {})", baseline.is_some()),
            }
        }
    }
    // The records exercise every kind of outcome.
    for kind in ["unchanged", "changed", "undetermined", "not reproduced"] {
        assert!(seen.get(kind) > Some(&0), "no {kind} outcome: {seen:?}");
    }
}

/// A record the rules of neither bundle look at headers or certificates for costs one decision
/// per bundle; one that depends on a header is decided under its values only.
#[test]
fn undetermined_names_what_the_outcome_depends_on() {
    let base = hospital();
    let cand = candidate();
    let replayer = Replayer::new(&cand, None);
    let mut rec = records()
        .into_iter()
        .find(|r| {
            r.path == "/prescriptions" && r.decision == Verdict::Allow && r.reason == Reason::Rule
        })
        .expect("an allowed prescription");
    rec.break_glass_reason = None;
    let (got, _) = replayer.replay(&rec).expect("replayable");
    let Outcome::Undetermined(on, outcomes) = got else {
        panic!("expected undetermined, got {got:?}");
    };
    assert!(
        on.contains(&"header x-purpose-of-use".to_string()),
        "{on:?}"
    );
    assert!(on.contains(&"header x-tenant".to_string()), "{on:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| o == "allow by ehr-sends-prescriptions (rule)"),
        "{outcomes:?}"
    );
    // With the baseline, the logged allow says x-purpose-of-use was TREAT or ETREAT; the
    // candidate still depends on the header values it narrows to and on x-tenant.
    let replayer = Replayer::new(&cand, Some(&base));
    let (got, _) = replayer.replay(&rec).expect("replayable");
    assert!(matches!(got, Outcome::Undetermined(..)), "{got:?}");
}

#[test]
fn a_record_with_a_bad_time_is_skipped_with_the_reason() {
    let cand = candidate();
    let replayer = Replayer::new(&cand, None);
    let mut rec = records().remove(0);
    rec.time = "yesterday".into();
    let err = replayer.replay(&rec).expect_err("bad time");
    assert!(
        err.contains("`time` `yesterday` is not an RFC 3339 instant"),
        "{err}"
    );
}

// --- reading ------------------------------------------------------------------------------------

fn read_all(bytes: &[u8]) -> Vec<(usize, Result<DecisionRecord, String>)> {
    let mut r = LogReader::new(Cursor::new(bytes.to_vec()));
    let mut out = Vec::new();
    while let Some((n, line)) = r.next_line().expect("in-memory read") {
        out.push((
            n,
            match line {
                Line::Record(rec) => Ok(*rec),
                Line::Skipped(why) => Err(why),
            },
        ));
    }
    out
}

const RECORD: &str = r#"{"time":"2026-11-23T10:00:00Z","source":"spiffe://hospital.example/ns/clinical/sa/ehr","destination":"spiffe://hospital.example/ns/clinical/sa/lab","method":"GET","path":"/results/1","decision":"allow","reason":"rule","rule":"ehr-reads-lab-results","latency_us":3}"#;

#[test]
fn an_envoy_access_log_is_recognised_line_by_line() {
    let text = concat!(
        "[2026-11-23T10:00:00.123Z] \"GET /results/1 HTTP/1.1\" 200 - 0 12 3 2 \"-\" \"curl/8.5\" \"id-1\" \"lab\" \"127.0.0.1:8080\"\n",
        "{\"start_time\":\"2026-11-23T10:00:00Z\",\"response_code\":403,\"method\":\"GET\"}\n",
        "plain text\n",
    );
    let lines = read_all(text.as_bytes());
    assert_eq!(lines.len(), 3);
    let why = |i: usize| lines[i].1.as_ref().expect_err("skipped").clone();
    assert!(why(0).starts_with("an Envoy access log line"), "{}", why(0));
    assert!(
        why(1).starts_with("an Envoy access log line (JSON format)"),
        "{}",
        why(1)
    );
    assert!(why(2).starts_with("not JSON"), "{}", why(2));
}

#[test]
fn blank_overlong_and_broken_lines_do_not_stop_the_reading() {
    let mut text = Vec::new();
    text.extend_from_slice(b"\n   \n");
    text.extend_from_slice(RECORD.as_bytes());
    text.push(b'\n');
    text.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES * 3));
    text.push(b'\n');
    text.extend_from_slice(b"\xff\xfe not utf-8\n");
    text.extend_from_slice(RECORD.as_bytes());
    text.push(b'\n');
    text.extend_from_slice(&RECORD.as_bytes()[..40]);
    let lines = read_all(&text);
    let numbers: Vec<usize> = lines.iter().map(|(n, _)| *n).collect();
    // Blank lines 1 and 2 are not reported, but are counted in the numbering.
    assert_eq!(numbers, [3, 4, 5, 6, 7]);
    assert!(lines[0].1.is_ok());
    let why = |i: usize| lines[i].1.as_ref().expect_err("skipped").clone();
    assert!(
        why(1).contains(&format!("longer than {MAX_LINE_BYTES} bytes")),
        "{}",
        why(1)
    );
    assert!(why(2).contains("not UTF-8"), "{}", why(2));
    assert!(
        lines[3].1.is_ok(),
        "the line after an overlong one is read whole"
    );
    assert!(
        why(4).contains("the last line has no newline"),
        "{}",
        why(4)
    );
}

// --- gates --------------------------------------------------------------------------------------

#[test]
fn flag_values_parse_as_documented() {
    assert!(gate::parse_percent("99%").is_ok());
    assert!(gate::parse_percent("99.5").is_ok());
    assert!(gate::parse_percent("101%").is_err());
    assert!(gate::parse_percent("-1%").is_err());
    assert!(gate::parse_percent("most").is_err());
    assert_eq!(gate::parse_limit("0"), Ok(Limit::Count(0)));
    assert!(matches!(gate::parse_limit("5%"), Ok(Limit::Share(_))));
    assert!(gate::parse_limit("five").is_err());
    assert!(gate::parse_limit("-3").is_err());
}

fn counts(lines: usize, read: usize, grants: usize, revocations: usize, open: usize) -> Counts {
    Counts {
        lines,
        read,
        grants,
        revocations,
        undetermined: open,
    }
}

#[test]
fn an_unusable_log_never_passes_and_undetermined_outranks_grants() {
    let p = |s: &str| gate::parse_percent(s).expect("percent");
    let l = |s: &str| gate::parse_limit(s).expect("limit");
    let exit = |c: Counts, min: &str, max: Option<&str>| gate::verdict(&c, p(min), max.map(l)).exit;
    // Nothing to read, nothing read: exit 3 even when no share is required.
    assert_eq!(exit(counts(0, 0, 0, 0, 0), "0%", None), Exit::Input);
    assert_eq!(exit(counts(17, 0, 0, 0, 0), "0%", None), Exit::Input);
    // 98 of 100 is below 99%; 99 of 100 is not.
    assert_eq!(exit(counts(100, 98, 0, 0, 0), "99%", None), Exit::Input);
    assert_eq!(exit(counts(100, 99, 0, 0, 0), "99%", None), Exit::Ok);
    assert_eq!(exit(counts(100, 99, 0, 0, 0), "100%", None), Exit::Input);
    // An unusable log outranks every finding.
    assert_eq!(
        exit(counts(100, 50, 3, 0, 40), "99%", Some("0")),
        Exit::Input
    );
    // Undetermined over the limit, by count and by share.
    assert_eq!(
        exit(counts(10, 10, 0, 0, 2), "99%", Some("1")),
        Exit::Undetermined
    );
    assert_eq!(exit(counts(10, 10, 0, 0, 1), "99%", Some("1")), Exit::Ok);
    assert_eq!(
        exit(counts(10, 10, 0, 0, 2), "99%", Some("10%")),
        Exit::Undetermined
    );
    assert_eq!(exit(counts(10, 10, 0, 0, 1), "99%", Some("10%")), Exit::Ok);
    // Over the limit outranks grants and revocations; within it, they decide.
    assert_eq!(
        exit(counts(10, 10, 1, 1, 5), "99%", Some("0")),
        Exit::Undetermined
    );
    assert_eq!(exit(counts(10, 10, 1, 1, 5), "99%", None), Exit::NewGrants);
    assert_eq!(exit(counts(10, 10, 0, 1, 5), "99%", Some("50%")), Exit::No);
    // Every change undetermined and no gate: exit 0, but the result says so.
    let v = gate::verdict(&counts(10, 10, 0, 0, 4), p("99%"), None);
    assert_eq!(v.exit, Exit::Ok);
    assert!(
        v.result.contains("4 undetermined, not gated"),
        "{}",
        v.result
    );
}

/// What the per-record step costs, lazily and by deciding every completion (the way `replay`
/// worked before): `cargo test --release --lib replay_cost -- --ignored --nocapture`. The
/// figures are in docs/performance.md.
#[test]
#[ignore = "a measurement, not a check"]
fn replay_cost_lazy_against_every_completion() {
    let base = hospital();
    let cand = candidate();
    let recs = records();
    for baseline in [None, Some(&base)] {
        let replayer = Replayer::new(&cand, baseline);
        let start = std::time::Instant::now();
        for rec in &recs {
            let _ = replayer.replay(rec);
        }
        let lazy = start.elapsed() / recs.len() as u32;
        let start = std::time::Instant::now();
        for rec in &recs {
            let _ = reference(&cand, baseline, rec);
        }
        let every = start.elapsed() / recs.len() as u32;
        println!(
            "replay cost per record (baseline: {}): lazy {lazy:?}, every completion {every:?}",
            baseline.is_some()
        );
    }
}
