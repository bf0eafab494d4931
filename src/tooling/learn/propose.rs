//! The proposal of `wardgate learn`: segments (the base's, or one per trust domain and SPIFFE
//! namespace), and allow rules, one per observed conversation and request family (methods seen,
//! paths generalised by `generalise`), with what was too rare to keep and what was never seen.
//!
//! A request family (conversation, method, generalised path) is kept only when it was observed at
//! least `--min-count` times and its conversation too; a kept family covered by a wider kept
//! family of the same conversation and method is folded into it. A family whose requests were all
//! allowed by one base rule with conditions (schedule, headers, hosts) keeps that rule's
//! conditions. This module owns those choices; it must never grant a conversation, method or
//! path shape that was not observed, and never touch the base's segments, deny rules or
//! break-glass entries (they are written back unchanged by `emit`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::generalise::{generalise, Thresholds, Wildcard};
use super::observe::{split_id, LineRef, Observations};
use crate::policy::{Action, Pattern, Policy};

/// The flags that shape a proposal.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) min_count: usize,
    pub(crate) thresholds: Thresholds,
    /// `--sensitive`, as given (empty: `clinical` when the bundle has it).
    pub(crate) sensitive: Vec<String>,
    pub(crate) revision: Option<u64>,
}

/// A segment of the proposal.
#[derive(Debug, Clone)]
pub(crate) struct SegmentProposal {
    pub(crate) name: String,
    pub(crate) members: Vec<String>,
    pub(crate) max_svid_lifetime: Option<String>,
    pub(crate) from_base: bool,
    /// Observed identities it covers.
    pub(crate) identities: Vec<String>,
}

/// One proposed allow rule.
#[derive(Debug, Clone)]
pub(crate) struct LearnedRule {
    pub(crate) name: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) methods: Vec<String>,
    pub(crate) paths: Vec<String>,
    pub(crate) patterns: Vec<Pattern>,
    /// Indices into the conversation's observations.
    pub(crate) members: Vec<usize>,
    /// (pattern, wildcard) for every generalised position.
    pub(crate) wildcards: Vec<(String, Wildcard)>,
    /// The base rule whose conditions this rule keeps.
    pub(crate) conditions_from: Option<String>,
    /// Base rules whose conditions could not be kept (the family was also seen without them).
    pub(crate) conditions_dropped: Vec<String>,
    pub(crate) from_segment: Option<String>,
    pub(crate) to_segment: Option<String>,
    /// The sensitive segment this rule reaches into from outside it.
    pub(crate) crosses_into: Option<String>,
}

/// A request family left out as too rare.
#[derive(Debug, Clone)]
pub(crate) struct LeftOut {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) count: usize,
    /// The whole conversation was below the minimum count.
    pub(crate) rare_conversation: bool,
    pub(crate) lines: Vec<LineRef>,
}

/// The whole proposal.
#[derive(Debug)]
pub(crate) struct Proposal {
    pub(crate) revision: u64,
    pub(crate) trust_domains: Vec<String>,
    pub(crate) segments: Vec<SegmentProposal>,
    pub(crate) rules: Vec<LearnedRule>,
    pub(crate) left_out: Vec<LeftOut>,
    pub(crate) sensitive: Vec<String>,
    pub(crate) never_seen_identities: Vec<String>,
    pub(crate) never_seen_segments: Vec<String>,
    pub(crate) min_count: usize,
}

/// Lower-case `[a-z0-9-]`, runs of anything else as one `-`, no leading or trailing `-`.
pub(crate) fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

fn td_label(td: &str) -> String {
    sanitize(td.split('.').next().unwrap_or(td))
}

/// A short, unique name per identity: the last path segment, or the whole path where that is
/// ambiguous, or the trust domain's first label and the path where even that is.
fn workload_names<'a>(ids: &BTreeSet<&'a str>) -> HashMap<&'a str, String> {
    let short = |id: &str| -> String {
        let (td, path) = split_id(id).unwrap_or((id, ""));
        let last = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
        let s = sanitize(last);
        if s.is_empty() {
            td_label(td)
        } else {
            s
        }
    };
    let long = |id: &str| -> String {
        let (td, path) = split_id(id).unwrap_or((id, ""));
        let s = sanitize(path);
        if s.is_empty() {
            td_label(td)
        } else {
            s
        }
    };
    let full = |id: &str| -> String {
        let (td, _) = split_id(id).unwrap_or((id, ""));
        format!("{}-{}", td_label(td), long(id))
    };
    let mut out = HashMap::new();
    for f in [&short as &dyn Fn(&str) -> String, &long, &full] {
        let mut count: HashMap<String, usize> = HashMap::new();
        for id in ids {
            *count.entry(f(id)).or_default() += 1;
        }
        for id in ids {
            let n = f(id);
            if !out.contains_key(id) && count.get(&n) == Some(&1) {
                out.insert(*id, n);
            }
        }
    }
    for id in ids {
        out.entry(*id).or_insert_with(|| full(id));
    }
    out
}

/// Segments proposed from identities: one per (trust domain, `ns/NAME`), and one per trust
/// domain for identities outside that shape.
fn propose_segments(ids: &BTreeSet<String>, tds: &[String]) -> Vec<SegmentProposal> {
    // (td, Some(ns) | None) -> identities
    let mut groups: BTreeMap<(String, Option<String>), Vec<String>> = BTreeMap::new();
    for id in ids {
        let Some((td, path)) = split_id(id) else {
            continue;
        };
        if !tds.iter().any(|t| t == td) {
            continue;
        }
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let ns = match segs.as_slice() {
            ["ns", ns, _, ..] => Some(ns.to_string()),
            _ => None,
        };
        groups
            .entry((td.to_string(), ns))
            .or_default()
            .push(id.clone());
    }
    let ns_tds: BTreeSet<&str> = groups
        .keys()
        .filter(|(_, ns)| ns.is_some())
        .map(|(td, _)| td.as_str())
        .collect();
    let mut wanted: Vec<(String, String, Vec<String>, Vec<String>)> = Vec::new();
    for ((td, ns), identities) in &groups {
        let (base_name, alt, members) = match ns {
            Some(ns) => (
                sanitize(ns),
                format!("{}-{}", sanitize(ns), td_label(td)),
                vec![format!("spiffe://{td}/ns/{ns}/**")],
            ),
            None if !ns_tds.contains(td.as_str()) => (
                td_label(td),
                sanitize(td),
                vec![format!("spiffe://{td}/**")],
            ),
            None => (td_label(td), sanitize(td), identities.clone()),
        };
        wanted.push((base_name, alt, members, identities.clone()));
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for (n, ..) in &wanted {
        *count.entry(n.clone()).or_default() += 1;
    }
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for (n, alt, members, identities) in wanted {
        let first = if count.get(&n) == Some(&1) && !n.is_empty() {
            n
        } else {
            alt
        };
        let name = unique(
            if first.is_empty() {
                "segment".into()
            } else {
                first
            },
            &used,
        );
        used.insert(name.clone());
        out.push(SegmentProposal {
            name,
            members,
            max_svid_lifetime: None,
            from_base: false,
            identities,
        });
    }
    out
}

fn unique(name: String, used: &BTreeSet<String>) -> String {
    if !used.contains(&name) {
        return name;
    }
    (2..)
        .map(|i| format!("{name}-{i}"))
        .find(|n| !used.contains(n))
        .unwrap_or(name)
}

fn member_patterns(s: &SegmentProposal) -> Vec<Pattern> {
    s.members
        .iter()
        .filter_map(|m| Pattern::parse_spiffe(m).ok())
        .collect()
}

fn segment_of(segments: &[(String, Vec<Pattern>)], id: &str) -> Option<String> {
    let (td, path) = split_id(id)?;
    segments
        .iter()
        .find(|(_, pats)| pats.iter().any(|p| p.matches_id(td, path)))
        .map(|(n, _)| n.clone())
}

/// Base allow rules with conditions a learned rule can keep, by name.
fn conditioned_rules(base: Option<&Policy>) -> BTreeSet<String> {
    base.map(|b| {
        b.view_rules()
            .filter(|r| r.action == Action::Allow)
            .filter(|r| r.schedule.is_some() || !r.headers.is_empty() || r.hosts.is_some())
            .map(|r| r.name.to_string())
            .collect()
    })
    .unwrap_or_default()
}

/// One generalised path of a conversation (under one set of kept conditions) while rules are
/// formed.
struct PatternAcc {
    methods: BTreeSet<String>,
    members: Vec<usize>,
    wildcards: Vec<Wildcard>,
    pat: Pattern,
    dropped: Vec<String>,
}

/// A rule's grouping key: first path segment, the base rule whose conditions it keeps, methods.
type RuleKey = (String, Option<String>, Vec<String>);

/// A kept request family before grouping into rules.
struct Family {
    pattern: String,
    pat: Pattern,
    method: String,
    members: Vec<usize>,
    wildcards: Vec<Wildcard>,
    cond: Option<String>,
    dropped: Vec<String>,
}

/// What a rule's name says about its paths: the literal segments all its patterns start with
/// (at most two: `/api/claims` gives `api-claims`), or the grouping key.
fn paths_word(first: &str, patterns: &[&str]) -> String {
    let split: Vec<Vec<&str>> = patterns
        .iter()
        .map(|p| p.trim_start_matches('/').split('/').collect())
        .collect();
    let mut common: Vec<&str> = Vec::new();
    for i in 0..2 {
        let Some(seg) = split.first().and_then(|s| s.get(i)) else {
            break;
        };
        let literal = !seg.is_empty() && *seg != "*" && *seg != "**";
        if !literal || !split.iter().all(|s| s.get(i) == Some(seg)) {
            break;
        }
        common.push(seg);
    }
    let word = sanitize(&common.join("-"));
    if word.is_empty() {
        first.to_string()
    } else {
        word.chars()
            .take(48)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string()
    }
}

fn first_segment(pattern: &str) -> String {
    match pattern.trim_start_matches('/').split('/').next() {
        None | Some("") => "root".to_string(),
        Some("*") | Some("**") => "any".to_string(),
        Some(s) => {
            let s = sanitize(s);
            if s.is_empty() {
                "path".to_string()
            } else {
                s.chars()
                    .take(40)
                    .collect::<String>()
                    .trim_end_matches('-')
                    .to_string()
            }
        }
    }
}

/// The families of one conversation: kept (generalised, folded) and left out.
fn conversation_families(
    obs: &Observations,
    key: &(String, String),
    settings: &Settings,
    conditioned: &BTreeSet<String>,
) -> Result<(Vec<Family>, Vec<LeftOut>), String> {
    let list = obs.conversations.get(key).map(Vec::as_slice).unwrap_or(&[]);
    let paths: Vec<&str> = list
        .iter()
        .map(|l| l.seen.path.as_deref().unwrap_or("/"))
        .collect();
    let rare_conversation = list.len() < settings.min_count;
    let mut kept = Vec::new();
    let mut left = Vec::new();
    for fam in generalise(&paths, &settings.thresholds) {
        let pat = Pattern::parse_path(&fam.pattern).map_err(|e| {
            format!(
                "internal error: generalised path `{}` is not a pattern: {e}",
                fam.pattern
            )
        })?;
        let mut by_method: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in &fam.members {
            if let Some(l) = list.get(i) {
                by_method.entry(&l.seen.method).or_default().push(i);
            }
        }
        for (method, members) in by_method {
            if rare_conversation || members.len() < settings.min_count {
                left.push(LeftOut {
                    from: key.0.clone(),
                    to: key.1.clone(),
                    method: method.to_string(),
                    path: fam.pattern.clone(),
                    count: members.len(),
                    rare_conversation,
                    lines: members
                        .iter()
                        .filter_map(|&i| list.get(i).map(|l| l.seen.at))
                        .collect(),
                });
                continue;
            }
            let origins: BTreeSet<Option<&str>> = members
                .iter()
                .filter_map(|&i| list.get(i))
                .map(|l| {
                    l.logged_rule
                        .as_deref()
                        .filter(|r| conditioned.contains(*r))
                })
                .collect();
            let (cond, dropped) = match origins.iter().collect::<Vec<_>>().as_slice() {
                [Some(r)] => (Some(r.to_string()), Vec::new()),
                _ => (
                    None,
                    origins.iter().flatten().map(|r| r.to_string()).collect(),
                ),
            };
            kept.push(Family {
                pattern: fam.pattern.clone(),
                pat: pat.clone(),
                method: method.to_string(),
                members,
                wildcards: fam.wildcards.clone(),
                cond,
                dropped,
            });
        }
    }
    // Fold each family into a wider one of the same method that covers it (and whose
    // conditions, if any, are the same).
    let covers = |q: &Family, p: &Family| {
        q.pattern != p.pattern
            && q.method == p.method
            && p.pat.is_subset_of(&q.pat)
            && (q.cond.is_none() || q.cond == p.cond)
    };
    let absorbed: Vec<bool> = kept
        .iter()
        .map(|p| kept.iter().any(|q| covers(q, p)))
        .collect();
    let mut target: Vec<Option<usize>> = vec![None; kept.len()];
    for (i, p) in kept.iter().enumerate() {
        if absorbed.get(i) == Some(&true) {
            target[i] = kept
                .iter()
                .enumerate()
                .find(|(j, q)| absorbed.get(*j) == Some(&false) && covers(q, p))
                .map(|(j, _)| j);
        }
    }
    let mut out: Vec<Option<Family>> = kept.into_iter().map(Some).collect();
    for (i, t) in target.iter().enumerate() {
        if let Some(j) = t {
            if let Some(p) = out.get_mut(i).and_then(Option::take) {
                if let Some(Some(q)) = out.get_mut(*j) {
                    q.members.extend(p.members);
                    q.dropped.extend(p.dropped);
                }
            }
        }
    }
    Ok((out.into_iter().flatten().collect(), left))
}

/// Build the proposal.
pub(crate) fn propose(
    obs: &Observations,
    base: Option<&Policy>,
    settings: &Settings,
) -> Result<Proposal, String> {
    // Trust domains and segments.
    let (trust_domains, segments) = match base {
        Some(b) => {
            let tds: Vec<String> = b.trust_domains().map(str::to_string).collect();
            let segs = b
                .view_segments()
                .iter()
                .map(|s| {
                    let pats: Vec<&Pattern> = s.members.iter().collect();
                    SegmentProposal {
                        name: s.name.to_string(),
                        members: s.members.iter().map(|m| m.to_string()).collect(),
                        max_svid_lifetime: s.max_svid_lifetime.map(|d| format!("{d:#}")),
                        from_base: true,
                        identities: obs
                            .identities
                            .iter()
                            .filter(|id| {
                                split_id(id)
                                    .is_some_and(|(td, p)| pats.iter().any(|m| m.matches_id(td, p)))
                            })
                            .cloned()
                            .collect(),
                    }
                })
                .collect();
            (tds, segs)
        }
        None => {
            let tds: BTreeSet<String> = obs
                .conversations
                .keys()
                .flat_map(|(a, b)| [a, b])
                .filter_map(|id| split_id(id).map(|(td, _)| td.to_string()))
                .collect();
            let tds: Vec<String> = tds.into_iter().collect();
            let segs = propose_segments(&obs.identities, &tds);
            (tds, segs)
        }
    };
    let seg_pats: Vec<(String, Vec<Pattern>)> = segments
        .iter()
        .map(|s| (s.name.clone(), member_patterns(s)))
        .collect();
    let sensitive: Vec<String> = if settings.sensitive.is_empty() {
        segments
            .iter()
            .filter(|s| s.name == "clinical")
            .map(|s| s.name.clone())
            .collect()
    } else {
        for s in &settings.sensitive {
            if !segments.iter().any(|x| &x.name == s) {
                return Err(format!(
                    "--sensitive {s}: the proposal has no segment `{s}` (segments: {})",
                    segments
                        .iter()
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        settings.sensitive.clone()
    };

    // Rules.
    let conditioned = conditioned_rules(base);
    let ids: BTreeSet<&str> = obs
        .conversations
        .keys()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    let names = workload_names(&ids);
    let mut used: BTreeSet<String> = base
        .map(|b| {
            b.rule_names()
                .chain(b.break_glass_names())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut rules = Vec::new();
    let mut left_out = Vec::new();
    for key in obs.conversations.keys() {
        let (families, left) = conversation_families(obs, key, settings, &conditioned)?;
        left_out.extend(left);
        // (cond, pattern) -> its methods, observations, wildcards and dropped conditions
        let mut by_pattern: BTreeMap<(Option<String>, String), PatternAcc> = BTreeMap::new();
        for f in families {
            let e = by_pattern
                .entry((f.cond.clone(), f.pattern.clone()))
                .or_insert_with(|| PatternAcc {
                    methods: BTreeSet::new(),
                    members: Vec::new(),
                    wildcards: f.wildcards.clone(),
                    pat: f.pat.clone(),
                    dropped: Vec::new(),
                });
            e.methods.insert(f.method);
            e.members.extend(f.members);
            e.dropped.extend(f.dropped);
        }
        // (first segment, cond, methods) -> patterns: one rule each
        let mut groups: BTreeMap<RuleKey, Vec<(String, PatternAcc)>> = BTreeMap::new();
        for ((cond, pattern), acc) in by_pattern {
            let methods: Vec<String> = acc.methods.iter().cloned().collect();
            groups
                .entry((first_segment(&pattern), cond, methods))
                .or_default()
                .push((pattern, acc));
        }
        let from_name = names.get(key.0.as_str()).cloned().unwrap_or_default();
        let to_name = names.get(key.1.as_str()).cloned().unwrap_or_default();
        let from_segment = segment_of(&seg_pats, &key.0);
        let to_segment = segment_of(&seg_pats, &key.1);
        let crosses_into = to_segment
            .clone()
            .filter(|t| sensitive.contains(t) && from_segment.as_ref() != Some(t));
        for ((first, cond, methods), pats) in groups {
            let verbs = methods
                .iter()
                .map(|m| m.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join("-");
            let word = paths_word(
                &first,
                &pats.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            );
            let name = unique(
                sanitize(&format!("{from_name}-to-{to_name}-{verbs}-{word}")),
                &used,
            );
            used.insert(name.clone());
            let mut rule = LearnedRule {
                name,
                from: key.0.clone(),
                to: key.1.clone(),
                methods,
                paths: Vec::new(),
                patterns: Vec::new(),
                members: Vec::new(),
                wildcards: Vec::new(),
                conditions_from: cond,
                conditions_dropped: Vec::new(),
                from_segment: from_segment.clone(),
                to_segment: to_segment.clone(),
                crosses_into: crosses_into.clone(),
            };
            for (pattern, acc) in pats {
                rule.wildcards
                    .extend(acc.wildcards.into_iter().map(|w| (pattern.clone(), w)));
                rule.paths.push(pattern);
                rule.patterns.push(acc.pat);
                rule.members.extend(acc.members);
                for d in acc.dropped {
                    if !rule.conditions_dropped.contains(&d) {
                        rule.conditions_dropped.push(d);
                    }
                }
            }
            rule.members.sort_unstable();
            rules.push(rule);
        }
    }
    rules.sort_by(|a, b| (&a.from, &a.to, &a.name).cmp(&(&b.from, &b.to, &b.name)));

    // What never appeared.
    let mut never_seen_identities = BTreeSet::new();
    if let Some(b) = base {
        let segs = b.view_segments();
        let exact = |p: &Pattern| !p.more() && p.to_string().split('/').all(|s| s != "*");
        let mut named: Vec<&Pattern> = segs.iter().flat_map(|s| s.members.iter()).collect();
        for r in b.view_rules().chain(b.view_break_glass()) {
            for e in r.from.iter().chain(r.to.iter().flatten()) {
                if let crate::policy::view::EndpointView::Pattern(p) = e {
                    named.push(p);
                }
            }
        }
        for p in named {
            let id = p.to_string();
            if exact(p) && !obs.identities.contains(&id) {
                never_seen_identities.insert(id);
            }
        }
    }
    let never_seen_segments = segments
        .iter()
        .filter(|s| s.identities.is_empty())
        .map(|s| s.name.clone())
        .collect();
    Ok(Proposal {
        revision: settings
            .revision
            .unwrap_or_else(|| base.map(|b| b.revision().saturating_add(1)).unwrap_or(1)),
        trust_domains,
        segments,
        rules,
        left_out,
        sensitive,
        never_seen_identities: never_seen_identities.into_iter().collect(),
        never_seen_segments,
        min_count: settings.min_count,
    })
}
