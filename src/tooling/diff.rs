//! `wardgate diff OLD NEW`: what a bundle change grants and revokes, in terms of sources,
//! destinations, methods and paths, computed from both compiled bundles as sets of requests.
//!
//! With `allowed(B)` = (allow rules ∪ break-glass entries) minus (deny rules ∪ SVID-lifetime
//! refusals), the new grants are exactly `allowed(NEW) \ allowed(OLD)`. For each grant cube `a`
//! of NEW this is `a \ (refusals(NEW) ∪ grants(OLD) ∪ refusals(OLD))` (was default-denied) plus,
//! for each OLD refusal `d`, `(a ∩ d) \ refusals(NEW)` (was refused by `d`); revocations are the
//! same with the bundles swapped. Reordering rules, renaming them or splitting one rule into two
//! changes nothing here. This module must never compare YAML text, and never report a change
//! whose example request the engine does not confirm without flagging it.

use std::path::PathBuf;

use serde::Serialize;

use super::analyze::{conditions, tok_list};
use super::budget::{self, Budget, Refused};
use super::model::{example, Example, Model, Owner};
use super::space::{residual, Cube, Pat};
use super::timeline::TimeUniverse;
use super::{load_within, refused, BudgetArgs, Exit};
use crate::policy::Verdict;

/// Residual pieces computed per changed set to describe it (beyond this, the rule's set is shown).
const DESCRIBE_PIECES: usize = 64;

/// `wardgate diff` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DiffArgs {
    /// The bundle in force (file or directory).
    old: PathBuf,
    /// The proposed bundle.
    new: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    budget: BudgetArgs,
}

/// One grant or revocation, attributed to the rule that (no longer) allows it and to what
/// decided before (or decides now).
#[derive(Debug, Serialize)]
pub(crate) struct Change {
    /// For a grant, the NEW rule that allows; for a revocation, the OLD rule that allowed.
    pub(crate) rule: String,
    /// `allow` or `break_glass`.
    pub(crate) kind: &'static str,
    pub(crate) location: String,
    /// For a grant: what refused it in OLD; for a revocation: what refuses it in NEW
    /// (`default_deny`, a deny rule, or a segment's `max_svid_lifetime`).
    pub(crate) other_side: String,
    pub(crate) from: Vec<String>,
    pub(crate) to: Vec<String>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) paths: Option<Vec<String>>,
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) conditions: Vec<String>,
    /// Rules of the other bundle that already covered part of this set (so only part changed).
    pub(crate) partly_covered_by: Vec<String>,
    pub(crate) example: Example,
    #[serde(skip)]
    pub(crate) pieces: Vec<Cube>,
}

/// The whole diff.
#[derive(Debug, Serialize)]
pub(crate) struct Diff {
    pub(crate) grants: Vec<Change>,
    pub(crate) revocations: Vec<Change>,
    pub(crate) disagreements: Vec<String>,
}

impl Diff {
    /// The answer: any new grant, else only revocations, else no change; an internal error
    /// when an example request was not confirmed by the engine.
    pub(crate) fn exit(&self) -> Exit {
        if !self.disagreements.is_empty() {
            Exit::Internal
        } else if !self.grants.is_empty() {
            Exit::NewGrants
        } else if !self.revocations.is_empty() {
            Exit::No
        } else {
            Exit::Ok
        }
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// Requests `to` allows that `from` does not, attributed to `to`'s rules.
fn gained(
    to: &Model<'_>,
    from: &Model<'_>,
    time: &TimeUniverse,
    headers: &[Option<&str>],
    budget: &Budget,
) -> Result<(Vec<Change>, Vec<String>), Refused> {
    let to_ref = to.refusals();
    let from_ref = from.refusals();
    let from_grants = from.grants(true);
    let mut changes: Vec<(Owner, String, Change)> = Vec::new();
    let mut disagreements = Vec::new();
    for (owner, c) in to.granting() {
        let refused = |over| to.refused(owner, over);
        let refused_now: Vec<&Cube> = to_ref
            .overlapping(c, budget)
            .map_err(refused)?
            .into_iter()
            .map(|x| x.0)
            .collect();
        // Term 1: nothing in `from` allowed or refused it (default deny there).
        let old_grants = from_grants.overlapping(c, budget).map_err(refused)?;
        let old_refusals = from_ref.overlapping(c, budget).map_err(refused)?;
        let mut subtract = refused_now.clone();
        subtract.extend(old_grants.iter().map(|x| x.0));
        subtract.extend(old_refusals.iter().map(|x| x.0));
        let mut found: Vec<(String, Cube, Vec<Cube>, Vec<String>)> = Vec::new();
        let pieces = residual(c, &subtract, DESCRIBE_PIECES, budget).map_err(refused)?;
        if !pieces.is_empty() {
            let covered: Vec<String> = old_grants
                .iter()
                .map(|(_, o)| from.owner_name(*o))
                .collect();
            found.push(("default_deny".to_string(), c.clone(), pieces, covered));
        }
        // Term 2: refused in `from` by d (first such refusal in order), allowed in `to`.
        for (k, (d, od)) in old_refusals.iter().enumerate() {
            budget
                .work(budget::NEW_CUBE + budget::TEST * (k + refused_now.len()) as u64)
                .map_err(refused)?;
            let Some(q) = c.intersect(d) else { continue };
            let mut subtract = refused_now.clone();
            subtract.extend(
                old_refusals[..k]
                    .iter()
                    .map(|x| x.0)
                    .filter(|e| e.overlaps(&q)),
            );
            let pieces = residual(&q, &subtract, DESCRIBE_PIECES, budget).map_err(refused)?;
            if !pieces.is_empty() {
                let what = match od {
                    Owner::Lifetime(_) => from.owner_name(*od),
                    _ => format!("deny rule {}", from.owner_name(*od)),
                };
                found.push((what, q, pieces, Vec::new()));
            }
        }
        for (what, q, pieces, covered) in found {
            // An example decided by both bundles.
            budget.work(4 * budget::NEW_CUBE).map_err(refused)?;
            let ex = example(&pieces[0], time, headers);
            let now = ex.decide(to.policy);
            let before = ex.decide(from.policy);
            if now.verdict != Verdict::Allow || before.verdict != Verdict::Deny {
                disagreements.push(format!(
                    "{} is reported as changed, but decide says {} before and {} after",
                    ex.describe(),
                    before.verdict.as_str(),
                    now.verdict.as_str()
                ));
            }
            let i = match changes
                .iter()
                .position(|(o, w, _)| *o == owner && *w == what)
            {
                Some(i) => i,
                None => {
                    let rule = to.rule_of(owner);
                    changes.push((
                        owner,
                        what.clone(),
                        Change {
                            rule: to.owner_name(owner),
                            kind: if matches!(owner, Owner::BreakGlass(_)) {
                                "break_glass"
                            } else {
                                "allow"
                            },
                            location: rule
                                .map(|r| format!("{}:{}", r.file, r.line))
                                .unwrap_or_default(),
                            other_side: what,
                            from: Vec::new(),
                            to: Vec::new(),
                            methods: Some(Vec::new()),
                            paths: Some(Vec::new()),
                            hosts: tok_list(&q.host),
                            conditions: Vec::new(),
                            partly_covered_by: Vec::new(),
                            example: ex,
                            pieces: Vec::new(),
                        },
                    ));
                    changes.len() - 1
                }
            };
            let ch = &mut changes[i].2;
            // Describe the changed set itself when its pieces are few, else the rule's set.
            let shown: &[Cube] = if pieces.len() < DESCRIBE_PIECES {
                &pieces
            } else {
                std::slice::from_ref(&q)
            };
            for p in shown {
                // Describing a piece: its texts, each compared with those already listed.
                let listed = ch.from.len()
                    + ch.to.len()
                    + ch.conditions.len()
                    + ch.paths.as_ref().map_or(0, Vec::len);
                budget
                    .work(budget::NEW_CUBE + budget::TEST * listed as u64)
                    .and_then(|()| budget.keep_bytes(256))
                    .map_err(refused)?;
                push_unique(&mut ch.from, p.src.to_string());
                push_unique(&mut ch.to, p.dst.to_string());
                if p.path == Pat::any(None) {
                    ch.paths = None;
                } else if let Some(have) = &mut ch.paths {
                    push_unique(have, p.path.to_string());
                }
                for x in conditions(p, time, to.break_glass_header) {
                    push_unique(&mut ch.conditions, x);
                }
                match (tok_list(&p.method), &mut ch.methods) {
                    (Some(m), Some(have)) => {
                        for x in m {
                            push_unique(have, x);
                        }
                    }
                    (None, _) => ch.methods = None,
                    _ => {}
                }
            }
            for n in covered {
                push_unique(&mut ch.partly_covered_by, n);
            }
            for p in &pieces {
                budget.keep_bytes(budget::cube_bytes(p)).map_err(refused)?;
            }
            ch.pieces.extend(pieces);
        }
    }
    Ok((
        changes.into_iter().map(|(_, _, c)| c).collect(),
        disagreements,
    ))
}

/// Compare two compiled bundles; the cost is charged to `budget`.
pub(crate) fn diff(
    old: &Model<'_>,
    new: &Model<'_>,
    time: &TimeUniverse,
    budget: &Budget,
) -> Result<Diff, Refused> {
    let headers = [old.break_glass_header, new.break_glass_header];
    let (grants, mut d1) = gained(new, old, time, &headers, budget)?;
    let (revocations, d2) = gained(old, new, time, &headers, budget)?;
    d1.extend(d2);
    Ok(Diff {
        grants,
        revocations,
        disagreements: d1,
    })
}

fn change_text(out: &mut String, sign: char, c: &Change, grant: bool) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\n  {sign} {} [{}]  {}",
        c.rule,
        c.kind.replace('_', "-"),
        c.location
    );
    let _ = writeln!(
        out,
        "      {}  {}",
        if grant { "was     " } else { "now     " },
        if c.other_side == "default_deny" {
            if grant {
                "not allowed by any rule (default deny)".to_string()
            } else {
                "allowed by no rule (default deny)".to_string()
            }
        } else {
            format!("refused by {}", c.other_side)
        }
    );
    let any = |v: &Option<Vec<String>>| v.as_ref().map_or("any".to_string(), |v| v.join(", "));
    let _ = writeln!(out, "      from      {}", c.from.join(", "));
    let _ = writeln!(out, "      to        {}", c.to.join(", "));
    let _ = writeln!(out, "      methods   {}", any(&c.methods));
    let _ = writeln!(out, "      paths     {}", any(&c.paths));
    if c.hosts.is_some() {
        let _ = writeln!(out, "      hosts     {}", any(&c.hosts));
    }
    for x in &c.conditions {
        let _ = writeln!(out, "      when      {x}");
    }
    if !c.partly_covered_by.is_empty() {
        let _ = writeln!(
            out,
            "      except    {} {}",
            if grant {
                "what the old bundle already allowed by"
            } else {
                "where the new bundle still allows it by"
            },
            c.partly_covered_by.join(", ")
        );
    }
    let _ = writeln!(out, "      e.g.      {}", c.example.describe());
}

/// Run `wardgate diff`.
pub(crate) fn run(args: DiffArgs) -> Exit {
    let old = match load_within(&args.old, args.budget.compile.limits()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let new = match load_within(&args.new, args.budget.compile.limits()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let budget = args.budget.budget();
    let time = match TimeUniverse::new(&[&old, &new], &budget) {
        Ok(t) => t,
        Err(r) => return refused(&r),
    };
    let mo = match Model::new(&old, &time, &budget) {
        Ok(m) => m,
        Err(r) => return refused(&r),
    };
    let mn = match Model::new(&new, &time, &budget) {
        Ok(m) => m,
        Err(r) => return refused(&r),
    };
    let d = match diff(&mo, &mn, &time, &budget) {
        Ok(d) => d,
        Err(r) => return refused(&r),
    };
    let exit = d.exit();
    if args.json {
        let out = serde_json::json!({
            "old": {"bundle": args.old.display().to_string(), "revision": old.revision()},
            "new": {"bundle": args.new.display().to_string(), "revision": new.revision()},
            "grants": d.grants,
            "revocations": d.revocations,
            "exit": exit.code(),
        });
        say!("{out}");
    } else {
        let mut out = format!(
            "diff {} (revision {}) -> {} (revision {})\n",
            args.old.display(),
            old.revision(),
            args.new.display(),
            new.revision()
        );
        if !d.grants.is_empty() {
            out.push_str(&format!("\nnew grants ({})\n", d.grants.len()));
            for c in &d.grants {
                change_text(&mut out, '+', c, true);
            }
        }
        if !d.revocations.is_empty() {
            out.push_str(&format!("\nrevocations ({})\n", d.revocations.len()));
            for c in &d.revocations {
                change_text(&mut out, '-', c, false);
            }
        }
        out.push_str(&format!(
            "\nresult: {} grant(s), {} revocation(s): {} (exit {})",
            d.grants.len(),
            d.revocations.len(),
            match exit {
                Exit::Ok => "no change in what is allowed",
                Exit::No => "only revocations",
                Exit::NewGrants => "new grants: needs review",
                _ => "the analysis disagrees with the engine (see the internal errors)",
            },
            exit.code()
        ));
        say!("{out}");
    }
    for x in &d.disagreements {
        tell!("internal error: {x}");
    }
    exit
}
