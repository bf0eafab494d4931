//! Writing a `wardgate learn` proposal: the bundle (README, "The bundle format, by example") and
//! its tests file (the `wardgate test` format).
//!
//! The bundle is the base's segments, deny rules and break-glass entries written back from the
//! compiled base exactly as they mean (comments and layout are not kept), followed by the
//! learned allow rules. The tests file holds one real observed request per learned rule,
//! expected to be allowed by that rule, and one per kind of observed denial, expected to stay
//! denied. This module owns the text; it must never add or widen anything the proposal does not
//! hold, and never choose an expectation by running the proposal through `decide`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::observe::{split_id, Observations, RefusedBy, Seen};
use super::propose::{LearnedRule, Proposal};
use crate::policy::view::{EndpointView, RuleView, Schedule};
use crate::policy::{normalize, Pattern, Policy, Verdict};

/// YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    format!(
        "[{}]",
        items
            .into_iter()
            .map(|s| q(&s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn schedule_yaml(s: &Schedule) -> String {
    let (days, start, end, _, tz) = s.parts();
    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let mut parts = Vec::new();
    if days & 0b111_1111 != 0b111_1111 {
        let d: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| days & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        parts.push(format!("days: [{}]", d.join(", ")));
    }
    if (start, end) != (0, 1440) {
        parts.push(format!(
            "hours: \"{:02}:{:02}-{:02}:{:02}\"",
            start / 60,
            start % 60,
            end / 60,
            end % 60
        ));
    }
    parts.push(format!("timezone: {}", q(tz)));
    format!("{{{}}}", parts.join(", "))
}

/// `hosts:` and `when:` of a rule, indented for a rule list item.
fn conditions_yaml(out: &mut String, r: &RuleView<'_>) {
    if let Some(h) = r.hosts {
        let _ = writeln!(out, "    hosts: {}", list(h.iter().map(|x| x.to_string())));
    }
    if r.schedule.is_none() && r.headers.is_empty() {
        return;
    }
    let _ = writeln!(out, "    when:");
    if let Some(s) = r.schedule {
        let _ = writeln!(out, "      schedule: {}", schedule_yaml(s));
    }
    if !r.headers.is_empty() {
        let h: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!("{}: {}", q(k), list(v.iter().map(|x| x.to_string()))))
            .collect();
        let _ = writeln!(out, "      headers: {{{}}}", h.join(", "));
    }
}

fn endpoints(e: &[EndpointView<'_>], segments: &[String]) -> String {
    list(e.iter().map(|x| match x {
        EndpointView::Segment(i) => segments.get(*i).cloned().unwrap_or_default(),
        EndpointView::Pattern(p) => p.to_string(),
    }))
}

/// A base rule or break-glass entry, as it is.
fn base_rule_yaml(out: &mut String, r: &RuleView<'_>, segments: &[String]) {
    let _ = writeln!(out, "  - name: {}", q(r.name));
    if !r.break_glass && r.action == crate::policy::Action::Deny {
        let _ = writeln!(out, "    action: deny");
    }
    let _ = writeln!(out, "    from: {}", endpoints(&r.from, segments));
    if let Some(to) = &r.to {
        let _ = writeln!(out, "    to: {}", endpoints(to, segments));
    }
    if let Some(m) = r.methods {
        let _ = writeln!(
            out,
            "    methods: {}",
            list(m.iter().map(|x| x.to_string()))
        );
    }
    if let Some(p) = r.paths {
        let _ = writeln!(out, "    paths: {}", list(p.iter().map(Pattern::to_string)));
    }
    conditions_yaml(out, r);
}

fn base_rule<'p>(base: Option<&'p Policy>, name: Option<&str>) -> Option<RuleView<'p>> {
    let name = name?;
    base?.view_rules().find(|r| r.name == name)
}

fn wildcard_note(rule: &LearnedRule) -> String {
    let mut notes = Vec::new();
    for (pattern, w) in &rule.wildcards {
        let kinds: Vec<&str> = w.kinds.iter().map(|k| k.as_str()).collect();
        notes.push(format!(
            "{} in {pattern}: {} value(s) ({})",
            w.wildcard,
            w.distinct,
            kinds.join(", ")
        ));
    }
    notes.join("; ")
}

/// The proposed bundle as YAML.
pub(crate) fn bundle(p: &Proposal, obs: &Observations, base: Option<(&Policy, &str)>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Proposed by `wardgate learn` from {} logged decision(s) in {}{}.",
        obs.records,
        obs.files.join(", "),
        match base {
            Some((b, name)) => format!("; base {name} (revision {})", b.revision()),
            None => String::new(),
        }
    );
    let _ = writeln!(
        out,
        "# Every allow rule stands for requests that were observed at least {} times. Review it\n\
         # (`wardgate analyze --findings`, `wardgate diff`), then run it as a shadow and replay.",
        p.min_count
    );
    let _ = writeln!(out, "version: 1");
    let _ = writeln!(out, "revision: {}", p.revision);
    let _ = writeln!(
        out,
        "trust_domains: {}",
        list(p.trust_domains.iter().cloned())
    );
    let _ = writeln!(
        out,
        "\nsegments:{}",
        if p.segments.is_empty() { " {}" } else { "" }
    );
    for s in &p.segments {
        if !s.from_base {
            let _ = writeln!(
                out,
                "  # proposed: covers {} observed identit{}",
                s.identities.len(),
                if s.identities.len() == 1 { "y" } else { "ies" }
            );
        }
        let _ = writeln!(out, "  {}:", q(&s.name));
        let _ = writeln!(out, "    members: {}", list(s.members.iter().cloned()));
        if let Some(l) = &s.max_svid_lifetime {
            let _ = writeln!(out, "    max_svid_lifetime: {}", q(l));
        }
    }
    let segment_names: Vec<String> = p.segments.iter().map(|s| s.name.clone()).collect();
    let deny: Vec<RuleView<'_>> = base
        .map(|(b, _)| {
            b.view_rules()
                .filter(|r| r.action == crate::policy::Action::Deny)
                .collect()
        })
        .unwrap_or_default();
    if deny.is_empty() && p.rules.is_empty() {
        let _ = writeln!(out, "\nrules: []");
    } else {
        let _ = writeln!(out, "\nrules:");
    }
    if !deny.is_empty() {
        let _ = writeln!(out, "  # --- deny rules of the base, unchanged");
        for r in &deny {
            base_rule_yaml(&mut out, r, &segment_names);
        }
    }
    let mut last: Option<(&str, &str)> = None;
    for r in &p.rules {
        if last != Some((&r.from, &r.to)) {
            let n = obs
                .conversations
                .get(&(r.from.clone(), r.to.clone()))
                .map_or(0, Vec::len);
            let _ = writeln!(
                out,
                "\n  # --- learned: {} -> {} ({n} request(s) observed)",
                r.from, r.to
            );
            last = Some((&r.from, &r.to));
        }
        let mut note = format!("{} request(s)", r.members.len());
        let w = wildcard_note(r);
        if !w.is_empty() {
            note.push_str("; ");
            note.push_str(&w);
        }
        if let Some(c) = &r.conditions_from {
            note.push_str(&format!("; conditions kept from base rule {c}"));
        }
        let _ = writeln!(out, "  - name: {}", q(&r.name));
        let _ = writeln!(out, "    # {note}");
        let _ = writeln!(out, "    from: {}", list([r.from.clone()]));
        let _ = writeln!(out, "    to: {}", list([r.to.clone()]));
        let _ = writeln!(out, "    methods: {}", list(r.methods.iter().cloned()));
        let _ = writeln!(out, "    paths: {}", list(r.paths.iter().cloned()));
        if let Some(v) = base_rule(base.map(|(b, _)| b), r.conditions_from.as_deref()) {
            conditions_yaml(&mut out, &v);
        }
    }
    if let Some((b, _)) = base {
        let entries: Vec<RuleView<'_>> = b.view_break_glass().collect();
        if let (Some(h), false) = (b.break_glass_header(), entries.is_empty()) {
            let _ = writeln!(out, "\n# break-glass of the base, unchanged");
            let _ = writeln!(out, "break_glass:");
            let _ = writeln!(out, "  header: {}", q(h));
            let _ = writeln!(out, "  allow:");
            let mut text = String::new();
            for r in &entries {
                base_rule_yaml(&mut text, r, &segment_names);
            }
            for line in text.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// What the tests file holds, and what could not become a case.
#[derive(Debug, Default, Serialize)]
pub(crate) struct TestsSummary {
    pub(crate) allow_cases: usize,
    pub(crate) deny_cases: usize,
    /// Learned rules without an observed request they decide (covered by earlier rules).
    pub(crate) rules_without_case: Vec<String>,
    /// Observed denials the proposal would allow: `METHOD PATH from X to Y (reason)`.
    pub(crate) denials_now_allowed: Vec<String>,
    /// Observed denials that depended on the forwarded certificate or a bundle the base
    /// does not reproduce: not testable from the log.
    pub(crate) denials_not_testable: usize,
}

/// The request of a test case.
struct Case<'a> {
    name: String,
    from: Option<&'a str>,
    to: Option<&'a str>,
    seen: &'a Seen,
    headers: Vec<(String, String)>,
    cert_lifetime: Option<String>,
    expect: String,
}

fn case_yaml(out: &mut String, c: &Case<'_>) {
    let _ = writeln!(out, "\n- name: {}", q(&c.name));
    let _ = writeln!(out, "  request:");
    if let Some(f) = c.from {
        let _ = writeln!(out, "    from: {}", q(f));
    }
    if let Some(t) = c.to {
        let _ = writeln!(out, "    to: {}", q(t));
    }
    let _ = writeln!(out, "    method: {}", q(&c.seen.method));
    let _ = writeln!(out, "    path: {}", q(&c.seen.raw_path));
    if !c.seen.host.is_empty() {
        let _ = writeln!(out, "    host: {}", q(&c.seen.host));
    }
    if !c.headers.is_empty() {
        let h: Vec<String> = c
            .headers
            .iter()
            .map(|(k, v)| format!("{}: {}", q(k), q(v)))
            .collect();
        let _ = writeln!(out, "    headers: {{{}}}", h.join(", "));
    }
    let _ = writeln!(out, "    at: {}", q(&c.seen.time.to_string()));
    if let Some(l) = &c.cert_lifetime {
        let _ = writeln!(out, "    cert_lifetime: {}", q(l));
    }
    let _ = writeln!(out, "  expect: {}", c.expect);
}

/// Whether learned rule `r` (with its kept conditions) matches this request.
fn rule_matches(
    r: &LearnedRule,
    base: Option<&Policy>,
    s: &Seen,
    headers: &HashMap<String, String>,
) -> bool {
    let Some(path) = &s.path else { return false };
    if !r.methods.contains(&s.method) || !r.patterns.iter().any(|p| p.matches_path(path)) {
        return false;
    }
    let Some(c) = base_rule(base, r.conditions_from.as_deref()) else {
        return true;
    };
    let host = normalize::host(&s.host).to_ascii_lowercase();
    c.hosts.is_none_or(|h| h.iter().any(|x| **x == host))
        && c.schedule.is_none_or(|sch| sch.matches(s.time))
        && c.headers.iter().all(|(k, v)| {
            headers
                .get(&**k)
                .is_some_and(|have| v.iter().any(|x| **x == *have))
        })
}

/// A simulated certificate lifetime for sources whose segment caps it (as `replay` and the
/// base decision simulate one): at most a minute.
fn lifetime_for(p: &Proposal, from: Option<&str>) -> Option<String> {
    let (td, path) = split_id(from?)?;
    let seg = p.segments.iter().find(|s| {
        s.members
            .iter()
            .filter_map(|m| Pattern::parse_spiffe(m).ok())
            .any(|m| m.matches_id(td, path))
    })?;
    let max: jiff::SignedDuration = seg.max_svid_lifetime.as_ref()?.parse().ok()?;
    let life = max.min(jiff::SignedDuration::from_mins(1));
    Some(format!("{life:#}"))
}

/// The tests file, and what it holds.
pub(crate) fn tests(
    p: &Proposal,
    obs: &Observations,
    base: Option<&Policy>,
    bundle_name: &str,
) -> (String, TestsSummary) {
    let mut out = String::new();
    let mut sum = TestsSummary::default();
    let _ = writeln!(
        out,
        "# Policy tests for {bundle_name}, written by `wardgate learn`: one observed request per\n\
         # learned rule (allowed by it) and one per kind of observed denial (still denied).\n\
         #   wardgate test {bundle_name} THIS_FILE"
    );
    let mut by_conv: BTreeMap<(&str, &str), Vec<&LearnedRule>> = BTreeMap::new();
    for r in &p.rules {
        by_conv.entry((&r.from, &r.to)).or_default().push(r);
    }
    for r in &p.rules {
        let list = obs
            .conversations
            .get(&(r.from.clone(), r.to.clone()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let conv = by_conv
            .get(&(r.from.as_str(), r.to.as_str()))
            .cloned()
            .unwrap_or_default();
        let headers: Vec<(String, String)> = base_rule(base, r.conditions_from.as_deref())
            .map(|c| {
                c.headers
                    .iter()
                    .filter_map(|(k, v)| v.first().map(|x| (k.to_string(), x.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let hmap: HashMap<String, String> = headers.iter().cloned().collect();
        let pick = r.members.iter().filter_map(|&i| list.get(i)).find(|l| {
            conv.iter()
                .find(|x| rule_matches(x, base, &l.seen, &hmap))
                .is_some_and(|first| first.name == r.name)
        });
        let Some(l) = pick else {
            sum.rules_without_case.push(r.name.clone());
            continue;
        };
        sum.allow_cases += 1;
        case_yaml(
            &mut out,
            &Case {
                name: format!(
                    "{} allows {} {} (observed at {})",
                    r.name,
                    l.seen.method,
                    l.seen.raw_path,
                    obs.place(l.seen.at)
                ),
                from: Some(&r.from),
                to: Some(&r.to),
                seen: &l.seen,
                headers,
                cert_lifetime: lifetime_for(p, Some(&r.from)),
                expect: format!("{{decision: allow, reason: rule, rule: {}}}", q(&r.name)),
            },
        );
    }
    for (n, (key, d)) in obs.denials.iter().enumerate() {
        let (from, to, logged_reason, logged_rule, by) = key;
        let s = &d.example;
        let (reason, rule) = match &d.base {
            Some((Verdict::Allow, ..)) => {
                sum.denials_not_testable += d.count;
                continue;
            }
            Some((Verdict::Deny, reason, rule)) => (reason.clone(), rule.clone()),
            None => (logged_reason.clone(), logged_rule.clone()),
        };
        if matches!(
            reason.as_str(),
            "svid_lifetime" | "bad_certificate" | "no_policy"
        ) {
            sum.denials_not_testable += d.count;
            continue;
        }
        let decided_before_rules = base.is_some() && reason != "default_deny";
        let covered = match (from, to) {
            (Some(f), Some(t)) if !decided_before_rules => {
                by_conv.get(&(f.as_str(), t.as_str())).is_some_and(|rules| {
                    rules
                        .iter()
                        .any(|r| rule_matches(r, base, s, &HashMap::new()))
                })
            }
            _ => false,
        };
        let what = format!(
            "{} {} from {} to {}",
            s.method,
            s.raw_path,
            from.as_deref().unwrap_or("(none)"),
            to.as_deref().unwrap_or("(none)")
        );
        if covered {
            sum.denials_now_allowed
                .push(format!("{what} (denied: {logged_reason})"));
            continue;
        }
        let expect = if base.is_some() {
            match &rule {
                Some(r) => format!("{{decision: deny, reason: {reason}, rule: {}}}", q(r)),
                None => format!("{{decision: deny, reason: {reason}}}"),
            }
        } else if reason == "bad_path" {
            "{decision: deny, reason: bad_path}".to_string()
        } else {
            "{decision: deny}".to_string()
        };
        let by = match by {
            RefusedBy::Log => "denied",
            RefusedBy::Base => "refused by the base",
        };
        sum.deny_cases += 1;
        case_yaml(
            &mut out,
            &Case {
                name: format!(
                    "observed denial {}: {what} ({by}: {}{}; {} seen, first at {})",
                    n + 1,
                    reason,
                    rule.as_deref().map(|r| format!(" {r}")).unwrap_or_default(),
                    d.count,
                    obs.place(s.at)
                ),
                from: from.as_deref(),
                to: to.as_deref(),
                seen: s,
                headers: Vec::new(),
                cert_lifetime: lifetime_for(p, from.as_deref()),
                expect,
            },
        );
    }
    (out, sum)
}
