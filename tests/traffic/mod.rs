//! A generator of realistic hospital traffic, as decision-log lines, for `wardgate learn`
//! (tests/learn.rs; `cargo run --example gen_traffic` writes it to stdout).
//!
//! The workloads are those of deploy/bundles/hospital.yaml. Every request is decided by the
//! hospital bundle itself (`Policy::decide`, with the headers and forwarded certificate the
//! request carried), and logged the way `serve --decision-log` logs it, so the lines are what a
//! sidecar in audit mode (every check decided and logged, none refused) writes in a week: patient
//! numbers, UUIDs and DICOM UIDs in paths, conversations the bundle already allows, two it does
//! not allow yet (learned from `default_deny`), rare conversations, deny-rule hits, an
//! unauthenticated scanner, a path trick, long-lived vendor certificates, and break-glass use.
//! The same seed gives the same lines. The device vendor's remote support never calls in this
//! week, so its identity never appears.

#![allow(dead_code)] // reason: shared by tests/learn.rs and examples/gen_traffic.rs

use std::collections::HashMap;

use jiff::{tz::TimeZone, SignedDuration, Timestamp};
use wardgate::decision_log::loggable_path;
use wardgate::policy::{CertificateFacts, PeerCertificate, Policy, Reason, Request};

const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";
const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";
const IMAGING: &str = "spiffe://hospital.example/ns/clinical/sa/imaging";
const PHARMACY: &str = "spiffe://hospital.example/ns/clinical/sa/pharmacy";
const BILLING: &str = "spiffe://hospital.example/ns/admin/sa/billing";
const SCHEDULING: &str = "spiffe://hospital.example/ns/admin/sa/scheduling";
const HR: &str = "spiffe://hospital.example/ns/admin/sa/hr";
const INTERFACE: &str = "spiffe://hospital.example/ns/admin/sa/interface-engine";
const REFLAB: &str = "spiffe://partner-lab.example/ns/vendor/sa/reflab";
const SCANNER: &str = "spiffe://scanner.example/ns/x/sa/probe";

/// The redaction marker the decision-log writer puts in place of an identifier segment.
pub const REDACTION_MARKER: &str = "{}";

/// One generated request before it is decided.
struct Req {
    from: &'static str,
    to: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    /// A forwarded certificate valid this long.
    cert: Option<SignedDuration>,
    time: Timestamp,
}

/// When a kind of request happens.
#[derive(Clone, Copy)]
enum When {
    Any,
    /// Monday to Saturday, 06:00-22:00 Berlin (scheduling's window in the bundle).
    Booking,
    /// Monday to Friday, 07:00-19:00 Berlin (HR's window).
    Office,
}

/// The week the traffic spans: Monday 2026-11-23 00:00 UTC, seven days.
fn week_start() -> Timestamp {
    "2026-11-23T00:00:00Z".parse().expect("instant")
}

fn instant(rng: &mut fastrand::Rng, when: When) -> Timestamp {
    let berlin = TimeZone::get("Europe/Berlin").expect("zone");
    loop {
        let t = week_start() + SignedDuration::from_secs(rng.i64(0..7 * 24 * 3600));
        let local = berlin.to_datetime(t);
        let day = local.weekday().to_monday_one_offset();
        let hour = local.hour();
        let ok = match when {
            When::Any => true,
            When::Booking => day <= 6 && (6..22).contains(&hour),
            When::Office => day <= 5 && (7..19).contains(&hour),
        };
        if ok {
            return t;
        }
    }
}

fn patient_number(rng: &mut fastrand::Rng) -> String {
    rng.u32(100_000..9_999_999).to_string()
}

fn uuid(rng: &mut fastrand::Rng) -> String {
    let h = |rng: &mut fastrand::Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[rng.usize(0..16)]))
            .collect()
    };
    format!(
        "{}-{}-4{}-a{}-{}",
        h(rng, 8),
        h(rng, 4),
        h(rng, 3),
        h(rng, 3),
        h(rng, 12)
    )
}

fn dicom_uid(rng: &mut fastrand::Rng) -> String {
    format!(
        "1.2.840.113619.2.{}.{}",
        rng.u32(1..999),
        rng.u32(1..999_999)
    )
}

/// A kind of request: weight (per thousand of the weighted traffic) or fixed count.
struct Kind {
    weight: u32,
    fixed: usize,
    make: fn(&mut fastrand::Rng) -> Req,
}

fn req(from: &'static str, to: &'static str, method: &'static str, path: String) -> Req {
    Req {
        from,
        to,
        method,
        path,
        headers: Vec::new(),
        cert: None,
        time: week_start(),
    }
}

fn timed(mut r: Req, rng: &mut fastrand::Rng, when: When) -> Req {
    r.time = instant(rng, when);
    r
}

fn kinds() -> Vec<Kind> {
    fn w(weight: u32, make: fn(&mut fastrand::Rng) -> Req) -> Kind {
        Kind {
            weight,
            fixed: 0,
            make,
        }
    }
    fn n(fixed: usize, make: fn(&mut fastrand::Rng) -> Req) -> Kind {
        Kind {
            weight: 0,
            fixed,
            make,
        }
    }
    vec![
        // --- conversations the hospital bundle allows ---------------------------------------
        w(250, |r| {
            let q = if r.u8(0..10) == 0 { "?format=pdf" } else { "" };
            let p = format!("/results/{}{q}", patient_number(r));
            timed(req(EHR, LAB, "GET", p), r, When::Any)
        }),
        w(20, |r| {
            let p = format!("/results/{}", patient_number(r));
            timed(req(EHR, LAB, "HEAD", p), r, When::Any)
        }),
        w(20, |r| {
            timed(req(EHR, LAB, "GET", "/results".into()), r, When::Any)
        }),
        w(80, |r| {
            timed(req(EHR, LAB, "POST", "/orders".into()), r, When::Any)
        }),
        w(80, |r| {
            timed(req(LAB, EHR, "POST", "/results".into()), r, When::Any)
        }),
        w(100, |r| {
            // DICOM study, series, instance: the viewer fetches at any of the three depths.
            let mut p = format!("/studies/{}", dicom_uid(r));
            for _ in 0..r.usize(0..3) {
                p.push('/');
                p.push_str(&dicom_uid(r));
            }
            timed(req(EHR, IMAGING, "GET", p), r, When::Any)
        }),
        w(60, |r| {
            let mut x = timed(
                req(EHR, PHARMACY, "POST", "/prescriptions".into()),
                r,
                When::Any,
            );
            x.headers = vec![(
                "x-purpose-of-use",
                if r.u8(0..10) == 0 { "ETREAT" } else { "TREAT" },
            )];
            x
        }),
        w(30, |r| {
            let to = [LAB, IMAGING, PHARMACY][r.usize(0..3)];
            timed(req(EHR, to, "GET", "/healthz".into()), r, When::Any)
        }),
        w(80, |r| {
            let p = format!("/encounters/{}/billing-codes", patient_number(r));
            timed(req(BILLING, EHR, "GET", p), r, When::Any)
        }),
        w(60, |r| {
            let (m, p) = match r.u8(0..3) {
                0 => ("GET", "/slots".to_string()),
                1 => ("GET", format!("/slots/2026-11-{:02}", r.u8(23..30))),
                _ => ("POST", "/slots".to_string()),
            };
            timed(req(SCHEDULING, IMAGING, m, p), r, When::Booking)
        }),
        w(40, |r| {
            let p = format!("/api/appointments/{}", r.u32(10_000..99_999));
            timed(req(BILLING, SCHEDULING, "GET", p), r, When::Any)
        }),
        w(30, |r| {
            timed(
                req(INTERFACE, BILLING, "POST", "/api/claims".into()),
                r,
                When::Any,
            )
        }),
        w(20, |r| {
            let p = format!("/api/invoices/{}", r.u32(10_000..99_999));
            timed(req(SCHEDULING, BILLING, "PUT", p), r, When::Any)
        }),
        w(20, |r| {
            let p = format!("/rosters/2026-W{}", r.u8(44..49));
            timed(req(HR, SCHEDULING, "GET", p), r, When::Office)
        }),
        w(40, |r| {
            let mut x = timed(
                req(REFLAB, INTERFACE, "POST", "/inbound/results".into()),
                r,
                When::Any,
            );
            x.cert = Some(SignedDuration::from_mins(30));
            x
        }),
        // --- conversations the bundle does not allow yet (default_deny; learned) ---------------
        w(50, |r| {
            let p = format!("/patients/{}/medications", uuid(r));
            timed(req(PHARMACY, EHR, "GET", p), r, When::Any)
        }),
        w(30, |r| {
            timed(req(IMAGING, EHR, "POST", "/reports".into()), r, When::Any)
        }),
        // --- rare ------------------------------------------------------------------------------
        n(2, |r| {
            timed(
                req(HR, BILLING, "GET", "/api/payroll/export".into()),
                r,
                When::Office,
            )
        }),
        n(3, |r| {
            let p = format!("/results/{}", patient_number(r));
            timed(req(PHARMACY, LAB, "GET", p), r, When::Any)
        }),
        n(1, |r| {
            let p = format!("/orders/{}", patient_number(r));
            timed(req(EHR, LAB, "DELETE", p), r, When::Any)
        }),
        // --- denials ---------------------------------------------------------------------------
        n(15, |r| {
            let p = format!("/results/{}", patient_number(r));
            let mut x = timed(req(REFLAB, LAB, "GET", p), r, When::Any);
            x.cert = Some(SignedDuration::from_mins(30));
            x
        }),
        n(6, |r| {
            timed(req(EHR, LAB, "GET", "/admin/config".into()), r, When::Any)
        }),
        n(4, |r| {
            timed(
                req(BILLING, SCHEDULING, "GET", "/admin".into()),
                r,
                When::Any,
            )
        }),
        n(5, |r| {
            timed(req(SCANNER, EHR, "GET", "/patients".into()), r, When::Any)
        }),
        n(3, |r| {
            timed(
                req(EHR, LAB, "GET", "/results/..%2F..%2Fadmin".into()),
                r,
                When::Any,
            )
        }),
        n(4, |r| {
            let mut x = timed(
                req(REFLAB, INTERFACE, "POST", "/inbound/results".into()),
                r,
                When::Any,
            );
            x.cert = Some(SignedDuration::from_hours(24));
            x
        }),
        // --- break-glass -----------------------------------------------------------------------
        n(5, |r| {
            let p = format!("/patients/{}/dispensing", patient_number(r));
            let mut x = timed(req(EHR, PHARMACY, "GET", p), r, When::Any);
            x.headers = vec![("x-break-glass-reason", "code blue, bed 4")];
            x
        }),
    ]
}

fn host_of(id: &str) -> String {
    let mut parts = id.rsplit('/');
    let name = parts.next().unwrap_or("x");
    let ns = parts.nth(1).unwrap_or("x");
    format!("{name}.{ns}.svc:8443")
}

/// Decide `r` with `policy` and log it as the decision-log writer does.
fn log_line(policy: &Policy, r: &Req, rng: &mut fastrand::Rng) -> String {
    let headers: HashMap<String, String> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let host = host_of(r.to);
    let facts = r
        .cert
        .map(|life| CertificateFacts::simulated(r.from, r.time, life));
    let mut q = Request::new(r.method, &r.path);
    q.source = Some(r.from);
    q.destination = Some(r.to);
    q.host = &host;
    q.headers = &headers;
    q.time = r.time;
    if let Some(f) = &facts {
        q.peer_certificate = PeerCertificate::Parsed(f);
    }
    let d = policy.decide(&q);
    let line = Line {
        time: r.time.to_string(),
        request_id: uuid(rng),
        source: r.from,
        source_segment: d.source_segment,
        destination: r.to,
        destination_segment: d.destination_segment,
        method: r.method,
        path: loggable_path(&r.path),
        host: &host,
        decision: d.verdict.as_str(),
        reason: d.reason.as_str(),
        rule: d.rule,
        revision: policy.revision(),
        latency_us: rng.u64(2..40),
        break_glass_reason: headers
            .get("x-break-glass-reason")
            .filter(|_| d.reason == Reason::BreakGlass)
            .map(String::as_str),
    };
    serde_json::to_string(&line).expect("line")
}

/// A decision-log line in the writer's field order (the JSON shape of
/// `wardgate::decision_log::DecisionRecord`).
#[derive(serde::Serialize)]
struct Line<'a> {
    time: String,
    request_id: String,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_segment: Option<&'a str>,
    destination: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_segment: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    host: &'a str,
    decision: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    revision: u64,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    break_glass_reason: Option<&'a str>,
}

/// `requests` decision-log lines (JSON, no newline), in time order, decided by `policy`
/// (the hospital bundle).
pub fn generate(policy: &Policy, requests: usize, seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let kinds = kinds();
    let fixed: usize = kinds.iter().map(|k| k.fixed).sum();
    let total_weight: u32 = kinds.iter().map(|k| k.weight).sum();
    let mut reqs: Vec<Req> = Vec::with_capacity(requests);
    for k in &kinds {
        for _ in 0..k.fixed {
            reqs.push((k.make)(&mut rng));
        }
    }
    while reqs.len() < requests.max(fixed) {
        let mut pick = rng.u32(0..total_weight);
        for k in &kinds {
            if pick < k.weight {
                reqs.push((k.make)(&mut rng));
                break;
            }
            pick -= k.weight;
        }
    }
    reqs.sort_by_key(|r| r.time);
    reqs.iter().map(|r| log_line(policy, r, &mut rng)).collect()
}

/// The path with every identifier segment (digits, with hex letters, dots or dashes: numbers,
/// UUIDs, DICOM UIDs, dates) replaced by the redaction marker, standing in for the decision-log
/// writer's redaction.
pub fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.bytes().any(|b| b.is_ascii_digit())
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'-')
            {
                REDACTION_MARKER
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A generated line with its path redacted (field order kept).
pub fn redact_line(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("generated line");
    let Some(path) = v.get("path").and_then(|p| p.as_str()) else {
        return line.to_string();
    };
    let field = |p: &str| format!("\"path\":{}", serde_json::Value::from(p));
    line.replacen(&field(path), &field(&redact_path(path)), 1)
}
