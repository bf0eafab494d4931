//! Reading decision logs for `wardgate learn`: every line parsed as a [`DecisionRecord`] and
//! sorted into what may be learned (a request between two known identities that nothing but the
//! absence of a rule refused), observed denials, break-glass use, and what cannot be learned,
//! each with the file and line it came from.
//!
//! This module owns that classification and nothing else. It must never decide what to grant
//! (`propose` does), never guess a value the log does not carry, and never stop at a bad line: a
//! line that is not a decision is skipped and named `FILE:LINE`. With a base bundle, each
//! learnable request is also decided by the base (`Policy::decide`), and whatever the base
//! refuses by a deny rule or before rule evaluation is an observed denial, never learned.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::decision_log::DecisionRecord;
use crate::policy::{normalize, CertificateFacts, PeerCertificate, Policy, Request, Verdict};

/// Paths deeper than this are not learned (a rule for them would be a guess, and the generaliser
/// recurses once per segment).
pub(crate) const MAX_DEPTH: usize = 64;

/// Where a record came from: index into [`Observations::files`] and 1-based line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LineRef {
    pub(crate) file: usize,
    pub(crate) line: usize,
}

/// One observed request as logged.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// Upper-case method.
    pub(crate) method: String,
    /// The path as logged (query already cut off by the writer).
    pub(crate) raw_path: String,
    /// Normalised path, where it normalises.
    pub(crate) path: Option<String>,
    pub(crate) host: String,
    pub(crate) time: jiff::Timestamp,
    pub(crate) at: LineRef,
}

/// A request that may be learned, with the allow rule of the logging bundle that let it through
/// (none when it was denied only because no rule allowed it).
#[derive(Debug, Clone)]
pub(crate) struct Learnable {
    pub(crate) seen: Seen,
    pub(crate) logged_rule: Option<String>,
}

/// Why a request that was allowed (or only default-denied) cannot be learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Skip {
    /// No source principal logged.
    NoSource,
    /// No destination principal logged: a rule without `to` would match every destination.
    NoDestination,
    /// A source or destination that is not one exact SPIFFE ID a rule can name.
    BadIdentity,
    /// The destination's trust domain is not one of the base bundle's.
    OutsideTrustDomains,
    /// The path does not normalise, or has a segment with `*` (not expressible as a literal).
    BadPath,
    /// More than [`MAX_DEPTH`] path segments.
    TooDeep,
    /// The method is not an HTTP method token.
    BadMethod,
}

impl Skip {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Skip::NoSource => "no source principal",
            Skip::NoDestination => {
                "no destination principal (a rule would have to match every destination)"
            }
            Skip::BadIdentity => "source or destination is not an exact SPIFFE ID a rule can name",
            Skip::OutsideTrustDomains => "destination outside the base bundle's trust domains",
            Skip::BadPath => "path does not normalise, or has a `*` segment",
            Skip::TooDeep => "path deeper than 64 segments",
            Skip::BadMethod => "method is not an HTTP method token",
        }
    }
}

/// A count with the first place it was seen.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Tally {
    pub(crate) count: usize,
    #[serde(skip)]
    pub(crate) first: LineRef,
}

/// Who refused an observed denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RefusedBy {
    /// The bundle that wrote the log.
    Log,
    /// The base bundle, although the log allowed it (or denied it only by default).
    Base,
}

/// Observed denials of one kind: (from, to, reason, rule, refused by).
pub(crate) type DenialKey = (
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    RefusedBy,
);

/// A group of observed denials.
#[derive(Debug, Clone)]
pub(crate) struct Denials {
    pub(crate) count: usize,
    /// The first one seen.
    pub(crate) example: Seen,
    /// How the base decides the example: (verdict, reason, rule); none without a base.
    pub(crate) base: Option<(Verdict, String, Option<String>)>,
}

/// Everything read from the logs.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    pub(crate) files: Vec<String>,
    /// Decision lines read (unreadable ones excluded).
    pub(crate) records: usize,
    /// (source, destination) -> learnable requests, in log order.
    pub(crate) conversations: BTreeMap<(String, String), Vec<Learnable>>,
    pub(crate) denials: BTreeMap<DenialKey, Denials>,
    /// Break-glass allows by (source, destination): emergency use, never a standing rule.
    pub(crate) break_glass: BTreeMap<(String, String), Tally>,
    pub(crate) skipped: BTreeMap<Skip, Tally>,
    /// `FILE:LINE: why` for lines that are not decisions.
    pub(crate) unreadable: Vec<String>,
    /// Every valid SPIFFE ID seen as a source or destination.
    pub(crate) identities: BTreeSet<String>,
}

impl Observations {
    /// `FILE:LINE` of a line reference.
    pub(crate) fn place(&self, at: LineRef) -> String {
        let file = self.files.get(at.file).map(String::as_str).unwrap_or("?");
        format!("{file}:{}", at.line)
    }

    /// Learnable requests in all.
    pub(crate) fn learnable(&self) -> usize {
        self.conversations.values().map(Vec::len).sum()
    }
}

/// The logged verdict and reason, as their stable names. The one place that reads the record's
/// `decision` and `reason` fields (whatever their Rust type, their `as_str` is the JSON spelling).
fn logged(rec: &DecisionRecord) -> (&str, &str) {
    (rec.decision.as_str(), rec.reason.as_str())
}

/// Whether `id` is one exact SPIFFE ID that a rule can name (no wildcard segments).
pub(crate) fn exact_id(id: &str) -> bool {
    match crate::policy::Pattern::parse_spiffe(id) {
        Ok(p) => !p.more() && p.to_string() == id && !p.segments().iter().any(is_any),
        Err(_) => false,
    }
}

fn is_any(s: &crate::policy::view::Seg) -> bool {
    matches!(s, crate::policy::view::Seg::Any)
}

/// (trust domain, path) of a SPIFFE ID.
pub(crate) fn split_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    })
}

/// What one record is.
enum Kind {
    Learn((String, String), Learnable),
    Deny(DenialKey, Seen),
    BreakGlass((String, String), LineRef),
    Skip(Skip, LineRef),
}

fn seen(rec: &DecisionRecord, time: jiff::Timestamp, at: LineRef) -> Seen {
    Seen {
        method: rec.method.to_ascii_uppercase(),
        raw_path: rec.path.clone(),
        path: normalize::path(&rec.path).ok().map(|p| p.into_owned()),
        host: rec.host.clone(),
        time,
        at,
    }
}

/// The base's decision on a logged request. The log carries no certificate: a short-lived one
/// stands for it, so that a segment's `max_svid_lifetime` (checked by the server on the real
/// certificate) does not pass for a refusal of the conversation.
pub(crate) fn base_decision(
    base: &Policy,
    s: &Seen,
    from: Option<&str>,
    to: Option<&str>,
) -> (Verdict, String, Option<String>) {
    let facts = CertificateFacts::simulated(
        from.unwrap_or_default(),
        s.time,
        jiff::SignedDuration::from_secs(1),
    );
    let mut req = Request::new(&s.method, &s.raw_path);
    req.source = from;
    req.destination = to;
    req.host = &s.host;
    req.time = s.time;
    req.peer_certificate = PeerCertificate::Parsed(&facts);
    let d = base.decide(&req);
    (
        d.verdict,
        d.reason.as_str().to_string(),
        d.rule.map(str::to_string),
    )
}

fn classify(
    rec: &DecisionRecord,
    at: LineRef,
    base: Option<&Policy>,
    allowed_only: bool,
) -> Result<Kind, String> {
    let time: jiff::Timestamp = rec
        .time
        .parse()
        .map_err(|e| format!("`time` `{}` is not an RFC 3339 instant: {e}", rec.time))?;
    let (decision, reason) = logged(rec);
    let learn = match (decision, reason) {
        ("allow", "break_glass") => {
            let pair = (
                rec.source.clone().unwrap_or_default(),
                rec.destination.clone().unwrap_or_default(),
            );
            return Ok(Kind::BreakGlass(pair, at));
        }
        ("allow", _) => true,
        ("deny", "default_deny") => !allowed_only,
        ("deny", _) => false,
        (other, _) => return Err(format!("`decision` `{other}` is not allow or deny")),
    };
    let s = seen(rec, time, at);
    if !learn {
        let key = (
            rec.source.clone(),
            rec.destination.clone(),
            reason.to_string(),
            rec.rule.clone(),
            RefusedBy::Log,
        );
        return Ok(Kind::Deny(key, s));
    }
    let Some(from) = rec.source.as_deref() else {
        return Ok(Kind::Skip(Skip::NoSource, at));
    };
    let Some(to) = rec.destination.as_deref() else {
        return Ok(Kind::Skip(Skip::NoDestination, at));
    };
    if !exact_id(from) || !exact_id(to) {
        return Ok(Kind::Skip(Skip::BadIdentity, at));
    }
    if s.method.is_empty() || !s.method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Ok(Kind::Skip(Skip::BadMethod, at));
    }
    let Some(path) = &s.path else {
        return Ok(Kind::Skip(Skip::BadPath, at));
    };
    if path.split('/').any(|seg| seg.contains('*')) {
        return Ok(Kind::Skip(Skip::BadPath, at));
    }
    if path.split('/').count() > MAX_DEPTH + 1 {
        return Ok(Kind::Skip(Skip::TooDeep, at));
    }
    if let Some(base) = base {
        let td = split_id(to).map(|(td, _)| td).unwrap_or_default();
        if !base.trust_domains().any(|t| t == td) {
            return Ok(Kind::Skip(Skip::OutsideTrustDomains, at));
        }
        let (verdict, reason, rule) = base_decision(base, &s, Some(from), Some(to));
        if verdict == Verdict::Deny && reason != "default_deny" {
            let key = (
                Some(from.to_string()),
                Some(to.to_string()),
                reason,
                rule,
                RefusedBy::Base,
            );
            return Ok(Kind::Deny(key, s));
        }
    }
    let logged_rule = if decision == "allow" {
        rec.rule.clone()
    } else {
        None
    };
    Ok(Kind::Learn(
        (from.to_string(), to.to_string()),
        Learnable {
            seen: s,
            logged_rule,
        },
    ))
}

/// Read every log. Fails only when a file cannot be opened.
pub(crate) fn read(
    logs: &[PathBuf],
    base: Option<&Policy>,
    allowed_only: bool,
) -> Result<Observations, String> {
    let mut obs = Observations::default();
    for (fi, path) in logs.iter().enumerate() {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        obs.files.push(name.clone());
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let at = LineRef {
                file: fi,
                line: i + 1,
            };
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    obs.unreadable.push(format!("{name}:{}: {e}", at.line));
                    break;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let rec: DecisionRecord = match serde_json::from_str(&line) {
                Ok(r) => r,
                Err(e) => {
                    obs.unreadable.push(format!("{name}:{}: {e}", at.line));
                    continue;
                }
            };
            let kind = match classify(&rec, at, base, allowed_only) {
                Ok(k) => k,
                Err(e) => {
                    obs.unreadable.push(format!("{name}:{}: {e}", at.line));
                    continue;
                }
            };
            obs.records += 1;
            for id in [&rec.source, &rec.destination].into_iter().flatten() {
                if !obs.identities.contains(id) && exact_id(id) {
                    obs.identities.insert(id.clone());
                }
            }
            match kind {
                Kind::Learn(pair, l) => obs.conversations.entry(pair).or_default().push(l),
                Kind::Deny(key, s) => {
                    let from = key.0.clone();
                    let to = key.1.clone();
                    obs.denials
                        .entry(key)
                        .and_modify(|d| d.count += 1)
                        .or_insert_with(|| Denials {
                            count: 1,
                            base: base
                                .map(|b| base_decision(b, &s, from.as_deref(), to.as_deref())),
                            example: s,
                        });
                }
                Kind::BreakGlass(pair, at) => tally(&mut obs.break_glass, pair, at),
                Kind::Skip(why, at) => tally(&mut obs.skipped, why, at),
            }
        }
    }
    Ok(obs)
}

fn tally<K: Ord>(map: &mut BTreeMap<K, Tally>, key: K, at: LineRef) {
    map.entry(key)
        .and_modify(|t| t.count += 1)
        .or_insert(Tally {
            count: 1,
            first: at,
        });
}
