//! The bodies of wardgate's fuzz targets, one function per target, each taking the fuzzer's
//! bytes and panicking only when an invariant breaks.
//!
//! `fuzz_targets/*.rs` hand libFuzzer's input to these functions; `tests/fuzz_corpus.rs` in the
//! main crate includes this file and replays every committed corpus file and crash through the
//! same functions on stable Rust. Each target drives the code the server or a verb runs (through
//! the public API or the hidden `wardgate::fuzzing` door) and states its oracle beside it. Input
//! that is not UTF-8 is skipped where wardgate only ever receives strings (protobuf `string`
//! fields, YAML and JSON text). Nothing here may reimplement what it checks, except as an
//! independent oracle written out plainly.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use wardgate::extauthz::{AuthzConfig, AuthzService, REASON_HEADER, RULE_HEADER};
use wardgate::fuzzing::{self, Analysis, Replayed};
use wardgate::identity::{self, MAX_SPIFFE_ID_LEN};
use wardgate::policy::normalize;
use wardgate::policy::{
    Action, CertificateFacts, HttpAttributes, Pattern, PeerCertificate, Policy, Reason, Request,
    Verdict,
};

/// The shipped example bundle: the policy the request-shaped targets are judged against.
const HOSPITAL: &str = include_str!("../../deploy/bundles/hospital.yaml");

fn hospital() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| match Policy::from_yaml_str("hospital.yaml", HOSPITAL) {
        Ok(p) => p,
        Err(e) => panic!("deploy/bundles/hospital.yaml does not compile: {e}"),
    })
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

// ---------------------------------------------------------------------------------------------
// path_normalize

/// Raw `:path` → decision path or `bad_path`. Oracle: every accepted path names the same
/// resource for an RFC 3986 upstream that decodes unreserved characters and for one that does
/// not; the result is a fixed point, borrowed when the input was already normal; `is_normal`
/// agrees with that; `host` returns a part of its input.
pub fn path_normalize(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    if let Ok(decided) = normalize::path(raw) {
        if let Err(why) = fuzzing::upstream_agrees(raw, &decided) {
            panic!("RFC 3986 disagrees: {why}");
        }
        match normalize::path(&decided) {
            Ok(Cow::Borrowed(again)) if again == decided => {}
            other => panic!("{raw:?} -> {decided:?} is not a fixed point: {other:?}"),
        }
        assert!(normalize::is_normal(&decided), "{decided:?} not normal");
        assert!(decided == "/" || !decided.ends_with('/'));
    }
    let identity = matches!(normalize::path(raw), Ok(Cow::Borrowed(p)) if p == raw);
    assert_eq!(normalize::is_normal(raw), identity, "is_normal({raw:?})");
    let host = normalize::host(raw);
    assert!(raw.starts_with(host.trim_end_matches('.')), "host {raw:?}");
}

// ---------------------------------------------------------------------------------------------
// spiffe_id

/// Segment-wise glob of a pattern's segments (after the trust domain or the leading `/`)
/// against a path's segments: `*` is one segment, a final `**` one or more. The plain oracle
/// for `Pattern`'s matcher.
fn glob(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_last() {
        Some((&"**", head)) => {
            path.len() > head.len() && head.iter().zip(path).all(|(p, s)| *p == "*" || p == s)
        }
        _ => {
            pattern.len() == path.len()
                && pattern.iter().zip(path).all(|(p, s)| *p == "*" || p == s)
        }
    }
}

fn segments(path: &str) -> Vec<&str> {
    match path.strip_prefix('/').unwrap_or(path) {
        "" => Vec::new(),
        rest => rest.split('/').collect(),
    }
}

/// SPIFFE ID parsing and pattern matching. Input: an ID, a newline, a pattern (or the same
/// text twice). Oracles: `parse_spiffe_id` and the allocation-free `spiffe_id_parts` accept the
/// same strings with the same parts; the `spiffe` crate accepts every ID wardgate accepts, and
/// wardgate accepts every ID the crate reads back to exactly the same string (within the length
/// limit); a SPIFFE pattern matches an ID exactly when a segment-wise glob does, and exactly
/// when the ID as a pattern is a subset of it and overlaps it; path patterns likewise against
/// the normalised second line.
pub fn spiffe_id(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let (id, pattern) = input.split_once('\n').unwrap_or((input, input));

    let parsed = identity::parse_spiffe_id(id);
    let parts = identity::spiffe_id_parts(id);
    match (&parsed, parts) {
        (Ok(p), Some((td, path))) => {
            assert_eq!(p.trust_domain_name(), td, "{id:?}");
            assert_eq!(p.path(), path, "{id:?}");
            assert_eq!(p.to_string(), id, "{id:?}");
        }
        (Err(_), None) => {}
        (p, q) => panic!("parse_spiffe_id and spiffe_id_parts disagree on {id:?}: {p:?} / {q:?}"),
    }
    match spiffe::SpiffeId::new(id) {
        Ok(crate_id) => {
            if crate_id.to_string() == id && id.len() <= MAX_SPIFFE_ID_LEN {
                assert!(
                    parsed.is_ok(),
                    "spiffe crate accepts canonical {id:?}: {parsed:?}"
                );
            }
        }
        Err(e) => assert!(
            parsed.is_err(),
            "spiffe crate rejects {id:?} ({e}), wardgate accepts"
        ),
    }

    if let (Ok(p), Some((td, path))) = (Pattern::parse_spiffe(pattern), parts) {
        let rest = pattern.strip_prefix("spiffe://").unwrap_or(pattern);
        let (ptd, ppath) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let want = ptd == td && glob(&segments(ppath), &segments(path));
        let got = p.matches_id(td, path);
        assert_eq!(got, want, "{pattern:?} matching {id:?}");
        let exact = match Pattern::parse_spiffe(id) {
            Ok(e) => e,
            Err(e) => panic!("valid SPIFFE ID {id:?} is not a pattern: {e}"),
        };
        assert_eq!(exact.is_subset_of(&p), got, "{id:?} subset of {pattern:?}");
        assert_eq!(exact.overlaps(&p), got, "{id:?} overlaps {pattern:?}");
        assert_eq!(p.overlaps(&exact), got, "{pattern:?} overlaps {id:?}");
    }
    if let (Ok(p), Ok(path)) = (Pattern::parse_path(pattern), normalize::path(id)) {
        let want = glob(&segments(pattern), &segments(&path));
        assert_eq!(p.matches_path(&path), want, "{pattern:?} matching {path:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// bundle_compile

/// Work units and MiB the fuzzed analysis may spend (the verbs' defaults are 15,000,000 and
/// 128): small enough that a bundle built to explode is refused in milliseconds.
const FUZZ_ANALYSIS_WORK: u64 = 200_000;
const FUZZ_ANALYSIS_MIB: u64 = 16;

/// Bundle parse + validate + compile, then `analyze` and `diff` under a small budget. Input:
/// YAML text; a line `#--` splits it into several files of one bundle. Oracles: a refusal names
/// a file of the bundle (and a line when it has one); a compiled bundle's analysis either
/// finishes with no claim `decide` contradicts and no difference from itself, or is refused for
/// its cost naming the limit, never runs away (libFuzzer's timeout would report it).
pub fn bundle_compile(data: &[u8]) {
    let Some(input) = text(data) else { return };
    json_compiles_like_yaml(input);
    let sources: Vec<(String, String)> = input
        .split("\n#--\n")
        .enumerate()
        .map(|(i, part)| (format!("f{i}.yaml"), part.to_string()))
        .collect();
    match Policy::from_sources(&sources) {
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "refused without a reason");
            for d in diagnostics.iter() {
                assert!(
                    sources.iter().any(|(name, _)| *name == d.file),
                    "diagnostic names no file of the bundle: {d}"
                );
                assert!(!d.message.is_empty(), "empty diagnostic at {d}");
            }
        }
        Ok(policy) => match fuzzing::analyze_within(&policy, FUZZ_ANALYSIS_WORK, FUZZ_ANALYSIS_MIB)
        {
            Analysis::Finished {
                disagreements,
                self_changes,
            } => {
                assert!(
                    disagreements.is_empty(),
                    "analysis disagrees with decide: {disagreements:?}"
                );
                assert_eq!(self_changes, 0, "the bundle differs from itself");
            }
            Analysis::Refused(why) => {
                assert!(
                    why.contains("exceeds the analysis"),
                    "refusal without its limit: {why}"
                );
            }
        },
    }
}

/// The same text named `*.json`: serde_json reads it, the YAML path's validation judges it.
/// Oracle: every JSON document is YAML, so a text that compiles as JSON compiles as YAML to the
/// same rules; a refusal names the file and says why.
fn json_compiles_like_yaml(input: &str) {
    let one = |name: &str| Policy::from_sources(&[(name.to_string(), input.to_string())]);
    match one("f.json") {
        Ok(json) => {
            let yaml = one("f.yaml").expect("a bundle that compiles as JSON compiles as YAML");
            let rules = |p: &Policy| {
                p.rules()
                    .map(|r| (r.name.to_string(), r.action, r.break_glass))
                    .collect::<Vec<_>>()
            };
            assert_eq!(rules(&json), rules(&yaml), "JSON and YAML readings differ");
            assert_eq!(json.revision(), yaml.revision());
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "refused without a reason");
            for d in diagnostics.iter() {
                assert_eq!(
                    d.file, "f.json",
                    "diagnostic names no file of the bundle: {d}"
                );
                assert!(!d.message.is_empty(), "empty diagnostic at {d}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// policy_reference

/// The fuzzer's bytes read as choices; past the end every choice is the first.
struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.byte()) % n
        }
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    fn some<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        self.flag().then(|| self.pick(items))
    }
    /// A non-empty subset of `items`, or `None` (the key left out).
    fn subset(&mut self, items: &[&str]) -> Option<Vec<String>> {
        let mask = self.byte();
        (mask & 1 == 1).then(|| {
            let chosen: Vec<String> = items
                .iter()
                .enumerate()
                .filter(|(i, _)| mask >> (i + 1) & 1 == 1)
                .map(|(_, s)| format!("\"{s}\""))
                .collect();
            if chosen.is_empty() {
                vec![format!("\"{}\"", items[0])]
            } else {
                chosen
            }
        })
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

const TRUST_DOMAINS: &str = "[a.example, b.example]";
const SEGMENTS: &[(&str, &str)] = &[
    ("s0", "\"spiffe://a.example/ns/n1/**\""),
    (
        "s1",
        "\"spiffe://a.example/ns/n2/**\", \"spiffe://a.example/ns/n2\"",
    ),
    ("s2", "\"spiffe://b.example/**\""),
];
const ID_PATTERNS: &[&str] = &[
    "spiffe://a.example/ns/n1/sa/x",
    "spiffe://a.example/ns/*/sa/y",
    "spiffe://a.example/**",
    "spiffe://a.example/ns/n2/**",
    "spiffe://b.example/ns/n1/sa/z",
    "spiffe://a.example/ns/n2",
];
const PATH_PATTERNS: &[&str] = &["/a", "/a/*", "/a/**", "/b", "/", "/a/*/c", "/%3A/**"];
const IDS: &[&str] = &[
    "spiffe://a.example/ns/n1/sa/x",
    "spiffe://a.example/ns/n1/sa/y",
    "spiffe://a.example/ns/n2/sa/y",
    "spiffe://a.example/ns/n2",
    "spiffe://b.example/ns/n1/sa/z",
    "spiffe://c.example/ns/n1/sa/x",
    "spiffe://A.example/ns/n1/sa/x",
    "spiffe://a.example/ns/n1/sa/x/",
    "not-an-id",
];
const REQUEST_PATHS: &[&str] = &[
    "/a",
    "/a/b",
    "/a/b/c",
    "/b",
    "/",
    "/a/../b",
    "/a%2Fb",
    "/a//b?q=1",
    "/a/b/",
    "/%61",
    "/%3a/x",
];
const HOURS: &[&str] = &["08:00-18:00", "22:00-06:00", "00:00-24:00", "12:00-13:00"];

fn endpoints(c: &mut Choices<'_>, n_segments: usize) -> String {
    let n = 1 + c.below(2);
    let items: Vec<String> = (0..n)
        .map(|_| {
            if n_segments > 0 && c.flag() {
                SEGMENTS[c.below(n_segments)].0.to_string()
            } else {
                format!("\"{}\"", c.pick(ID_PATTERNS))
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn rule_yaml(c: &mut Choices<'_>, name: &str, break_glass: bool, n_segments: usize) -> String {
    let indent = if break_glass { "    " } else { "  " };
    let mut y = format!("{indent}- name: {name}\n");
    if !break_glass && c.flag() {
        y.push_str(&format!("{indent}  action: deny\n"));
    }
    y.push_str(&format!("{indent}  from: {}\n", endpoints(c, n_segments)));
    if c.flag() {
        y.push_str(&format!("{indent}  to: {}\n", endpoints(c, n_segments)));
    }
    for (key, items) in [
        ("methods", &["GET", "post", "DELETE"][..]),
        ("paths", PATH_PATTERNS),
        ("hosts", &["h1", "H2"][..]),
    ] {
        if let Some(list) = c.subset(items) {
            y.push_str(&format!("{indent}  {key}: [{}]\n", list.join(", ")));
        }
    }
    let header = c.flag();
    let schedule = c
        .flag()
        .then(|| (c.pick(HOURS), c.pick(&["UTC", "Europe/Berlin"])));
    if header || schedule.is_some() {
        y.push_str(&format!("{indent}  when:\n"));
        if header {
            y.push_str(&format!("{indent}    headers: {{X-P: [T, E]}}\n"));
        }
        if let Some((hours, tz)) = schedule {
            y.push_str(&format!(
                "{indent}    schedule: {{days: [mon, wed, sat], hours: \"{hours}\", timezone: {tz}}}\n"
            ));
        }
    }
    y
}

/// A bundle in the shape the reference evaluator's property test generates, chosen by `c`.
fn generated_bundle(c: &mut Choices<'_>) -> String {
    let n_segments = c.below(SEGMENTS.len() + 1);
    let mut y = format!("version: 1\nrevision: 7\ntrust_domains: {TRUST_DOMAINS}\n");
    if n_segments > 0 {
        y.push_str("segments:\n");
        let lifetime = c.flag();
        for (i, (name, members)) in SEGMENTS.iter().take(n_segments).enumerate() {
            y.push_str(&format!("  {name}:\n    members: [{members}]\n"));
            if lifetime && i == 0 {
                y.push_str("    max_svid_lifetime: 1h\n");
            }
        }
    }
    let n_rules = c.below(10);
    y.push_str(if n_rules == 0 {
        "rules: []\n"
    } else {
        "rules:\n"
    });
    for i in 0..n_rules {
        y.push_str(&rule_yaml(c, &format!("r{i}"), false, n_segments));
    }
    let n_break_glass = c.below(3);
    if n_break_glass > 0 {
        y.push_str("break_glass:\n  header: x-bg\n  allow:\n");
        for i in 0..n_break_glass {
            y.push_str(&rule_yaml(c, &format!("bg{i}"), true, n_segments));
        }
    }
    y
}

/// A short printable path from the fuzzer's bytes, for paths outside the vocabulary.
fn free_path(c: &mut Choices<'_>) -> String {
    let len = c.below(12);
    let mut p = String::from("/");
    for _ in 0..len {
        p.push(char::from(b' ' + c.byte() % 95));
    }
    p
}

/// The compiled policy against the reference evaluator (a linear scan of the raw bundle) on
/// generated requests. Input: choices of a bundle in the reference property test's shape, then
/// of requests. Oracle: the same verdict, reason and rule for every request; `decide_stated`
/// and `decide_traced` agree with `decide`, and a stated break-glass reason is the header sent.
pub fn policy_reference(data: &[u8]) {
    let mut c = Choices { data, at: 0 };
    let yaml = generated_bundle(&mut c);
    let sources = vec![("gen.yaml".to_string(), yaml)];
    let Ok(policy) = Policy::from_sources(&sources) else {
        return;
    };
    let base = jiff::Timestamp::from_second(1_700_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    for _ in 0..16 {
        if c.done() {
            break;
        }
        let source = c.some(IDS);
        let destination = c.some(IDS);
        let method = c.pick(&["GET", "POST", "get", "DELETE"]);
        let path = if c.below(8) == 0 {
            free_path(&mut c)
        } else {
            c.pick(REQUEST_PATHS).to_string()
        };
        let host = c.pick(&["h1", "h1:8443", "H2", "h3", "", "h1."]);
        let mut headers: HashMap<String, String> = HashMap::new();
        if let Some(v) = c.some(&["T", "E", "t"]) {
            headers.insert("x-p".into(), v.into());
        }
        if let Some(v) = c.some(&["", "fire in ward 3", "   ", "bad\u{7}"]) {
            headers.insert("x-bg".into(), v.into());
        }
        let offset = u32::from_le_bytes([c.byte(), c.byte(), c.byte(), 0]);
        let time = base
            .checked_add(jiff::SignedDuration::from_secs(i64::from(offset) * 7))
            .unwrap_or(base);
        let facts = c.flag().then(|| {
            let lifetime = i64::from(c.byte()) * 60 + 1;
            let id = source.unwrap_or("").to_string();
            let uri_sans = match c.below(3) {
                0 => vec![],
                1 => vec![id],
                _ => vec![id, "spiffe://a.example/x".into()],
            };
            CertificateFacts {
                uri_sans,
                is_ca: c.below(4) == 0,
                not_before: time - jiff::SignedDuration::from_secs(60),
                not_after: time + jiff::SignedDuration::from_secs(lifetime),
            }
        });
        let mut req = Request::new(method, &path);
        req.source = source;
        req.destination = destination;
        req.host = host;
        req.headers = &headers;
        req.time = time;
        if let Some(f) = &facts {
            req.peer_certificate = PeerCertificate::Parsed(f);
        }
        if c.below(20) == 0 {
            req.http = HttpAttributes::Absent;
        }
        let got = policy.decide(&req);
        let want = fuzzing::reference_decide(&sources, &req);
        assert_eq!(
            (got.verdict, got.reason, got.rule.map(str::to_string)),
            want,
            "{req:?}\nbundle:\n{}",
            sources[0].1
        );
        let stated = policy.decide_stated(&req);
        assert_eq!(stated.decision, got);
        let sent = headers.get("x-bg").map(String::as_str);
        assert_eq!(
            stated.break_glass_reason,
            sent.filter(|_| got.reason == Reason::BreakGlass)
        );
        let mut trace = wardgate::policy::Trace::default();
        assert_eq!(policy.decide_traced(&req, &mut trace), got);
    }
}

// ---------------------------------------------------------------------------------------------
// check_request

fn service() -> &'static AuthzService {
    static SERVICE: OnceLock<AuthzService> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let policy = match Policy::from_yaml_str("hospital.yaml", HOSPITAL) {
            Ok(p) => p,
            Err(e) => panic!("deploy/bundles/hospital.yaml does not compile: {e}"),
        };
        let handle = Arc::new(arc_swap::ArcSwapOption::from_pointee(policy));
        AuthzService::new(handle, AuthzConfig::default())
    })
}

fn header<'r>(response: &'r CheckResponse, name: &str) -> Option<&'r str> {
    let headers = match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => &ok.headers,
        Some(HttpResponse::DeniedResponse(denied)) => &denied.headers,
        _ => return None,
    };
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

/// Raw `CheckRequest` protobuf bytes, decoded as tonic does and answered by the service Envoy
/// talks to, with the shipped hospital bundle in force. Oracles: an answer for every request
/// that decodes (never a panic); an OK answer names in `x-wardgate-rule` an allow rule or a
/// break-glass entry of the bundle; a denial is 403 with a known `x-wardgate-reason` and a
/// body that names no rule.
pub fn check_request(data: &[u8]) {
    let Some(response) = fuzzing::check_request_bytes(service(), data) else {
        return;
    };
    let policy = hospital();
    let code = response.status.as_ref().map_or(-1, |s| s.code);
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => {
            assert_eq!(code, 0, "OK answer with status {code}");
            let Some(rule) = header(&response, RULE_HEADER) else {
                panic!("an allow without a rule: {response:?}");
            };
            assert!(
                policy
                    .rules()
                    .any(|r| r.name == rule && (r.break_glass || r.action == Action::Allow)),
                "allowed by {rule:?}, which is no allow rule of the bundle"
            );
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert_ne!(code, 0, "a denial with status OK");
            assert_eq!(denied.status.as_ref().map(|s| s.code), Some(403));
            let reason = header(&response, REASON_HEADER).unwrap_or("");
            assert!(
                Reason::ALL
                    .iter()
                    .any(|r| r.as_str() == reason && *r != Reason::BreakGlass),
                "denial with reason {reason:?}"
            );
            assert!(
                !policy.rule_names().any(|r| denied.body.contains(r)),
                "a denial body names a rule: {}",
                denied.body
            );
        }
        other => panic!("no HTTP answer: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// forwarded_cert

/// Forwarded-certificate decoding: the URL-encoded PEM Envoy sends → certificate facts.
/// Oracles: the Check adapter's cached decoding equals the plain one (first and second time),
/// and the facts are judged by `decide` without a panic, never allowing a request whose
/// certificate was refused.
pub fn forwarded_cert(data: &[u8]) {
    let Some(pem) = text(data) else { return };
    let plain = identity::certificate_facts(pem);
    match fuzzing::forwarded_certificate(pem) {
        // Too long to be decoded: refused unread, so the decision cannot depend on it.
        None => {
            assert!(pem.len() > wardgate::extauthz::MAX_FORWARDED_CERTIFICATE);
            return;
        }
        Some(cached) => assert_eq!(cached, plain, "cache differs"),
    }
    assert_eq!(
        fuzzing::forwarded_certificate(pem),
        Some(plain.clone()),
        "cache hit differs"
    );
    if let Ok(facts) = &plain {
        let source = facts.uri_sans.first().map(String::as_str);
        let mut req = Request::new("GET", "/results/1");
        req.source = source;
        req.destination = Some("spiffe://hospital.example/ns/clinical/sa/lab");
        req.time = facts.not_before;
        req.peer_certificate = PeerCertificate::Parsed(facts);
        let d = hospital().decide(&req);
        if d.verdict == Verdict::Allow {
            assert_eq!(facts.uri_sans.len(), 1, "allowed with {:?}", facts.uri_sans);
            assert!(!facts.is_ca, "allowed with a CA certificate");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// decision_log

/// Decision-log lines as `wardgate replay` reads them, replayed with the hospital bundle as
/// candidate. Oracles: replayed against itself as baseline, no record changes or is
/// undetermined; without the baseline a record the baseline reproduced stays unchanged or
/// undetermined, and what is unreadable or blank stays so.
pub fn decision_log(data: &[u8]) {
    let Some(log) = text(data) else { return };
    let policy = hospital();
    for line in log.lines() {
        let against_itself = fuzzing::replay_line(policy, Some(policy), line);
        assert!(
            !matches!(against_itself, Replayed::Changed | Replayed::Undetermined),
            "{against_itself:?} against itself: {line}"
        );
        let alone = fuzzing::replay_line(policy, None, line);
        match against_itself {
            Replayed::Unchanged => assert!(
                matches!(alone, Replayed::Unchanged | Replayed::Undetermined),
                "{alone:?} without baseline: {line}"
            ),
            Replayed::Blank | Replayed::Unreadable => {
                assert_eq!(alone, against_itself, "{line}")
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// test_cases

/// The test-case YAML `wardgate test` reads, every case run against the hospital bundle.
/// Oracle: a file is either cases that run, or problems each located as `FILE:LINE:COL`.
pub fn test_cases(data: &[u8]) {
    let Some(yaml) = text(data) else { return };
    let at = jiff::Timestamp::from_second(1_795_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    if let Err(problems) = fuzzing::run_test_file(hospital(), "cases.yaml", yaml, at) {
        assert!(!problems.is_empty(), "refused without a problem");
        for p in &problems {
            let mut parts = p.splitn(4, ':');
            let located = parts.next() == Some("cases.yaml")
                && parts.next().is_some_and(|l| l.parse::<u64>().is_ok())
                && parts.next().is_some_and(|c| c.parse::<u64>().is_ok());
            assert!(located, "problem not located as FILE:LINE:COL: {p}");
        }
    }
}
