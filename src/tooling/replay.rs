//! `wardgate replay BUNDLE --log DECISIONS.jsonl`: re-decide recorded decisions with a candidate
//! bundle and report every decision that would change, grouped by rule and segment pair.
//!
//! Each [`DecisionRecord`] becomes a request and goes through `Policy::decide`, as the server
//! would run it. The log deliberately carries no header values and no certificate (see
//! `crate::decision_log`), so
//! where a decision could depend on them (header conditions, the break-glass header when no
//! reason was logged, a segment's `max_svid_lifetime`) the record is decided under every
//! completion of the missing data; if the completions disagree the record is reported as
//! undetermined, never guessed. With `--baseline` (the bundle that wrote the log), only
//! completions under which the baseline reproduces the logged decision are considered. This
//! module must never write to the log or guess a missing value.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::BufRead as _;
use std::path::PathBuf;

use serde::Serialize;

use super::{load, Exit};
use crate::decision_log::DecisionRecord;
use crate::policy::{
    CertificateFacts, Decision, PeerCertificate, Policy, Reason, Request, Verdict,
};

/// `wardgate replay` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The candidate bundle (file or directory).
    bundle: PathBuf,
    /// Decision log: one JSON `DecisionRecord` per line.
    #[arg(long, value_name = "FILE.jsonl")]
    log: PathBuf,
    /// The bundle that made the logged decisions; narrows what unlogged data could have been.
    #[arg(long, value_name = "BUNDLE")]
    baseline: Option<PathBuf>,
    /// Example requests shown per group.
    #[arg(long, value_name = "N", default_value_t = 3)]
    examples: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Most completions tried for one record before calling it undetermined outright.
const MAX_COMPLETIONS: usize = 4096;
const OTHER_VALUE: &str = "\u{1}other";
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

/// One unknown of a record and its possible values.
#[derive(Debug, Clone)]
enum Unknown {
    Header(String, Vec<Option<String>>),
    Certificate(Vec<Option<jiff::SignedDuration>>),
}

impl Unknown {
    fn name(&self) -> String {
        match self {
            Unknown::Header(h, _) => format!("header {h}"),
            Unknown::Certificate(_) => "forwarded certificate".to_string(),
        }
    }
    fn len(&self) -> usize {
        match self {
            Unknown::Header(_, v) => v.len(),
            Unknown::Certificate(v) => v.len(),
        }
    }
}

/// What a policy's rules look at that the log does not carry.
fn unknowns(policies: &[&Policy], rec: &DecisionRecord) -> Vec<Unknown> {
    let mut headers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut bg_headers: BTreeSet<String> = BTreeSet::new();
    let mut lifetimes: BTreeSet<jiff::SignedDuration> = BTreeSet::new();
    for p in policies {
        for r in p.view_rules().chain(p.view_break_glass()) {
            for (name, values) in r.headers {
                headers
                    .entry(name.to_string())
                    .or_default()
                    .extend(values.iter().map(|v| v.to_string()));
            }
        }
        if let Some(h) = p.break_glass_header() {
            bg_headers.insert(h.to_string());
        }
        for s in p.view_segments() {
            if let Some(l) = s.max_svid_lifetime {
                lifetimes.insert(l);
            }
        }
    }
    let mut out = Vec::new();
    for (name, values) in headers {
        if bg_headers.contains(&name) {
            continue;
        }
        let mut v: Vec<Option<String>> = vec![None];
        v.extend(values.into_iter().map(Some));
        v.push(Some(OTHER_VALUE.to_string()));
        out.push(Unknown::Header(name, v));
    }
    for h in bg_headers {
        match &rec.break_glass_reason {
            // Logged: it was sent with this value.
            Some(_) => {}
            // Logged as not sent.
            None if rec.break_glass_header == Some(false) => {}
            None => out.push(Unknown::Header(
                h,
                vec![None, Some(BREAK_GLASS_VALUE.to_string())],
            )),
        }
    }
    if !lifetimes.is_empty() {
        let mut v = vec![None];
        for l in lifetimes {
            v.push(Some(l));
            v.push(Some(l + jiff::SignedDuration::from_secs(1)));
        }
        out.push(Unknown::Certificate(v));
    }
    out
}

/// Whether `d` is the logged decision: same verdict, reason and rule.
fn same(d: &Decision<'_>, logged: &DecisionRecord) -> bool {
    d.verdict == logged.decision && d.reason == logged.reason && d.rule == logged.rule.as_deref()
}

/// Decide one record under one completion.
fn decide_with<'p>(
    policy: &'p Policy,
    rec: &DecisionRecord,
    time: jiff::Timestamp,
    fixed: &HashMap<String, String>,
    unknown: &[Unknown],
    choice: &[usize],
) -> Decision<'p> {
    let mut headers = fixed.clone();
    let mut cert = None;
    for (u, &c) in unknown.iter().zip(choice) {
        match u {
            Unknown::Header(name, values) => {
                if let Some(Some(v)) = values.get(c) {
                    headers.insert(name.clone(), v.clone());
                }
            }
            Unknown::Certificate(values) => cert = values.get(c).copied().flatten(),
        }
    }
    let source = rec.source.clone().unwrap_or_default();
    let facts = cert.map(|life| CertificateFacts::simulated(&source, time, life));
    let mut req = Request::new(&rec.method, &rec.path);
    req.source = rec.source.as_deref();
    req.destination = rec.destination.as_deref();
    req.host = &rec.host;
    req.headers = &headers;
    req.time = time;
    if let Some(f) = &facts {
        req.peer_certificate = PeerCertificate::Parsed(f);
    }
    policy.decide(&req)
}

fn completions(unknown: &[Unknown]) -> Option<Vec<Vec<usize>>> {
    let total = unknown
        .iter()
        .try_fold(1usize, |acc, u| acc.checked_mul(u.len().max(1)))?;
    if total > MAX_COMPLETIONS {
        return None;
    }
    let mut out = vec![Vec::new()];
    for u in unknown {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                (0..u.len()).map(move |i| {
                    let mut p = prefix.clone();
                    p.push(i);
                    p
                })
            })
            .collect();
    }
    Some(out)
}

/// (source segment, destination segment) of a replayed decision under the candidate.
pub(crate) type Segments = (String, Option<String>);

/// Replay one record against `candidate`.
pub(crate) fn replay_one(
    candidate: &Policy,
    baseline: Option<&Policy>,
    rec: &DecisionRecord,
) -> Result<(Outcome, Option<Segments>), String> {
    // Values the log redacted (path segments, host, method): replay every completion.
    if let Some(replayed) = super::redacted::replay(candidate, baseline, rec, replay_one) {
        return replayed;
    }
    let time: jiff::Timestamp = rec
        .time
        .parse()
        .map_err(|e| format!("`time` `{}` is not an RFC 3339 instant: {e}", rec.time))?;
    // A refused certificate is refused by every bundle, and the log does not say why.
    if rec.reason == Reason::BadCertificate {
        return Ok((Outcome::Unchanged, None));
    }
    let mut fixed = HashMap::new();
    if let Some(reason) = &rec.break_glass_reason {
        for p in std::iter::once(candidate).chain(baseline) {
            if let Some(h) = p.break_glass_header() {
                fixed.insert(h.to_string(), reason.clone());
            }
        }
    }
    let mut policies = vec![candidate];
    policies.extend(baseline);
    let unknown = unknowns(&policies, rec);
    let Some(all) = completions(&unknown) else {
        return Ok((
            Outcome::Undetermined(unknown.iter().map(Unknown::name).collect(), Vec::new()),
            None,
        ));
    };
    let consistent: Vec<&Vec<usize>> = match baseline {
        None => all.iter().collect(),
        Some(b) => all
            .iter()
            .filter(|c| same(&decide_with(b, rec, time, &fixed, &unknown, c), rec))
            .collect(),
    };
    if consistent.is_empty() {
        return Ok((Outcome::NotReproduced, None));
    }
    let decided: Vec<(Vec<usize>, Decision<'_>)> = consistent
        .iter()
        .map(|c| {
            (
                (*c).clone(),
                decide_with(candidate, rec, time, &fixed, &unknown, c),
            )
        })
        .collect();
    let verdicts: HashSet<Verdict> = decided.iter().map(|(_, d)| d.verdict).collect();
    let first = decided[0].1;
    let segs = Some((
        first.source_segment.unwrap_or("-").to_string(),
        first.destination_segment.map(str::to_string),
    ));
    if verdicts.len() > 1 {
        // Which unknowns matter: two completions differing only there disagree.
        let mut matter = Vec::new();
        for (k, u) in unknown.iter().enumerate() {
            let mut groups: HashMap<Vec<usize>, HashSet<Verdict>> = HashMap::new();
            for (c, d) in &decided {
                let mut key = c.clone();
                key.remove(k);
                groups.entry(key).or_default().insert(d.verdict);
            }
            if groups.values().any(|v| v.len() > 1) {
                matter.push(u.name());
            }
        }
        if matter.is_empty() {
            matter = unknown.iter().map(Unknown::name).collect();
        }
        let mut outcomes: Vec<String> = Vec::new();
        for (_, d) in &decided {
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

/// How the records of a group change. Declared in the order of their names, so groups sort as
/// they always have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// Allowed before, denied now.
    Revoked,
    /// Denied before, allowed now.
    Granted,
    /// Depends on request data the log does not carry.
    Undetermined,
}

impl Change {
    /// `allow -> deny`, `deny -> allow` or `undetermined`: the one spelling of text and JSON.
    fn as_str(self) -> &'static str {
        match self {
            Change::Revoked => "allow -> deny",
            Change::Granted => "deny -> allow",
            Change::Undetermined => "undetermined",
        }
    }
}

impl Serialize for Change {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A group of changed or undetermined records.
#[derive(Debug, Serialize)]
struct Group {
    change: Change,
    from_segment: String,
    to_segment: String,
    /// What decided before (rule or reason).
    before: String,
    /// What decides now, or what the outcome depends on.
    after: String,
    count: usize,
    examples: Vec<Example>,
}

#[derive(Debug, Serialize)]
struct Example {
    line: usize,
    method: String,
    path: String,
    from: Option<String>,
    to: Option<String>,
    time: String,
}

fn decided_by(reason: Reason, rule: Option<&str>) -> String {
    match rule {
        Some(r) => format!("{r} ({reason})"),
        None => reason.to_string(),
    }
}

/// Run `wardgate replay`.
pub(crate) fn run(args: ReplayArgs) -> Exit {
    let candidate = match load(&args.bundle) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let baseline = match &args.baseline {
        None => None,
        Some(b) => match load(b) {
            Ok(p) => Some(p),
            Err(code) => return code,
        },
    };
    let file = match std::fs::File::open(&args.log) {
        Ok(f) => f,
        Err(e) => {
            tell!("error: cannot read {}: {e}", args.log.display());
            return Exit::Input;
        }
    };
    let mut total = 0usize;
    let mut unchanged = 0usize;
    let mut not_reproduced = 0usize;
    let mut unreadable: Vec<String> = Vec::new();
    let mut groups: BTreeMap<(Change, String, String, String, String), Group> = BTreeMap::new();
    let (mut grants, mut revocations) = (0usize, 0usize);
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                unreadable.push(format!("{}:{n}: {e}", args.log.display()));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let rec: DecisionRecord = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                unreadable.push(format!("{}:{n}: {e}", args.log.display()));
                continue;
            }
        };
        total += 1;
        let (outcome, segs) = match replay_one(&candidate, baseline.as_ref(), &rec) {
            Ok(x) => x,
            Err(e) => {
                total -= 1;
                unreadable.push(format!("{}:{n}: {e}", args.log.display()));
                continue;
            }
        };
        let (from_seg, to_seg) = {
            let (s, d) = segs.unwrap_or(("-".into(), None));
            (
                rec.source_segment.clone().unwrap_or(s),
                rec.destination_segment
                    .clone()
                    .or(d)
                    .unwrap_or_else(|| "-".to_string()),
            )
        };
        let before = decided_by(rec.reason, rec.rule.as_deref());
        let (change, after) = match outcome {
            Outcome::Unchanged => {
                unchanged += 1;
                continue;
            }
            Outcome::NotReproduced => {
                not_reproduced += 1;
                continue;
            }
            Outcome::Changed(v, reason, rule) => {
                let change = if v == Verdict::Allow {
                    grants += 1;
                    Change::Granted
                } else {
                    revocations += 1;
                    Change::Revoked
                };
                (change, decided_by(reason, rule.as_deref()))
            }
            Outcome::Undetermined(on, outcomes) => (
                Change::Undetermined,
                if outcomes.is_empty() {
                    format!("depends on {}", on.join(", "))
                } else {
                    format!("depends on {}: {}", on.join(", "), outcomes.join(" or "))
                },
            ),
        };
        let key = (
            change,
            before.clone(),
            after.clone(),
            from_seg.clone(),
            to_seg.clone(),
        );
        let g = groups.entry(key).or_insert_with(|| Group {
            change,
            from_segment: from_seg,
            to_segment: to_seg,
            before,
            after,
            count: 0,
            examples: Vec::new(),
        });
        g.count += 1;
        if g.examples.len() < args.examples {
            g.examples.push(Example {
                line: n,
                method: rec.method.clone(),
                path: rec.path.clone(),
                from: rec.source.clone(),
                to: rec.destination.clone(),
                time: rec.time.clone(),
            });
        }
    }
    for u in &unreadable {
        tell!("warning: skipped {u}");
    }
    let undetermined: usize = groups
        .values()
        .filter(|g| g.change == Change::Undetermined)
        .map(|g| g.count)
        .sum();
    let changed = grants + revocations;
    let exit = if grants > 0 {
        Exit::NewGrants
    } else if revocations > 0 {
        Exit::No
    } else {
        Exit::Ok
    };
    if args.json {
        let out = serde_json::json!({
            "bundle": args.bundle.display().to_string(),
            "revision": candidate.revision(),
            "log": args.log.display().to_string(),
            "replayed": total,
            "unchanged": unchanged,
            "changed": changed,
            "newly_allowed": grants,
            "newly_denied": revocations,
            "undetermined": undetermined,
            "not_reproduced_by_baseline": not_reproduced,
            "unreadable": unreadable.len(),
            "groups": groups.values().collect::<Vec<_>>(),
            "exit": exit.code(),
        });
        say!("{out}");
    } else {
        say!(
            "replay {} decision(s) from {} against {} (revision {})\n",
            total,
            args.log.display(),
            args.bundle.display(),
            candidate.revision()
        );
        say!("  unchanged      {unchanged}");
        say!("  changed        {changed}  ({grants} deny -> allow, {revocations} allow -> deny)");
        say!(
            "  undetermined   {undetermined}  (would depend on request data the log does not carry)"
        );
        if baseline.is_some() {
            say!("  not reproduced {not_reproduced}  (the baseline bundle decides these differently from the log)");
        }
        if !unreadable.is_empty() {
            say!("  unreadable     {}  (see warnings)", unreadable.len());
        }
        for kind in [Change::Granted, Change::Revoked, Change::Undetermined] {
            let list: Vec<&Group> = groups.values().filter(|g| g.change == kind).collect();
            if list.is_empty() {
                continue;
            }
            let n: usize = list.iter().map(|g| g.count).sum();
            say!("\n{} ({n})", kind.as_str());
            for g in list {
                say!(
                    "\n  {} -> {}   {}   =>   {}   {} request(s)",
                    g.from_segment,
                    g.to_segment,
                    g.before,
                    g.after,
                    g.count
                );
                for e in &g.examples {
                    say!(
                        "      line {}: {} {} from {} to {} at {}",
                        e.line,
                        e.method,
                        e.path,
                        e.from.as_deref().unwrap_or("-"),
                        e.to.as_deref().unwrap_or("-"),
                        e.time
                    );
                }
            }
        }
        say!(
            "\nresult: {} (exit {})",
            match exit {
                Exit::Ok => "no decision changes",
                Exit::No => "only allow -> deny changes",
                _ => "some denied requests would now be allowed",
            },
            exit.code()
        );
    }
    exit
}
