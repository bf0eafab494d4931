//! Validation and compilation: raw bundle files in, an immutable, indexed [`Policy`] out.
//!
//! Validation collects every problem with its file, line and column, across all files of the
//! bundle, so one run reports them all (the bundle format is described in README.md). Only a
//! bundle without a single problem is compiled: names resolved to segment numbers, patterns
//! parsed, conditions normalised into the `model`, and every rule filed in the `index` through
//! its builder.
//!
//! This module never evaluates a request (that is `eval`), and never lays out the index itself:
//! it hands the index each segment member and each rule's `from` and `to`, nothing more.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use fnv::FnvHashMap;

use super::bundle::{self, RawBundle, RawRule, SourceFile, S};
use super::digest::bundle_digest;
use super::error::Diagnostics;
use super::index::{IndexBuilder, RuleList, Selector};
use super::limits::{CompileLimits, Meter, OverBudget, INDEX_ENTRY_BYTES, TRIE_NODE_BYTES};
use super::model::{Action, Endpoint, Policy, Rule, Segment};
use super::overlap::MemberTrie;
use super::pattern::{intern, Pattern, PatternError, Strings};
use super::schedule::{self, Schedule};

/// The supported bundle format version.
pub const FORMAT_VERSION: u64 = 1;

/// Longest rule, break-glass entry or segment name, in bytes. Names travel in headers
/// (`x-wardgate-rule`), metric labels and log lines.
pub const MAX_NAME_LEN: usize = 128;

/// Longest header name a condition or `break_glass.header` may use, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 128;

/// Header names a break-glass header may not have: Envoy, the mesh or the client's HTTP stack
/// set them on ordinary requests (or they carry the request itself), so a plain request would
/// carry a "reason" nobody gave. Exact names; see also [`RESERVED_HEADER_PREFIXES`].
pub const RESERVED_HEADER_NAMES: &[&str] = &[
    "x-request-id",
    "x-client-trace-id",
    "x-real-ip",
    "forwarded",
    "via",
    "host",
    "authority",
    "user-agent",
    "accept",
    "accept-encoding",
    "content-type",
    "content-length",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "traceparent",
    "tracestate",
    "b3",
    "x-ot-span-context",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    "grpc-timeout",
    "grpc-trace-bin",
    "sw8",
];

/// Header-name prefixes a break-glass header may not have (see [`RESERVED_HEADER_NAMES`]):
/// `x-envoy-*` (Envoy's own), `x-forwarded-*` (proxies), `x-b3-*` and `x-datadog-*` (tracing),
/// `x-istio-*` (the mesh), `x-wardgate-*` (wardgate's own, stripped from client requests).
pub const RESERVED_HEADER_PREFIXES: &[&str] = &[
    "x-envoy-",
    "x-forwarded-",
    "x-b3-",
    "x-datadog-",
    "x-istio-",
    "x-wardgate-",
];

/// Why `name` (lower case) may not be the break-glass header, if it may not.
fn reserved_header(name: &str) -> Option<&'static str> {
    if name.starts_with(':') {
        return Some("pseudo-headers (`:path`, `:authority`, ...) are set on every request");
    }
    if name.starts_with("x-wardgate-") {
        return Some("it is in wardgate's own `x-wardgate-*` namespace (those are stripped from client requests)");
    }
    if RESERVED_HEADER_NAMES.contains(&name)
        || RESERVED_HEADER_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Some("Envoy, the mesh or HTTP clients set it on ordinary requests, so a plain request would be break-glass");
    }
    None
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HEADER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

struct Ctx<'a> {
    errors: &'a mut Diagnostics,
    file: &'a str,
}

/// The problem with a rule, break-glass entry or segment name, if any.
fn name_problem(what: &str, name: &str) -> Option<String> {
    if name.len() > MAX_NAME_LEN {
        Some(format!(
            "{what} name is {} bytes long, over the limit of {MAX_NAME_LEN}",
            name.len()
        ))
    } else if !valid_name(name) {
        Some(format!(
            "{what} name `{name}` must match [a-z0-9][a-z0-9-]*"
        ))
    } else {
        None
    }
}

impl Ctx<'_> {
    fn err<T>(&mut self, at: &S<T>, message: impl Into<String>) {
        self.errors.push(
            self.file,
            at.referenced.line(),
            at.referenced.column(),
            message,
        );
    }
}

/// What compile needs to resolve names, gathered across all files first.
struct Names {
    trust_domains: Vec<Box<str>>,
    segments: FnvHashMap<String, u32>,
}

impl Policy {
    /// Load a bundle from a YAML file or a directory of `*.yaml` files, within the default
    /// compile budget.
    pub fn from_path(path: &Path) -> Result<Policy, Diagnostics> {
        Policy::from_path_within(path, CompileLimits::default())
    }

    /// [`Policy::from_path`] within `limits`: a bundle that would cost more to compile is
    /// refused with an error naming the rule or segment being compiled and the budget.
    pub fn from_path_within(path: &Path, limits: CompileLimits) -> Result<Policy, Diagnostics> {
        let mut errors = Diagnostics::default();
        let sources = bundle::read_sources(path, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Policy::from_sources_within(&sources, limits)
    }

    /// Compile one bundle text; `name` is used in error messages and picks the encoding
    /// (`*.json` is JSON, anything else YAML).
    pub fn from_yaml_str(name: &str, text: &str) -> Result<Policy, Diagnostics> {
        Policy::from_sources(&[(name.to_string(), text.to_string())])
    }

    /// Compile (name, text) pairs as one bundle, merged in the order given, within the default
    /// compile budget.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Policy, Diagnostics> {
        Policy::from_sources_within(sources, CompileLimits::default())
    }

    /// [`Policy::from_sources`] within `limits`.
    pub fn from_sources_within(
        sources: &[(String, String)],
        limits: CompileLimits,
    ) -> Result<Policy, Diagnostics> {
        let mut errors = Diagnostics::default();
        let files: Vec<SourceFile> = sources
            .iter()
            .filter_map(|(name, text)| bundle::parse(name, text, &mut errors))
            .collect();
        if files.len() != sources.len() {
            return Err(errors);
        }
        let mut meter = Meter::new(limits);
        let policy = compile(&files, bundle_digest(sources), &mut errors, &mut meter);
        match policy {
            Some(p) if errors.is_empty() => Ok(p),
            _ if files.iter().all(|f| f.positions) => Err(errors),
            _ => Err(with_positions(sources, limits).unwrap_or(errors)),
        }
    }
}

/// The problems of a bundle with JSON files, found again with every file read by serde-saphyr
/// (JSON is YAML), so that each names its line and column. A repeated key, which serde_json
/// leaves to the compiler, is refused by the YAML reader itself, at its position. `None` when
/// the second reading finds no problem (the problems found without positions stand then).
fn with_positions(sources: &[(String, String)], limits: CompileLimits) -> Option<Diagnostics> {
    let mut errors = Diagnostics::default();
    let files: Vec<SourceFile> = sources
        .iter()
        .filter_map(|(name, text)| bundle::parse_with_saphyr(name, text, &mut errors))
        .collect();
    if files.len() == sources.len() {
        let mut meter = Meter::new(limits);
        let _ = compile(&files, String::new(), &mut errors, &mut meter);
    }
    Some(errors).filter(|e| !e.is_empty())
}

fn compile(
    files: &[SourceFile],
    digest: String,
    errors: &mut Diagnostics,
    meter: &mut Meter,
) -> Option<Policy> {
    // Pass 1: header fields, trust domains and segment names across all files.
    let mut version: Option<u64> = None;
    let mut revision: Option<u64> = None;
    let mut names = Names {
        trust_domains: Vec::new(),
        segments: FnvHashMap::default(),
    };
    for f in files {
        let mut cx = Ctx {
            errors,
            file: &f.name,
        };
        let b: &RawBundle = &f.bundle;
        if let Some(v) = &b.version {
            if v.value != FORMAT_VERSION {
                cx.err(v, format!("unsupported bundle format version {} (this wardgate reads version {FORMAT_VERSION})", v.value));
            } else if version.is_some_and(|old| old != v.value) {
                cx.err(v, "`version` differs from another file of this bundle");
            }
            version = Some(v.value);
        }
        if let Some(r) = &b.revision {
            if revision.is_some_and(|old| old != r.value) {
                cx.err(r, "`revision` differs from another file of this bundle");
            }
            revision = Some(r.value);
        }
        for td in &b.trust_domains {
            match Pattern::parse_spiffe(&format!("spiffe://{}", td.value)) {
                Ok(_) if !td.value.contains('/') => {
                    if !names.trust_domains.iter().any(|t| **t == *td.value) {
                        names.trust_domains.push(td.value.as_str().into());
                    }
                }
                Err(e @ PatternError::TrustDomainTooLong(_)) => cx.err(td, e.to_string()),
                _ => cx.err(td, format!("trust domain `{}` is not valid: use lowercase letters, digits, `.`, `_` and `-`", td.value)),
            }
        }
        for (name, _) in &b.segments.0 {
            if let Some(problem) = name_problem("segment", &name.value) {
                cx.err(name, problem);
            } else if names.segments.contains_key(&name.value) {
                cx.err(
                    name,
                    format!("segment `{}` is defined more than once", name.value),
                );
            } else {
                let id = names.segments.len() as u32;
                names.segments.insert(name.value.clone(), id);
            }
        }
    }
    let first = files.first().map(|f| f.name.as_str()).unwrap_or("bundle");
    if version.is_none() {
        errors.push(
            first,
            0,
            0,
            "missing `version` (this wardgate reads `version: 1`)",
        );
    }
    if revision.is_none() {
        errors.push(
            first,
            0,
            0,
            "missing `revision` (an integer that grows with every release of the bundle)",
        );
    }
    if names.trust_domains.is_empty() {
        errors.push(
            first,
            0,
            0,
            "missing `trust_domains`: list at least one trust domain",
        );
    }

    // What rules share rather than copy, from the first pattern on.
    let mut shared = Shared::default();

    // Pass 2: segments with their members.
    let mut segments: Vec<Segment> = Vec::new();
    // Every member so far, by member number: (segment, position in the segment's members).
    let mut member_of: Vec<(u32, usize)> = Vec::new();
    let mut member_trie = MemberTrie::default();
    for f in files {
        let mut cx = Ctx {
            errors,
            file: &f.name,
        };
        for (name, raw) in &f.bundle.segments.0 {
            let Some(&id) = names.segments.get(&name.value) else {
                continue;
            };
            if id as usize != segments.len() {
                continue; // a duplicate, already reported
            }
            let mut members = Vec::new();
            if raw.members.is_empty() {
                cx.err(name, format!("segment `{}` has no `members`", name.value));
            }
            for m in &raw.members {
                let Some(p) = spiffe_pattern(&mut cx, m, &names.trust_domains, &mut shared.strings)
                else {
                    continue;
                };
                // Overlap with an earlier member of another segment, through the member trie;
                // its node visits come out of the work budget.
                let mut visits = meter.left();
                let before = visits;
                let found = member_trie.overlapping(&p, id, &mut visits);
                let charged = meter
                    .work(before - visits + 1 + p.segments().len() as u64)
                    .and_then(|()| {
                        meter.holds(member_trie.nodes().saturating_mul(TRIE_NODE_BYTES))
                    });
                let found = match (found, charged) {
                    (Ok(found), Ok(())) => found,
                    (_, Err(over)) => {
                        cx.err(m, format!("segment `{}` {over}", name.value));
                        return None;
                    }
                    (Err(_), Ok(())) => {
                        // The query ran out of visits: the budget is spent.
                        let over = meter.work(u64::MAX).err();
                        let over = over.map(|o| o.to_string()).unwrap_or_default();
                        cx.err(m, format!("segment `{}` {over}", name.value));
                        return None;
                    }
                };
                if let Some(other) = found {
                    let earlier = member_of.get(other as usize).and_then(|&(s, i)| {
                        let seg = segments.get(s as usize)?;
                        Some((&*seg.name, seg.members.get(i)?))
                    });
                    if let Some((other_segment, other_member)) = earlier {
                        cx.err(m, format!(
                            "member `{p}` of segment `{}` overlaps member `{other_member}` of segment `{other_segment}`: an identity may belong to at most one segment",
                            name.value
                        ));
                    }
                }
                member_trie.insert(&p, id, member_of.len() as u32);
                member_of.push((id, members.len()));
                members.push(p);
            }
            let max_svid_lifetime = raw.max_svid_lifetime.as_ref().and_then(|d| {
                match d.value.trim().parse::<jiff::SignedDuration>() {
                    Ok(v) if v.is_positive() => Some(v),
                    _ => {
                        cx.err(d, format!("max_svid_lifetime `{}` must be a positive duration such as `1h`, `30m` or `1h30m`", d.value));
                        None
                    }
                }
            });
            segments.push(Segment {
                name: name.value.as_str().into(),
                members,
                max_svid_lifetime,
                site: (
                    f.name.as_str().into(),
                    name.referenced.line(),
                    name.referenced.column(),
                ),
            });
        }
    }
    drop(member_trie);

    // Pass 3: rules and break-glass entries.
    let mut rule_names: HashSet<String> = HashSet::new();
    let mut rules = Vec::new();
    let mut break_glass = Vec::new();
    let mut break_glass_header: Option<Box<str>> = None;
    for f in files {
        let mut cx = Ctx {
            errors,
            file: &f.name,
        };
        shared.file = f.name.as_str().into();
        for raw in &f.bundle.rules {
            if let Some(rule) =
                compile_rule(&mut cx, raw, &names, &mut shared, &mut rule_names, false)
            {
                rules.push(rule);
            }
        }
        if let Some(bg) = &f.bundle.break_glass {
            if break_glass_header.is_some() {
                cx.err(
                    bg,
                    "`break_glass` is defined in more than one file of this bundle",
                );
            }
            match &bg.value.header {
                None => cx.err(bg, "`break_glass` needs a `header` naming the request header that carries the reason"),
                Some(h) => {
                    let lower = h.value.to_ascii_lowercase();
                    if let Some(why) = reserved_header(&lower) {
                        cx.err(
                            h,
                            format!("`{}` cannot be the break-glass header: {why}", h.value),
                        );
                    } else if let Some(problem) = header_name_problem(&h.value) {
                        cx.err(h, problem);
                    } else {
                        break_glass_header = Some(lower.into());
                    }
                }
            }
            if bg.value.allow.is_empty() {
                cx.err(bg, "`break_glass` has no `allow` entries");
            }
            for raw in &bg.value.allow {
                if let Some(rule) =
                    compile_rule(&mut cx, raw, &names, &mut shared, &mut rule_names, true)
                {
                    break_glass.push(rule);
                }
            }
        }
    }
    let logging = super::logging::compile(files, errors);
    if !errors.is_empty() {
        return None;
    }

    // Index: segment members first, then rules and break-glass entries by position, each
    // charged to the budget as it is filed (filing one is linear in its size).
    let mut index = IndexBuilder::new(segments.len() as u32);
    for (i, s) in segments.iter().enumerate() {
        for m in &s.members {
            index.segment_member(i as u32, m);
            if let Err(over) = charge(meter, &index, 1 + m.segments().len() as u64) {
                let (file, line, column) = &s.site;
                errors.push(file, *line, *column, format!("segment `{}` {over}", s.name));
                return None;
            }
        }
    }
    let lists = rules
        .iter()
        .map(|r| match r.action {
            Action::Deny => RuleList::Deny,
            Action::Allow => RuleList::Allow,
        })
        .zip(rules.iter().enumerate())
        .chain(
            break_glass
                .iter()
                .enumerate()
                .map(|r| (RuleList::BreakGlass, r)),
        );
    for (list, (i, rule)) in lists {
        let before = index.entries();
        file_rule(&mut index, list, i, rule);
        let entries = index.entries() - before;
        let named = (rule.from.len() + rule.to.as_ref().map_or(0, Vec::len)) as u64;
        if let Err(over) = charge(meter, &index, entries.saturating_add(named)) {
            let what = match list {
                RuleList::BreakGlass => "break-glass entry",
                _ => "rule",
            };
            errors.push(
                &rule.file,
                rule.line,
                rule.column,
                format!("{what} `{}` {over}", rule.name),
            );
            return None;
        }
    }

    Some(Policy {
        revision: revision.unwrap_or(0),
        digest,
        trust_domains: names.trust_domains,
        segments,
        rules,
        break_glass,
        break_glass_header,
        index: index.finish(),
        logging,
    })
}

/// Charge `units` of work for what was just filed, and check the index's estimated size.
fn charge(meter: &mut Meter, index: &IndexBuilder, units: u64) -> Result<(), OverBudget> {
    meter.work(units)?;
    meter.holds(
        index
            .entries()
            .saturating_mul(INDEX_ENTRY_BYTES)
            .saturating_add(index.trie_nodes().saturating_mul(TRIE_NODE_BYTES)),
    )
}

/// The problem with a header name (as written), if any.
fn header_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_HEADER_NAME_LEN {
        Some(format!(
            "header name is {} bytes long, over the limit of {MAX_HEADER_NAME_LEN}",
            name.len()
        ))
    } else if !valid_header_name(&name.to_ascii_lowercase()) {
        Some(format!("`{name}` is not a valid header name"))
    } else {
        None
    }
}

fn selector(e: &Endpoint) -> Selector<'_> {
    match e {
        Endpoint::Segment(s) => Selector::Segment(*s),
        Endpoint::Pattern(p) => Selector::Pattern(p),
    }
}

/// File a rule in the index under the pairs its `from` and `to` name.
fn file_rule(index: &mut IndexBuilder, list: RuleList, position: usize, rule: &Rule) {
    index.rule(
        list,
        position as u32,
        rule.from.iter().map(selector),
        rule.to.as_ref().map(|to| to.iter().map(selector)),
    );
}

fn spiffe_pattern(
    cx: &mut Ctx<'_>,
    text: &S<String>,
    trust_domains: &[Box<str>],
    strings: &mut Strings,
) -> Option<Pattern> {
    match Pattern::parse_spiffe_in(&text.value, strings) {
        Err(e) => {
            cx.err(
                text,
                format!("`{}` is not a valid SPIFFE ID pattern: {e}", text.value),
            );
            None
        }
        Ok(p) => {
            let td = p.trust_domain().unwrap_or("");
            if !trust_domains.iter().any(|t| **t == *td) {
                cx.err(text, format!("`{}` is outside the bundle's trust_domains (trust domain `{td}` is not listed)", text.value));
                None
            } else {
                Some(p)
            }
        }
    }
}

fn endpoints(
    cx: &mut Ctx<'_>,
    list: &S<Vec<S<String>>>,
    names: &Names,
    key: &str,
    strings: &mut Strings,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for e in &list.value {
        if e.value.starts_with("spiffe://") || e.value.to_ascii_lowercase().starts_with("spiffe:") {
            if let Some(p) = spiffe_pattern(cx, e, &names.trust_domains, strings) {
                out.push(Endpoint::Pattern(p));
            }
        } else {
            match names.segments.get(&e.value) {
                Some(&id) => out.push(Endpoint::Segment(id)),
                None => cx.err(
                    e,
                    format!(
                        "`{key}` names segment `{}`, which is not defined under `segments`",
                        e.value
                    ),
                ),
            }
        }
    }
    out
}

fn non_empty<'a>(
    cx: &mut Ctx<'_>,
    list: &'a Option<S<Vec<S<String>>>>,
    key: &str,
) -> Option<&'a S<Vec<S<String>>>> {
    let list = list.as_ref()?;
    if list.value.is_empty() {
        cx.err(
            list,
            format!("`{key}` is empty: omit it to mean any, or list at least one entry"),
        );
        return None;
    }
    Some(list)
}

/// What rules of one compile share rather than copy: the name of the file being compiled, one
/// list per distinct method list and path list (generated bundles repeat a few lists across
/// thousands of rules), one string per distinct pattern segment.
#[derive(Default)]
struct Shared {
    file: Arc<str>,
    methods: HashSet<Arc<[Box<str>]>>,
    /// One copy of each string of the bundle's patterns (trust domains, segments).
    strings: Strings,
    /// Path lists already compiled without a problem, by their texts ([`list_key`]): a rule
    /// that repeats one shares it and skips parsing it again. (Equal patterns have equal
    /// texts, so the texts are the only key needed.)
    path_texts: HashMap<String, Arc<[Pattern]>>,
}

/// One key per list of texts, unambiguous whatever the texts hold (each is length-prefixed).
fn list_key(texts: &[S<String>]) -> String {
    let mut key = String::with_capacity(texts.iter().map(|t| t.value.len() + 4).sum());
    for t in texts {
        key.push_str(&t.value.len().to_string());
        key.push(':');
        key.push_str(&t.value);
    }
    key
}

fn compile_rule(
    cx: &mut Ctx<'_>,
    raw: &S<RawRule>,
    names: &Names,
    shared: &mut Shared,
    seen: &mut HashSet<String>,
    break_glass: bool,
) -> Option<Rule> {
    let r = &raw.value;
    let before = cx.errors.0.len();
    let what = if break_glass {
        "break-glass entry"
    } else {
        "rule"
    };
    let name = match &r.name {
        None => {
            cx.err(raw, format!("{what} without a `name`"));
            String::new()
        }
        Some(n) => {
            if let Some(problem) = name_problem(what, &n.value) {
                cx.err(n, problem);
            } else if !seen.insert(n.value.clone()) {
                cx.err(n, format!("duplicate rule name `{}`: names must be unique across the bundle, break-glass entries included", n.value));
            }
            n.value.clone()
        }
    };
    let action = match &r.action {
        None => Action::Allow,
        Some(a) if break_glass => {
            cx.err(a, "break-glass entries only allow: remove `action`");
            Action::Allow
        }
        Some(a) => match a.value.as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => {
                cx.err(a, format!("action `{other}` is not `allow` or `deny`"));
                Action::Allow
            }
        },
    };
    let from = match &r.from {
        None => {
            cx.err(raw, format!("{what} `{name}` has no `from`: every rule must say which sources it applies to"));
            Vec::new()
        }
        Some(list) if list.value.is_empty() => {
            cx.err(list, format!("{what} `{name}` has an empty `from`"));
            Vec::new()
        }
        Some(list) => endpoints(cx, list, names, "from", &mut shared.strings),
    };
    let to = non_empty(cx, &r.to, "to").map(|l| endpoints(cx, l, names, "to", &mut shared.strings));
    let methods = non_empty(cx, &r.methods, "methods").map(|l| {
        let list: Vec<Box<str>> = l
            .value
            .iter()
            .filter_map(|m| {
                if !m.value.is_empty() && m.value.bytes().all(|b| b.is_ascii_alphabetic()) {
                    Some(m.value.to_ascii_uppercase().into_boxed_str())
                } else {
                    cx.err(
                        m,
                        format!("method `{}` is not an HTTP method token", m.value),
                    );
                    None
                }
            })
            .collect();
        intern(&mut shared.methods, list)
    });
    let paths = non_empty(cx, &r.paths, "paths").map(|l| {
        let key = list_key(&l.value);
        if let Some(known) = shared.path_texts.get(&key) {
            return Arc::clone(known);
        }
        let problems = cx.errors.0.len();
        let list: Vec<Pattern> = l
            .value
            .iter()
            .filter_map(
                |p| match Pattern::parse_path_in(&p.value, &mut shared.strings) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        cx.err(
                            p,
                            format!(
                                "path `{}` is not a valid normalised path pattern: {e}",
                                p.value
                            ),
                        );
                        None
                    }
                },
            )
            .collect();
        let list: Arc<[Pattern]> = list.into();
        if cx.errors.0.len() == problems {
            shared.path_texts.insert(key, Arc::clone(&list));
        }
        list
    });
    let hosts = non_empty(cx, &r.hosts, "hosts").map(|l| {
        l.value
            .iter()
            .filter_map(|h| {
                let lower = h.value.to_ascii_lowercase();
                if valid_host(&lower) {
                    Some(lower.into_boxed_str())
                } else {
                    cx.err(
                        h,
                        format!(
                            "host `{}` must be a host name without port or scheme",
                            h.value
                        ),
                    );
                    None
                }
            })
            .collect()
    });
    let mut schedule = None;
    let mut headers = Vec::new();
    if let Some(when) = &r.when {
        if let Some(s) = &when.value.schedule {
            let mut days = 0u8;
            if let Some(d) = non_empty(cx, &s.value.days, "days") {
                for day in &d.value {
                    match schedule::parse_day(&day.value) {
                        Some(bit) => days |= bit,
                        None => cx.err(
                            day,
                            format!(
                                "day `{}` is not one of mon, tue, wed, thu, fri, sat, sun",
                                day.value
                            ),
                        ),
                    }
                }
            }
            let hours =
                s.value
                    .hours
                    .as_ref()
                    .and_then(|h| match schedule::parse_hours(&h.value) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            cx.err(h, e);
                            None
                        }
                    });
            let tz = s.value.timezone.as_ref();
            match Schedule::new(days, hours, tz.map(|t| t.value.as_str())) {
                Ok(v) => schedule = Some(v),
                Err(e) => match tz {
                    Some(t) => cx.err(t, e),
                    None => cx.err(s, e),
                },
            }
        }
        if let Some(h) = &when.value.headers {
            for (hname, values) in &h.0 {
                let lower = hname.value.to_ascii_lowercase();
                if let Some(problem) = header_name_problem(&hname.value) {
                    cx.err(hname, problem);
                } else if let Some((earlier, _)) =
                    h.0.iter()
                        .take(headers.len())
                        .find(|(raw, _)| raw.value.eq_ignore_ascii_case(&hname.value))
                {
                    cx.err(
                        hname,
                        format!(
                            "header condition `{}` repeats `{}` (line {}): header names are case-insensitive, so list the allowed values under one name",
                            hname.value,
                            earlier.value,
                            earlier.referenced.line()
                        ),
                    );
                }
                if values.is_empty() {
                    cx.err(
                        hname,
                        format!("header condition `{}` lists no allowed values", hname.value),
                    );
                }
                headers.push((
                    lower.into_boxed_str(),
                    values.iter().map(|v| v.value.as_str().into()).collect(),
                ));
            }
        }
    }
    if cx.errors.0.len() != before {
        return None;
    }
    Some(Rule {
        name: name.into(),
        action,
        from,
        to,
        methods,
        paths,
        hosts,
        schedule,
        headers,
        file: Arc::clone(&shared.file),
        line: raw.referenced.line(),
        column: raw.referenced.column(),
    })
}
