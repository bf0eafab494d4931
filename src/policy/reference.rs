//! A deliberately simple reference evaluator, used only by tests and the fuzz targets (through
//! `crate::fuzzing`); nothing on the request path may call it.
//!
//! It reads the raw bundle model and applies the decision order (docs/ARCHITECTURE.md §3) by a
//! linear scan over every rule, with no index, no interning and no tries, so that the property
//! test below can check the compiled engine against a second, obviously-correct reading of the
//! design. It shares only the leaf pieces that have their own unit tests: pattern matching,
//! schedules, path normalisation and SPIFFE ID parsing.

use super::bundle::{self, RawRule, SourceFile};
use super::error::Diagnostics;
use super::normalize;
use super::pattern::Pattern;
use super::schedule::{self, Schedule};
use super::{HttpAttributes, PeerCertificate, Reason, Request, Verdict};
use crate::identity;

/// (verdict, reason, deciding rule)
pub(crate) type RefDecision = (Verdict, Reason, Option<String>);

pub(crate) fn parse_files(sources: &[(String, String)]) -> Vec<SourceFile> {
    let mut errors = Diagnostics::default();
    let files: Vec<SourceFile> = sources
        .iter()
        .filter_map(|(n, t)| bundle::parse(n, t, &mut errors))
        .collect();
    assert!(errors.is_empty(), "reference parse failed: {errors}");
    files
}

#[allow(clippy::manual_ignore_case_cmp)] // reason: the reference spells comparisons out literally
pub(crate) fn decide(files: &[SourceFile], req: &Request<'_>) -> RefDecision {
    let deny = |r| (Verdict::Deny, r, None);
    let tds: Vec<&str> = files
        .iter()
        .flat_map(|f| f.bundle.trust_domains.iter().map(|t| t.value.as_str()))
        .collect();
    let segments: Vec<(&str, Vec<Pattern>, Option<jiff::SignedDuration>)> = files
        .iter()
        .flat_map(|f| f.bundle.segments.0.iter())
        .map(|(name, seg)| {
            let members = seg
                .members
                .iter()
                .filter_map(|m| Pattern::parse_spiffe(&m.value).ok())
                .collect();
            let max = seg
                .max_svid_lifetime
                .as_ref()
                .and_then(|d| d.value.trim().parse::<jiff::SignedDuration>().ok());
            (name.value.as_str(), members, max)
        })
        .collect();
    let segment_of = |td: &str, path: &str| {
        segments
            .iter()
            .find(|(_, members, _)| members.iter().any(|m| m.matches_id(td, path)))
    };

    let Some(source) = req.source else {
        return deny(Reason::Unauthenticated);
    };
    let Ok(src) = identity::parse_spiffe_id(source) else {
        return deny(Reason::Unauthenticated);
    };
    if !tds.contains(&src.trust_domain_name()) {
        return deny(Reason::Unauthenticated);
    }
    let src_seg = segment_of(src.trust_domain_name(), src.path());
    let dst = req
        .destination
        .and_then(|d| identity::parse_spiffe_id(d).ok())
        .filter(|d| tds.contains(&d.trust_domain_name()));
    let dst_seg = dst
        .as_ref()
        .and_then(|d| segment_of(d.trust_domain_name(), d.path()));
    if req.http == HttpAttributes::Absent {
        return deny(Reason::BadPath);
    }
    let Ok(path) = normalize::path(req.path) else {
        return deny(Reason::BadPath);
    };

    let max = src_seg.and_then(|s| s.2);
    match req.peer_certificate {
        PeerCertificate::NotForwarded if max.is_some() => return deny(Reason::SvidLifetime),
        PeerCertificate::NotForwarded => {}
        PeerCertificate::Unreadable(_) => return deny(Reason::BadCertificate),
        PeerCertificate::Parsed(c) => {
            if c.uri_sans.len() != 1
                || c.uri_sans[0] != source
                || c.is_ca
                || req.time < c.not_before
                || req.time > c.not_after
            {
                return deny(Reason::BadCertificate);
            }
            if max.is_some_and(|m| c.not_after.duration_since(c.not_before) > m) {
                return deny(Reason::SvidLifetime);
            }
        }
    }

    let endpoint_matches = |entry: &str, id: &spiffe::SpiffeId, seg: Option<&str>| {
        if entry.starts_with("spiffe://") {
            Pattern::parse_spiffe(entry)
                .map(|p| p.matches_id(id.trust_domain_name(), id.path()))
                .unwrap_or(false)
        } else {
            seg == Some(entry)
        }
    };
    let applies = |r: &RawRule| -> bool {
        let from_ok = r.from.as_ref().is_some_and(|f| {
            f.value
                .iter()
                .any(|e| endpoint_matches(&e.value, &src, src_seg.map(|s| s.0)))
        });
        let to_ok = match &r.to {
            None => true,
            Some(t) => dst.as_ref().is_some_and(|d| {
                t.value
                    .iter()
                    .any(|e| endpoint_matches(&e.value, d, dst_seg.map(|s| s.0)))
            }),
        };
        let method_ok = r.methods.as_ref().is_none_or(|m| {
            m.value
                .iter()
                .any(|m| m.value.to_ascii_uppercase() == req.method.to_ascii_uppercase())
        });
        let path_ok = r.paths.as_ref().is_none_or(|p| {
            p.value.iter().any(|p| {
                Pattern::parse_path(&p.value)
                    .map(|p| p.matches_path(&path))
                    .unwrap_or(false)
            })
        });
        let host = normalize::host(req.host).to_ascii_lowercase();
        let host_ok = r
            .hosts
            .as_ref()
            .is_none_or(|h| h.value.iter().any(|h| h.value.to_ascii_lowercase() == host));
        let when_ok = r.when.as_ref().is_none_or(|w| {
            let sched_ok = w.value.schedule.as_ref().is_none_or(|s| {
                let days = s.value.days.as_ref().map_or(0, |d| {
                    d.value
                        .iter()
                        .filter_map(|d| schedule::parse_day(&d.value))
                        .fold(0, |a, b| a | b)
                });
                let hours = s
                    .value
                    .hours
                    .as_ref()
                    .and_then(|h| schedule::parse_hours(&h.value).ok());
                Schedule::new(
                    days,
                    hours,
                    s.value.timezone.as_ref().map(|t| t.value.as_str()),
                )
                .map(|s| s.matches(req.time))
                .unwrap_or(false)
            });
            let headers_ok = w.value.headers.as_ref().is_none_or(|h| {
                h.0.iter().all(|(name, values)| {
                    req.headers
                        .header(&name.value.to_ascii_lowercase())
                        .is_some_and(|v| values.iter().any(|a| a.value == v))
                })
            });
            sched_ok && headers_ok
        });
        from_ok && to_ok && method_ok && path_ok && host_ok && when_ok
    };
    let rules: Vec<&RawRule> = files
        .iter()
        .flat_map(|f| f.bundle.rules.iter().map(|r| &r.value))
        .collect();
    let is_deny = |r: &RawRule| r.action.as_ref().is_some_and(|a| a.value == "deny");
    let name = |r: &RawRule| r.name.as_ref().map(|n| n.value.clone());
    if let Some(r) = rules.iter().find(|r| is_deny(r) && applies(r)) {
        return (Verdict::Deny, Reason::Rule, name(r));
    }
    if let Some(r) = rules.iter().find(|r| !is_deny(r) && applies(r)) {
        return (Verdict::Allow, Reason::Rule, name(r));
    }
    for f in files {
        if let Some(bg) = &f.bundle.break_glass {
            let header = bg
                .value
                .header
                .as_ref()
                .map(|h| h.value.to_ascii_lowercase())
                .unwrap_or_default();
            let reason = req.headers.header(&header);
            if reason.is_some_and(super::valid_break_glass_reason) {
                if let Some(r) = bg.value.allow.iter().map(|r| &r.value).find(|r| applies(r)) {
                    return (Verdict::Allow, Reason::BreakGlass, name(r));
                }
            }
        }
    }
    deny(Reason::DefaultDeny)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::policy::{Policy, Trace};

    const IDS: &[&str] = &[
        "spiffe://a.example/ns/n1/sa/x",
        "spiffe://a.example/ns/n1/sa/y",
        "spiffe://a.example/ns/n2/sa/x",
        "spiffe://a.example/ns/n2/sa/y",
        "spiffe://a.example/ns/n3/sa/y",
        "spiffe://a.example/ns/n2",
        "spiffe://b.example/ns/n1/sa/z",
        "spiffe://b.example/w",
        "spiffe://c.example/ns/n1/sa/x",
        "spiffe://A.example/ns/n1/sa/x",
        "spiffe://a.example/ns/n1/sa/x/",
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
    ];
    const PATHS: &[&str] = &["/a", "/a/*", "/a/**", "/b", "/", "/a/*/c"];
    const REQ_PATHS: &[&str] = &[
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
            // Up to four entries: rules with three or more on both sides are filed as wide
            // rules in unit-test builds (index.rs, `PAIR_FACTOR`).
            1..5,
        )
    }

    fn subset(items: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<&'static str>>> {
        prop::option::of(prop::sample::subsequence(items, 1..=items.len()))
    }

    fn rule_yaml(i: usize, deny: bool, bg: bool, n_seg: usize) -> impl Strategy<Value = String> {
        (
            endpoint_strategy(n_seg),
            prop::option::of(endpoint_strategy(n_seg)),
            subset(&["GET", "post"]),
            subset(PATHS),
            subset(&["h1", "H2"]),
            any::<bool>(),
            prop::option::of((0u8..4, prop::sample::select(&["UTC", "Europe/Berlin"][..]))),
        )
            .prop_map(move |(from, to, methods, paths, hosts, header, sched)| {
                let mut y = format!("  - name: r{i}\n");
                if deny && !bg {
                    y.push_str("    action: deny\n");
                }
                let from: Vec<&str> = from.iter().map(String::as_str).collect();
                y.push_str(&format!("    from: {}\n", list(&from)));
                if let Some(to) = to {
                    let to: Vec<&str> = to.iter().map(String::as_str).collect();
                    y.push_str(&format!("    to: {}\n", list(&to)));
                }
                if let Some(m) = methods {
                    y.push_str(&format!("    methods: {}\n", list(&m)));
                }
                if let Some(p) = paths {
                    y.push_str(&format!("    paths: {}\n", list(&p)));
                }
                if let Some(h) = hosts {
                    y.push_str(&format!("    hosts: {}\n", list(&h)));
                }
                if header || sched.is_some() {
                    y.push_str("    when:\n");
                    if header {
                        y.push_str("      headers: {X-P: [T, E]}\n");
                    }
                    if let Some((s, tz)) = sched {
                        let hours = ["08:00-18:00", "22:00-06:00", "00:00-24:00", "12:00-13:00"][s as usize];
                        y.push_str(&format!("      schedule: {{days: [mon, wed, sat], hours: \"{hours}\", timezone: {tz}}}\n"));
                    }
                }
                y
            })
    }

    fn bundle_strategy() -> impl Strategy<Value = String> {
        (0usize..=3, any::<bool>(), any::<bool>()).prop_flat_map(|(n_seg, with_bg, lifetime)| {
            let rules = prop::collection::vec(any::<bool>(), 0..24).prop_flat_map(move |kinds| {
                kinds
                    .into_iter()
                    .enumerate()
                    .map(|(i, deny)| rule_yaml(i, deny, false, n_seg).boxed())
                    .collect::<Vec<_>>()
            });
            let bg = prop::collection::vec(Just(()), if with_bg { 1..3 } else { 0..1 })
                .prop_flat_map(move |v| {
                    v.into_iter()
                        .enumerate()
                        .map(|(i, _)| rule_yaml(100 + i, false, true, n_seg).boxed())
                        .collect::<Vec<_>>()
                });
            (rules, bg).prop_map(move |(rules, bg)| {
                let mut y = String::from(
                    "version: 1\nrevision: 7\ntrust_domains: [a.example, b.example]\n",
                );
                if n_seg > 0 {
                    y.push_str("segments:\n");
                    for (i, (name, members)) in SEGMENTS.iter().take(n_seg).enumerate() {
                        y.push_str(&format!("  {name}:\n    members: [{members}]\n"));
                        if lifetime && i == 0 {
                            y.push_str("    max_svid_lifetime: 1h\n");
                        }
                    }
                }
                y.push_str("rules:\n");
                for r in rules {
                    y.push_str(&r);
                }
                if rules_is_empty_marker(&y) {
                    y.push_str("  []\n");
                }
                if !bg.is_empty() {
                    y.push_str("break_glass:\n  header: x-bg\n  allow:\n");
                    for r in bg {
                        y.push_str(&r.replace("\n  ", "\n    ").replacen("  - ", "    - ", 1));
                    }
                }
                y
            })
        })
    }

    fn rules_is_empty_marker(y: &str) -> bool {
        y.ends_with("rules:\n")
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
        cert: Option<(i64, bool, u8)>,
        /// The carrier sent no HTTP attributes (method, path, host and headers are then ignored).
        no_http: bool,
    }

    fn req_strategy() -> impl Strategy<Value = Req> {
        (
            prop::option::of(prop::sample::select(IDS)),
            prop::option::of(prop::sample::select(IDS)),
            prop::sample::select(&["GET", "POST", "get", "DELETE"][..]),
            prop::sample::select(REQ_PATHS),
            prop::sample::select(&["h1", "h1:8443", "H2", "h3", ""][..]),
            prop::option::of(prop::sample::select(&["T", "E", "t"][..])),
            prop::option::of(prop::sample::select(
                &["", "fire in ward 3", "   ", "bad\u{7}"][..],
            )),
            1_700_000_000i64..1_800_000_000,
            prop::option::of((0i64..10_000, any::<bool>(), 0u8..3)),
            prop::bool::weighted(0.05),
        )
            .prop_map(
                |(source, destination, method, path, host, header, bg, time, cert, no_http)| Req {
                    source,
                    destination,
                    method,
                    path,
                    host,
                    header,
                    bg,
                    time,
                    cert,
                    no_http,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

        #[test]
        fn compiled_engine_agrees_with_reference(yaml in bundle_strategy(), reqs in prop::collection::vec(req_strategy(), 1..24)) {
            let sources = vec![("gen.yaml".to_string(), yaml.clone())];
            let policy = match Policy::from_sources(&sources) {
                Ok(p) => p,
                Err(e) => return Err(TestCaseError::fail(format!("generated bundle rejected: {e}\n{yaml}"))),
            };
            let files = parse_files(&sources);
            for r in reqs {
                let mut headers = HashMap::new();
                if let Some(h) = r.header { headers.insert("x-p".to_string(), h.to_string()); }
                if let Some(b) = r.bg { headers.insert("x-bg".to_string(), b.to_string()); }
                let time = jiff::Timestamp::from_second(r.time).expect("time");
                let facts = r.cert.map(|(secs, ca, sans)| crate::policy::CertificateFacts {
                    uri_sans: match sans { 0 => vec![], 1 => vec![r.source.unwrap_or("").to_string()], _ => vec![r.source.unwrap_or("").to_string(), "spiffe://a.example/x".into()] },
                    is_ca: ca && secs % 3 == 0,
                    not_before: time - jiff::SignedDuration::from_secs(60),
                    not_after: time + jiff::SignedDuration::from_secs(secs),
                });
                let mut req = Request::new(r.method, r.path);
                req.source = r.source;
                req.destination = r.destination;
                req.host = r.host;
                req.headers = &headers;
                req.time = time;
                if let Some(f) = &facts { req.peer_certificate = PeerCertificate::Parsed(f); }
                if r.no_http { req.http = HttpAttributes::Absent; }
                let got = policy.decide(&req);
                let want = decide(&files, &req);
                prop_assert_eq!((got.verdict, got.reason, got.rule.map(str::to_string)), want.clone(), "request {:?}\nbundle:\n{}", r, yaml);
                // The stated reason handed back is the header value the break-glass allow accepted.
                let stated = policy.decide_stated(&req);
                prop_assert_eq!(stated.decision, got);
                let header_value = headers.get("x-bg").map(String::as_str);
                prop_assert_eq!(stated.break_glass_reason, header_value.filter(|_| got.reason == Reason::BreakGlass));
                let mut trace = Trace::default();
                let traced = policy.decide_traced(&req, &mut trace);
                prop_assert_eq!(traced, got);
            }
        }
    }
}
