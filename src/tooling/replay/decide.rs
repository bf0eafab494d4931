//! The per-record step of `wardgate replay`: one logged [`DecisionRecord`] in, what the candidate
//! bundle decides for it out ([`Replayer::replay`]).
//!
//! The log carries no header values and no certificate (see `crate::decision_log`), so where a
//! decision could depend on them (header conditions, the break-glass header when no reason was
//! logged, a segment's `max_svid_lifetime`) the record is decided under every completion of the
//! missing data that could matter, and reported as undetermined if those disagree, never guessed.
//! With a baseline (the bundle that wrote the log), only completions under which the baseline
//! reproduces the logged decision count.
//!
//! Completions are explored lazily: a decision is run with every unknown unset, and only the
//! unknowns it actually read (a header lookup through [`HeaderLookup`], or a segment's lifetime
//! bound for the certificate) are branched on. A record whose rules look at no header costs one
//! `decide` per bundle, as in the server. What the bundles could look at is gathered once per run
//! ([`Replayer::new`]), never per record. This module must never write to the log, guess a
//! missing value, or read the policy other than through `policy::view` and `decide`.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::decision_log::DecisionRecord;
use crate::policy::{
    CertificateFacts, Decision, HeaderLookup, PeerCertificate, Policy, Reason, Request, Verdict,
};

/// Most `decide` calls spent on one record before calling it undetermined outright.
const MAX_RUNS: usize = 4096;
/// A header value no rule lists (distinct from every listed value and from absence).
const OTHER_VALUE: &str = "\u{1}other";
/// The break-glass reason assumed when the log says nothing about one.
const BREAK_GLASS_VALUE: &str = "replayed break-glass request";

/// What replaying one record gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Same verdict.
    Unchanged,
    /// Another verdict: (verdict, reason, rule) under the candidate.
    Changed(Verdict, Reason, Option<String>),
    /// Depends on unlogged data: the names of what it depends on, and the decisions the
    /// candidate would make depending on it.
    Undetermined(Vec<String>, Vec<String>),
    /// The baseline does not reproduce the logged decision under any completion.
    NotReproduced,
}

/// (source segment, destination segment) of a replayed decision under the candidate.
pub(crate) type Segments = (String, Option<String>);

/// What kind of request data an unknown stands for.
#[derive(Debug, Clone)]
enum Kind {
    /// A header some rule's `headers` condition names.
    Header(Box<str>),
    /// A break-glass header, for a record that logged no break-glass reason.
    BreakGlass(Box<str>),
    /// The forwarded certificate (its lifetime).
    Certificate,
}

/// One piece of request data the log does not carry, and the values worth trying for it.
/// Value 0 is always "absent".
#[derive(Debug, Clone)]
struct Unknown {
    kind: Kind,
    /// Header values (index 0: `None`).
    headers: Vec<Option<Box<str>>>,
    /// Certificate lifetimes (index 0: `None`, no certificate forwarded).
    lifetimes: Vec<Option<jiff::SignedDuration>>,
}

impl Unknown {
    fn name(&self) -> String {
        match &self.kind {
            Kind::Header(h) | Kind::BreakGlass(h) => format!("header {h}"),
            Kind::Certificate => "forwarded certificate".to_string(),
        }
    }

    fn len(&self) -> usize {
        match self.kind {
            Kind::Certificate => self.lifetimes.len(),
            _ => self.headers.len(),
        }
    }
}

/// One choice per unknown; `None`: not chosen yet (reads as absent).
type Choice = Vec<Option<u16>>;

/// Re-decides records against a candidate (and optionally a baseline) bundle.
pub(crate) struct Replayer<'p> {
    candidate: &'p Policy,
    baseline: Option<&'p Policy>,
    /// Every unknown either bundle could look at. Header unknowns first, then the break-glass
    /// headers, then the certificate.
    unknowns: Vec<Unknown>,
    /// Header name -> index into `unknowns` (condition headers and break-glass headers).
    by_header: HashMap<Box<str>, usize>,
    /// The break-glass header names of either bundle.
    break_glass_headers: Vec<Box<str>>,
    /// Index of the certificate unknown, when a segment of either bundle bounds lifetimes.
    certificate: Option<usize>,
    /// Per bundle (candidate, then baseline): segment name -> `max_svid_lifetime`.
    lifetimes: [HashMap<&'p str, jiff::SignedDuration>; 2],
}

impl<'p> Replayer<'p> {
    /// Gather, once, what `candidate` and `baseline` could look at that the log does not carry.
    pub(crate) fn new(candidate: &'p Policy, baseline: Option<&'p Policy>) -> Self {
        let policies: Vec<&Policy> = std::iter::once(candidate).chain(baseline).collect();
        let mut headers: BTreeMap<Box<str>, BTreeSet<Box<str>>> = BTreeMap::new();
        let mut bg_headers: BTreeSet<Box<str>> = BTreeSet::new();
        let mut all_lifetimes: BTreeSet<jiff::SignedDuration> = BTreeSet::new();
        for p in &policies {
            for r in p.view_rules().chain(p.view_break_glass()) {
                for (name, values) in r.headers {
                    headers
                        .entry(name.clone())
                        .or_default()
                        .extend(values.iter().cloned());
                }
            }
            if let Some(h) = p.break_glass_header() {
                bg_headers.insert(h.into());
            }
        }
        let lifetimes_of = |p: &'p Policy| -> HashMap<&'p str, jiff::SignedDuration> {
            p.view_segments()
                .into_iter()
                .filter_map(|s| s.max_svid_lifetime.map(|l| (s.name, l)))
                .collect()
        };
        let lifetimes = [
            lifetimes_of(candidate),
            baseline.map(lifetimes_of).unwrap_or_default(),
        ];
        for l in lifetimes.iter().flat_map(|m| m.values()) {
            all_lifetimes.insert(*l);
        }
        let mut unknowns = Vec::new();
        let mut by_header = HashMap::new();
        for (name, values) in headers {
            if bg_headers.contains(&name) {
                continue;
            }
            let mut v: Vec<Option<Box<str>>> = vec![None];
            v.extend(values.into_iter().map(Some));
            v.push(Some(OTHER_VALUE.into()));
            by_header.insert(name.clone(), unknowns.len());
            unknowns.push(Unknown {
                kind: Kind::Header(name),
                headers: v,
                lifetimes: Vec::new(),
            });
        }
        for h in &bg_headers {
            by_header.insert(h.clone(), unknowns.len());
            unknowns.push(Unknown {
                kind: Kind::BreakGlass(h.clone()),
                headers: vec![None, Some(BREAK_GLASS_VALUE.into())],
                lifetimes: Vec::new(),
            });
        }
        let certificate = (!all_lifetimes.is_empty()).then(|| {
            let mut v = vec![None];
            for l in all_lifetimes {
                v.push(Some(l));
                v.push(Some(l + jiff::SignedDuration::from_secs(1)));
            }
            unknowns.push(Unknown {
                kind: Kind::Certificate,
                headers: Vec::new(),
                lifetimes: v,
            });
            unknowns.len() - 1
        });
        Replayer {
            candidate,
            baseline,
            unknowns,
            by_header,
            break_glass_headers: bg_headers.into_iter().collect(),
            certificate,
            lifetimes,
        }
    }

    /// The candidate bundle.
    pub(crate) fn candidate(&self) -> &'p Policy {
        self.candidate
    }

    /// Replay one record: the one per-record step of `wardgate replay`. An `Err` is a record
    /// that cannot be replayed (the line is skipped, with this reason).
    pub(crate) fn replay(
        &self,
        rec: &DecisionRecord,
    ) -> Result<(Outcome, Option<Segments>), String> {
        // Values the log redacted (path segments, host, method): replay every completion.
        let plain = |r: &DecisionRecord| self.replay_plain(r);
        if let Some(replayed) =
            crate::tooling::redacted::replay(self.candidate, self.baseline, rec, &plain)
        {
            return replayed;
        }
        self.replay_plain(rec)
    }

    /// [`Self::replay`] of a record that hides nothing.
    fn replay_plain(&self, rec: &DecisionRecord) -> Result<(Outcome, Option<Segments>), String> {
        let time: jiff::Timestamp = rec
            .time
            .parse()
            .map_err(|e| format!("`time` `{}` is not an RFC 3339 instant: {e}", rec.time))?;
        // A refused certificate is refused by every bundle, and the log does not say why.
        if rec.reason == Reason::BadCertificate {
            return Ok((Outcome::Unchanged, None));
        }
        let record = Record { rec, time };
        let leaves = match self.explore(&record) {
            Ok(l) => l,
            Err(read) => {
                let names = read.iter().map(|&k| self.name(k)).collect();
                return Ok((Outcome::Undetermined(names, Vec::new()), None));
            }
        };
        let consistent: Vec<&Leaf<'p>> = leaves.iter().filter(|l| l.decision.is_some()).collect();
        let Some(first) = consistent.first().and_then(|l| l.decision) else {
            return Ok((Outcome::NotReproduced, None));
        };
        let segs = Some((
            first.source_segment.unwrap_or("-").to_string(),
            first.destination_segment.map(str::to_string),
        ));
        let verdicts: HashSet<Verdict> = consistent
            .iter()
            .filter_map(|l| l.decision.map(|d| d.verdict))
            .collect();
        if verdicts.len() > 1 {
            let matter = self.what_matters(&consistent);
            let mut outcomes: Vec<String> = Vec::new();
            for d in consistent.iter().filter_map(|l| l.decision) {
                let o = format!("{} by {}", d.verdict, decided_by(d.reason, d.rule));
                if !outcomes.contains(&o) {
                    outcomes.push(o);
                }
            }
            return Ok((Outcome::Undetermined(matter, outcomes), segs));
        }
        if first.verdict == rec.decision {
            Ok((Outcome::Unchanged, segs))
        } else {
            Ok((
                Outcome::Changed(first.verdict, first.reason, first.rule.map(str::to_string)),
                segs,
            ))
        }
    }

    fn name(&self, k: usize) -> String {
        self.unknowns.get(k).map(Unknown::name).unwrap_or_default()
    }

    /// Every distinct outcome of the record over the completions that matter: a tree whose
    /// leaves fix exactly the unknowns the decisions read. `Err` (with the unknowns read so
    /// far) when that takes more than [`MAX_RUNS`] decisions.
    fn explore(&self, record: &Record<'_>) -> Result<Vec<Leaf<'p>>, Vec<usize>> {
        let mut leaves = Vec::new();
        let mut stack: Vec<Choice> = vec![vec![None; self.unknowns.len()]];
        let mut runs = 0usize;
        let mut read: BTreeSet<usize> = BTreeSet::new();
        while let Some(choice) = stack.pop() {
            let mut pending = None;
            let mut decision = None;
            for (i, policy) in std::iter::once(self.baseline)
                .flatten()
                .map(|b| (1, b))
                .chain(std::iter::once((0, self.candidate)))
            {
                runs += 1;
                if runs > MAX_RUNS {
                    return Err(read.into_iter().collect());
                }
                let (d, unset_read) = self.run(policy, i, record, &choice);
                if unset_read.is_some() {
                    pending = unset_read;
                    break;
                }
                // The baseline must reproduce the logged decision; otherwise this completion
                // is not what happened.
                if i == 1 && !same(&d, record.rec) {
                    break;
                }
                if i == 0 {
                    decision = Some(d);
                }
            }
            read.extend(choice.iter().enumerate().filter_map(|(k, c)| c.map(|_| k)));
            match pending {
                Some(k) => {
                    read.insert(k);
                    let n = self.unknowns.get(k).map_or(0, Unknown::len);
                    // Pushed in reverse so that value 0 (absent) is explored first.
                    for v in (0..n).rev() {
                        let mut c = choice.clone();
                        if let Some(slot) = c.get_mut(k) {
                            *slot = u16::try_from(v).ok();
                        }
                        stack.push(c);
                    }
                }
                None => leaves.push(Leaf { choice, decision }),
            }
        }
        Ok(leaves)
    }

    /// Decide `record` with `policy` (`which`: 0 candidate, 1 baseline) under `choice`; also
    /// the first unknown the decision depended on that `choice` leaves unset.
    fn run(
        &self,
        policy: &'p Policy,
        which: usize,
        record: &Record<'_>,
        choice: &[Option<u16>],
    ) -> (Decision<'p>, Option<usize>) {
        let rec = record.rec;
        let lookup = Lookup {
            replayer: self,
            logged_reason: rec.break_glass_reason.as_deref(),
            logged_absent: rec.break_glass_header == Some(false),
            choice,
            first_unset: Cell::new(None),
        };
        let lifetime = self.certificate.and_then(|k| {
            let c = choice.get(k).copied().flatten()?;
            self.unknowns
                .get(k)
                .and_then(|u| u.lifetimes.get(usize::from(c)).copied().flatten())
        });
        let source = rec.source.as_deref().unwrap_or_default();
        let facts = lifetime.map(|life| CertificateFacts::simulated(source, record.time, life));
        let mut req = Request::new(&rec.method, &rec.path);
        req.source = rec.source.as_deref();
        req.destination = rec.destination.as_deref();
        req.host = &rec.host;
        req.headers = &lookup;
        req.time = record.time;
        if let Some(f) = &facts {
            req.peer_certificate = PeerCertificate::Parsed(f);
        }
        let d = policy.decide(&req);
        let mut unset = lookup.first_unset.get();
        // Only a lifetime bound on the source's segment looks at a simulated certificate: it is
        // issued to the source and covers the request time, so every other check passes.
        if unset.is_none() {
            if let Some(k) = self.certificate {
                let bounded = d
                    .source_segment
                    .and_then(|s| self.lifetimes.get(which)?.get(s))
                    .is_some();
                if bounded && choice.get(k).copied().flatten().is_none() {
                    unset = Some(k);
                }
            }
        }
        (d, unset)
    }

    /// Which unknowns change the verdict, when the consistent leaves disagree: two completions
    /// that differ only in that unknown decide differently.
    fn what_matters(&self, consistent: &[&Leaf<'p>]) -> Vec<String> {
        let fixed: BTreeSet<usize> = consistent
            .iter()
            .flat_map(|l| {
                l.choice
                    .iter()
                    .enumerate()
                    .filter_map(|(k, c)| c.map(|_| k))
            })
            .collect();
        let fixed: Vec<usize> = fixed.into_iter().collect();
        let all = || fixed.iter().map(|&k| self.name(k)).collect::<Vec<_>>();
        // Expand each leaf over the unknowns other leaves fixed and it did not.
        let mut full: Vec<(Vec<usize>, Verdict)> = Vec::new();
        for leaf in consistent {
            let Some(d) = leaf.decision else { continue };
            let mut partial: Vec<Vec<usize>> = vec![Vec::new()];
            for &k in &fixed {
                let values: Vec<usize> = match leaf.choice.get(k).copied().flatten() {
                    Some(v) => vec![usize::from(v)],
                    None => (0..self.unknowns.get(k).map_or(1, Unknown::len)).collect(),
                };
                partial = partial
                    .into_iter()
                    .flat_map(|p| {
                        values.iter().map(move |&v| {
                            let mut p = p.clone();
                            p.push(v);
                            p
                        })
                    })
                    .collect();
                if partial.len() + full.len() > MAX_RUNS {
                    return all();
                }
            }
            full.extend(partial.into_iter().map(|p| (p, d.verdict)));
        }
        let mut matter = Vec::new();
        for (pos, &k) in fixed.iter().enumerate() {
            let mut groups: HashMap<Vec<usize>, HashSet<Verdict>> = HashMap::new();
            for (c, v) in &full {
                let mut key = c.clone();
                key.remove(pos);
                groups.entry(key).or_default().insert(*v);
            }
            if groups.values().any(|v| v.len() > 1) {
                matter.push(self.name(k));
            }
        }
        if matter.is_empty() {
            all()
        } else {
            matter
        }
    }
}

/// A record with its instant parsed once.
struct Record<'r> {
    rec: &'r DecisionRecord,
    time: jiff::Timestamp,
}

/// One completion class: the unknowns it fixes, and the candidate's decision (`None`: the
/// baseline does not reproduce the logged decision under it).
struct Leaf<'p> {
    choice: Choice,
    decision: Option<Decision<'p>>,
}

/// The headers of a replayed request: the logged break-glass reason, the chosen values of the
/// unknowns, and a note of the first unknown read that the choice leaves unset.
struct Lookup<'a, 'p> {
    replayer: &'a Replayer<'p>,
    logged_reason: Option<&'a str>,
    /// The log says the break-glass header was not sent at all.
    logged_absent: bool,
    choice: &'a [Option<u16>],
    first_unset: Cell<Option<usize>>,
}

impl HeaderLookup for Lookup<'_, '_> {
    fn header(&self, lowercase_name: &str) -> Option<&str> {
        let r = self.replayer;
        if r.break_glass_headers.iter().any(|h| **h == *lowercase_name) {
            if let Some(reason) = self.logged_reason {
                // Logged: it was sent with this value.
                return Some(reason);
            }
            if self.logged_absent {
                // Logged as not sent.
                return None;
            }
        }
        let &k = r.by_header.get(lowercase_name)?;
        match self.choice.get(k).copied().flatten() {
            Some(v) => r
                .unknowns
                .get(k)
                .and_then(|u| u.headers.get(usize::from(v)))
                .and_then(|v| v.as_deref()),
            None => {
                if self.first_unset.get().is_none() {
                    self.first_unset.set(Some(k));
                }
                None
            }
        }
    }
}

/// Whether `d` is the logged decision: same verdict, reason and rule.
fn same(d: &Decision<'_>, logged: &DecisionRecord) -> bool {
    d.verdict == logged.decision && d.reason == logged.reason && d.rule == logged.rule.as_deref()
}

/// `rule (reason)`, or the reason alone.
pub(crate) fn decided_by(reason: Reason, rule: Option<&str>) -> String {
    match rule {
        Some(r) => format!("{r} ({reason})"),
        None => reason.to_string(),
    }
}
