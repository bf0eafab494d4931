//! `wardgate test BUNDLE TESTS...`: policy unit tests. Each case is a request and the decision
//! it must get; every case is decided by `Policy::decide_traced` on the compiled bundle, exactly
//! as the server and `wardgate check` decide.
//!
//! This module owns the test-file format (a YAML list of cases, unknown keys rejected with
//! `FILE:LINE:COL`) and the cargo-test-style report. It must never decide by itself or treat a
//! malformed test file as passing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::Exit;
use crate::policy::{CertificateFacts, PeerCertificate, Policy, Reason, Request, Trace};

/// `wardgate test` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Bundle file or directory.
    bundle: PathBuf,
    /// Test files: YAML lists of cases `{name, request: {...}, expect: {decision, reason?, rule?}}`.
    #[arg(required = true, value_name = "TESTS")]
    tests: Vec<PathBuf>,
    /// Instant for cases that give no `at` (RFC 3339); default: the time the tests run.
    #[arg(long, value_name = "RFC3339_INSTANT")]
    at: Option<jiff::Timestamp>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The compile budget.
    #[command(flatten)]
    compile: super::budget::CompileArgs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    request: RawRequest,
    expect: RawExpect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    from: Option<String>,
    to: Option<String>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    at: Option<Spanned<String>>,
    cert_lifetime: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    decision: Spanned<String>,
    reason: Option<Spanned<String>>,
    rule: Option<String>,
}

/// One parsed case.
#[derive(Debug)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) file: String,
    pub(crate) line: u64,
    from: Option<String>,
    to: Option<String>,
    method: String,
    path: String,
    host: String,
    headers: HashMap<String, String>,
    at: Option<jiff::Timestamp>,
    cert_lifetime: Option<jiff::SignedDuration>,
    expect: Expected,
}

#[derive(Debug, Clone, Serialize)]
struct Expected {
    decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Got {
    decision: &'static str,
    reason: &'static str,
    rule: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CaseResult {
    name: String,
    file: String,
    line: u64,
    pub(crate) ok: bool,
    expected: Expected,
    got: Got,
    at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<Trace>,
}

fn first_line(e: &serde_saphyr::Error) -> (u64, u64, String) {
    let (line, col) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    let msg = match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    };
    (line, col, msg)
}

/// Parse one test file; every problem as `FILE:LINE:COL: message`.
pub(crate) fn parse_file(path: &Path) -> Result<Vec<Case>, Vec<String>> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{file}: cannot read: {e}")])?;
    parse_text(&file, &text)
}

/// Parse the text of the test file named `file`; every problem as `FILE:LINE:COL: message`.
pub(crate) fn parse_text(file: &str, text: &str) -> Result<Vec<Case>, Vec<String>> {
    let file = file.to_string();
    let raw: Vec<Spanned<RawCase>> = serde_saphyr::from_str(text).map_err(|e| {
        let (l, c, m) = first_line(&e);
        vec![format!("{file}:{l}:{c}: {m}")]
    })?;
    let mut errors = Vec::new();
    let mut cases = Vec::new();
    let mut names = HashSet::new();
    let at =
        |s: &Spanned<String>| format!("{file}:{}:{}", s.referenced.line(), s.referenced.column());
    for rc in raw {
        let line = rc.referenced.line();
        let c = rc.value;
        if c.name.value.trim().is_empty() {
            errors.push(format!("{}: a case needs a non-empty `name`", at(&c.name)));
        } else if !names.insert(c.name.value.clone()) {
            errors.push(format!(
                "{}: duplicate case name `{}`",
                at(&c.name),
                c.name.value
            ));
        }
        let decision = c.expect.decision.value.to_ascii_lowercase();
        if decision != "allow" && decision != "deny" {
            errors.push(format!(
                "{}: expect.decision `{}` is not `allow` or `deny`",
                at(&c.expect.decision),
                c.expect.decision.value
            ));
        }
        if let Some(r) = &c.expect.reason {
            if !Reason::ALL.iter().any(|x| x.as_str() == r.value) {
                errors.push(format!(
                    "{}: expect.reason `{}` is not one of {}",
                    at(r),
                    r.value,
                    Reason::ALL.map(Reason::as_str).join(", ")
                ));
            }
        }
        let when = match &c.request.at {
            None => None,
            Some(s) => match s.value.parse::<jiff::Timestamp>() {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(format!(
                        "{}: request.at `{}` is not an RFC 3339 instant (such as 2026-11-23T10:00:00+01:00): {e}",
                        at(s),
                        s.value
                    ));
                    None
                }
            },
        };
        let cert_lifetime = match &c.request.cert_lifetime {
            None => None,
            Some(s) => match s.value.trim().parse::<jiff::SignedDuration>() {
                Ok(d) if d.is_positive() => Some(d),
                _ => {
                    errors.push(format!(
                        "{}: request.cert_lifetime `{}` must be a positive duration such as 30m or 24h",
                        at(s),
                        s.value
                    ));
                    None
                }
            },
        };
        cases.push(Case {
            name: c.name.value,
            file: file.clone(),
            line,
            from: c.request.from,
            to: c.request.to,
            method: c.request.method.unwrap_or_else(|| "GET".to_string()),
            path: c.request.path.unwrap_or_else(|| "/".to_string()),
            host: c.request.host.unwrap_or_default(),
            headers: c
                .request
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            at: when,
            cert_lifetime,
            expect: Expected {
                decision,
                reason: c.expect.reason.map(|r| r.value),
                rule: c.expect.rule,
            },
        });
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        // FILE:LINE:COL: message, in file order.
        let pos = |e: &String| -> (u64, u64) {
            let mut it = e[file.len()..].split(':').skip(1);
            let line = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let col = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            (line, col)
        };
        errors.sort_by_key(pos);
        Err(errors)
    }
}

pub(crate) fn run_case(policy: &Policy, case: &Case, default_at: jiff::Timestamp) -> CaseResult {
    let time = case.at.unwrap_or(default_at);
    let facts = case.cert_lifetime.map(|life| {
        CertificateFacts::simulated(case.from.as_deref().unwrap_or_default(), time, life)
    });
    let mut req = Request::new(&case.method, &case.path);
    req.source = case.from.as_deref();
    req.destination = case.to.as_deref();
    req.host = &case.host;
    req.headers = &case.headers;
    req.time = time;
    if let Some(f) = &facts {
        req.peer_certificate = PeerCertificate::Parsed(f);
    }
    let mut trace = Trace::default();
    let d = policy.decide_traced(&req, &mut trace);
    let got = Got {
        decision: d.verdict.as_str(),
        reason: d.reason.as_str(),
        rule: d.rule.map(str::to_string),
    };
    let e = &case.expect;
    let ok = e.decision == got.decision
        && e.reason.as_deref().is_none_or(|r| r == got.reason)
        && e.rule
            .as_deref()
            .is_none_or(|r| Some(r) == got.rule.as_deref());
    CaseResult {
        name: case.name.clone(),
        file: case.file.clone(),
        line: case.line,
        ok,
        expected: e.clone(),
        got,
        at: time.to_string(),
        trace: (!ok).then_some(trace),
    }
}

fn outcome(decision: &str, reason: Option<&str>, rule: Option<&str>) -> String {
    let mut s = decision.to_string();
    if let Some(r) = reason {
        s.push_str(&format!(" (reason {r}"));
        if let Some(rule) = rule {
            s.push_str(&format!(", rule {rule}"));
        }
        s.push(')');
    } else if let Some(rule) = rule {
        s.push_str(&format!(" (rule {rule})"));
    }
    s
}

/// Run `wardgate test`.
pub(crate) fn run(args: TestArgs) -> Exit {
    let policy = match super::load_within(&args.bundle, args.compile.limits()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut cases = Vec::new();
    let mut bad = false;
    for t in &args.tests {
        match parse_file(t) {
            Ok(c) => cases.extend(c),
            Err(errors) => {
                bad = true;
                for e in errors {
                    tell!("{e}");
                }
            }
        }
    }
    if bad {
        tell!("error: the test files above are malformed; no case was run");
        return Exit::Input;
    }
    let default_at = args.at.unwrap_or_else(jiff::Timestamp::now);
    let results: Vec<CaseResult> = cases
        .iter()
        .map(|c| run_case(&policy, c, default_at))
        .collect();
    let passed = results.iter().filter(|r| r.ok).count();
    let failed = results.len() - passed;
    if args.json {
        let out = serde_json::json!({
            "bundle": args.bundle.display().to_string(),
            "revision": policy.revision(),
            "passed": passed,
            "failed": failed,
            "cases": results,
        });
        say!("{out}");
    } else {
        say!(
            "\nrunning {} test{} against {} (revision {})",
            results.len(),
            if results.len() == 1 { "" } else { "s" },
            args.bundle.display(),
            policy.revision()
        );
        for r in &results {
            say!("test {} ... {}", r.name, if r.ok { "ok" } else { "FAILED" });
        }
        if failed > 0 {
            say!("\nfailures:");
            for r in results.iter().filter(|r| !r.ok) {
                say!("\n---- {} ({}:{}) ----", r.name, r.file, r.line);
                let e = &r.expected;
                say!(
                    "expected: {}",
                    outcome(&e.decision, e.reason.as_deref(), e.rule.as_deref())
                );
                say!(
                    "got:      {}",
                    outcome(r.got.decision, Some(r.got.reason), r.got.rule.as_deref())
                );
                say!("at:       {}", r.at);
                say!("trace:");
                for step in r.trace.iter().flat_map(|t| &t.steps) {
                    say!("  {step}");
                }
            }
            say!("\nfailures:");
            for r in results.iter().filter(|r| !r.ok) {
                say!("    {}", r.name);
            }
        }
        say!(
            "\ntest result: {}. {passed} passed; {failed} failed",
            if failed == 0 { "ok" } else { "FAILED" }
        );
        say!("{passed} passed, {failed} failed");
    }
    if failed == 0 {
        Exit::Ok
    } else {
        Exit::No
    }
}
