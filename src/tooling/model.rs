//! From a compiled [`Policy`] to the cubes of `space`: what each rule, break-glass entry and
//! SVID-lifetime requirement matches, plus concrete example requests for any cube.
//!
//! The model reads the policy only through `policy::view`, the same compiled rules `decide`
//! uses. Schedules become sets of elementary intervals of a reference year (all of 2026 UTC):
//! the instants at which any schedule's window can open or close (its start, end and local
//! midnights, in every offset its zone uses, plus the zone's transitions) cut the year into
//! intervals on which every schedule is constant, and `Schedule::matches` itself labels each
//! interval. Emptiness and overlap of time sets are therefore exact over that year; membership of
//! a concrete instant always asks the schedule. This module never decides a request: example
//! requests are handed to `Policy::decide` by the callers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::tz::AmbiguousOffset;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::budget::{self, Budget, OverBudget, Refused};
use super::space::{
    residual, Cube, LifeSet, Pat, Point, TimeSet, Tok, BG_ANY, BG_PRESENT, NOT_FORWARDED,
};
use crate::policy::view::{EndpointView, RuleView, Schedule, Seg, SegmentView};
use crate::policy::{
    valid_break_glass_reason, Action, CertificateFacts, Decision, Pattern, PeerCertificate, Policy,
    Request,
};

/// Start of the reference year over which time sets are compared.
pub(crate) const REFERENCE_START: &str = "2026-01-01T00:00:00Z";
/// End (exclusive) of the reference year.
pub(crate) const REFERENCE_END: &str = "2027-01-01T00:00:00Z";

/// A compiled pattern as a set of the space.
pub(crate) fn pat_of(p: &Pattern) -> Pat {
    let segs: Vec<Tok> = p
        .segments()
        .iter()
        .map(|s| match s {
            Seg::Literal(l) => Tok::one(l),
            Seg::Any => Tok::any(),
        })
        .collect();
    let n = segs.len();
    let mut pat = Pat {
        td: p.trust_domain().map(Tok::one),
        segs,
        lo: n + usize::from(p.more()),
        hi: if p.more() { None } else { Some(n) },
    };
    while pat.segs.last().is_some_and(Tok::is_any) {
        pat.segs.pop();
    }
    pat
}

/// The destination coordinate of a request with no usable destination principal.
pub(crate) fn missing_destination() -> Pat {
    Pat {
        td: Some(Tok::one("")),
        segs: Vec::new(),
        lo: 0,
        hi: Some(0),
    }
}

/// Every real SPIFFE ID (any trust domain).
pub(crate) fn any_id() -> Pat {
    Pat::any(Some(Tok::AllBut(std::iter::once("".into()).collect())))
}

/// Every SPIFFE ID of one trust domain.
pub(crate) fn whole_trust_domain(td: &str) -> Pat {
    Pat::any(Some(Tok::one(td)))
}

/// The schedules of one or more policies, on a shared set of elementary intervals.
#[derive(Debug)]
pub(crate) struct TimeUniverse {
    starts: Vec<Timestamp>,
    schedules: Vec<Schedule>,
    keys: Vec<(u8, u16, u16, String)>,
    bits: Vec<Arc<[u64]>>,
}

fn key(s: &Schedule) -> (u8, u16, u16, String) {
    let (days, start, end, _, name) = s.parts();
    (days, start, end, name.to_string())
}

impl TimeUniverse {
    /// Collect every schedule of these policies and label the reference year's intervals.
    ///
    /// The cost grows with the distinct window boundaries per zone times the schedules; it is
    /// charged to `budget`, and the rule whose schedule pushed it over is named.
    pub(crate) fn new(policies: &[&Policy], budget: &Budget) -> Result<TimeUniverse, Refused> {
        let mut schedules: Vec<Schedule> = Vec::new();
        let mut keys: Vec<(u8, u16, u16, String)> = Vec::new();
        // Per schedule, the first rule that uses it (to name in a refusal).
        let mut sites: Vec<(String, String)> = Vec::new();
        for p in policies {
            for r in p.view_rules().chain(p.view_break_glass()) {
                if let Some(s) = r.schedule {
                    let k = key(s);
                    if !keys.contains(&k) {
                        keys.push(k);
                        schedules.push(s.clone());
                        sites.push((rule_site(&r), rule_what(&r)));
                    }
                }
            }
        }
        let refused = |i: usize, over: OverBudget| {
            let (at, what) = sites.get(i).cloned().unwrap_or_default();
            Refused { at, what, over }
        };
        let (y0, y1) = reference_year();
        let mut starts = vec![y0];
        // Per zone: the zone, the minutes of the day its windows turn at, and the last schedule
        // that added one (the one a refusal names).
        let mut by_zone: BTreeMap<String, (jiff::tz::TimeZone, Vec<u16>, usize)> = BTreeMap::new();
        for (i, s) in schedules.iter().enumerate() {
            let (_, start, end, tz, name) = s.parts();
            let entry = by_zone
                .entry(name.to_string())
                .or_insert_with(|| (tz.clone(), vec![0], i));
            for m in [start % 1440, end % 1440] {
                if !entry.1.contains(&m) {
                    entry.1.push(m);
                    entry.2 = i;
                }
            }
        }
        for (tz, minutes, culprit) in by_zone.values() {
            for t in tz.following(y0) {
                if t.timestamp() >= y1 {
                    break;
                }
                starts.push(t.timestamp());
            }
            let mut day = jiff::civil::date(2025, 12, 30);
            let last = jiff::civil::date(2027, 1, 2);
            while day <= last {
                budget
                    .work(budget::SCHEDULE_TEST * minutes.len() as u64)
                    .and_then(|()| budget.keep_bytes(32 * minutes.len() as u64))
                    .map_err(|over| refused(*culprit, over))?;
                for &m in minutes {
                    let dt = day.at((m / 60) as i8, (m % 60) as i8, 0, 0);
                    let offsets = match tz.to_ambiguous_timestamp(dt).offset() {
                        AmbiguousOffset::Unambiguous { offset } => vec![offset],
                        // A wall-clock time skipped by a transition: the window changes at the
                        // transition itself, which is already a boundary.
                        AmbiguousOffset::Gap { .. } => vec![],
                        AmbiguousOffset::Fold { before, after } => vec![before, after],
                    };
                    for o in offsets {
                        if let Ok(ts) = o.to_timestamp(dt) {
                            if ts >= y0 && ts < y1 {
                                starts.push(ts);
                            }
                        }
                    }
                }
                match day.tomorrow() {
                    Ok(d) => day = d,
                    Err(_) => break,
                }
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let words = starts.len().div_ceil(64);
        let mut bits = Vec::with_capacity(schedules.len());
        for (i, s) in schedules.iter().enumerate() {
            budget
                .work(budget::SCHEDULE_TEST * starts.len() as u64)
                .and_then(|()| budget.keep_bytes(8 * words as u64))
                .map_err(|over| refused(i, over))?;
            let mut b = vec![0u64; words];
            for (i, t) in starts.iter().enumerate() {
                if s.matches(*t) {
                    b[i / 64] |= 1 << (i % 64);
                }
            }
            bits.push(Arc::from(b));
        }
        Ok(TimeUniverse {
            starts,
            schedules,
            keys,
            bits,
        })
    }

    fn atom(&self, s: &Schedule) -> Option<usize> {
        let k = key(s);
        self.keys.iter().position(|x| *x == k)
    }

    /// The set of instants a schedule matches.
    pub(crate) fn set_of(&self, s: &Schedule) -> TimeSet {
        match self.atom(s) {
            Some(i) => TimeSet {
                bits: Some(self.bits[i].clone()),
                n: self.starts.len() as u32,
                atoms: Some(vec![i as u32]),
            },
            // Not collected (cannot happen for schedules of the policies given to `new`).
            None => TimeSet::any(),
        }
    }

    /// Whether schedule `atom` matches instant `t` (asks the schedule itself).
    pub(crate) fn matches(&self, atom: u32, t: Timestamp) -> bool {
        self.schedules
            .get(atom as usize)
            .is_some_and(|s| s.matches(t))
    }

    /// Description of schedule `atom`, as traces print it.
    pub(crate) fn describe(&self, atom: u32) -> String {
        self.schedules
            .get(atom as usize)
            .map(Schedule::describe)
            .unwrap_or_default()
    }

    /// The first instant of interval `i`.
    pub(crate) fn instant(&self, i: usize) -> Timestamp {
        self.starts
            .get(i)
            .copied()
            .unwrap_or_else(|| reference_year().0)
    }
}

fn reference_year() -> (Timestamp, Timestamp) {
    let parse = |s: &str| s.parse::<Timestamp>().unwrap_or(Timestamp::UNIX_EPOCH);
    (parse(REFERENCE_START), parse(REFERENCE_END))
}

/// Who a cube belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Owner {
    /// Index into `Model::rules`.
    Rule(usize),
    /// Index into `Model::break_glass`.
    BreakGlass(usize),
    /// The SVID-lifetime requirement of segment (index into `Model::segments`).
    Lifetime(usize),
}

/// One bundle as cubes.
#[derive(Debug)]
pub(crate) struct Model<'p> {
    pub(crate) policy: &'p Policy,
    pub(crate) segments: Vec<SegmentView<'p>>,
    pub(crate) rules: Vec<RuleView<'p>>,
    pub(crate) break_glass: Vec<RuleView<'p>>,
    pub(crate) trust_domains: Vec<&'p str>,
    pub(crate) break_glass_header: Option<&'p str>,
    /// Per rule, the cubes it matches.
    pub(crate) rule_cubes: Vec<Vec<Cube>>,
    /// Per break-glass entry, the cubes it matches (with a valid reason present).
    pub(crate) break_glass_cubes: Vec<Vec<Cube>>,
    /// Requests refused by a segment's `max_svid_lifetime`.
    pub(crate) lifetime_cubes: Vec<(usize, Cube)>,
}

impl<'p> Model<'p> {
    /// Every rule as cubes (the product of its sources, destinations and paths), each cube
    /// charged to `budget`; the rule that pushes it over is named.
    pub(crate) fn new(
        policy: &'p Policy,
        time: &TimeUniverse,
        budget: &Budget,
    ) -> Result<Model<'p>, Refused> {
        let segments = policy.view_segments();
        let rules: Vec<RuleView<'p>> = policy.view_rules().collect();
        let break_glass: Vec<RuleView<'p>> = policy.view_break_glass().collect();
        let build = |r: &RuleView<'_>| {
            cubes_of(r, &segments, time, budget).map_err(|over| Refused {
                at: rule_site(r),
                what: rule_what(r),
                over,
            })
        };
        let rule_cubes = rules.iter().map(build).collect::<Result<Vec<_>, _>>()?;
        let break_glass_cubes = break_glass
            .iter()
            .map(build)
            .collect::<Result<Vec<_>, _>>()?;
        let mut lifetime_cubes = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            if let Some(max) = s.max_svid_lifetime {
                for m in s.members {
                    let mut c = Cube::any();
                    c.src = pat_of(m);
                    c.life = LifeSet(vec![
                        (NOT_FORWARDED, NOT_FORWARDED),
                        (max.as_nanos() + 1, i128::MAX),
                    ]);
                    budget.keep(&c).map_err(|over| {
                        let (at, what) = segment_site(s);
                        Refused { at, what, over }
                    })?;
                    lifetime_cubes.push((i, c));
                }
            }
        }
        Ok(Model {
            policy,
            segments,
            rules,
            break_glass,
            trust_domains: policy.trust_domains().collect(),
            break_glass_header: policy.break_glass_header(),
            rule_cubes,
            break_glass_cubes,
            lifetime_cubes,
        })
    }

    /// Where an owner is written, and what it is, for a budget refusal.
    pub(crate) fn refused(&self, o: Owner, over: OverBudget) -> Refused {
        match o {
            Owner::Lifetime(s) => self.refused_segment(s, over),
            _ => {
                let (at, what) = self
                    .rule_of(o)
                    .map(|r| (rule_site(r), rule_what(r)))
                    .unwrap_or_default();
                Refused { at, what, over }
            }
        }
    }

    /// A budget refusal naming segment `i` (its members or its `max_svid_lifetime`).
    pub(crate) fn refused_segment(&self, i: usize, over: OverBudget) -> Refused {
        let (at, what) = self
            .segments
            .get(i)
            .map(|s| segment_site(s))
            .unwrap_or_default();
        Refused { at, what, over }
    }

    /// The rule or entry an owner names, if it is one.
    pub(crate) fn rule_of(&self, o: Owner) -> Option<&RuleView<'p>> {
        match o {
            Owner::Rule(i) => self.rules.get(i),
            Owner::BreakGlass(i) => self.break_glass.get(i),
            Owner::Lifetime(_) => None,
        }
    }

    /// A short name for an owner: the rule name, or `svid-lifetime(segment)`.
    pub(crate) fn owner_name(&self, o: Owner) -> String {
        match o {
            Owner::Lifetime(s) => format!(
                "max_svid_lifetime of segment {}",
                self.segments.get(s).map(|s| s.name).unwrap_or("?")
            ),
            _ => self
                .rule_of(o)
                .map(|r| r.name.to_string())
                .unwrap_or_default(),
        }
    }

    /// Every (owner, cube) that refuses requests regardless of allow rules: deny rules and
    /// SVID-lifetime requirements.
    pub(crate) fn refusals(&self) -> CubeSet<'_> {
        let mut set = CubeSet::default();
        for (i, r) in self.rules.iter().enumerate() {
            if r.action == Action::Deny {
                for c in &self.rule_cubes[i] {
                    set.push(c, Owner::Rule(i));
                }
            }
        }
        for (s, c) in &self.lifetime_cubes {
            set.push(c, Owner::Lifetime(*s));
        }
        set
    }

    /// Allow rules (and, with `break_glass`, break-glass entries) as one set.
    pub(crate) fn grants(&self, break_glass: bool) -> CubeSet<'_> {
        let mut set = CubeSet::default();
        for (i, r) in self.rules.iter().enumerate() {
            if r.action == Action::Allow {
                for c in &self.rule_cubes[i] {
                    set.push(c, Owner::Rule(i));
                }
            }
        }
        if break_glass {
            for (i, cubes) in self.break_glass_cubes.iter().enumerate() {
                for c in cubes {
                    set.push(c, Owner::BreakGlass(i));
                }
            }
        }
        set
    }

    /// Every (owner, cube) that grants: allow rules, then break-glass entries.
    pub(crate) fn granting(&self) -> Vec<(Owner, &Cube)> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if r.action == Action::Allow {
                out.extend(self.rule_cubes[i].iter().map(|c| (Owner::Rule(i), c)));
            }
        }
        for (i, cubes) in self.break_glass_cubes.iter().enumerate() {
            out.extend(cubes.iter().map(|c| (Owner::BreakGlass(i), c)));
        }
        out
    }

    /// The segments an ID pattern overlaps, and whether it reaches outside every segment.
    pub(crate) fn segments_touched(
        &self,
        p: &Pat,
        budget: &Budget,
    ) -> Result<(Vec<usize>, bool), OverBudget> {
        let mut touched = Vec::new();
        // `p` minus every member (and the "no destination" marker, which is no identity),
        // searched depth first for one piece left.
        let mut subtract = vec![id_cube(missing_destination())];
        for (i, s) in self.segments.iter().enumerate() {
            for m in s.members {
                let m = pat_of(m);
                budget.work(budget::TEST)?;
                if p.overlaps(&m) && !touched.contains(&i) {
                    touched.push(i);
                }
                subtract.push(id_cube(m));
            }
        }
        let refs: Vec<&Cube> = subtract.iter().collect();
        let outside = !residual(&id_cube(p.clone()), &refs, 1, budget)?.is_empty();
        Ok((touched, outside))
    }

    /// A concrete request inside `c`.
    pub(crate) fn example(&self, c: &Cube, time: &TimeUniverse) -> Example {
        example(c, time, &[self.break_glass_header])
    }
}

/// Every request whose source is in `p`.
fn id_cube(p: Pat) -> Cube {
    let mut c = Cube::any();
    c.src = p;
    c
}

/// `FILE:LINE:COL` of a rule.
fn rule_site(r: &RuleView<'_>) -> String {
    format!("{}:{}:{}", r.file, r.line, r.column)
}

/// `FILE:LINE:COL` of a segment's name, and the segment as a refusal names it.
fn segment_site(s: &SegmentView<'_>) -> (String, String) {
    (
        format!("{}:{}:{}", s.file, s.line, s.column),
        format!("segment `{}`", s.name),
    )
}

/// A rule or break-glass entry, as a refusal names it.
fn rule_what(r: &RuleView<'_>) -> String {
    if r.break_glass {
        format!("break-glass entry `{}`", r.name)
    } else {
        format!("rule `{}`", r.name)
    }
}

fn expand(list: &[EndpointView<'_>], segments: &[SegmentView<'_>]) -> Vec<Pat> {
    let mut out = Vec::new();
    for e in list {
        match e {
            EndpointView::Segment(i) => {
                if let Some(s) = segments.get(*i) {
                    out.extend(s.members.iter().map(pat_of));
                }
            }
            EndpointView::Pattern(p) => out.push(pat_of(p)),
        }
    }
    out.dedup();
    out
}

fn cubes_of(
    r: &RuleView<'_>,
    segments: &[SegmentView<'_>],
    time: &TimeUniverse,
    budget: &Budget,
) -> Result<Vec<Cube>, OverBudget> {
    let srcs = expand(&r.from, segments);
    let dsts = match &r.to {
        None => vec![missing_destination(), any_id()],
        Some(list) => expand(list, segments),
    };
    let paths: Vec<Pat> = match r.paths {
        None => vec![Pat::any(None)],
        Some(ps) => ps.iter().map(pat_of).collect(),
    };
    let mut proto = Cube::any();
    if let Some(m) = r.methods {
        proto.method = Tok::only(m.iter().map(|m| &**m));
    }
    if let Some(h) = r.hosts {
        proto.host = Tok::only(h.iter().map(|h| &**h));
    }
    if let Some(s) = r.schedule {
        proto.time = time.set_of(s);
    }
    for (name, values) in r.headers {
        let t = Tok::only(values.iter().map(|v| &**v));
        let merged = match proto.headers.get(name) {
            // The same header listed twice: both conditions must hold.
            Some(old) => old
                .intersect(&t)
                .unwrap_or_else(|| Tok::only(std::iter::empty())),
            None => t,
        };
        proto.headers.insert(name.clone(), merged);
    }
    proto.bg = if r.break_glass { BG_PRESENT } else { BG_ANY };
    let mut out = Vec::new();
    for s in &srcs {
        for d in &dsts {
            for p in &paths {
                let mut c = proto.clone();
                c.src = s.clone();
                c.dst = d.clone();
                c.path = p.clone();
                budget.keep(&c)?;
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// Cubes with their owners, indexed by literal destination so overlap queries stay cheap on
/// large bundles (most rules name one destination workload).
#[derive(Debug, Default)]
pub(crate) struct CubeSet<'a> {
    items: Vec<(&'a Cube, Owner)>,
    by_dst: HashMap<String, Vec<u32>>,
    wild: Vec<u32>,
}

impl<'a> CubeSet<'a> {
    pub(crate) fn push(&mut self, c: &'a Cube, o: Owner) {
        let i = self.items.len() as u32;
        self.items.push((c, o));
        match c.dst.literal_key() {
            Some(k) => self.by_dst.entry(k).or_default().push(i),
            None => self.wild.push(i),
        }
    }

    pub(crate) fn extend(&mut self, other: &CubeSet<'a>) {
        for (c, o) in &other.items {
            self.push(c, *o);
        }
    }

    /// The members overlapping `q`, in insertion order; each candidate tested is charged.
    pub(crate) fn overlapping(
        &self,
        q: &Cube,
        budget: &Budget,
    ) -> Result<Vec<(&'a Cube, Owner)>, OverBudget> {
        let mut idx: Vec<u32> = match q.dst.literal_key() {
            Some(k) => {
                let mut v = self.wild.clone();
                if let Some(b) = self.by_dst.get(&k) {
                    v.extend_from_slice(b);
                }
                v.sort_unstable();
                v
            }
            None => (0..self.items.len() as u32).collect(),
        };
        idx.dedup();
        budget.work(budget::TEST * idx.len() as u64)?;
        Ok(idx
            .into_iter()
            .map(|i| self.items[i as usize])
            .filter(|(c, _)| c.overlaps(q))
            .collect())
    }

    /// Like [`CubeSet::overlapping`], keeping only owners `keep` accepts.
    pub(crate) fn overlapping_where(
        &self,
        q: &Cube,
        keep: impl Fn(Owner) -> bool,
        budget: &Budget,
    ) -> Result<Vec<(&'a Cube, Owner)>, OverBudget> {
        Ok(self
            .overlapping(q, budget)?
            .into_iter()
            .filter(|(_, o)| keep(*o))
            .collect())
    }
}

/// A concrete request, as `wardgate check` would take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Example {
    pub(crate) from: String,
    pub(crate) to: Option<String>,
    pub(crate) method: String,
    pub(crate) path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) host: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) at: String,
    /// A forwarded certificate valid this long (seconds), or none forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cert_lifetime_secs: Option<i64>,
    #[serde(skip)]
    time: Timestamp,
    /// Whether the instant matters (the set has a schedule); `describe` omits it otherwise.
    #[serde(skip)]
    timed: bool,
    #[serde(skip)]
    cert_lifetime: Option<SignedDuration>,
}

fn id_text(td: Option<String>, segs: &[String]) -> String {
    let mut s = format!("spiffe://{}", td.unwrap_or_default());
    for x in segs {
        s.push('/');
        s.push_str(x);
    }
    s
}

/// A concrete request inside `c`. `break_glass_headers`: where to put a reason when the cube
/// requires one (every bundle involved, for diffs between bundles naming different headers).
pub(crate) fn example(
    c: &Cube,
    time: &TimeUniverse,
    break_glass_headers: &[Option<&str>],
) -> Example {
    let (td, segs) = c.src.witness();
    let from = id_text(td, &segs);
    let to = if c.dst.contains(Some(""), &[]) {
        None
    } else {
        let (td, segs) = c.dst.witness();
        Some(id_text(td, &segs))
    };
    let (_, psegs) = c.path.witness();
    let path = if psegs.is_empty() {
        "/".to_string()
    } else {
        psegs.iter().map(|s| format!("/{s}")).collect()
    };
    let mut headers = BTreeMap::new();
    for (k, v) in &c.headers {
        let value = v.witness(|i| format!("w{i}"));
        if value != super::space::MISSING {
            headers.insert(k.to_string(), value);
        }
    }
    if c.bg == BG_PRESENT {
        for h in break_glass_headers.iter().flatten() {
            headers.insert(h.to_string(), "analysis example".to_string());
        }
    }
    let at = time.instant(c.time.first());
    let cert_lifetime = match c.life.0.first() {
        None => None,
        Some((a, _)) if *a == NOT_FORWARDED => None,
        Some((a, b)) => {
            let five_min = 300_000_000_000i128;
            let nanos = five_min.clamp(*a, *b);
            Some(SignedDuration::new(
                (nanos / 1_000_000_000) as i64,
                (nanos % 1_000_000_000) as i32,
            ))
        }
    };
    Example {
        from,
        to,
        method: c.method.witness(|i| match i {
            0 => "GET".to_string(),
            1 => "POST".to_string(),
            _ => format!("W{i}"),
        }),
        path,
        host: c.host.witness(|i| {
            if i == 0 {
                String::new()
            } else {
                format!("w{i}.invalid")
            }
        }),
        headers,
        at: at.to_string(),
        cert_lifetime_secs: cert_lifetime.map(|d| d.as_secs()),
        time: at,
        timed: !c.time.is_any(),
        cert_lifetime,
    }
}

impl Example {
    /// Ask the engine about this request.
    pub(crate) fn decide<'p>(&self, policy: &'p Policy) -> Decision<'p> {
        self.with_request(|req| policy.decide(req))
    }

    /// Run `f` on this request as `decide` takes it.
    pub(crate) fn with_request<T>(&self, f: impl FnOnce(&Request<'_>) -> T) -> T {
        let headers: HashMap<String, String> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let facts = self
            .cert_lifetime
            .map(|life| CertificateFacts::simulated(&self.from, self.time, life));
        let mut req = Request::new(&self.method, &self.path);
        req.source = Some(&self.from);
        req.destination = self.to.as_deref();
        req.host = &self.host;
        req.headers = &headers;
        req.time = self.time;
        if let Some(fa) = &facts {
            req.peer_certificate = PeerCertificate::Parsed(fa);
        }
        f(&req)
    }

    /// One line, as a reader would type it into `wardgate check`.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "{} {} from {} to {}",
            self.method,
            self.path,
            self.from,
            self.to.as_deref().unwrap_or("(no destination)")
        );
        if !self.host.is_empty() {
            s.push_str(&format!(" host {}", self.host));
        }
        for (k, v) in &self.headers {
            s.push_str(&format!(" {k}={v}"));
        }
        if let Some(l) = self.cert_lifetime {
            s.push_str(&format!(" cert {l:#}"));
        }
        if self.timed {
            s.push_str(&format!(" at {}", self.at));
        }
        s
    }
}

/// The point a concrete request is, as the engine sees it after its preconditions, or `None`
/// when a precondition refuses it (source not a SPIFFE ID in the trust domains, path not
/// normalisable, certificate unreadable). Runs `f` on it.
pub(crate) fn with_point<T>(
    req: &Request<'_>,
    trust_domains: &[&str],
    break_glass_header: Option<&str>,
    f: impl FnOnce(&Point<'_>) -> T,
) -> Option<T> {
    let source = crate::identity::parse_spiffe_id(req.source?).ok()?;
    if !trust_domains.contains(&source.trust_domain_name()) {
        return None;
    }
    let dest = req
        .destination
        .filter(|d| !d.is_empty())
        .and_then(|d| crate::identity::parse_spiffe_id(d).ok())
        .filter(|d| trust_domains.contains(&d.trust_domain_name()));
    let path = crate::policy::normalize::path(req.path).ok()?;
    let life = match req.peer_certificate {
        PeerCertificate::NotForwarded => NOT_FORWARDED,
        PeerCertificate::Unreadable(_) => return None,
        PeerCertificate::Parsed(c) => c.not_after.duration_since(c.not_before).as_nanos(),
    };
    let segs = |p: &'_ str| -> Vec<String> {
        p.strip_prefix('/')
            .unwrap_or(p)
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let src_segs = segs(source.path());
    let dst_segs = dest.as_ref().map(|d| segs(d.path()));
    let path_segs = segs(&path);
    let lookup = |name: &str| req.headers.header(name).map(str::to_string);
    let point = Point {
        src: (
            source.trust_domain_name(),
            src_segs.iter().map(String::as_str).collect(),
        ),
        dst: dest.as_ref().zip(dst_segs.as_ref()).map(|(d, s)| {
            (
                d.trust_domain_name(),
                s.iter().map(String::as_str).collect(),
            )
        }),
        method: req.method.to_ascii_uppercase(),
        path: path_segs.iter().map(String::as_str).collect(),
        host: crate::policy::normalize::host(req.host).to_ascii_lowercase(),
        time: req.time,
        life,
        headers: &lookup,
        bg: break_glass_header
            .and_then(|h| req.headers.header(h))
            .is_some_and(valid_break_glass_reason),
    };
    Some(f(&point))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONED: &str = r#"
version: 1
revision: 1
trust_domains: [td.example]
rules:
  - name: berlin
    from: ["spiffe://td.example/**"]
    when: {schedule: {days: [mon, wed, sun], hours: "22:00-06:00", timezone: Europe/Berlin}}
  - name: new-york
    from: ["spiffe://td.example/**"]
    when: {schedule: {days: [sun], hours: "01:30-02:30", timezone: America/New_York}}
  - name: kolkata
    from: ["spiffe://td.example/**"]
    when: {schedule: {hours: "09:07-17:53", timezone: Asia/Kolkata}}
  - name: lord-howe
    from: ["spiffe://td.example/**"]
    when: {schedule: {days: [sat, sun], hours: "01:45-02:15", timezone: Australia/Lord_Howe}}
  - name: utc
    from: ["spiffe://td.example/**"]
    when: {schedule: {days: [fri], hours: "23:59-24:00"}}
"#;

    /// The elementary intervals are complete: every schedule is constant on each, so the bits
    /// agree with `Schedule::matches` at every minute of the reference year (schedules and
    /// zone offsets are whole minutes), through every DST change of five zones.
    #[test]
    fn interval_bits_agree_with_matches_every_minute() {
        let policy = Policy::from_yaml_str("zoned.yaml", ZONED).expect("bundle");
        let time = TimeUniverse::new(&[&policy], &Budget::unlimited()).expect("budget");
        let (y0, y1) = reference_year();
        let mut t = y0;
        let mut i = 0usize;
        while t < y1 {
            while i + 1 < time.starts.len() && time.starts[i + 1] <= t {
                i += 1;
            }
            for (k, s) in time.schedules.iter().enumerate() {
                let bit = time.bits[k][i / 64] >> (i % 64) & 1 == 1;
                assert_eq!(bit, s.matches(t), "schedule {} at {t}", s.describe());
            }
            t += SignedDuration::from_mins(1);
        }
    }
}
