//! `wardgate analyze`: who can reach a workload or segment, the segment-to-segment matrix, and
//! findings (shadowed and redundant rules, grants into the sensitive segment, trust-domain
//! wildcards, unreachable segments, schedules that never match).
//!
//! Every answer is computed from the compiled rules as sets (`space`, `model`), never by
//! sampling requests: a grant is reported when its set minus every refusal (deny rules and
//! SVID-lifetime requirements) is non-empty, and each such claim carries an example request that
//! this module hands to `Policy::decide` as a self-check. It must never decide a request by
//! itself, and never print a claim the engine contradicts without saying so.

use std::collections::BTreeMap;

use serde::Serialize;

use super::budget::{self, Budget, OverBudget, Refused};
use super::model::{
    missing_destination, pat_of, whole_trust_domain, with_point, CubeSet, Example, Model, Owner,
};
use super::space::{residual, Cube, LifeSet, Pat, Tok, BG_ABSENT, BG_PRESENT, NOT_FORWARDED};
use super::timeline::{TimeUniverse, REFERENCE_START};
use crate::policy::view::EndpointView;
use crate::policy::{Action, Pattern, Verdict};

/// Name of the class of identities in the trust domains but in no segment.
pub(crate) const OUTSIDE: &str = "(outside)";
/// Name of the destination class "no usable destination principal".
pub(crate) const NO_DESTINATION: &str = "(no destination)";

/// A model plus the refusals index, ready to answer questions.
#[derive(Debug)]
pub(crate) struct Analyzer<'m, 'p> {
    pub(crate) m: &'m Model<'p>,
    pub(crate) time: &'m TimeUniverse,
    pub(crate) refusals: CubeSet<'m>,
    /// What the questions may cost; every answer is charged to it.
    pub(crate) budget: &'m Budget,
    /// Internal disagreements between a claim and `decide` (always empty unless there is a bug).
    pub(crate) disagreements: std::cell::RefCell<Vec<String>>,
}

/// Methods, hosts and similar: `None` means any.
pub(crate) fn tok_list(t: &Tok) -> Option<Vec<String>> {
    match t {
        Tok::Only(s) => Some(s.iter().map(|x| x.to_string()).collect()),
        Tok::AllBut(e) if e.is_empty() => None,
        Tok::AllBut(_) => Some(vec![t.to_string()]),
    }
}

fn dur(n: i128) -> String {
    let d = jiff::SignedDuration::new((n / 1_000_000_000) as i64, (n % 1_000_000_000) as i32);
    format!("{d:#}")
}

/// A certificate-lifetime set in words, `None` when it is every lifetime.
pub(crate) fn life_text(l: &LifeSet) -> Option<String> {
    if l.is_any() {
        return None;
    }
    let parts: Vec<String> =
        l.0.iter()
            .map(|(a, b)| match (*a, *b) {
                (NOT_FORWARDED, NOT_FORWARDED) => "no certificate forwarded".to_string(),
                (NOT_FORWARDED, b) => format!("no certificate, or one valid at most {}", dur(b)),
                (a, i128::MAX) => format!("a certificate valid longer than {}", dur(a - 1)),
                (0, b) => format!("a forwarded certificate valid at most {}", dur(b)),
                (a, b) => format!("a certificate valid {}..{}", dur(a), dur(b)),
            })
            .collect();
    Some(parts.join(" or "))
}

/// The conditions of a cube beyond identities, methods, paths and hosts, in words.
pub(crate) fn conditions(c: &Cube, time: &TimeUniverse, bg_header: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    match &c.time.atoms {
        Some(atoms) => {
            for a in atoms {
                out.push(format!("schedule {}", time.describe(*a)));
            }
        }
        None if !c.time.is_any() => out.push("part of a schedule".to_string()),
        None => {}
    }
    for (k, v) in &c.headers {
        let shown = match v {
            Tok::Only(s) => s
                .iter()
                .map(|x| {
                    if &**x == super::space::MISSING {
                        "(absent)".to_string()
                    } else {
                        x.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        out.push(format!("header {k} in [{shown}]"));
    }
    let header = bg_header.unwrap_or("(break-glass header)");
    if c.bg == BG_PRESENT {
        out.push(format!("break-glass reason in `{header}`"));
    } else if c.bg == BG_ABSENT {
        out.push(format!("no valid break-glass reason in `{header}`"));
    }
    if let Some(l) = life_text(&c.life) {
        out.push(l);
    }
    out
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// One rule's grant toward a target.
#[derive(Debug, Serialize)]
pub(crate) struct Grant {
    pub(crate) rule: String,
    /// `allow` or `break_glass`.
    pub(crate) kind: &'static str,
    pub(crate) file: String,
    pub(crate) line: u64,
    pub(crate) from: Vec<String>,
    pub(crate) from_segments: Vec<String>,
    pub(crate) to: Vec<String>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) paths: Option<Vec<String>>,
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) conditions: Vec<String>,
    /// What refusals take out of this grant.
    pub(crate) except: Vec<CarveOut>,
    /// Whether anything is left once the carve-outs are taken out.
    pub(crate) effective: bool,
    pub(crate) example: Option<Example>,
    #[serde(skip)]
    pub(crate) cubes: Vec<Cube>,
}

/// A refusal overlapping a grant.
#[derive(Debug, Serialize)]
pub(crate) struct CarveOut {
    pub(crate) by: String,
    /// `deny` or `svid_lifetime`.
    pub(crate) kind: &'static str,
    /// Where it bites, in the terms it narrows the grant by.
    pub(crate) only: Vec<String>,
    #[serde(skip)]
    pub(crate) cubes: Vec<Cube>,
    #[serde(skip)]
    parts: Vec<(String, Vec<String>)>,
}

/// `--who-can-reach`: every grant whose destinations meet the target.
#[derive(Debug, Serialize)]
pub(crate) struct Reach {
    pub(crate) target: String,
    pub(crate) target_patterns: Vec<String>,
    /// Per source class, the rules that let it reach the target.
    pub(crate) sources: Vec<ReachSource>,
    pub(crate) grants: Vec<Grant>,
}

/// One source class in a [`Reach`] summary.
#[derive(Debug, Serialize)]
pub(crate) struct ReachSource {
    pub(crate) source: String,
    pub(crate) rules: Vec<String>,
    pub(crate) break_glass: Vec<String>,
}

/// One non-empty cell of the matrix.
#[derive(Debug, Serialize)]
pub(crate) struct Cell {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) rules: Vec<String>,
    pub(crate) break_glass: Vec<String>,
    pub(crate) example: Example,
}

/// `--matrix`: which source class may reach which destination class, under which rules.
#[derive(Debug, Serialize)]
pub(crate) struct Matrix {
    pub(crate) sources: Vec<String>,
    pub(crate) destinations: Vec<String>,
    pub(crate) cells: Vec<Cell>,
    pub(crate) notes: Vec<String>,
}

impl Matrix {
    pub(crate) fn cell(&self, from: &str, to: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| c.from == from && c.to == to)
    }
}

/// One finding.
#[derive(Debug, Serialize)]
pub(crate) struct Finding {
    pub(crate) kind: &'static str,
    /// `warning` (probably a mistake), `review` (legitimate but worth a look), `info`.
    pub(crate) severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) location: Option<String>,
    pub(crate) message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) related: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) example: Option<Example>,
}

/// A matrix cell being filled: allow rules, break-glass entries, first example.
type CellAcc = (Vec<String>, Vec<String>, Option<Example>);

/// A source or destination class of the matrix.
#[derive(Debug)]
struct Class {
    name: String,
    pats: Vec<Pat>,
    /// Everything in a segment is taken out (the "outside" class).
    outside: bool,
}

impl<'m, 'p> Analyzer<'m, 'p> {
    pub(crate) fn new(m: &'m Model<'p>, time: &'m TimeUniverse, budget: &'m Budget) -> Self {
        Analyzer {
            m,
            time,
            refusals: m.refusals(),
            budget,
            disagreements: Default::default(),
        }
    }

    fn location(&self, o: Owner) -> Option<String> {
        self.m.rule_of(o).map(|r| format!("{}:{}", r.file, r.line))
    }

    /// Check a claim "this example is allowed" against the engine. (Only the verdict is
    /// claimed: an earlier allow rule may be the one that decides.)
    fn confirm_allowed(&self, ex: &Example, what: &str) {
        let d = ex.decide(self.m.policy);
        if d.verdict != Verdict::Allow {
            self.disagreements.borrow_mut().push(format!(
                "{what}: the analysis found {} allowed, but decide says {} ({})",
                ex.describe(),
                d.verdict.as_str(),
                d.reason
            ));
        }
    }

    /// One cube per segment member: every request from (or, with `dst`, to) that member.
    fn segment_member_cubes(&self, dst: bool) -> Result<Vec<Cube>, Refused> {
        let mut out = Vec::new();
        for (i, s) in self.m.segments.iter().enumerate() {
            for mem in s.members {
                let mut c = Cube::any();
                if dst {
                    c.dst = pat_of(mem);
                } else {
                    c.src = pat_of(mem);
                }
                self.budget
                    .keep(&c)
                    .map_err(|over| self.m.refused_segment(i, over))?;
                out.push(c);
            }
        }
        Ok(out)
    }

    fn source_classes(&self, p: &Pat) -> Result<Vec<String>, OverBudget> {
        let (touched, outside) = self.m.segments_touched(p, self.budget)?;
        let mut names: Vec<String> = touched
            .iter()
            .map(|i| self.m.segments[*i].name.to_string())
            .collect();
        if outside {
            names.push(OUTSIDE.to_string());
        }
        Ok(names)
    }

    /// Resolve a `--who-can-reach` target: a segment name or a SPIFFE ID (pattern).
    pub(crate) fn target(&self, text: &str) -> Result<Vec<Pat>, String> {
        if text.starts_with("spiffe:") {
            return Pattern::parse_spiffe(text)
                .map(|p| vec![pat_of(&p)])
                .map_err(|e| format!("`{text}` is not a SPIFFE ID or pattern: {e}"));
        }
        match self.m.segments.iter().find(|s| s.name == text) {
            Some(s) => Ok(s.members.iter().map(pat_of).collect()),
            None => Err(format!(
                "`{text}` is neither a SPIFFE ID nor a segment of this bundle (segments: {})",
                self.m
                    .segments
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Every grant reaching `target` (destination sets), with carve-outs.
    pub(crate) fn who_can_reach(&self, label: &str, target: &[Pat]) -> Result<Reach, Refused> {
        let mut grants: Vec<Grant> = Vec::new();
        let mut order: Vec<Owner> = Vec::new();
        let mut listed: std::collections::HashSet<Owner> = Default::default();
        let mut by_owner: BTreeMap<Owner, Vec<Cube>> = BTreeMap::new();
        for (owner, cube) in self.m.granting() {
            for t in target {
                self.budget
                    .work(budget::TEST)
                    .map_err(|over| self.m.refused(owner, over))?;
                if let Some(dst) = cube.dst.intersect(t) {
                    let mut q = cube.clone();
                    q.dst = dst;
                    self.budget
                        .keep(&q)
                        .map_err(|over| self.m.refused(owner, over))?;
                    if listed.insert(owner) {
                        order.push(owner);
                    }
                    let list = by_owner.entry(owner).or_default();
                    self.budget
                        .work(budget::TEST * list.len() as u64)
                        .map_err(|over| self.m.refused(owner, over))?;
                    if !list.contains(&q) {
                        list.push(q);
                    }
                }
            }
        }
        for owner in order {
            let cubes = by_owner.remove(&owner).unwrap_or_default();
            let grant = self
                .grant(owner, cubes)
                .map_err(|over| self.m.refused(owner, over))?;
            grants.push(grant);
        }
        let mut sources: Vec<ReachSource> = Vec::new();
        for g in grants.iter().filter(|g| g.effective) {
            for s in &g.from_segments {
                let i = match sources.iter().position(|x| x.source == *s) {
                    Some(i) => i,
                    None => {
                        sources.push(ReachSource {
                            source: s.clone(),
                            rules: Vec::new(),
                            break_glass: Vec::new(),
                        });
                        sources.len() - 1
                    }
                };
                let list = if g.kind == "break_glass" {
                    &mut sources[i].break_glass
                } else {
                    &mut sources[i].rules
                };
                push_unique(list, g.rule.clone());
            }
        }
        Ok(Reach {
            target: label.to_string(),
            target_patterns: target.iter().map(|p| p.to_string()).collect(),
            sources,
            grants,
        })
    }

    fn grant(&self, owner: Owner, cubes: Vec<Cube>) -> Result<Grant, OverBudget> {
        let rule = self.m.rule_of(owner);
        let first = cubes.first().cloned().unwrap_or_else(Cube::any);
        let mut from = Vec::new();
        let mut from_segments = Vec::new();
        let mut to = Vec::new();
        let mut paths = Vec::new();
        let mut any_path = false;
        for c in &cubes {
            // Each text is compared with those already listed.
            self.budget.work(
                budget::NEW_CUBE + budget::TEST * (from.len() + to.len() + paths.len()) as u64,
            )?;
            push_unique(&mut from, c.src.to_string());
            for s in self.source_classes(&c.src)? {
                push_unique(&mut from_segments, s);
            }
            push_unique(&mut to, c.dst.to_string());
            if c.path == Pat::any(None) {
                any_path = true;
            } else {
                push_unique(&mut paths, c.path.to_string());
            }
        }
        let mut except: Vec<CarveOut> = Vec::new();
        let mut effective = false;
        let mut example = None;
        for c in &cubes {
            let hits = self.refusals.overlapping(c, self.budget)?;
            for (d, o) in &hits {
                let Some(k) = d.intersect(c) else { continue };
                self.budget.keep(&k)?;
                let only = narrowing(&k, c, self.time, self.m.break_glass_header);
                let name = self.m.owner_name(*o);
                let i = match except.iter().position(|x| x.by == name) {
                    Some(i) => i,
                    None => {
                        except.push(CarveOut {
                            by: name,
                            kind: if matches!(o, Owner::Lifetime(_)) {
                                "svid_lifetime"
                            } else {
                                "deny"
                            },
                            only: Vec::new(),
                            cubes: Vec::new(),
                            parts: Vec::new(),
                        });
                        except.len() - 1
                    }
                };
                let known: usize = except[i].parts.iter().map(|(_, v)| v.len()).sum();
                self.budget.work(budget::TEST * known as u64)?;
                for (label, text) in only {
                    self.budget.keep_bytes(text.len() as u64)?;
                    let parts = &mut except[i].parts;
                    match parts.iter_mut().find(|(l, _)| *l == label) {
                        Some((_, v)) => push_unique(v, text),
                        None => parts.push((label, vec![text])),
                    }
                }
                except[i].cubes.push(k);
            }
            if !effective {
                let subtract: Vec<&Cube> = hits.iter().map(|(d, _)| *d).collect();
                if let Some(piece) = residual(c, &subtract, 1, self.budget)?.into_iter().next() {
                    effective = true;
                    let ex = self.m.example(&piece, self.time);
                    self.confirm_allowed(&ex, &self.m.owner_name(owner));
                    example = Some(ex);
                }
            }
        }
        for e in &mut except {
            e.only = e
                .parts
                .iter()
                .map(|(l, v)| {
                    if l.is_empty() {
                        v.join(", ")
                    } else {
                        format!("{l} {}", v.join(", "))
                    }
                })
                .collect();
        }
        let grant = Grant {
            rule: self.m.owner_name(owner),
            kind: if matches!(owner, Owner::BreakGlass(_)) {
                "break_glass"
            } else {
                "allow"
            },
            file: rule.map(|r| r.file.to_string()).unwrap_or_default(),
            line: rule.map(|r| r.line).unwrap_or_default(),
            from,
            from_segments,
            to,
            methods: tok_list(&first.method),
            paths: (!any_path).then_some(paths),
            hosts: tok_list(&first.host),
            conditions: conditions(&first, self.time, self.m.break_glass_header),
            except,
            effective,
            example,
            cubes,
        };
        self.confirm_covered(&grant);
        Ok(grant)
    }

    /// Check that the grant's own data (its sets minus its carve-outs) covers its example, as
    /// the property tests check it for arbitrary requests.
    fn confirm_covered(&self, g: &Grant) {
        let Some(ex) = &g.example else { return };
        let time = self.time;
        let inside =
            |c: &Cube, p: &super::space::Point<'_>| c.contains(p, &|atom, t| time.matches(atom, t));
        let covered = ex.with_request(|req| {
            with_point(req, &self.m.trust_domains, self.m.break_glass_header, |p| {
                g.cubes.iter().any(|c| inside(c, p))
                    && !g
                        .except
                        .iter()
                        .any(|e| e.cubes.iter().any(|c| inside(c, p)))
            })
        });
        if covered != Some(true) {
            self.disagreements.borrow_mut().push(format!(
                "grant {}: its example {} is not covered by the grant's own data",
                g.rule,
                ex.describe()
            ));
        }
    }

    fn classes(&self, dst: bool) -> Vec<Class> {
        let mut out: Vec<Class> = self
            .m
            .segments
            .iter()
            .map(|s| Class {
                name: s.name.to_string(),
                pats: s.members.iter().map(pat_of).collect(),
                outside: false,
            })
            .collect();
        out.push(Class {
            name: OUTSIDE.to_string(),
            pats: self
                .m
                .trust_domains
                .iter()
                .map(|td| whole_trust_domain(td))
                .collect(),
            outside: true,
        });
        if dst {
            out.push(Class {
                name: NO_DESTINATION.to_string(),
                pats: vec![missing_destination()],
                outside: false,
            });
        }
        out
    }

    /// The segment matrix.
    pub(crate) fn matrix(&self) -> Result<Matrix, Refused> {
        let srcs = self.classes(false);
        let dsts = self.classes(true);
        let src_members = self.segment_member_cubes(false)?;
        let dst_members = self.segment_member_cubes(true)?;
        let member_pats: Vec<Pat> = src_members.iter().map(|c| c.src.clone()).collect();
        // cells[(a, b)] = (rules, break-glass, example)
        let mut cells: BTreeMap<(usize, usize), CellAcc> = BTreeMap::new();
        let mut done: std::collections::HashSet<(Owner, usize, usize)> = Default::default();
        for (owner, cube) in self.m.granting() {
            let refused = |over| self.m.refused(owner, over);
            let name = self.m.owner_name(owner);
            let members = src_members.len() + dst_members.len();
            self.budget
                .work(budget::TEST * ((srcs.len() + dsts.len()) * (members + 1)) as u64)
                .map_err(refused)?;
            // Classes the cube meets; "outside" only when the cube is not inside a segment.
            let inside = |p: &Pat| member_pats.iter().any(|m| p.subset(m));
            let meets = |c: &Class, p: &Pat| {
                (!c.outside || !inside(p)) && c.pats.iter().any(|x| x.overlaps(p))
            };
            let src_hit: Vec<usize> = (0..srcs.len())
                .filter(|a| meets(&srcs[*a], &cube.src))
                .collect();
            let dst_hit: Vec<usize> = (0..dsts.len())
                .filter(|b| meets(&dsts[*b], &cube.dst))
                .collect();
            for &a in &src_hit {
                let ca = &srcs[a];
                for &b in &dst_hit {
                    let cb = &dsts[b];
                    if done.contains(&(owner, a, b)) {
                        continue;
                    }
                    let mut hit: Option<Example> = None;
                    'pairs: for sp in &ca.pats {
                        let Some(src) = cube.src.intersect(sp) else {
                            continue;
                        };
                        for dp in &cb.pats {
                            let Some(dst) = cube.dst.intersect(dp) else {
                                continue;
                            };
                            let mut q = cube.clone();
                            q.src = src.clone();
                            q.dst = dst;
                            self.budget
                                .work(budget::NEW_CUBE + budget::TEST * members as u64)
                                .map_err(refused)?;
                            let mut subtract: Vec<&Cube> = self
                                .refusals
                                .overlapping(&q, self.budget)
                                .map_err(refused)?
                                .into_iter()
                                .map(|x| x.0)
                                .collect();
                            if ca.outside {
                                subtract.extend(src_members.iter().filter(|c| c.overlaps(&q)));
                            }
                            if cb.outside {
                                subtract.extend(dst_members.iter().filter(|c| c.overlaps(&q)));
                            }
                            let left = residual(&q, &subtract, 1, self.budget).map_err(refused)?;
                            if let Some(piece) = left.into_iter().next() {
                                hit = Some(self.m.example(&piece, self.time));
                                break 'pairs;
                            }
                        }
                    }
                    if let Some(ex) = hit {
                        done.insert((owner, a, b));
                        self.confirm_cell(&ex, &ca.name, &cb.name);
                        let entry = cells.entry((a, b)).or_default();
                        if matches!(owner, Owner::BreakGlass(_)) {
                            entry.1.push(name.clone());
                        } else {
                            entry.0.push(name.clone());
                        }
                        if entry.2.is_none() {
                            entry.2 = Some(ex);
                        }
                    }
                }
            }
        }
        let used = |i: usize, src: bool| {
            cells
                .keys()
                .any(|(a, b)| if src { *a == i } else { *b == i })
        };
        let mut notes = Vec::new();
        let keep_src: Vec<bool> = srcs
            .iter()
            .enumerate()
            .map(|(i, c)| !c.outside || used(i, true))
            .collect();
        let keep_dst: Vec<bool> = dsts
            .iter()
            .enumerate()
            .map(|(i, c)| (!c.outside && c.name != NO_DESTINATION) || used(i, false))
            .collect();
        if !keep_src[srcs.len() - 1] && !keep_dst[dsts.len() - 2] {
            notes.push(format!(
                "identities in the trust domains but in no segment {OUTSIDE} reach nothing and are reached by nothing"
            ));
        } else if !keep_src[srcs.len() - 1] {
            notes.push(format!("identities in no segment {OUTSIDE} reach nothing"));
        } else if !keep_dst[dsts.len() - 2] {
            notes.push(format!(
                "nothing reaches identities in no segment {OUTSIDE}"
            ));
        }
        if !keep_dst[dsts.len() - 1] {
            notes.push(format!(
                "requests without a usable destination principal {NO_DESTINATION} are never allowed"
            ));
        }
        Ok(Matrix {
            sources: srcs
                .iter()
                .zip(&keep_src)
                .filter(|(_, k)| **k)
                .map(|(c, _)| c.name.clone())
                .collect(),
            destinations: dsts
                .iter()
                .zip(&keep_dst)
                .filter(|(_, k)| **k)
                .map(|(c, _)| c.name.clone())
                .collect(),
            cells: cells
                .into_iter()
                .filter_map(|((a, b), (rules, break_glass, ex))| {
                    Some(Cell {
                        from: srcs[a].name.clone(),
                        to: dsts[b].name.clone(),
                        rules,
                        break_glass,
                        example: ex?,
                    })
                })
                .collect(),
            notes,
        })
    }

    fn confirm_cell(&self, ex: &Example, from: &str, to: &str) {
        let d = ex.decide(self.m.policy);
        let seg = |s: Option<&str>, class: &str| match s {
            Some(name) => name == class,
            None => class == OUTSIDE || class == NO_DESTINATION,
        };
        if d.verdict != Verdict::Allow
            || !seg(d.source_segment, from)
            || !seg(d.destination_segment, to)
        {
            self.disagreements.borrow_mut().push(format!(
                "matrix {from} -> {to}: the analysis found {} allowed, but decide says {} ({}, {} -> {})",
                ex.describe(),
                d.verdict.as_str(),
                d.reason,
                d.source_segment.unwrap_or("-"),
                d.destination_segment.unwrap_or("-")
            ));
        }
    }

    /// Whether every cube is covered by the refusals plus the members of `extra` that `keep`
    /// accepts.
    fn covered(
        &self,
        cubes: &[Cube],
        extra: &CubeSet<'_>,
        keep: impl Fn(Owner) -> bool,
    ) -> Result<bool, OverBudget> {
        for c in cubes {
            let mut subtract: Vec<&Cube> = self
                .refusals
                .overlapping(c, self.budget)?
                .into_iter()
                .map(|x| x.0)
                .collect();
            subtract.extend(
                extra
                    .overlapping_where(c, &keep, self.budget)?
                    .into_iter()
                    .map(|x| x.0),
            );
            if !residual(c, &subtract, 1, self.budget)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn names_overlapping(
        &self,
        cubes: &[Cube],
        set: &CubeSet<'_>,
        keep: impl Fn(Owner) -> bool,
    ) -> Result<Vec<String>, OverBudget> {
        let mut out = Vec::new();
        for c in cubes {
            for (_, o) in set.overlapping_where(c, &keep, self.budget)? {
                self.budget.work(budget::TEST * out.len() as u64)?;
                push_unique(&mut out, self.m.owner_name(o));
            }
        }
        Ok(out)
    }

    /// Every finding; `sensitive` names the segments grants into which are listed for review.
    pub(crate) fn findings(
        &self,
        matrix: &Matrix,
        sensitive: &[String],
    ) -> Result<Vec<Finding>, Refused> {
        let mut out = Vec::new();
        let m = self.m;
        let allows = m.grants(false);
        let empty = CubeSet::default();
        // Shadowed and redundant rules.
        for (i, r) in m.rules.iter().enumerate() {
            let owner = Owner::Rule(i);
            let refused = |over| m.refused(owner, over);
            let cubes = &m.rule_cubes[i];
            if cubes.is_empty() {
                continue; // reported as a schedule that never matches
            }
            match r.action {
                Action::Deny => {
                    // Lifetime refusals come before rules; earlier deny rules before this one.
                    let earlier = |o: Owner| match o {
                        Owner::Rule(j) => j < i,
                        _ => true,
                    };
                    let mut covered = true;
                    for c in cubes {
                        let subtract: Vec<&Cube> = self
                            .refusals
                            .overlapping_where(c, earlier, self.budget)
                            .map_err(refused)?
                            .into_iter()
                            .map(|x| x.0)
                            .collect();
                        if !residual(c, &subtract, 1, self.budget)
                            .map_err(refused)?
                            .is_empty()
                        {
                            covered = false;
                            break;
                        }
                    }
                    if covered {
                        out.push(Finding {
                            kind: "redundant-deny",
                            severity: "warning",
                            rule: Some(r.name.to_string()),
                            location: self.location(owner),
                            message: format!(
                                "deny rule `{}` never decides: everything it matches is already refused earlier",
                                r.name
                            ),
                            related: self
                                .names_overlapping(cubes, &self.refusals, earlier)
                                .map_err(refused)?,
                            example: None,
                        });
                    }
                }
                Action::Allow => {
                    if self.covered(cubes, &empty, |_| false).map_err(refused)? {
                        out.push(Finding {
                            kind: "shadowed-by-deny",
                            severity: "warning",
                            rule: Some(r.name.to_string()),
                            location: self.location(owner),
                            message: format!(
                                "allow rule `{}` never allows anything: deny rules refuse every request it matches",
                                r.name
                            ),
                            related: self
                                .names_overlapping(cubes, &self.refusals, |_| true)
                                .map_err(refused)?,
                            example: None,
                        });
                    } else if self
                        .covered(cubes, &allows, |o| matches!(o, Owner::Rule(j) if j < i))
                        .map_err(refused)?
                    {
                        let related = self
                            .names_overlapping(
                                cubes,
                                &allows,
                                |o| matches!(o, Owner::Rule(j) if j < i),
                            )
                            .map_err(refused)?;
                        out.push(Finding {
                            kind: "redundant-allow",
                            severity: "warning",
                            rule: Some(r.name.to_string()),
                            location: self.location(owner),
                            message: format!(
                                "allow rule `{}` never decides: every request it allows is already allowed by earlier rules",
                                r.name
                            ),
                            related,
                            example: None,
                        });
                    }
                }
            }
        }
        for (i, r) in m.break_glass.iter().enumerate() {
            let owner = Owner::BreakGlass(i);
            let refused = |over| m.refused(owner, over);
            let cubes = &m.break_glass_cubes[i];
            if cubes.is_empty() {
                continue;
            }
            if self.covered(cubes, &empty, |_| false).map_err(refused)? {
                out.push(Finding {
                    kind: "shadowed-by-deny",
                    severity: "warning",
                    rule: Some(r.name.to_string()),
                    location: self.location(owner),
                    message: format!(
                        "break-glass entry `{}` can never allow: deny rules refuse every request it matches",
                        r.name
                    ),
                    related: self
                        .names_overlapping(cubes, &self.refusals, |_| true)
                        .map_err(refused)?,
                    example: None,
                });
            } else {
                let mut earlier = CubeSet::default();
                earlier.extend(&allows);
                for (j, cs) in m.break_glass_cubes.iter().enumerate().take(i) {
                    for c in cs {
                        earlier.push(c, Owner::BreakGlass(j));
                    }
                }
                if self.covered(cubes, &earlier, |_| true).map_err(refused)? {
                    out.push(Finding {
                        kind: "redundant-break-glass",
                        severity: "warning",
                        rule: Some(r.name.to_string()),
                        location: self.location(owner),
                        message: format!(
                            "break-glass entry `{}` is never needed: everything it covers is allowed without break-glass",
                            r.name
                        ),
                        related: self
                            .names_overlapping(cubes, &earlier, |_| true)
                            .map_err(refused)?,
                        example: None,
                    });
                }
            }
        }
        // Grants into a sensitive segment from outside it.
        for s in sensitive {
            let Some(seg) = m.segments.iter().position(|x| x.name == s.as_str()) else {
                continue;
            };
            let inside: Vec<Cube> = m.segments[seg]
                .members
                .iter()
                .map(|mem| {
                    let mut c = Cube::any();
                    c.src = pat_of(mem);
                    c
                })
                .collect();
            let mut seen: std::collections::HashSet<Owner> = Default::default();
            for (owner, cube) in m.granting() {
                let refused = |over| m.refused(owner, over);
                if seen.contains(&owner) {
                    continue;
                }
                for mem in m.segments[seg].members {
                    let Some(dst) = cube.dst.intersect(&pat_of(mem)) else {
                        continue;
                    };
                    let mut q = cube.clone();
                    q.dst = dst;
                    self.budget
                        .work(budget::NEW_CUBE + budget::TEST * inside.len() as u64)
                        .map_err(refused)?;
                    let mut subtract: Vec<&Cube> = self
                        .refusals
                        .overlapping(&q, self.budget)
                        .map_err(refused)?
                        .into_iter()
                        .map(|x| x.0)
                        .collect();
                    subtract.extend(inside.iter().filter(|c| c.overlaps(&q)));
                    let left = residual(&q, &subtract, 1, self.budget).map_err(refused)?;
                    let Some(piece) = left.into_iter().next() else {
                        continue;
                    };
                    seen.insert(owner);
                    let ex = m.example(&piece, self.time);
                    self.confirm_allowed(&ex, "crossing");
                    let mut from = self.source_classes(&q.src).map_err(refused)?;
                    from.retain(|x| x != s);
                    let rule = m.rule_of(owner);
                    out.push(Finding {
                        kind: "crosses-into-sensitive",
                        severity: "review",
                        rule: rule.map(|r| r.name.to_string()),
                        location: self.location(owner),
                        message: format!(
                            "{} `{}` lets {} reach the sensitive segment `{s}`",
                            if matches!(owner, Owner::BreakGlass(_)) {
                                "break-glass entry"
                            } else {
                                "allow rule"
                            },
                            m.owner_name(owner),
                            from.join(", ")
                        ),
                        related: from,
                        example: Some(ex),
                    });
                    break;
                }
            }
        }
        // Whole-trust-domain wildcards.
        let rules_and_bg = m
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.action == Action::Allow)
            .map(|(i, r)| (Owner::Rule(i), r))
            .chain(
                m.break_glass
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (Owner::BreakGlass(i), r)),
            );
        for (owner, r) in rules_and_bg {
            let mut wide = Vec::new();
            for (side, list) in [("from", Some(&r.from)), ("to", r.to.as_ref())] {
                let Some(list) = list else {
                    wide.push(
                        "no `to`: every destination, including requests without one".to_string(),
                    );
                    continue;
                };
                for e in list {
                    match e {
                        EndpointView::Pattern(p) => {
                            if is_whole_domain(&pat_of(p)) {
                                wide.push(format!("{side} {p}"));
                            }
                        }
                        EndpointView::Segment(si) => {
                            if let Some(seg) = m.segments.get(*si) {
                                for mem in seg.members {
                                    if is_whole_domain(&pat_of(mem)) {
                                        wide.push(format!(
                                            "{side} segment {} (member {mem})",
                                            seg.name
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if !wide.is_empty() {
                out.push(Finding {
                    kind: "trust-domain-wildcard",
                    severity: "review",
                    rule: Some(r.name.to_string()),
                    location: self.location(owner),
                    message: format!(
                        "`{}` grants a whole trust domain: {}",
                        r.name,
                        wide.join("; ")
                    ),
                    related: Vec::new(),
                    example: None,
                });
            }
        }
        // Segments nothing may reach.
        for s in &m.segments {
            if !matrix.cells.iter().any(|c| c.to == s.name) {
                out.push(Finding {
                    kind: "unreachable-segment",
                    severity: "info",
                    rule: None,
                    location: None,
                    message: format!(
                        "nothing may reach segment `{}`: every request to it is denied",
                        s.name
                    ),
                    related: Vec::new(),
                    example: None,
                });
            }
        }
        // Schedules that never match.
        for (owner, r) in m
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (Owner::Rule(i), r))
            .chain(
                m.break_glass
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (Owner::BreakGlass(i), r)),
            )
        {
            if let Some(s) = r.schedule {
                let set = self.time.set_of(s);
                if set.bits.as_ref().is_some_and(|b| b.iter().all(|w| *w == 0)) {
                    out.push(Finding {
                        kind: "schedule-never-matches",
                        severity: "warning",
                        rule: Some(r.name.to_string()),
                        location: self.location(owner),
                        message: format!(
                            "the schedule of `{}` ({}) matches no instant of the reference year {}",
                            r.name,
                            s.describe(),
                            &REFERENCE_START[..4]
                        ),
                        related: Vec::new(),
                        example: None,
                    });
                }
            }
        }
        Ok(out)
    }
}

fn is_whole_domain(p: &Pat) -> bool {
    p.segs.is_empty() && p.lo <= 1 && p.hi.is_none()
}

/// How a carve-out `k` (inside grant cube `c`) narrows it, dimension by dimension, as
/// (label, text) pairs; the label is empty for conditions.
pub(crate) fn narrowing(
    k: &Cube,
    c: &Cube,
    time: &TimeUniverse,
    bg_header: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |l: &str, t: String| out.push((l.to_string(), t));
    if k.src != c.src {
        push("from", k.src.to_string());
    }
    if k.dst != c.dst {
        push("to", k.dst.to_string());
    }
    if k.method != c.method {
        if let Some(m) = tok_list(&k.method) {
            push("methods", m.join(", "));
        }
    }
    if k.path != c.path {
        push("paths", k.path.to_string());
    }
    if k.host != c.host {
        if let Some(h) = tok_list(&k.host) {
            push("hosts", h.join(", "));
        }
    }
    let mine = conditions(c, time, bg_header);
    for cond in conditions(k, time, bg_header) {
        if !mine.contains(&cond) {
            push("", cond);
        }
    }
    if out.is_empty() {
        out.push((String::new(), "everything".to_string()));
    }
    out
}
