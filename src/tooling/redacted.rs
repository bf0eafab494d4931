//! Replaying records the decision log wrote with values hidden: a redacted path (`{}` for each
//! segment the bundle did not name), a truncated or omitted path, a redacted host or method.
//!
//! A hidden value is an unknown, like the headers the log never carries: the record is replayed
//! once per completion (each hidden segment filled with every literal the candidate or
//! baseline could compare it with at that position, plus one value none of them names; a
//! hidden host or method likewise), and the outcomes are combined. If every completion gives
//! the same outcome, that is the record's outcome: the result did not depend on what was
//! hidden. Otherwise the record is undetermined, naming what was hidden. Completions under
//! which the baseline does not reproduce the logged decision are left out, as `replay` does for
//! headers. This module never guesses a hidden value and never writes to the log.

use std::collections::BTreeSet;

use super::replay::{Outcome, Segments};
use crate::decision_log::{DecisionRecord, PathForm, REDACTED};
use crate::policy::view::Seg;
use crate::policy::{Pattern, Policy, Reason, Verdict};

/// Most completions of one record's hidden values; beyond, it is undetermined outright.
const MAX_VARIANTS: usize = 256;

/// What replaying one plain record gives (`replay`'s per-record step).
pub(crate) type Replayed = Result<(Outcome, Option<Segments>), String>;

/// Replay `rec` through `plain` once per completion of its hidden values and combine the
/// outcomes; `None` when the record hides nothing (replay it as it is).
pub(crate) fn replay(
    candidate: &Policy,
    baseline: Option<&Policy>,
    rec: &DecisionRecord,
    plain: &dyn Fn(&DecisionRecord) -> Replayed,
) -> Option<Replayed> {
    let policies: Vec<&Policy> = std::iter::once(candidate).chain(baseline).collect();
    let hidden = Hidden::of(rec, &policies)?;
    let Some(variants) = hidden.variants(rec) else {
        return Some(Ok((
            Outcome::Undetermined(hidden.names(), Vec::new()),
            None,
        )));
    };
    let mut results = Vec::with_capacity(variants.len());
    for v in &variants {
        match plain(v) {
            Ok(r) => results.push(r),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(combine(rec, &hidden, results)))
}

/// The values a record hides, each with the values it could have had.
struct Hidden {
    /// (position in the path, possible values) of each redacted segment.
    segments: Vec<(usize, Vec<String>)>,
    /// Whole possible paths, when the path itself is missing or cut.
    paths: Option<Vec<String>>,
    hosts: Option<Vec<String>>,
    methods: Option<Vec<String>>,
}

/// A value no policy names, unlike each of `taken`.
fn other(base: &str, taken: &BTreeSet<String>) -> String {
    let mut v = base.to_string();
    while taken.contains(&v) {
        v.push('x');
    }
    v
}

/// The path patterns of every rule and break-glass entry of `policies`.
fn patterns<'p>(policies: &[&'p Policy]) -> Vec<&'p Pattern> {
    policies
        .iter()
        .flat_map(|p| p.view_rules().chain(p.view_break_glass()))
        .filter_map(|r| r.paths)
        .flatten()
        .collect()
}

/// The `/`-separated segments of a logged path (`/` has none).
fn split(path: &str) -> Vec<&str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    }
}

/// Whether `p` could match a path of `segs` whatever the hidden ones hold.
fn compatible(p: &Pattern, segs: &[&str]) -> bool {
    let want = p.segments();
    let len_ok = if p.more() {
        segs.len() > want.len()
    } else {
        segs.len() == want.len()
    };
    len_ok
        && want.iter().zip(segs).all(|(w, s)| match w {
            Seg::Literal(l) => *s == REDACTED || **l == **s,
            Seg::Any => true,
        })
}

impl Hidden {
    fn of(rec: &DecisionRecord, policies: &[&Policy]) -> Option<Hidden> {
        let mut hidden = Hidden {
            segments: Vec::new(),
            paths: None,
            hosts: None,
            methods: None,
        };
        let all = patterns(policies);
        match rec.path_form() {
            PathForm::Full => {}
            PathForm::Redacted => {
                let segs = split(&rec.path);
                let fitting: Vec<&&Pattern> = all.iter().filter(|p| compatible(p, &segs)).collect();
                for (i, s) in segs.iter().enumerate() {
                    if *s != REDACTED {
                        continue;
                    }
                    let mut values: BTreeSet<String> = BTreeSet::new();
                    for p in &fitting {
                        if let Some(Seg::Literal(l)) = p.segments().get(i) {
                            values.insert(l.to_string());
                        }
                    }
                    let extra = other("wardgate-replay-other", &values);
                    let mut values: Vec<String> = values.into_iter().collect();
                    values.push(extra);
                    hidden.segments.push((i, values));
                }
            }
            PathForm::Truncated | PathForm::Off => {
                let mut literals = BTreeSet::new();
                for p in &all {
                    for s in p.segments() {
                        if let Seg::Literal(l) = s {
                            literals.insert(l.to_string());
                        }
                    }
                }
                let o = other("wardgate-replay-other", &literals);
                let mut paths: BTreeSet<String> = BTreeSet::new();
                paths.insert("/".into());
                paths.insert(format!("/{o}"));
                for p in &all {
                    let mut path = String::new();
                    for s in p.segments() {
                        path.push('/');
                        match s {
                            Seg::Literal(l) => path.push_str(l),
                            Seg::Any => path.push_str(&o),
                        }
                    }
                    if p.more() {
                        path.push('/');
                        path.push_str(&o);
                    }
                    if path.is_empty() {
                        path.push('/');
                    }
                    paths.insert(path);
                }
                hidden.paths = Some(paths.into_iter().collect());
            }
        }
        let rules = || {
            policies
                .iter()
                .flat_map(|p| p.view_rules().chain(p.view_break_glass()))
        };
        if rec.host == REDACTED {
            let mut hosts: BTreeSet<String> = rules()
                .filter_map(|r| r.hosts)
                .flatten()
                .map(|h| h.to_string())
                .collect();
            hosts.insert(other("wardgate-replay-other.invalid", &hosts));
            hidden.hosts = Some(hosts.into_iter().collect());
        }
        if rec.method == REDACTED {
            let mut methods: BTreeSet<String> = rules()
                .filter_map(|r| r.methods)
                .flatten()
                .map(|m| m.to_string())
                .collect();
            methods.insert(other("WARDGATE-REPLAY-OTHER", &methods));
            hidden.methods = Some(methods.into_iter().collect());
        }
        let any = !hidden.segments.is_empty()
            || hidden.paths.is_some()
            || hidden.hosts.is_some()
            || hidden.methods.is_some();
        any.then_some(hidden)
    }

    /// What was hidden, as `replay` names unknowns.
    fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .segments
            .iter()
            .map(|(i, _)| format!("redacted path segment {}", i + 1))
            .collect();
        if self.paths.is_some() {
            out.push("path (not logged in full)".into());
        }
        if self.hosts.is_some() {
            out.push("redacted host".into());
        }
        if self.methods.is_some() {
            out.push("redacted method".into());
        }
        out
    }

    /// Every completion of the hidden values as a plain record, or `None` when there are more
    /// than [`MAX_VARIANTS`].
    fn variants(&self, rec: &DecisionRecord) -> Option<Vec<DecisionRecord>> {
        let mut count: usize = 1;
        for n in self
            .segments
            .iter()
            .map(|(_, v)| v.len())
            .chain(self.paths.iter().map(Vec::len))
            .chain(self.hosts.iter().map(Vec::len))
            .chain(self.methods.iter().map(Vec::len))
        {
            count = count.checked_mul(n.max(1))?;
        }
        if count > MAX_VARIANTS {
            return None;
        }
        let mut base = rec.clone();
        base.path_form = Some(PathForm::Full);
        let mut out = vec![base];
        let expand = |out: Vec<DecisionRecord>,
                      values: &[String],
                      set: &dyn Fn(&mut DecisionRecord, &str)| {
            out.into_iter()
                .flat_map(|r| {
                    values.iter().map(move |v| {
                        let mut r = r.clone();
                        set(&mut r, v);
                        r
                    })
                })
                .collect::<Vec<_>>()
        };
        for (i, values) in &self.segments {
            let i = *i;
            out = expand(out, values, &|r, v| {
                // Fill this position; the others stay as they are in `r` (filled earlier).
                let mut segs: Vec<String> =
                    split(&r.path).into_iter().map(str::to_string).collect();
                if let Some(s) = segs.get_mut(i) {
                    *s = v.to_string();
                }
                r.path = format!("/{}", segs.join("/"));
            });
        }
        if let Some(paths) = &self.paths {
            out = expand(out, paths, &|r, v| r.path = v.to_string());
        }
        if let Some(hosts) = &self.hosts {
            out = expand(out, hosts, &|r, v| r.host = v.to_string());
        }
        if let Some(methods) = &self.methods {
            out = expand(out, methods, &|r, v| r.method = v.to_string());
        }
        Some(out)
    }
}

fn decided_by(verdict: Verdict, reason: Reason, rule: Option<&str>) -> String {
    match rule {
        Some(r) => format!("{verdict} by {r} ({reason})"),
        None => format!("{verdict} by {reason}"),
    }
}

/// One outcome from the outcomes of every completion.
fn combine(
    rec: &DecisionRecord,
    hidden: &Hidden,
    results: Vec<(Outcome, Option<Segments>)>,
) -> (Outcome, Option<Segments>) {
    let consistent: Vec<(Outcome, Option<Segments>)> = results
        .into_iter()
        .filter(|(o, _)| *o != Outcome::NotReproduced)
        .collect();
    let Some((first, segs)) = consistent.first().cloned() else {
        return (Outcome::NotReproduced, None);
    };
    if consistent.iter().all(|(o, _)| *o == first) {
        return (first, segs);
    }
    let mut names = hidden.names();
    let mut outcomes: Vec<String> = Vec::new();
    for (o, _) in &consistent {
        let described = match o {
            Outcome::Unchanged => vec![decided_by(rec.decision, rec.reason, rec.rule.as_deref())],
            Outcome::Changed(v, r, rule) => vec![decided_by(*v, *r, rule.as_deref())],
            Outcome::Undetermined(inner, outs) => {
                for n in inner {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
                outs.clone()
            }
            Outcome::NotReproduced => Vec::new(),
        };
        for d in described {
            if !outcomes.contains(&d) {
                outcomes.push(d);
            }
        }
    }
    (Outcome::Undetermined(names, outcomes), segs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::tooling::replay::Replayer;

    const BUNDLE: &str = r#"
version: 1
revision: 1
trust_domains: [hospital.example]
segments:
  clinical:
    members: ["spiffe://hospital.example/ns/clinical/**"]
rules:
  - name: ehr-reads-notes
    from: [clinical]
    to: [clinical]
    methods: [GET]
    paths: ["/patients/*/notes"]
"#;

    /// The candidate adds a deny for one patient's notes: that depends on the hidden segment.
    const CANDIDATE: &str = r#"
version: 1
revision: 2
trust_domains: [hospital.example]
segments:
  clinical:
    members: ["spiffe://hospital.example/ns/clinical/**"]
rules:
  - name: vip-notes-sealed
    action: deny
    from: [clinical]
    paths: ["/patients/vip-1/notes"]
  - name: ehr-reads-notes
    from: [clinical]
    to: [clinical]
    methods: [GET]
    paths: ["/patients/*/notes"]
  - name: ehr-reads-labs
    from: [clinical]
    to: [clinical]
    methods: [GET]
    paths: ["/patients/*/labs"]
"#;

    fn record(
        path: &str,
        form: PathForm,
        decision: Verdict,
        reason: Reason,
        rule: Option<&str>,
    ) -> DecisionRecord {
        DecisionRecord {
            time: "2026-11-30T10:00:00Z".into(),
            request_id: None,
            source: Some("spiffe://hospital.example/ns/clinical/sa/ehr".into()),
            source_segment: Some("clinical".into()),
            destination: Some("spiffe://hospital.example/ns/clinical/sa/lab".into()),
            destination_segment: Some("clinical".into()),
            method: "GET".into(),
            path: path.into(),
            host: REDACTED.into(),
            decision,
            reason,
            rule: rule.map(str::to_string),
            revision: Some(1),
            latency_us: 3,
            break_glass_reason: None,
            enforced: true,
            path_form: Some(form),
            break_glass_header: None,
        }
    }

    fn outcome(candidate: &str, baseline: Option<&str>, rec: &DecisionRecord) -> Outcome {
        let c = Policy::from_yaml_str("c.yaml", candidate).unwrap();
        let b = baseline.map(|b| Policy::from_yaml_str("b.yaml", b).unwrap());
        Replayer::new(&c, b.as_ref()).replay(rec).unwrap().0
    }

    #[test]
    fn decided_where_the_hidden_segments_do_not_matter() {
        let allowed = record(
            "/patients/{}/notes",
            PathForm::Redacted,
            Verdict::Allow,
            Reason::Rule,
            Some("ehr-reads-notes"),
        );
        // The same bundle: whatever the patient, the rule allows.
        assert_eq!(outcome(BUNDLE, Some(BUNDLE), &allowed), Outcome::Unchanged);
        // A default denial of a path no rule covers stays denied whatever was hidden.
        let denied = record(
            "/{}/{}",
            PathForm::Redacted,
            Verdict::Deny,
            Reason::DefaultDeny,
            None,
        );
        assert_eq!(outcome(BUNDLE, Some(BUNDLE), &denied), Outcome::Unchanged);
    }

    #[test]
    fn undetermined_where_they_do() {
        let allowed = record(
            "/patients/{}/notes",
            PathForm::Redacted,
            Verdict::Allow,
            Reason::Rule,
            Some("ehr-reads-notes"),
        );
        match outcome(CANDIDATE, Some(BUNDLE), &allowed) {
            Outcome::Undetermined(names, outcomes) => {
                assert_eq!(names, ["redacted path segment 2", "redacted host"]);
                assert!(
                    outcomes.iter().any(|o| o.contains("vip-notes-sealed")),
                    "{outcomes:?}"
                );
                assert!(
                    outcomes
                        .iter()
                        .any(|o| o.contains("allow by ehr-reads-notes")),
                    "{outcomes:?}"
                );
            }
            other => panic!("expected undetermined, got {other:?}"),
        }
        // A denial whose last segment was hidden: the candidate's new labs rule may grant it.
        let denied = record(
            "/patients/{}/{}",
            PathForm::Redacted,
            Verdict::Deny,
            Reason::DefaultDeny,
            None,
        );
        assert!(matches!(
            outcome(CANDIDATE, Some(BUNDLE), &denied),
            Outcome::Undetermined(..)
        ));
    }

    #[test]
    fn a_path_not_logged_is_unknown_in_full() {
        let off = record(
            "",
            PathForm::Off,
            Verdict::Allow,
            Reason::Rule,
            Some("ehr-reads-notes"),
        );
        assert_eq!(outcome(BUNDLE, Some(BUNDLE), &off), Outcome::Unchanged);
        assert!(matches!(
            outcome(CANDIDATE, Some(BUNDLE), &off),
            Outcome::Undetermined(..)
        ));
    }

    #[test]
    fn full_paths_replay_as_they_are() {
        let full = record(
            "/patients/vip-1/notes",
            PathForm::Full,
            Verdict::Allow,
            Reason::Rule,
            Some("ehr-reads-notes"),
        );
        let mut full = full;
        full.host = "lab".into();
        assert_eq!(
            outcome(CANDIDATE, Some(BUNDLE), &full),
            Outcome::Changed(Verdict::Deny, Reason::Rule, Some("vip-notes-sealed".into()))
        );
    }
}
