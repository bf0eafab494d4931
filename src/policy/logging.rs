//! What a decision log may show of a request: the bundle's `logging` section, validated, and
//! the redacted forms of a path, host and method that follow from it (README.md, "Decision
//! log").
//!
//! A path is shown redacted: a segment is kept only where the deciding rule's path pattern (or
//! a `logging.path_templates` pattern) names it literally, and not listed in
//! `logging.hide_segments`; every other segment becomes [`REDACTION_MARKER`]. A path matching a
//! `logging.full_paths` pattern is shown whole (normalised, never the query). A host is shown
//! only when the bundle names it (a rule's `hosts`, or the service name that ends a SPIFFE ID
//! the bundle names); a method only when it is a standard one or a rule names it. Everything
//! here is pure: it reads the policy and the values it is given, never the clock or a file, and
//! it never widens what is shown beyond what the bundle states.

use std::borrow::Cow;

use fnv::FnvHashSet;

use super::bundle::{SourceFile, S};
use super::error::Diagnostics;
use super::model::{Endpoint, Policy, Rule};
use super::normalize;
use super::pattern::{split_segments, Pattern, Seg};

/// What a log writes in place of a value it may not show. It is not a DNS name, an HTTP method
/// or a normalised path segment (`{` and `}` are percent-encoded there).
pub const REDACTION_MARKER: &str = "{}";

/// Most entries in each list of the `logging` section.
pub(crate) const MAX_LOGGING_ENTRIES: usize = 1024;

/// Longest `hide_segments` entry.
const MAX_HIDDEN_SEGMENT: usize = 256;

/// The methods shown even when no rule names them.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The compiled `logging` section (empty when the bundle has none).
#[derive(Debug, Default)]
pub(crate) struct LogRules {
    pub(crate) full_paths: Vec<Pattern>,
    pub(crate) path_templates: Vec<Pattern>,
    pub(crate) hide_segments: FnvHashSet<Box<str>>,
}

/// Validate and compile the `logging` sections of a bundle's files (at most one file may have
/// one). Every problem is pushed to `errors` as `FILE:LINE:COL`.
pub(crate) fn compile(files: &[SourceFile], errors: &mut Diagnostics) -> LogRules {
    let mut out = LogRules::default();
    let mut seen_in: Option<&str> = None;
    for f in files {
        let Some(section) = &f.bundle.logging else {
            continue;
        };
        let at = |errors: &mut Diagnostics, s: &S<String>, message: String| {
            errors.push(&f.name, s.referenced.line, s.referenced.column, message);
        };
        if let Some(first) = seen_in {
            errors.push(
                &f.name,
                section.referenced.line,
                section.referenced.column,
                format!(
                    "`logging` is defined in more than one file of this bundle (first in {first})"
                ),
            );
        }
        seen_in = Some(f.name.as_str());
        let l = &section.value;
        for (key, list) in [
            ("full_paths", &l.full_paths),
            ("path_templates", &l.path_templates),
            ("hide_segments", &l.hide_segments),
        ] {
            if list.len() > MAX_LOGGING_ENTRIES {
                errors.push(
                    &f.name,
                    section.referenced.line,
                    section.referenced.column,
                    format!(
                        "`logging.{key}` has {} entries, over the limit of {MAX_LOGGING_ENTRIES}",
                        list.len()
                    ),
                );
            }
        }
        for (key, list, into) in [
            ("full_paths", &l.full_paths, &mut out.full_paths),
            ("path_templates", &l.path_templates, &mut out.path_templates),
        ] {
            for p in list.iter().take(MAX_LOGGING_ENTRIES) {
                match Pattern::parse_path(&p.value) {
                    Ok(pattern) => into.push(pattern),
                    Err(e) => at(
                        errors,
                        p,
                        format!(
                            "`logging.{key}` entry `{}` is not a path pattern: {e}",
                            p.value
                        ),
                    ),
                }
            }
        }
        for h in l.hide_segments.iter().take(MAX_LOGGING_ENTRIES) {
            let v = h.value.as_str();
            let problem = if v.is_empty() {
                Some("is empty".to_string())
            } else if v.len() > MAX_HIDDEN_SEGMENT {
                Some(format!("is longer than {MAX_HIDDEN_SEGMENT} bytes"))
            } else if v.contains('/') {
                Some("must be one segment (no `/`)".to_string())
            } else if v.contains('*') {
                Some("must be a literal segment (no `*`)".to_string())
            } else if matches!(v, "." | "..") || !normalize::is_normal(&format!("/{v}")) {
                Some("is not a segment in normalised form".to_string())
            } else {
                None
            };
            match problem {
                Some(p) => at(
                    errors,
                    h,
                    format!("`logging.hide_segments` entry `{v}` {p}"),
                ),
                None => {
                    out.hide_segments.insert(v.into());
                }
            }
        }
    }
    out
}

/// How [`LogView::path`] showed a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shown {
    /// Whole (a `logging.full_paths` pattern matched).
    Full,
    /// With every segment the bundle does not name replaced by [`REDACTION_MARKER`].
    Redacted,
    /// Cut off at the length limit.
    Truncated,
}

/// What one policy lets a log show, looked up by name: built once per policy by the log
/// writer (off the check path), then asked per record. Ask it only with the policy it was built
/// from; with another, rules are not found and paths come out fully redacted.
///
/// It is held beside the policy for as long as records of that policy arrive, on every pod, so
/// its names are kept in two sorted arenas ([`Names`]) rather than a boxed string each, a
/// Kubernetes service's three cluster names are derived from one `NAME.NS` entry, and rules are
/// found through the policy's own names.
#[derive(Debug, Default)]
pub(crate) struct LogView {
    /// Every rule, then every break-glass entry, by position in that order, sorted by name
    /// (names are unique across both lists): the policy's own names, not a map of them.
    rules: Box<[u32]>,
    /// Shown as they are: the rules' `hosts` and the service name that ends a SPIFFE ID
    /// pattern.
    hosts: Names,
    /// `NAME.NS` of each Kubernetes-shaped SPIFFE ID pattern (`…/ns/NS/sa/NAME`): shown as
    /// they are and with `.svc` or `.svc.cluster.local` after them, the names a cluster gives
    /// that service.
    services: Names,
    methods: Vec<Box<str>>,
}

/// The suffixes a cluster adds to a service's `NAME.NS`.
const SERVICE_SUFFIXES: [&str; 2] = [".svc", ".svc.cluster.local"];

/// Add the host names of the service a SPIFFE ID pattern names, if it ends in a literal
/// segment: that segment to `hosts`, and for Kubernetes-shaped IDs (`…/ns/NS/sa/NAME`)
/// `NAME.NS` to `services`.
fn add_service_names(p: &Pattern, hosts: &mut NamesBuilder, services: &mut NamesBuilder) {
    let segs = p.segments();
    let (false, Some(Seg::Literal(name))) = (p.more(), segs.last()) else {
        return;
    };
    if let [.., Seg::Literal(ns_key), Seg::Literal(ns), Seg::Literal(sa_key), _] = segs {
        if &**ns_key == "ns" && &**sa_key == "sa" {
            services.push(&[name, ".", ns]);
        }
    }
    hosts.push(&[name]);
}

/// A set of lower-case strings in one allocation, sorted and without duplicates, found by
/// binary search: no heap block, pointer and hash slot per entry.
#[derive(Debug, Default)]
struct Names {
    /// Every entry, back to back, in byte order.
    text: Box<str>,
    /// Where each entry ends in `text` (each starts where the one before ends).
    ends: Box<[u32]>,
}

impl Names {
    fn entry(&self, i: usize) -> &str {
        let start = i
            .checked_sub(1)
            .and_then(|before| self.ends.get(before))
            .map_or(0, |&e| e as usize);
        let end = self.ends.get(i).map_or(start, |&e| e as usize);
        self.text.get(start..end).unwrap_or_default()
    }

    fn contains(&self, name: &str) -> bool {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.entry(mid).cmp(name) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

/// Collects the entries of a [`Names`] in any order, duplicates included.
#[derive(Debug, Default)]
struct NamesBuilder {
    text: String,
    /// Start and end of each entry in `text`.
    spans: Vec<(u32, u32)>,
}

impl NamesBuilder {
    /// Add the lower-case form of `parts` joined. An entry that would take `text` past 4 GiB
    /// is left out (so redacted), never truncated.
    fn push(&mut self, parts: &[&str]) {
        let start = self.text.len();
        for part in parts {
            self.text.push_str(part);
        }
        if let Some(added) = self.text.get_mut(start..) {
            added.make_ascii_lowercase();
        }
        match (u32::try_from(start), u32::try_from(self.text.len())) {
            (Ok(start), Ok(end)) => self.spans.push((start, end)),
            _ => self.text.truncate(start),
        }
    }

    fn build(self) -> Names {
        let NamesBuilder { text, mut spans } = self;
        let entry =
            |&(start, end): &(u32, u32)| text.get(start as usize..end as usize).unwrap_or_default();
        spans.sort_unstable_by(|a, b| entry(a).cmp(entry(b)));
        spans.dedup_by(|a, b| entry(a) == entry(b));
        let mut sorted = String::with_capacity(spans.iter().map(|s| entry(s).len()).sum());
        let mut ends = Vec::with_capacity(spans.len());
        for span in &spans {
            sorted.push_str(entry(span));
            // No longer than `text`, whose every end fit.
            ends.push(u32::try_from(sorted.len()).unwrap_or(u32::MAX));
        }
        Names {
            text: sorted.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl LogView {
    /// What `policy` lets a log show.
    pub(crate) fn new(policy: &Policy) -> LogView {
        let mut view = LogView::without_policy();
        let (mut hosts, mut services) = (NamesBuilder::default(), NamesBuilder::default());
        for r in policy.rules.iter().chain(&policy.break_glass) {
            for h in r.hosts.iter().flatten() {
                hosts.push(&[h]);
            }
            for m in r.methods.as_deref().into_iter().flatten() {
                if !view.methods.contains(m) {
                    view.methods.push(m.clone());
                }
            }
            for e in r.from.iter().chain(r.to.iter().flatten()) {
                if let Endpoint::Pattern(p) = e {
                    add_service_names(p, &mut hosts, &mut services);
                }
            }
        }
        // Past 2^32 rules (far beyond any bundle's limit) the rest are not found: redacted.
        let count = policy.rules.len() + policy.break_glass.len();
        let mut rules: Vec<u32> = (0..count).map_while(|i| u32::try_from(i).ok()).collect();
        rules.sort_unstable_by(|&a, &b| rule_name(policy, a).cmp(rule_name(policy, b)));
        view.rules = rules.into_boxed_slice();
        for s in &policy.segments {
            for p in &s.members {
                add_service_names(p, &mut hosts, &mut services);
            }
        }
        view.hosts = hosts.build();
        view.services = services.build();
        view
    }

    /// What may be shown without a policy (`no_policy`): standard methods, every path segment
    /// redacted, no host.
    pub(crate) fn without_policy() -> LogView {
        LogView {
            methods: STANDARD_METHODS.iter().map(|m| Box::from(*m)).collect(),
            ..LogView::default()
        }
    }

    /// The shape of the raw `:path` with every segment redacted (at most 256 bytes), for
    /// operational log lines (a break-glass allow, a shadow disagreement): they carry no
    /// identifier, and the decision-log line of the same check shows what the bundle allows.
    pub(crate) fn path_shape(raw: &str) -> String {
        let mut out = String::new();
        LogView::default().path_without_policy(raw, &mut out, 256);
        out
    }

    /// [`LogView::path`] without a policy: every segment redacted.
    pub(crate) fn path_without_policy(&self, raw: &str, out: &mut String, max: usize) -> Shown {
        out.clear();
        match normalize::path(raw) {
            Ok(normal) => render(
                &split_segments(&normal),
                |_| false,
                out,
                max,
                Shown::Redacted,
            ),
            Err(_) => bad_path(raw, out, max),
        }
    }

    /// The host to log for the raw `:authority` (port and a trailing dot dropped, lower case),
    /// when the bundle names it; `None` when it must be redacted. No longer than `raw`.
    pub(crate) fn host(&self, raw: &str) -> Option<String> {
        let name = normalize::host(raw);
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        let named = self.hosts.contains(&name)
            || self.services.contains(&name)
            || SERVICE_SUFFIXES.iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|service| self.services.contains(service))
            });
        named.then(|| name.into_owned())
    }

    /// The method to log, when it is a standard one or a rule names it (upper-case
    /// comparison); `None` when it must be redacted.
    pub(crate) fn method(&self, raw: &str) -> Option<&str> {
        self.methods
            .iter()
            .find(|m| m.eq_ignore_ascii_case(raw))
            .map(|m| &**m)
    }

    /// Write the form of the raw `:path` a log may show into `out` (at most `max` bytes),
    /// given the rule or break-glass entry that decided, if any.
    pub(crate) fn path(
        &self,
        policy: &Policy,
        rule: Option<&str>,
        raw: &str,
        out: &mut String,
        max: usize,
    ) -> Shown {
        out.clear();
        let Ok(normal) = normalize::path(raw) else {
            return bad_path(raw, out, max);
        };
        let segs = split_segments(&normal);
        let logging = &policy.logging;
        if logging.full_paths.iter().any(|p| p.matches_split(&segs)) {
            return render(&segs, |_| true, out, max, Shown::Full);
        }
        let mut keep: smallvec::SmallVec<[bool; 16]> = smallvec::smallvec![false; segs.len()];
        let mut mark = |p: &Pattern| {
            for (k, s) in keep.iter_mut().zip(p.segments()) {
                if matches!(s, Seg::Literal(_)) {
                    *k = true;
                }
            }
        };
        if let Some(paths) = rule.and_then(|name| self.rule_paths(policy, name)) {
            if let Some(p) = paths.iter().find(|p| p.matches_split(&segs)) {
                mark(p);
            }
        }
        for p in logging
            .path_templates
            .iter()
            .filter(|p| p.matches_split(&segs))
        {
            mark(p);
        }
        let hidden = &logging.hide_segments;
        let shown = |i: usize| {
            keep.get(i).copied().unwrap_or(false)
                && segs.get(i).is_some_and(|s| !hidden.contains(*s))
        };
        render(&segs, shown, out, max, Shown::Redacted)
    }

    /// The path patterns of the rule named `name`. With a policy the view was not built
    /// from, the search may miss, but never returns another rule's patterns.
    fn rule_paths<'p>(&self, policy: &'p Policy, name: &str) -> Option<&'p [Pattern]> {
        let (mut low, mut high) = (0, self.rules.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let at = *self.rules.get(mid)?;
            match rule_name(policy, at).cmp(name) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return rule_at(policy, at)?.paths.as_deref(),
            }
        }
        None
    }
}

/// The rule at `position` in `policy`'s rules followed by its break-glass entries.
fn rule_at(policy: &Policy, position: u32) -> Option<&Rule> {
    let i = position as usize;
    policy.rules.get(i).or_else(|| {
        i.checked_sub(policy.rules.len())
            .and_then(|j| policy.break_glass.get(j))
    })
}

/// The name of the rule at `position` (empty when there is none).
fn rule_name(policy: &Policy, position: u32) -> &str {
    rule_at(policy, position).map_or("", |r| &r.name)
}

/// Write `/`-joined segments, each shown or replaced by the marker, within `max` bytes.
fn render(
    segs: &[&str],
    shown: impl Fn(usize) -> bool,
    out: &mut String,
    max: usize,
    form: Shown,
) -> Shown {
    if segs.is_empty() {
        out.push('/');
        return form;
    }
    for (i, s) in segs.iter().enumerate() {
        let piece = if shown(i) { *s } else { REDACTION_MARKER };
        if out.len() + 1 + piece.len() > max {
            if out.is_empty() {
                out.push('/');
            }
            return Shown::Truncated;
        }
        out.push('/');
        out.push_str(piece);
    }
    form
}

/// A path that cannot be normalised (a `bad_path` denial): every segment redacted except the
/// ones that make it ambiguous (empty and dot-segments, raw or encoded), which an auditor
/// needs to see and which cannot identify anyone.
fn bad_path(raw: &str, out: &mut String, max: usize) -> Shown {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or_default();
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        out.push('/');
        return Shown::Redacted;
    }
    let revealing = |s: &str| {
        let lower = s.to_ascii_lowercase().replace("%2e", ".");
        matches!(lower.as_str(), "" | "." | "..")
    };
    let segs: smallvec::SmallVec<[&str; 16]> = rest.split('/').collect();
    render(
        &segs,
        |i| segs.get(i).is_some_and(|s| revealing(s)),
        out,
        max,
        Shown::Redacted,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const BUNDLE: &str = r#"
version: 1
revision: 1
trust_domains: [hospital.example]
segments:
  clinical:
    members: ["spiffe://hospital.example/ns/clinical/sa/ehr", "spiffe://hospital.example/ns/clinical/sa/lab"]
rules:
  - name: ehr-reads-notes
    from: [clinical]
    to: [clinical]
    methods: [GET, REPORT]
    paths: ["/patients/*/notes", "/patients/*/notes/**"]
    hosts: [records.hospital.example]
  - name: vip
    from: [clinical]
    paths: ["/vip/president-smith/chart"]
logging:
  full_paths: ["/status/**"]
  path_templates: ["/patients/*/billing"]
  hide_segments: [president-smith]
"#;

    fn shown(p: &Policy, rule: Option<&str>, raw: &str, max: usize) -> (String, Shown) {
        let view = LogView::new(p);
        let mut out = String::new();
        let form = view.path(p, rule, raw, &mut out, max);
        (out, form)
    }

    #[test]
    fn keeps_only_the_deciding_rules_literal_segments() {
        let p = Policy::from_yaml_str("b.yaml", BUNDLE).unwrap();
        let rule = Some("ehr-reads-notes");
        assert_eq!(
            shown(&p, rule, "/patients/12345/notes?name=Jane", 2048),
            ("/patients/{}/notes".into(), Shown::Redacted)
        );
        assert_eq!(
            shown(&p, rule, "/patients/12345/notes/2024/jane-doe.pdf", 2048).0,
            "/patients/{}/notes/{}/{}"
        );
        // No rule decided: only the bundle's templates say what may be shown.
        assert_eq!(
            shown(&p, None, "/patients/12345/notes", 2048).0,
            "/{}/{}/{}"
        );
        assert_eq!(
            shown(&p, None, "/patients/12345/billing", 2048).0,
            "/patients/{}/billing"
        );
        // A rule that names a person: the bundle hides that segment.
        assert_eq!(
            shown(&p, Some("vip"), "/vip/president-smith/chart", 2048).0,
            "/vip/{}/chart"
        );
        // A rule of another policy is not found: nothing kept.
        assert_eq!(
            shown(&p, Some("no-such-rule"), "/patients/1/notes", 2048).0,
            "/{}/{}/{}"
        );
        assert_eq!(
            shown(&p, None, "/status/ready?x=1", 2048),
            ("/status/ready".into(), Shown::Full)
        );
        assert_eq!(shown(&p, None, "/", 2048), ("/".into(), Shown::Redacted));
    }

    #[test]
    fn bad_paths_show_what_made_them_bad_and_nothing_else() {
        let p = Policy::from_yaml_str("b.yaml", BUNDLE).unwrap();
        assert_eq!(
            shown(&p, None, "/patients/123/../%2E%2e//x?ssn=1", 2048).0,
            "/{}/{}/../%2E%2e//{}"
        );
    }

    #[test]
    fn long_paths_are_cut_at_a_segment() {
        let p = Policy::from_yaml_str("b.yaml", BUNDLE).unwrap();
        let raw = format!("/patients/1/notes{}", "/x".repeat(5000));
        let (text, form) = shown(&p, Some("ehr-reads-notes"), &raw, 64);
        assert_eq!(form, Shown::Truncated);
        assert!(
            text.len() <= 64 && text.starts_with("/patients/{}/notes/{}"),
            "{text}"
        );
        assert!(text.ends_with("{}"), "{text}");
    }

    #[test]
    fn hosts_and_methods_only_when_the_bundle_names_them() {
        let p = Policy::from_yaml_str("b.yaml", BUNDLE).unwrap();
        let v = LogView::new(&p);
        assert_eq!(
            v.host("Records.Hospital.Example:8443").as_deref(),
            Some("records.hospital.example")
        );
        assert_eq!(v.host("lab:8080").as_deref(), Some("lab"));
        assert_eq!(v.host("ehr").as_deref(), Some("ehr"));
        assert_eq!(
            v.host("lab.clinical.svc:8443").as_deref(),
            Some("lab.clinical.svc")
        );
        assert_eq!(
            v.host("lab.clinical.svc.cluster.local").as_deref(),
            Some("lab.clinical.svc.cluster.local")
        );
        assert_eq!(v.host("lab.admin.svc"), None);
        assert_eq!(v.host("MRN-123-DOB-19700101-JaneDoe"), None);
        assert_eq!(v.host("lab.MRN123"), None);
        assert_eq!(v.method("get"), Some("GET"));
        assert_eq!(v.method("REPORT"), Some("REPORT"));
        assert_eq!(v.method("JANEDOE"), None);
    }

    /// A bundle naming services by Kubernetes-shaped IDs (in a rule and a segment), by a
    /// non-Kubernetes ID, by patterns that end in a wildcard, and by explicit `hosts`.
    const SERVICES: &str = r#"
version: 1
revision: 1
trust_domains: [td]
segments:
  ops:
    members: ["spiffe://td/ns/Ops/sa/Pager", "spiffe://td/ns/any/sa/*"]
rules:
  - name: billing
    from: ["spiffe://td/ns/Billing/sa/Invoicer", "spiffe://td/reporting"]
    to: ["spiffe://td/ns/ledger/sa/Books", "spiffe://td/ns/wide/**"]
    hosts: [API.Example.com, cache.svc]
"#;

    #[test]
    fn every_cluster_name_of_a_kubernetes_service_is_shown() {
        let p = Policy::from_yaml_str("s.yaml", SERVICES).unwrap();
        let v = LogView::new(&p);
        for (name, ns) in [
            ("invoicer", "billing"),
            ("books", "ledger"),
            ("pager", "ops"),
        ] {
            for shown in [
                name.to_string(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.cluster.local"),
            ] {
                assert_eq!(v.host(&shown).as_deref(), Some(shown.as_str()));
                let loud = format!("{}.:8443", shown.to_ascii_uppercase());
                assert_eq!(v.host(&loud).as_deref(), Some(shown.as_str()), "{loud}");
            }
            // Not names a cluster gives the service.
            for redacted in [
                format!("{name}.svc"),
                format!("{name}.svc.cluster.local"),
                format!("{name}.{ns}.cluster.local"),
                format!("{name}.{ns}.svc.cluster"),
                format!("{name}.{ns}.svc.svc"),
                format!("{ns}.svc"),
                format!("x{name}.{ns}"),
                format!("{name}.{ns}.svc.cluster.local.x"),
            ] {
                assert_eq!(v.host(&redacted), None, "{redacted}");
            }
        }
    }

    #[test]
    fn a_service_and_its_namespace_come_from_one_id() {
        let p = Policy::from_yaml_str("s.yaml", SERVICES).unwrap();
        let v = LogView::new(&p);
        for mixed in [
            "invoicer.ledger.svc",
            "books.billing.svc.cluster.local",
            "pager.billing",
            "invoicer.ops.svc",
        ] {
            assert_eq!(v.host(mixed), None, "{mixed}");
        }
    }

    #[test]
    fn other_ids_and_wildcards_name_no_cluster_service() {
        let p = Policy::from_yaml_str("s.yaml", SERVICES).unwrap();
        let v = LogView::new(&p);
        assert_eq!(v.host("Reporting:80").as_deref(), Some("reporting"));
        for redacted in [
            "reporting.svc",
            "reporting.svc.cluster.local",
            "reporting.td",
            // Patterns ending in a wildcard name no service.
            "any",
            "*",
            "*.any.svc",
            "wide",
            "ns",
            "sa",
        ] {
            assert_eq!(v.host(redacted), None, "{redacted}");
        }
    }

    #[test]
    fn explicit_hosts_are_shown_as_named() {
        let p = Policy::from_yaml_str("s.yaml", SERVICES).unwrap();
        let v = LogView::new(&p);
        assert_eq!(
            v.host("api.EXAMPLE.com.:443").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(v.host("cache.svc").as_deref(), Some("cache.svc"));
        // An explicit host is not a service: no cluster suffix is added to it.
        assert_eq!(v.host("api.example.com.svc"), None);
        assert_eq!(v.host("cache.svc.svc.cluster.local"), None);
        assert_eq!(v.host("cache"), None);
        assert_eq!(v.host(""), None);
    }

    #[test]
    fn every_rule_and_break_glass_entry_is_found_by_name() {
        // Names out of order, so that position and name order differ.
        let mut y = String::from("version: 1\nrevision: 1\ntrust_domains: [td]\nrules:\n");
        for i in (0..40).rev() {
            y.push_str(&format!(
                "  - name: r{i}\n    from: [\"spiffe://td/a\"]\n    paths: [\"/r{i}/*\"]\n"
            ));
        }
        y.push_str("break_glass:\n  header: x-break-glass-reason\n  allow:\n");
        for i in 0..3 {
            y.push_str(&format!(
                "    - name: glass{i}\n      from: [\"spiffe://td/a\"]\n      paths: [\"/glass{i}/*\"]\n"
            ));
        }
        let p = Policy::from_yaml_str("r.yaml", &y).unwrap();
        let names = (0..40)
            .map(|i| format!("r{i}"))
            .chain((0..3).map(|i| format!("glass{i}")));
        for name in names {
            assert_eq!(
                shown(&p, Some(&name), &format!("/{name}/42"), 2048).0,
                format!("/{name}/{{}}"),
                "{name}"
            );
            // Another rule's pattern does not match this path: nothing kept.
            assert_eq!(shown(&p, Some(&name), "/r7x/42", 2048).0, "/{}/{}");
        }
        // A view asked with another policy finds none of its rules.
        let other = Policy::from_yaml_str("b.yaml", BUNDLE).unwrap();
        let mut out = String::new();
        LogView::new(&other).path(&p, Some("r3"), "/r3/42", &mut out, 2048);
        assert_eq!(out, "/{}/{}");
    }

    #[test]
    fn invalid_sections_are_refused_with_their_position() {
        let bad = r#"version: 1
revision: 1
trust_domains: [td]
logging:
  full_paths: ["status"]
  path_templates: ["/a/**/b"]
  hide_segments: ["a/b", "*", ""]
"#;
        let err = Policy::from_yaml_str("bad.yaml", bad)
            .unwrap_err()
            .to_string();
        for want in [
            "bad.yaml:5:16: `logging.full_paths` entry `status` is not a path pattern",
            "bad.yaml:6:20: `logging.path_templates` entry `/a/**/b`",
            "bad.yaml:7:19: `logging.hide_segments` entry `a/b` must be one segment",
            "`logging.hide_segments` entry `*` must be a literal segment",
            "`logging.hide_segments` entry `` is empty",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
        let unknown = "version: 1\nrevision: 1\ntrust_domains: [td]\nlogging:\n  paths: []\n";
        let err = Policy::from_yaml_str("u.yaml", unknown)
            .unwrap_err()
            .to_string();
        assert!(err.contains("u.yaml:5:3") && err.contains("paths"), "{err}");
        let twice = Policy::from_sources(&[
            (
                "a.yaml".into(),
                "version: 1\nrevision: 1\ntrust_domains: [td]\nlogging: {}\n".into(),
            ),
            ("b.yaml".into(), "logging: {}\n".into()),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            twice.contains("b.yaml:1:10: `logging` is defined in more than one file"),
            "{twice}"
        );
    }
}
