//! The report of `wardgate learn`: what was read, what the proposal holds, what it generalised,
//! what it left out as too rare, what was denied or used break-glass, what crosses into a
//! sensitive segment (for review), and which identities and segments never appeared; as text
//! or as one JSON object.
//!
//! This module only describes a proposal that `propose` made; it must never change one, and
//! never print a path value it replaced with a wildcard (those are patient data), only counts
//! and kinds.

use std::fmt::Write as _;

use serde::Serialize;

use super::emit::TestsSummary;
use super::generalise::Wildcard;
use super::observe::{LineRef, Observations, RefusedBy, Skip};
use super::propose::Proposal;

#[derive(Debug, Serialize)]
pub(crate) struct Place {
    file: String,
    line: usize,
}

fn place(obs: &Observations, at: LineRef) -> Place {
    Place {
        file: obs.files.get(at.file).cloned().unwrap_or_default(),
        line: at.line,
    }
}

#[derive(Debug, Serialize)]
struct SegmentOut<'a> {
    name: &'a str,
    from_base: bool,
    members: &'a [String],
    identities: &'a [String],
}

#[derive(Debug, Serialize)]
struct Generalised<'a> {
    path: &'a str,
    #[serde(flatten)]
    wildcard: &'a Wildcard,
}

#[derive(Debug, Serialize)]
struct RuleOut<'a> {
    name: &'a str,
    from: &'a str,
    to: &'a str,
    methods: &'a [String],
    paths: &'a [String],
    observed: usize,
    generalised: Vec<Generalised<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conditions_from: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    conditions_dropped: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    from_segment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_segment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crosses_into: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct LeftOutOut<'a> {
    from: &'a str,
    to: &'a str,
    method: &'a str,
    path: &'a str,
    count: usize,
    rare_conversation: bool,
    lines: Vec<Place>,
}

#[derive(Debug, Serialize)]
struct DenialOut<'a> {
    from: Option<&'a str>,
    to: Option<&'a str>,
    reason: &'a str,
    rule: Option<&'a str>,
    refused_by: RefusedBy,
    count: usize,
    first: Place,
}

#[derive(Debug, Serialize)]
struct PairOut<'a> {
    from: &'a str,
    to: &'a str,
    count: usize,
    first: Place,
}

#[derive(Debug, Serialize)]
struct SkipOut {
    why: Skip,
    description: &'static str,
    count: usize,
    first: Place,
}

/// Inputs of the report besides the proposal.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub(crate) base: Option<(String, u64)>,
    pub(crate) output: Option<String>,
    pub(crate) tests: Option<String>,
    pub(crate) id_min_distinct: usize,
    pub(crate) max_literals: usize,
    pub(crate) deep_min_depths: usize,
    pub(crate) summary: &'a TestsSummary,
}

/// The report as one JSON value.
pub(crate) fn json(obs: &Observations, p: &Proposal, cx: &Context<'_>) -> serde_json::Value {
    let rules: Vec<RuleOut<'_>> = p
        .rules
        .iter()
        .map(|r| RuleOut {
            name: &r.name,
            from: &r.from,
            to: &r.to,
            methods: &r.methods,
            paths: &r.paths,
            observed: r.members.len(),
            generalised: r
                .wildcards
                .iter()
                .map(|(path, wildcard)| Generalised { path, wildcard })
                .collect(),
            conditions_from: r.conditions_from.as_deref(),
            conditions_dropped: &r.conditions_dropped,
            from_segment: r.from_segment.as_deref(),
            to_segment: r.to_segment.as_deref(),
            crosses_into: r.crosses_into.as_deref(),
        })
        .collect();
    let left_out: Vec<LeftOutOut<'_>> = p
        .left_out
        .iter()
        .map(|l| LeftOutOut {
            from: &l.from,
            to: &l.to,
            method: &l.method,
            path: &l.path,
            count: l.count,
            rare_conversation: l.rare_conversation,
            lines: l.lines.iter().map(|&at| place(obs, at)).collect(),
        })
        .collect();
    let denials: Vec<DenialOut<'_>> = obs
        .denials
        .iter()
        .map(|((from, to, reason, rule, by), d)| DenialOut {
            from: from.as_deref(),
            to: to.as_deref(),
            reason,
            rule: rule.as_deref(),
            refused_by: *by,
            count: d.count,
            first: place(obs, d.example.at),
        })
        .collect();
    let break_glass: Vec<PairOut<'_>> = obs
        .break_glass
        .iter()
        .map(|((from, to), t)| PairOut {
            from,
            to,
            count: t.count,
            first: place(obs, t.first),
        })
        .collect();
    let skipped: Vec<SkipOut> = obs
        .skipped
        .iter()
        .map(|(why, t)| SkipOut {
            why: *why,
            description: why.describe(),
            count: t.count,
            first: place(obs, t.first),
        })
        .collect();
    let segments: Vec<SegmentOut<'_>> = p
        .segments
        .iter()
        .map(|s| SegmentOut {
            name: &s.name,
            from_base: s.from_base,
            members: &s.members,
            identities: &s.identities,
        })
        .collect();
    serde_json::json!({
        "logs": obs.files,
        "base": cx.base.as_ref().map(|(b, _)| b),
        "base_revision": cx.base.as_ref().map(|(_, r)| r),
        "output": cx.output,
        "tests": cx.tests,
        "revision": p.revision,
        "records": obs.records,
        "learned_from": obs.learnable(),
        "denied": obs.denials.values().map(|d| d.count).sum::<usize>(),
        "break_glass": obs.break_glass.values().map(|t| t.count).sum::<usize>(),
        "not_learnable": obs.skipped.values().map(|t| t.count).sum::<usize>(),
        "unreadable": obs.unreadable.len(),
        "thresholds": {
            "min_count": p.min_count,
            "id_min_distinct": cx.id_min_distinct,
            "max_literals": cx.max_literals,
            "deep_min_depths": cx.deep_min_depths,
        },
        "sensitive": p.sensitive,
        "segments": segments,
        "rules": rules,
        "left_out": left_out,
        "denials": denials,
        "break_glass_use": break_glass,
        "not_learnable_by_cause": skipped,
        "never_seen": {
            "identities": p.never_seen_identities,
            "segments": p.never_seen_segments,
        },
        "tests_file": cx.summary,
    })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The report as text.
pub(crate) fn text(obs: &Observations, p: &Proposal, cx: &Context<'_>) -> String {
    let mut o = String::new();
    let denied: usize = obs.denials.values().map(|d| d.count).sum();
    let bg: usize = obs.break_glass.values().map(|t| t.count).sum();
    let skipped: usize = obs.skipped.values().map(|t| t.count).sum();
    let _ = writeln!(
        o,
        "learn: {} decision(s) from {}{}\n",
        obs.records,
        obs.files.join(", "),
        match &cx.base {
            Some((b, r)) => format!("; base {b} (revision {r})"),
            None => String::new(),
        }
    );
    let _ = writeln!(
        o,
        "  learned from   {}  (allowed, or denied only because no rule allowed them)",
        obs.learnable()
    );
    let _ = writeln!(o, "  denied         {denied}  (kept denied: never learned)");
    let _ = writeln!(
        o,
        "  break-glass    {bg}  (never turned into standing rules)"
    );
    let _ = writeln!(o, "  not learnable  {skipped}");
    if !obs.unreadable.is_empty() {
        let _ = writeln!(
            o,
            "  unreadable     {}  (see warnings)",
            obs.unreadable.len()
        );
    }
    let conversations = {
        let mut c: Vec<(&str, &str)> = p
            .rules
            .iter()
            .map(|r| (r.from.as_str(), r.to.as_str()))
            .collect();
        c.dedup();
        c.len()
    };
    let patterns: usize = p.rules.iter().map(|r| r.paths.len()).sum();
    let _ = writeln!(
        o,
        "\nproposal: revision {}, {} over {}, {}",
        p.revision,
        plural(p.rules.len(), "allow rule", "allow rules"),
        plural(conversations, "conversation", "conversations"),
        plural(patterns, "path pattern", "path patterns"),
    );
    match (&cx.output, &cx.tests) {
        (Some(b), Some(t)) => {
            let _ = writeln!(
                o,
                "  written to {b}; tests to {t} ({} allow and {} deny case(s))",
                cx.summary.allow_cases, cx.summary.deny_cases
            );
        }
        (Some(b), None) => {
            let _ = writeln!(o, "  written to {b}");
        }
        (None, Some(t)) => {
            let _ = writeln!(
                o,
                "  tests to {t} ({} allow and {} deny case(s))",
                cx.summary.allow_cases, cx.summary.deny_cases
            );
        }
        (None, None) => {}
    }
    let _ = writeln!(o, "\nsegments");
    for s in &p.segments {
        let origin = if s.from_base { "base" } else { "proposed" };
        let _ = writeln!(o, "  {:<16} {origin:<9} {}", s.name, s.members.join(", "));
        if s.identities.is_empty() {
            let _ = writeln!(o, "  {:<16} {:<9} no identity seen", "", "");
        }
        for id in &s.identities {
            let _ = writeln!(o, "  {:<16} {:<9}   {id}", "", "");
        }
    }
    let gen: Vec<_> = p.rules.iter().filter(|r| !r.wildcards.is_empty()).collect();
    if !gen.is_empty() {
        let _ = writeln!(o, "\ngeneralised ({})", gen.len());
        for r in gen {
            let _ = writeln!(
                o,
                "  {}  {} {}  ({} request(s))",
                r.name,
                r.methods.join(","),
                r.paths.join(" "),
                r.members.len()
            );
            for (path, w) in &r.wildcards {
                let kinds: Vec<&str> = w.kinds.iter().map(|k| k.as_str()).collect();
                let depth = match (w.depths.first(), w.depths.last()) {
                    (Some(a), Some(b)) => format!(", depths {a}-{b}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    o,
                    "      {} at segment {} of {path}: {} distinct observed value(s) ({}{depth})",
                    w.wildcard,
                    w.position,
                    w.distinct,
                    kinds.join(", ")
                );
            }
        }
    }
    if !p.left_out.is_empty() {
        let n: usize = p.left_out.iter().map(|l| l.count).sum();
        let _ = writeln!(
            o,
            "\ntoo rare to trust (seen fewer than {} times): left out ({} famil{}, {n} request(s))",
            p.min_count,
            p.left_out.len(),
            if p.left_out.len() == 1 { "y" } else { "ies" }
        );
        for l in &p.left_out {
            let first = l.lines.first().map(|&at| obs.place(at)).unwrap_or_default();
            let _ = writeln!(
                o,
                "  {} {} from {} to {}  {}{}  first at {first}",
                l.method,
                l.path,
                l.from,
                l.to,
                plural(l.count, "request", "requests"),
                if l.rare_conversation {
                    " (rare conversation)"
                } else {
                    ""
                }
            );
        }
    }
    let review: Vec<_> = p
        .rules
        .iter()
        .filter(|r| r.crosses_into.is_some())
        .collect();
    if !review.is_empty() {
        let _ = writeln!(
            o,
            "\nreview: observed grants into a sensitive segment ({})",
            review.len()
        );
        for r in review {
            let _ = writeln!(
                o,
                "  {}  {} -> {}",
                r.name,
                r.from_segment.as_deref().unwrap_or("(no segment)"),
                r.to_segment.as_deref().unwrap_or("-")
            );
        }
    }
    let kept: Vec<_> = p
        .rules
        .iter()
        .filter(|r| r.conditions_from.is_some() || !r.conditions_dropped.is_empty())
        .collect();
    if !kept.is_empty() {
        let _ = writeln!(o, "\nconditions of the base rule that allowed the traffic");
        for r in kept {
            if let Some(c) = &r.conditions_from {
                let _ = writeln!(o, "  {}  kept from {c}", r.name);
            }
            if !r.conditions_dropped.is_empty() {
                let _ = writeln!(
                    o,
                    "  {}  dropped ({} also seen without them): review",
                    r.name,
                    r.conditions_dropped.join(", ")
                );
            }
        }
    }
    if !obs.denials.is_empty() {
        let _ = writeln!(o, "\nobserved denials (not learned)");
        for ((from, to, reason, rule, by), d) in &obs.denials {
            let _ = writeln!(
                o,
                "  {} -> {}  {reason}{}{}  {}  first at {}",
                from.as_deref().unwrap_or("(none)"),
                to.as_deref().unwrap_or("(none)"),
                rule.as_deref().map(|r| format!(" {r}")).unwrap_or_default(),
                if *by == RefusedBy::Base {
                    " (by the base)"
                } else {
                    ""
                },
                plural(d.count, "request", "requests"),
                obs.place(d.example.at)
            );
        }
    }
    if !cx.summary.denials_now_allowed.is_empty() {
        let _ = writeln!(o, "\nobserved denials the proposal would allow: review");
        for d in &cx.summary.denials_now_allowed {
            let _ = writeln!(o, "  {d}");
        }
    }
    if !obs.break_glass.is_empty() {
        let _ = writeln!(o, "\nbreak-glass use (not learned)");
        for ((from, to), t) in &obs.break_glass {
            let _ = writeln!(
                o,
                "  {from} -> {to}  {}  first at {}",
                plural(t.count, "request", "requests"),
                obs.place(t.first)
            );
        }
    }
    if !obs.skipped.is_empty() {
        let _ = writeln!(o, "\nnot learnable");
        for (why, t) in &obs.skipped {
            let _ = writeln!(
                o,
                "  {}: {}  first at {}",
                why.describe(),
                t.count,
                obs.place(t.first)
            );
        }
    }
    if !cx.summary.rules_without_case.is_empty() {
        let _ = writeln!(
            o,
            "\nrules without a test case (every observed request is decided by an earlier rule): {}",
            cx.summary.rules_without_case.join(", ")
        );
    }
    let _ = writeln!(o, "\nnever seen in the logs");
    let none = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(o, "  identities  {}", none(&p.never_seen_identities));
    let _ = writeln!(o, "  segments    {}", none(&p.never_seen_segments));
    o
}
