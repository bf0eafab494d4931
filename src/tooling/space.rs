//! Exact set algebra over the request space: the sets a rule matches, as products ("cubes").
//!
//! A request, as `decide` sees it after its preconditions, is a point with these coordinates:
//! source ID, destination ID (or none), method, normalised path, host, instant, forwarded
//! certificate lifetime (or none), the values of the headers rules look at, and whether a valid
//! break-glass reason was sent. Every rule matches a finite union of [`Cube`]s: one set per
//! coordinate. Each coordinate's sets are closed under intersection and difference, so the
//! difference of a cube and a union of cubes is again a finite union of cubes, and
//! [`residual`] computes it exactly (or proves it empty). Everything the tooling claims
//! (who can reach what, which rules never decide, what a change grants) reduces to that.
//!
//! This module knows nothing of bundles or policies; `model` builds cubes from a compiled
//! policy. It must never approximate: a set that cannot be represented exactly is a bug here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use super::budget::{self, Budget, OverBudget};

/// The token standing for "header not sent" in header-value sets (no real value contains NUL).
pub(crate) const MISSING: &str = "\u{0}";

/// A set of tokens: methods, hosts, header values, trust domains, one segment of an ID or path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Tok {
    /// Exactly these tokens (never empty).
    Only(BTreeSet<Box<str>>),
    /// Every token except these.
    AllBut(BTreeSet<Box<str>>),
}

impl Tok {
    pub(crate) fn any() -> Tok {
        Tok::AllBut(BTreeSet::new())
    }

    pub(crate) fn one(t: &str) -> Tok {
        Tok::Only(std::iter::once(t.into()).collect())
    }

    pub(crate) fn only<'a>(ts: impl IntoIterator<Item = &'a str>) -> Tok {
        Tok::Only(ts.into_iter().map(Into::into).collect())
    }

    pub(crate) fn is_any(&self) -> bool {
        matches!(self, Tok::AllBut(e) if e.is_empty())
    }

    /// The single literal, if this set is one.
    pub(crate) fn literal(&self) -> Option<&str> {
        match self {
            Tok::Only(s) if s.len() == 1 => s.iter().next().map(|t| &**t),
            _ => None,
        }
    }

    pub(crate) fn contains(&self, t: &str) -> bool {
        match self {
            Tok::Only(s) => s.contains(t),
            Tok::AllBut(e) => !e.contains(t),
        }
    }

    fn nonempty(set: BTreeSet<Box<str>>) -> Option<Tok> {
        (!set.is_empty()).then_some(Tok::Only(set))
    }

    pub(crate) fn intersect(&self, o: &Tok) -> Option<Tok> {
        match (self, o) {
            (Tok::Only(a), Tok::Only(b)) => Tok::nonempty(a.intersection(b).cloned().collect()),
            (Tok::Only(a), Tok::AllBut(e)) | (Tok::AllBut(e), Tok::Only(a)) => {
                Tok::nonempty(a.difference(e).cloned().collect())
            }
            (Tok::AllBut(e), Tok::AllBut(f)) => Some(Tok::AllBut(e.union(f).cloned().collect())),
        }
    }

    /// `self \ o`, or `None` when empty. Token sets are closed under difference.
    pub(crate) fn minus(&self, o: &Tok) -> Option<Tok> {
        match (self, o) {
            (Tok::Only(a), Tok::Only(b)) => Tok::nonempty(a.difference(b).cloned().collect()),
            (Tok::Only(a), Tok::AllBut(f)) => Tok::nonempty(a.intersection(f).cloned().collect()),
            (Tok::AllBut(e), Tok::Only(b)) => Some(Tok::AllBut(e.union(b).cloned().collect())),
            (Tok::AllBut(e), Tok::AllBut(f)) => Tok::nonempty(f.difference(e).cloned().collect()),
        }
    }

    pub(crate) fn subset(&self, o: &Tok) -> bool {
        match (self, o) {
            (Tok::Only(a), Tok::Only(b)) => a.is_subset(b),
            (Tok::Only(a), Tok::AllBut(f)) => a.is_disjoint(f),
            (Tok::AllBut(_), Tok::Only(_)) => false,
            (Tok::AllBut(e), Tok::AllBut(f)) => f.is_subset(e),
        }
    }

    /// Whether the two sets share a token (no allocation).
    pub(crate) fn overlaps(&self, o: &Tok) -> bool {
        match (self, o) {
            (Tok::Only(a), Tok::Only(b)) => {
                let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
                small.iter().any(|t| large.contains(t))
            }
            (Tok::Only(a), Tok::AllBut(e)) | (Tok::AllBut(e), Tok::Only(a)) => {
                a.iter().any(|t| !e.contains(t))
            }
            (Tok::AllBut(_), Tok::AllBut(_)) => true,
        }
    }

    /// One member; `fresh(i)` proposes tokens for the "every token except" case.
    pub(crate) fn witness(&self, fresh: impl Fn(usize) -> String) -> String {
        match self {
            Tok::Only(s) => s.iter().next().map(|t| t.to_string()).unwrap_or_default(),
            Tok::AllBut(e) => (0..)
                .map(fresh)
                .find(|t| !e.contains(t.as_str()))
                .unwrap_or_default(),
        }
    }
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |s: &BTreeSet<Box<str>>| s.iter().map(|t| &**t).collect::<Vec<_>>().join("|");
        match self {
            Tok::Only(s) if s.len() == 1 => f.write_str(&join(s)),
            Tok::Only(s) => write!(f, "{{{}}}", join(s)),
            Tok::AllBut(e) if e.is_empty() => f.write_str("*"),
            Tok::AllBut(e) => write!(f, "*!{{{}}}", join(e)),
        }
    }
}

/// A set of SPIFFE IDs (with a trust domain) or normalised paths (without): per-position
/// segment sets for the first `segs.len()` positions (later positions: any segment), and the
/// allowed number of segments `lo..=hi`. Invariant: `segs.len() <= lo <= hi`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Pat {
    pub(crate) td: Option<Tok>,
    pub(crate) segs: Vec<Tok>,
    pub(crate) lo: usize,
    /// `None`: unbounded.
    pub(crate) hi: Option<usize>,
}

fn seg_at(segs: &[Tok], i: usize) -> Option<&Tok> {
    segs.get(i)
}

fn tok_intersect(a: Option<&Tok>, b: Option<&Tok>) -> Option<Option<Tok>> {
    // Outer None: empty. Inner None: any.
    match (a, b) {
        (None, None) => Some(None),
        (Some(x), None) | (None, Some(x)) => Some(Some(x.clone())),
        (Some(x), Some(y)) => x.intersect(y).map(Some),
    }
}

impl Pat {
    /// Every path (or, with a trust domain set, every ID of those domains).
    pub(crate) fn any(td: Option<Tok>) -> Pat {
        Pat {
            td,
            segs: Vec::new(),
            lo: 0,
            hi: None,
        }
    }

    fn trim(mut self) -> Pat {
        while self.segs.last().is_some_and(Tok::is_any) {
            self.segs.pop();
        }
        self
    }

    /// Whether this is one concrete ID or path; returns its canonical text key.
    pub(crate) fn literal_key(&self) -> Option<String> {
        if self.hi != Some(self.lo) || self.segs.len() != self.lo {
            return None;
        }
        let mut out = String::new();
        if let Some(td) = &self.td {
            out.push_str(td.literal()?);
        }
        for s in &self.segs {
            out.push('/');
            out.push_str(s.literal()?);
        }
        Some(out)
    }

    pub(crate) fn contains(&self, td: Option<&str>, segs: &[&str]) -> bool {
        let td_ok = match (&self.td, td) {
            (None, None) => true,
            (Some(t), Some(x)) => t.contains(x),
            _ => false,
        };
        td_ok
            && segs.len() >= self.lo
            && self.hi.is_none_or(|h| segs.len() <= h)
            && self.segs.iter().zip(segs).all(|(t, s)| t.contains(s))
    }

    pub(crate) fn intersect(&self, o: &Pat) -> Option<Pat> {
        let td = match (&self.td, &o.td) {
            (None, None) => None,
            (Some(a), Some(b)) => Some(a.intersect(b)?),
            _ => return None,
        };
        let lo = self.lo.max(o.lo);
        let hi = match (self.hi, o.hi) {
            (None, h) | (h, None) => h,
            (Some(a), Some(b)) => Some(a.min(b)),
        };
        if hi.is_some_and(|h| h < lo) {
            return None;
        }
        let n = self.segs.len().max(o.segs.len());
        let mut segs = Vec::with_capacity(n);
        for i in 0..n {
            match tok_intersect(seg_at(&self.segs, i), seg_at(&o.segs, i))? {
                Some(t) => segs.push(t),
                None => segs.push(Tok::any()),
            }
        }
        Some(Pat { td, segs, lo, hi }.trim())
    }

    /// Whether the two sets share a member (no allocation).
    pub(crate) fn overlaps(&self, o: &Pat) -> bool {
        let td_ok = match (&self.td, &o.td) {
            (None, None) => true,
            (Some(a), Some(b)) => a.overlaps(b),
            _ => false,
        };
        let lo = self.lo.max(o.lo);
        let len_ok = match (self.hi, o.hi) {
            (None, None) => true,
            (Some(h), None) | (None, Some(h)) => h >= lo,
            (Some(a), Some(b)) => a.min(b) >= lo,
        };
        td_ok
            && len_ok
            && self
                .segs
                .iter()
                .zip(o.segs.iter())
                .all(|(a, b)| a.overlaps(b))
    }

    pub(crate) fn subset(&self, o: &Pat) -> bool {
        let td_ok = match (&self.td, &o.td) {
            (None, None) => true,
            (Some(a), Some(b)) => a.subset(b),
            _ => false,
        };
        let len_ok = self.lo >= o.lo
            && match (self.hi, o.hi) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(b)) => a <= b,
            };
        td_ok
            && len_ok
            && (0..self.segs.len().max(o.segs.len())).all(|i| {
                match (seg_at(&self.segs, i), seg_at(&o.segs, i)) {
                    (_, None) => true,
                    (None, Some(b)) => b.is_any(),
                    (Some(a), Some(b)) => a.subset(b),
                }
            })
    }

    /// `self \ o` as disjoint pieces.
    pub(crate) fn minus(&self, o: &Pat) -> Vec<Pat> {
        if !self.overlaps(o) {
            return vec![self.clone()];
        }
        let mut out = Vec::new();
        let mut cur = self.clone();
        if let (Some(a), Some(b)) = (&self.td, &o.td) {
            if let Some(d) = a.minus(b) {
                out.push(Pat {
                    td: Some(d),
                    ..cur.clone()
                });
            }
            cur.td = a.intersect(b);
        }
        if cur.lo < o.lo {
            out.push(Pat {
                hi: Some(o.lo - 1),
                ..cur.clone()
            });
            cur.lo = o.lo;
        }
        if let Some(oh) = o.hi {
            if cur.hi.is_none_or(|h| h > oh) {
                out.push(Pat {
                    lo: oh + 1,
                    ..cur.clone()
                });
                cur.hi = Some(oh);
            }
        }
        let n = cur.segs.len().max(o.segs.len());
        cur.segs.resize(n, Tok::any());
        for i in 0..n {
            let Some(b) = seg_at(&o.segs, i) else {
                continue;
            };
            if let Some(d) = cur.segs[i].minus(b) {
                let mut piece = cur.clone();
                piece.segs[i] = d;
                out.push(piece.trim());
            }
            match cur.segs[i].intersect(b) {
                Some(t) => cur.segs[i] = t,
                None => break, // cannot happen: the two overlap
            }
        }
        out
    }

    /// One member: (trust domain, segments).
    pub(crate) fn witness(&self) -> (Option<String>, Vec<String>) {
        let td = self
            .td
            .as_ref()
            .map(|t| t.witness(|i| format!("w{i}.example")));
        let segs = (0..self.lo)
            .map(|i| match self.segs.get(i) {
                Some(t) => t.witness(|i| format!("w{i}")),
                None => "w0".to_string(),
            })
            .collect();
        (td, segs)
    }

    /// Whether this is the "missing destination" marker (see `model::missing_destination`).
    pub(crate) fn is_missing_marker(&self) -> bool {
        self.td.as_ref().and_then(Tok::literal) == Some("") && self.hi == Some(0)
    }
}

impl fmt::Display for Pat {
    /// Pattern syntax where the set is a plain pattern (`spiffe://td/a/*`, `/a/**`); other
    /// sets (residual pieces) use `*!{a|b}` for "any segment but" and `{a|b}` for alternatives.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_missing_marker() {
            return f.write_str("(no destination)");
        }
        let mut segs: Vec<String> = self.segs.iter().map(|t| t.to_string()).collect();
        while segs.len() < self.lo {
            segs.push("*".into());
        }
        let join = |segs: &[String]| -> String {
            segs.iter().map(|s| format!("/{s}")).collect::<String>()
        };
        let prefix = match &self.td {
            Some(td) => format!("spiffe://{td}"),
            None => String::new(),
        };
        let body = match self.hi {
            Some(h) if h == self.lo => {
                let b = join(&segs);
                if b.is_empty() && self.td.is_none() {
                    "/".to_string()
                } else {
                    b
                }
            }
            Some(h) => format!("{} (up to {h} segments)", join(&segs)),
            None if self.lo == 0 => {
                // Zero or more segments: the root and everything below.
                return if self.td.is_some() {
                    write!(f, "{prefix} + {prefix}/**")
                } else {
                    f.write_str("/ + /**")
                };
            }
            None if segs.last().is_some_and(|s| s == "*") && self.segs.len() < self.lo => {
                format!("{}/**", join(&segs[..segs.len() - 1]))
            }
            None => {
                let b = join(&segs);
                return write!(f, "{prefix}{b} + {prefix}{b}/**");
            }
        };
        write!(f, "{prefix}{body}")
    }
}

/// A set of instants: bits over the elementary intervals of the reference year (see
/// `timeline::TimeUniverse`), plus, for sets that are intersections of schedules, those schedules
/// (so a concrete instant outside the reference year can still be tested).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TimeSet {
    /// `None`: every instant.
    pub(crate) bits: Option<Arc<[u64]>>,
    /// Number of intervals in the universe.
    pub(crate) n: u32,
    /// Indexes of the universe's schedules whose conjunction this is; `None` after a
    /// difference (then only `bits` describes the set).
    pub(crate) atoms: Option<Vec<u32>>,
}

impl TimeSet {
    pub(crate) fn any() -> TimeSet {
        TimeSet {
            bits: None,
            n: 0,
            atoms: Some(Vec::new()),
        }
    }

    fn nonempty(bits: Vec<u64>, n: u32, atoms: Option<Vec<u32>>) -> Option<TimeSet> {
        bits.iter().any(|w| *w != 0).then(|| TimeSet {
            bits: Some(bits.into()),
            n,
            atoms,
        })
    }

    pub(crate) fn is_any(&self) -> bool {
        self.bits.is_none()
    }

    pub(crate) fn intersect(&self, o: &TimeSet) -> Option<TimeSet> {
        let atoms = match (&self.atoms, &o.atoms) {
            (Some(a), Some(b)) => {
                let mut v: Vec<u32> = a.iter().chain(b).copied().collect();
                v.sort_unstable();
                v.dedup();
                Some(v)
            }
            _ => None,
        };
        match (&self.bits, &o.bits) {
            (None, None) => Some(TimeSet {
                bits: None,
                n: 0,
                atoms,
            }),
            (Some(b), None) | (None, Some(b)) => Some(TimeSet {
                bits: Some(b.clone()),
                n: self.n.max(o.n),
                atoms,
            }),
            (Some(a), Some(b)) => TimeSet::nonempty(
                a.iter().zip(b.iter()).map(|(x, y)| x & y).collect(),
                self.n,
                atoms,
            ),
        }
    }

    pub(crate) fn minus(&self, o: &TimeSet) -> Option<TimeSet> {
        let Some(ob) = &o.bits else {
            return None;
        };
        let n = o.n;
        let full = |i: usize| -> u64 {
            let start = i as u64 * 64;
            let end = (start + 64).min(n as u64);
            if end <= start {
                0
            } else if end - start == 64 {
                u64::MAX
            } else {
                (1u64 << (end - start)) - 1
            }
        };
        let bits: Vec<u64> = match &self.bits {
            None => ob.iter().enumerate().map(|(i, w)| full(i) & !w).collect(),
            Some(a) => a.iter().zip(ob.iter()).map(|(x, y)| x & !y).collect(),
        };
        TimeSet::nonempty(bits, n, None)
    }

    pub(crate) fn subset(&self, o: &TimeSet) -> bool {
        match (&self.bits, &o.bits) {
            (_, None) => true,
            (None, Some(_)) => self.minus(o).is_none(),
            (Some(a), Some(b)) => a.iter().zip(b.iter()).all(|(x, y)| x & !y == 0),
        }
    }

    /// Whether the two sets share an instant (no allocation).
    pub(crate) fn overlaps(&self, o: &TimeSet) -> bool {
        match (&self.bits, &o.bits) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => a.iter().zip(b.iter()).any(|(x, y)| x & y != 0),
        }
    }

    /// Index of the first interval in the set (0 when the set is every instant).
    pub(crate) fn first(&self) -> usize {
        match &self.bits {
            None => 0,
            Some(b) => b
                .iter()
                .enumerate()
                .find(|(_, w)| **w != 0)
                .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
                .unwrap_or(0),
        }
    }
}

/// Forwarded-certificate lifetime in nanoseconds; [`NOT_FORWARDED`] when none was forwarded.
pub(crate) const NOT_FORWARDED: i128 = -1;

/// A set of certificate lifetimes: sorted, disjoint, inclusive intervals over
/// `NOT_FORWARDED..=i128::MAX`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LifeSet(pub(crate) Vec<(i128, i128)>);

impl LifeSet {
    pub(crate) fn any() -> LifeSet {
        LifeSet(vec![(NOT_FORWARDED, i128::MAX)])
    }

    pub(crate) fn is_any(&self) -> bool {
        *self == LifeSet::any()
    }

    fn nonempty(v: Vec<(i128, i128)>) -> Option<LifeSet> {
        (!v.is_empty()).then_some(LifeSet(v))
    }

    pub(crate) fn contains(&self, x: i128) -> bool {
        self.0.iter().any(|(a, b)| *a <= x && x <= *b)
    }

    pub(crate) fn intersect(&self, o: &LifeSet) -> Option<LifeSet> {
        let mut out = Vec::new();
        for (a, b) in &self.0 {
            for (c, d) in &o.0 {
                let (lo, hi) = ((*a).max(*c), (*b).min(*d));
                if lo <= hi {
                    out.push((lo, hi));
                }
            }
        }
        out.sort_unstable();
        LifeSet::nonempty(out)
    }

    pub(crate) fn minus(&self, o: &LifeSet) -> Option<LifeSet> {
        let mut cur = self.0.clone();
        for (c, d) in &o.0 {
            let mut next = Vec::new();
            for (a, b) in cur {
                if *d < a || b < *c {
                    next.push((a, b));
                    continue;
                }
                if a < *c {
                    next.push((a, c - 1));
                }
                if *d < b {
                    next.push((d + 1, b));
                }
            }
            cur = next;
        }
        LifeSet::nonempty(cur)
    }

    pub(crate) fn subset(&self, o: &LifeSet) -> bool {
        self.0
            .iter()
            .all(|(a, b)| o.0.iter().any(|(c, d)| c <= a && b <= d))
            || self.minus(o).is_none()
    }

    /// Whether the two sets share a lifetime (no allocation).
    pub(crate) fn overlaps(&self, o: &LifeSet) -> bool {
        self.0
            .iter()
            .any(|(a, b)| o.0.iter().any(|(c, d)| a.max(c) <= b.min(d)))
    }
}

/// Whether a valid break-glass reason is present: bit 0 = present, bit 1 = absent.
pub(crate) const BG_PRESENT: u8 = 1;
/// See [`BG_PRESENT`].
pub(crate) const BG_ABSENT: u8 = 2;
/// Either.
pub(crate) const BG_ANY: u8 = 3;

/// One product set of requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Cube {
    pub(crate) src: Pat,
    pub(crate) dst: Pat,
    /// Upper-case methods.
    pub(crate) method: Tok,
    pub(crate) path: Pat,
    /// Lower-case hosts without port.
    pub(crate) host: Tok,
    pub(crate) time: TimeSet,
    pub(crate) life: LifeSet,
    /// Lower-case header name -> allowed values (with [`MISSING`] for "not sent"); absent = any.
    pub(crate) headers: BTreeMap<Box<str>, Tok>,
    pub(crate) bg: u8,
}

/// A concrete request as a point of the space.
pub(crate) struct Point<'a> {
    pub(crate) src: (&'a str, Vec<&'a str>),
    /// `None`: no usable destination.
    pub(crate) dst: Option<(&'a str, Vec<&'a str>)>,
    pub(crate) method: String,
    pub(crate) path: Vec<&'a str>,
    pub(crate) host: String,
    pub(crate) time: jiff::Timestamp,
    pub(crate) life: i128,
    pub(crate) headers: &'a dyn Fn(&str) -> Option<String>,
    pub(crate) bg: bool,
}

impl fmt::Debug for Point<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Point")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("time", &self.time)
            .field("life", &self.life)
            .field("bg", &self.bg)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dim<'a> {
    Src,
    Dst,
    Method,
    Path,
    Host,
    Time,
    Life,
    Bg,
    Header(&'a str),
}

impl Cube {
    /// Every request (the identity dimensions span every trust domain).
    pub(crate) fn any() -> Cube {
        Cube {
            src: Pat::any(Some(Tok::any())),
            dst: Pat::any(Some(Tok::any())),
            method: Tok::any(),
            path: Pat::any(None),
            host: Tok::any(),
            time: TimeSet::any(),
            life: LifeSet::any(),
            headers: BTreeMap::new(),
            bg: BG_ANY,
        }
    }

    pub(crate) fn intersect(&self, o: &Cube) -> Option<Cube> {
        let bg = self.bg & o.bg;
        if bg == 0 {
            return None;
        }
        let mut headers = self.headers.clone();
        for (k, v) in &o.headers {
            let merged = match headers.get(k) {
                Some(mine) => mine.intersect(v)?,
                None => v.clone(),
            };
            headers.insert(k.clone(), merged);
        }
        Some(Cube {
            method: self.method.intersect(&o.method)?,
            host: self.host.intersect(&o.host)?,
            src: self.src.intersect(&o.src)?,
            dst: self.dst.intersect(&o.dst)?,
            path: self.path.intersect(&o.path)?,
            life: self.life.intersect(&o.life)?,
            time: self.time.intersect(&o.time)?,
            headers,
            bg,
        })
    }

    /// Cheap overlap test (no allocation in the common disjoint case).
    pub(crate) fn overlaps(&self, o: &Cube) -> bool {
        self.bg & o.bg != 0
            && self.method.overlaps(&o.method)
            && self.host.overlaps(&o.host)
            && self.dst.overlaps(&o.dst)
            && self.src.overlaps(&o.src)
            && self.path.overlaps(&o.path)
            && self.life.overlaps(&o.life)
            && o.headers
                .iter()
                .all(|(k, v)| self.headers.get(k).is_none_or(|mine| mine.overlaps(v)))
            && self.time.overlaps(&o.time)
    }

    pub(crate) fn subset(&self, o: &Cube) -> bool {
        self.first_wider_dim(o).is_none()
    }

    /// The first dimension where `self` is not inside `o`.
    fn first_wider_dim<'a>(&self, o: &'a Cube) -> Option<Dim<'a>> {
        if self.bg & !o.bg != 0 {
            return Some(Dim::Bg);
        }
        if !self.method.subset(&o.method) {
            return Some(Dim::Method);
        }
        if !self.host.subset(&o.host) {
            return Some(Dim::Host);
        }
        if !self.dst.subset(&o.dst) {
            return Some(Dim::Dst);
        }
        if !self.src.subset(&o.src) {
            return Some(Dim::Src);
        }
        if !self.path.subset(&o.path) {
            return Some(Dim::Path);
        }
        if !self.life.subset(&o.life) {
            return Some(Dim::Life);
        }
        for (k, v) in &o.headers {
            let inside = match self.headers.get(k) {
                Some(mine) => mine.subset(v),
                None => v.is_any(),
            };
            if !inside {
                return Some(Dim::Header(k));
            }
        }
        if !self.time.subset(&o.time) {
            return Some(Dim::Time);
        }
        None
    }

    /// Split `self` into disjoint pieces, each either inside `o` or disjoint from it along the
    /// first dimension where `self` is wider than `o`. `self` must overlap `o`.
    fn split(&self, o: &Cube) -> Vec<Cube> {
        let Some(dim) = self.first_wider_dim(o) else {
            return vec![self.clone()];
        };
        let mut out = Vec::new();
        let with = |f: &dyn Fn(&mut Cube)| {
            let mut c = self.clone();
            f(&mut c);
            c
        };
        match dim {
            Dim::Bg => {
                out.push(with(&|c| c.bg = self.bg & o.bg));
                out.push(with(&|c| c.bg = self.bg & !o.bg));
            }
            Dim::Method => {
                for t in [
                    self.method.intersect(&o.method),
                    self.method.minus(&o.method),
                ]
                .into_iter()
                .flatten()
                {
                    out.push(with(&|c| c.method = t.clone()));
                }
            }
            Dim::Host => {
                for t in [self.host.intersect(&o.host), self.host.minus(&o.host)]
                    .into_iter()
                    .flatten()
                {
                    out.push(with(&|c| c.host = t.clone()));
                }
            }
            Dim::Src => {
                for p in self
                    .src
                    .intersect(&o.src)
                    .into_iter()
                    .chain(self.src.minus(&o.src))
                {
                    out.push(with(&|c| c.src = p.clone()));
                }
            }
            Dim::Dst => {
                for p in self
                    .dst
                    .intersect(&o.dst)
                    .into_iter()
                    .chain(self.dst.minus(&o.dst))
                {
                    out.push(with(&|c| c.dst = p.clone()));
                }
            }
            Dim::Path => {
                for p in self
                    .path
                    .intersect(&o.path)
                    .into_iter()
                    .chain(self.path.minus(&o.path))
                {
                    out.push(with(&|c| c.path = p.clone()));
                }
            }
            Dim::Life => {
                for l in [self.life.intersect(&o.life), self.life.minus(&o.life)]
                    .into_iter()
                    .flatten()
                {
                    out.push(with(&|c| c.life = l.clone()));
                }
            }
            Dim::Time => {
                for t in [self.time.intersect(&o.time), self.time.minus(&o.time)]
                    .into_iter()
                    .flatten()
                {
                    out.push(with(&|c| c.time = t.clone()));
                }
            }
            Dim::Header(name) => {
                let mine = self.headers.get(name).cloned().unwrap_or_else(Tok::any);
                let theirs = &o.headers[name];
                for t in [mine.intersect(theirs), mine.minus(theirs)]
                    .into_iter()
                    .flatten()
                {
                    out.push(with(&|c| {
                        c.headers.insert(name.into(), t.clone());
                    }));
                }
            }
        }
        out
    }

    /// Whether the concrete request lies in this cube. Time is tested through the cube's
    /// schedules (`schedule_matches(atom, instant)`), so this is meant for cubes built from
    /// rules and their intersections; a residual piece (a difference) never reports a member.
    pub(crate) fn contains(
        &self,
        p: &Point<'_>,
        schedule_matches: &dyn Fn(u32, jiff::Timestamp) -> bool,
    ) -> bool {
        let dst_ok = match &p.dst {
            Some((td, segs)) => self.dst.contains(Some(td), segs),
            None => self.dst.contains(Some(""), &[]),
        };
        let headers_ok = self.headers.iter().all(|(k, allowed)| {
            let v = (p.headers)(k).unwrap_or_else(|| MISSING.to_string());
            allowed.contains(&v)
        });
        let time_ok = match &self.time.atoms {
            Some(atoms) => atoms.iter().all(|a| schedule_matches(*a, p.time)),
            None => false,
        };
        self.src.contains(Some(p.src.0), &p.src.1)
            && dst_ok
            && self.method.contains(&p.method)
            && self.path.contains(None, &p.path)
            && self.host.contains(&p.host)
            && self.life.contains(p.life)
            && headers_ok
            && self.bg & if p.bg { BG_PRESENT } else { BG_ABSENT } != 0
            && time_ok
    }
}

/// Pieces of `c` not covered by any of `subtract` (disjoint, exact), at most `limit` of them.
/// Empty result: `c` is covered. With `limit` 1 this is an emptiness test with a witness.
///
/// The search splits `c` along `subtract`, depth first; every test and every piece it creates is
/// charged to `budget`, and the sets it holds on its current branch count as memory while held.
/// Out of budget, it stops with no answer: a partial residual is never returned.
pub(crate) fn residual(
    c: &Cube,
    subtract: &[&Cube],
    limit: usize,
    budget: &Budget,
) -> Result<Vec<Cube>, OverBudget> {
    // A test between large cubes (long token lists, many headers) costs more than one between
    // small ones: tests are charged by the tokens of the piece and the subtracted cubes' average.
    let tokens: u64 = subtract.iter().map(|d| budget::cube_tokens(d)).sum();
    let others = tokens / subtract.len().max(1) as u64;
    budget.work(budget::test_cost(budget::cube_tokens(c), others) * subtract.len() as u64)?;
    let relevant: Vec<&Cube> = subtract.iter().copied().filter(|d| d.overlaps(c)).collect();
    let mut out = Vec::new();
    walk(c, &relevant, limit.max(1), others, budget, &mut out)?;
    Ok(out)
}

fn walk(
    c: &Cube,
    subtract: &[&Cube],
    limit: usize,
    others: u64,
    budget: &Budget,
    out: &mut Vec<Cube>,
) -> Result<(), OverBudget> {
    if out.len() >= limit {
        return Ok(());
    }
    let Some(first) = subtract.first() else {
        // A piece left over. The caller charges it as kept if it keeps it.
        budget.work(budget::NEW_CUBE)?;
        out.push(c.clone());
        return Ok(());
    };
    let tokens = budget::cube_tokens(c);
    budget.work(budget::test_cost(tokens, others) * subtract.len() as u64)?;
    if subtract.iter().any(|d| c.subset(d)) {
        return Ok(());
    }
    let pieces = c.split(first);
    for piece in &pieces {
        let tokens = budget::cube_tokens(piece);
        budget.work(
            budget::NEW_CUBE + tokens + budget::test_cost(tokens, others) * subtract.len() as u64,
        )?;
        let rest: Vec<&Cube> = subtract
            .iter()
            .copied()
            .filter(|d| d.overlaps(piece))
            .collect();
        // Held while this branch is searched: the piece and the list of what still overlaps it.
        let held = budget::cube_bytes(piece) + 8 * rest.len() as u64;
        budget.hold(held)?;
        let found = walk(piece, &rest, limit, others, budget, out);
        budget.release(held);
        found?;
        if out.len() >= limit {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LITS: &[&str] = &["a", "b", "c"];

    /// Every path over {a, b, c, z} with at most 4 segments: a universe small enough to
    /// enumerate, where `z` stands for every literal no pattern names.
    fn universe() -> Vec<Vec<&'static str>> {
        let mut all = vec![vec![]];
        let mut frontier = vec![vec![]];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &frontier {
                for s in ["a", "b", "c", "z"] {
                    let mut q: Vec<&str> = p.clone();
                    q.push(s);
                    next.push(q);
                }
            }
            all.extend(next.iter().cloned());
            frontier = next;
        }
        all
    }

    fn tok() -> impl Strategy<Value = Tok> {
        prop_oneof![
            prop::sample::subsequence(LITS, 1..=2).prop_map(|v| Tok::only(v.iter().copied())),
            prop::sample::subsequence(LITS, 0..=2)
                .prop_map(|v| Tok::AllBut(v.iter().map(|s| (*s).into()).collect())),
        ]
    }

    fn pat() -> impl Strategy<Value = Pat> {
        (
            prop::collection::vec(tok(), 0..3),
            0usize..2,
            prop::option::of(0usize..2),
        )
            .prop_map(|(segs, extra, span)| {
                let lo = segs.len() + extra;
                Pat {
                    td: None,
                    segs,
                    lo,
                    hi: span.map(|s| lo + s),
                }
                .trim()
            })
    }

    fn members(p: &Pat) -> BTreeSet<Vec<&'static str>> {
        universe()
            .into_iter()
            .filter(|w| p.contains(None, w))
            .collect()
    }

    proptest! {
        #[test]
        fn pattern_algebra_is_exact(a in pat(), b in pat()) {
            let (ma, mb) = (members(&a), members(&b));
            let inter: BTreeSet<_> = ma.intersection(&mb).cloned().collect();
            let got = a.intersect(&b).map(|p| members(&p)).unwrap_or_default();
            prop_assert_eq!(&got, &inter);
            prop_assert_eq!(a.overlaps(&b), !inter.is_empty());
            // Subset: exact over the infinite universe; the small one may only agree when true.
            if a.subset(&b) { prop_assert!(ma.is_subset(&mb)); }
            if !ma.is_subset(&mb) { prop_assert!(!a.subset(&b)); }
            let pieces = a.minus(&b);
            let mut union = BTreeSet::new();
            for p in &pieces {
                let m = members(p);
                prop_assert!(m.is_disjoint(&union), "pieces overlap: {:?}", pieces);
                union.extend(m);
            }
            let diff: BTreeSet<_> = ma.difference(&mb).cloned().collect();
            prop_assert_eq!(union, diff);
            for p in &pieces {
                let (_, w) = p.witness();
                let w: Vec<&str> = w.iter().map(String::as_str).collect();
                prop_assert!(p.contains(None, &w));
                prop_assert!(!b.contains(None, &w) || !a.contains(None, &w));
            }
        }

        #[test]
        fn token_algebra_is_exact(a in tok(), b in tok()) {
            let all = ["a", "b", "c", "z"];
            for t in all {
                let inter = a.intersect(&b).is_some_and(|x| x.contains(t));
                prop_assert_eq!(inter, a.contains(t) && b.contains(t));
                let diff = a.minus(&b).is_some_and(|x| x.contains(t));
                prop_assert_eq!(diff, a.contains(t) && !b.contains(t));
            }
        }
    }

    fn path(p: &str) -> Pat {
        crate::tooling::model::pat_of(&crate::policy::Pattern::parse_path(p).expect("pattern"))
    }

    #[test]
    fn residual_of_a_cube_minus_its_parts_is_empty() {
        let mut whole = Cube::any();
        whole.path = path("/a/**");
        let mut left = whole.clone();
        left.path = path("/a/b/**");
        let mut right = whole.clone();
        right.path = path("/a/*");
        let mut rest = whole.clone();
        rest.path = path("/a/*/*");
        // /a/** = /a/* + /a/*/* + deeper; /a/b/** covers only the b branch of deeper.
        let b = Budget::unlimited();
        let r = residual(&whole, &[&left, &right, &rest], 1, &b).expect("budget");
        assert_eq!(r.len(), 1);
        let (_, w) = r[0].path.witness();
        assert!(w.len() >= 4 && w[1] != "b", "{w:?}");
        let mut deeper = whole.clone();
        deeper.path = path("/a/*/*/**");
        assert!(residual(&whole, &[&left, &right, &rest, &deeper], 1, &b)
            .expect("budget")
            .is_empty());
    }

    #[test]
    fn display() {
        assert_eq!(path("/a/**").to_string(), "/a/**");
        assert_eq!(path("/a/*").to_string(), "/a/*");
        assert_eq!(path("/").to_string(), "/");
        assert_eq!(Pat::any(None).to_string(), "/ + /**");
        let id = crate::policy::Pattern::parse_spiffe("spiffe://td/ns/*/x").expect("id");
        assert_eq!(
            crate::tooling::model::pat_of(&id).to_string(),
            "spiffe://td/ns/*/x"
        );
    }
}
