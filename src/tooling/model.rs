//! From a compiled [`Policy`] to the cubes of `space`: what each rule, break-glass entry and
//! SVID-lifetime requirement matches, plus concrete example requests for any cube.
//!
//! The model reads the policy only through `policy::view`, the same compiled rules `decide`
//! uses; schedules become time sets of the reference year (`timeline`). Every cube it builds is
//! charged to the analysis budget. This module never decides a request: example requests are
//! handed to `Policy::decide` by the callers.

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::budget::{self, Budget, OverBudget, Refused};
use super::space::{residual, Cube, LifeSet, Pat, Point, Tok, BG_ANY, BG_PRESENT, NOT_FORWARDED};
use super::timeline::TimeUniverse;
use crate::policy::view::{EndpointView, RuleView, Seg, SegmentView};
use crate::policy::{
    valid_break_glass_reason, Action, CertificateFacts, Decision, Pattern, PeerCertificate, Policy,
    Request,
};

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
            cubes_of(r, &segments, time, budget).map_err(|over| Refused::rule(r, over))
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
                    budget.keep(&c).map_err(|over| Refused::segment(s, over))?;
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

    /// A budget refusal naming an owner: where it is written, and what it is.
    pub(crate) fn refused(&self, o: Owner, over: OverBudget) -> Refused {
        match o {
            Owner::Lifetime(s) => self.refused_segment(s, over),
            _ => match self.rule_of(o) {
                Some(r) => Refused::rule(r, over),
                None => Refused {
                    at: String::new(),
                    what: String::new(),
                    over,
                },
            },
        }
    }

    /// A budget refusal naming segment `i` (its members or its `max_svid_lifetime`).
    pub(crate) fn refused_segment(&self, i: usize, over: OverBudget) -> Refused {
        match self.segments.get(i) {
            Some(s) => Refused::segment(s, over),
            None => Refused {
                at: String::new(),
                what: String::new(),
                over,
            },
        }
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
