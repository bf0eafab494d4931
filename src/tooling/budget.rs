//! The work and memory budget of `analyze` and `diff`.
//!
//! Exact set algebra over rules is cheap for bundles people write, but a bundle can make it
//! exponential: overlapping wildcard patterns multiply the pieces a difference splits into, and
//! deny rules can encode a combinatorial puzzle (a pigeonhole) whose emptiness has no short
//! proof. This module owns counting that cost, in units of work (each set test and each set
//! created) and in an estimate of the bytes of sets the analysis keeps or holds at one time
//! (its peak memory, less the fixed cost of the loaded bundles), and refusing once either
//! passes its limit. It must never approximate: an analysis either finishes within its budget
//! with the exact answer, or stops with [`OverBudget`] and no answer at all. It must never do
//! I/O; the callers name the rule that was being analysed when the budget ran out.

use std::cell::Cell;
use std::fmt;

use super::space::{Cube, Pat, Tok};
use crate::policy::view::{RuleView, SegmentView};

/// Default `--max-analysis-work`: at most about two seconds of analysis on the build machine
/// (release build; docs/performance.md), 1,500 times what the shipped hospital bundle
/// needs and five times what a 10,000-rule bundle of the benches' shape needs.
pub(crate) const DEFAULT_MAX_WORK: u64 = 15_000_000;

/// Default `--max-analysis-memory`, in MiB: the estimated size of the sets an analysis keeps
/// or holds at any one time (a 10,000-rule bundle of the benches' shape needs about 80).
pub(crate) const DEFAULT_MAX_MEMORY_MIB: u64 = 128;

/// Work units charged for one set test (overlap or subset of two small cubes).
pub(crate) const TEST: u64 = 1;
/// Work units charged for asking one schedule about one instant (a time-zone conversion).
pub(crate) const SCHEDULE_TEST: u64 = 2;
/// Work units charged for one small cube created (a clone, an intersection, a piece of a
/// difference); see [`new_cube`] for larger ones.
pub(crate) const NEW_CUBE: u64 = 8;
/// Tokens (see [`cube_tokens`]) of the cubes compared that cost one more unit per test.
pub(crate) const TEST_TOKENS: u64 = 8;

/// Which limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `--max-analysis-work`, in units.
    Work,
    /// `--max-analysis-memory`, in bytes.
    Memory,
}

/// The budget ran out: which limit, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget {
    pub(crate) limit: Limit,
    pub(crate) max: u64,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Limit::Work => write!(
                f,
                "exceeds the analysis work budget of {} units (raise it with --max-analysis-work)",
                self.max
            ),
            Limit::Memory => write!(
                f,
                "exceeds the analysis memory budget of {} MiB (estimated; raise it with --max-analysis-memory)",
                self.max / (1024 * 1024)
            ),
        }
    }
}

/// An analysis refused for its cost: where the rule (or segment) being analysed is written
/// (`FILE:LINE:COL`), what it is, and which limit ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) at: String,
    pub(crate) what: String,
    pub(crate) over: OverBudget,
}

impl Refused {
    /// The rule or break-glass entry `r` was being analysed.
    pub(crate) fn rule(r: &RuleView<'_>, over: OverBudget) -> Refused {
        Refused {
            at: format!("{}:{}:{}", r.file, r.line, r.column),
            what: if r.break_glass {
                format!("break-glass entry `{}`", r.name)
            } else {
                format!("rule `{}`", r.name)
            },
            over,
        }
    }

    /// Segment `s` (its members or its `max_svid_lifetime`) was being analysed.
    pub(crate) fn segment(s: &SegmentView<'_>, over: OverBudget) -> Refused {
        Refused {
            at: format!("{}:{}:{}", s.file, s.line, s.column),
            what: format!("segment `{}`", s.name),
            over,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: analysing {} {}", self.at, self.what, self.over)
    }
}

/// The compile budget flags, shared by every verb that compiles a bundle (`serve`, `validate`,
/// `check`, `test`, `analyze`, `diff`, `learn`): `--max-compile-work` and
/// `--max-compile-memory`, named like the analysis budget's flags. The budget itself, and what a
/// unit is, belong to `policy` (`CompileLimits`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct CompileArgs {
    /// Refuse a bundle once compiling it has done this many units of work (a unit is about one
    /// index entry, pattern segment or trie node visited). The default takes a few seconds.
    #[arg(long, value_name = "UNITS", default_value_t = crate::policy::DEFAULT_MAX_COMPILE_WORK,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_compile_work: u64,
    /// Refuse a bundle whose identity tries and rule index are estimated to need more than
    /// this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = crate::policy::DEFAULT_MAX_COMPILE_MEMORY_MIB,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_compile_memory: u64,
}

impl CompileArgs {
    /// The limits these flags set.
    pub(crate) fn limits(&self) -> crate::policy::CompileLimits {
        crate::policy::CompileLimits {
            max_work: self.max_compile_work,
            max_memory_mib: self.max_compile_memory,
        }
    }
}

/// Work done and memory kept so far, against their limits. Shared by every step of one run of
/// `analyze` or `diff` (single-threaded, hence `Cell`).
#[derive(Debug)]
pub(crate) struct Budget {
    max_work: u64,
    max_bytes: u64,
    work: Cell<u64>,
    bytes: Cell<u64>,
}

impl Budget {
    /// A budget of `max_work` units and `max_memory_mib` MiB of kept sets.
    pub(crate) fn new(max_work: u64, max_memory_mib: u64) -> Budget {
        Budget {
            max_work,
            max_bytes: max_memory_mib.saturating_mul(1024 * 1024),
            work: Cell::new(0),
            bytes: Cell::new(0),
        }
    }

    /// The defaults of the command-line flags.
    #[cfg(test)]
    pub(crate) fn default_limits() -> Budget {
        Budget::new(DEFAULT_MAX_WORK, DEFAULT_MAX_MEMORY_MIB)
    }

    /// No limit (property tests, whose generated bundles are small by construction).
    #[cfg(test)]
    pub(crate) fn unlimited() -> Budget {
        Budget::new(u64::MAX, u64::MAX / (1024 * 1024))
    }

    /// Charge `units` of work.
    pub(crate) fn work(&self, units: u64) -> Result<(), OverBudget> {
        let used = self.work.get().saturating_add(units);
        self.work.set(used);
        if used > self.max_work {
            return Err(OverBudget {
                limit: Limit::Work,
                max: self.max_work,
            });
        }
        Ok(())
    }

    /// Charge `bytes` of sets the analysis keeps until it ends.
    pub(crate) fn keep_bytes(&self, bytes: u64) -> Result<(), OverBudget> {
        self.hold(bytes)
    }

    /// Charge `bytes` of sets held for a while; [`Budget::release`] gives them back.
    pub(crate) fn hold(&self, bytes: u64) -> Result<(), OverBudget> {
        let used = self.bytes.get().saturating_add(bytes);
        self.bytes.set(used);
        if used > self.max_bytes {
            return Err(OverBudget {
                limit: Limit::Memory,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Give back bytes charged with [`Budget::hold`].
    pub(crate) fn release(&self, bytes: u64) {
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
    }

    /// Charge one cube created and kept until the analysis ends.
    pub(crate) fn keep(&self, c: &Cube) -> Result<(), OverBudget> {
        self.work(new_cube(c))?;
        self.keep_bytes(cube_bytes(c))
    }

    /// Work units so far, and the bytes of sets kept or held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> (u64, u64) {
        (self.work.get(), self.bytes.get())
    }
}

fn tok_bytes(t: &Tok) -> u64 {
    let set = match t {
        Tok::Only(s) | Tok::AllBut(s) => s,
    };
    if set.is_empty() {
        return 0;
    }
    // One B-tree leaf (eleven slots of a boxed string), then per token its allocation.
    192 + set.iter().map(|s| 32 + s.len() as u64).sum::<u64>()
}

fn pat_bytes(p: &Pat) -> u64 {
    let segs: u64 = p
        .segs
        .iter()
        .map(|t| std::mem::size_of::<Tok>() as u64 + tok_bytes(t))
        .sum();
    16 + segs + p.td.as_ref().map_or(0, tok_bytes)
}

/// The number of tokens and segment positions in a cube's sets (cheap: no token is read).
pub(crate) fn cube_tokens(c: &Cube) -> u64 {
    let tok = |t: &Tok| match t {
        Tok::Only(s) | Tok::AllBut(s) => s.len() as u64,
    };
    let pat =
        |p: &Pat| p.segs.iter().map(|t| 1 + tok(t)).sum::<u64>() + p.td.as_ref().map_or(0, tok);
    pat(&c.src)
        + pat(&c.dst)
        + pat(&c.path)
        + tok(&c.method)
        + tok(&c.host)
        + c.headers.values().map(|t| 1 + tok(t)).sum::<u64>()
        + time_words(c)
}

/// Words of the cube's time set (one bit per elementary interval of the reference year).
fn time_words(c: &Cube) -> u64 {
    c.time.bits.as_ref().map_or(0, |b| b.len() as u64)
}

/// Work units for creating `c`: a base cost plus one per token and segment it allocates.
pub(crate) fn new_cube(c: &Cube) -> u64 {
    NEW_CUBE + cube_tokens(c)
}

/// Work units for testing a cube of `tokens` tokens against cubes of `others` tokens on average.
pub(crate) fn test_cost(tokens: u64, others: u64) -> u64 {
    TEST * (1 + (tokens + others) / TEST_TOKENS)
}

/// An estimate of the heap and inline bytes one cube holds.
pub(crate) fn cube_bytes(c: &Cube) -> u64 {
    let headers: u64 = c
        .headers
        .iter()
        .map(|(k, v)| 64 + k.len() as u64 + tok_bytes(v))
        .sum();
    std::mem::size_of::<Cube>() as u64
        + pat_bytes(&c.src)
        + pat_bytes(&c.dst)
        + pat_bytes(&c.path)
        + tok_bytes(&c.method)
        + tok_bytes(&c.host)
        + 16 * c.life.0.len() as u64
        + 8 * time_words(c)
        + headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::tooling::analyze::Analyzer;
    use crate::tooling::model::Model;
    use crate::tooling::timeline::TimeUniverse;

    /// Three pigeons, two holes: the deny rules refuse all of `seat`, and proving it takes
    /// every case.
    const PUZZLE: &str = r#"version: 1
revision: 1
trust_domains: [t.example]
segments:
  s:
    members: ["spiffe://t.example/a/**", "spiffe://t.example/b/**"]
    max_svid_lifetime: 1h
rules:
  - {name: c01h0, action: deny, from: [s], when: {headers: {p0: [h0], p1: [h0]}}}
  - {name: c01h1, action: deny, from: [s], when: {headers: {p0: [h1], p1: [h1]}}}
  - {name: c02h0, action: deny, from: [s], when: {headers: {p0: [h0], p2: [h0]}}}
  - {name: c02h1, action: deny, from: [s], when: {headers: {p0: [h1], p2: [h1]}}}
  - {name: c12h0, action: deny, from: [s], when: {headers: {p1: [h0], p2: [h0]}}}
  - {name: c12h1, action: deny, from: [s], when: {headers: {p1: [h1], p2: [h1]}}}
  - name: seat
    from: [s]
    when: {headers: {p0: [h0, h1], p1: [h0, h1], p2: [h0, h1]}}
"#;

    /// Run the whole analysis (matrix, then findings) within `budget`.
    fn analyse(policy: &Policy, budget: &Budget) -> Result<(), Refused> {
        let time = TimeUniverse::new(&[policy], budget)?;
        let m = Model::new(policy, &time, budget)?;
        let an = Analyzer::new(&m, &time, budget);
        let matrix = an.matrix()?;
        an.findings(&matrix, &["s".to_string()])?;
        Ok(())
    }

    #[test]
    fn a_refusal_names_the_rule_being_analysed_and_the_limit() {
        let policy = Policy::from_yaml_str("puzzle.yaml", PUZZLE).expect("bundle");
        let enough = Budget::new(DEFAULT_MAX_WORK, DEFAULT_MAX_MEMORY_MIB);
        analyse(&policy, &enough).expect("fits the default budget");
        let (work, bytes) = enough.used();
        assert!(work > 100 && bytes > 0, "work {work}, bytes {bytes}");
        // Enough to build the model, not enough to prove `seat` covered.
        let tight = Budget::new(work / 2, DEFAULT_MAX_MEMORY_MIB);
        let r = analyse(&policy, &tight).expect_err("over budget");
        assert_eq!(r.at, "puzzle.yaml:15:5");
        assert_eq!(r.what, "rule `seat`");
        assert_eq!(r.over.limit, Limit::Work);
        assert_eq!(
            r.to_string(),
            format!(
                "puzzle.yaml:15:5: analysing rule `seat` exceeds the analysis work budget of {} units (raise it with --max-analysis-work)",
                work / 2
            )
        );
    }

    #[test]
    fn building_the_model_is_charged_to_the_rule_or_segment_it_builds() {
        let policy = Policy::from_yaml_str("puzzle.yaml", PUZZLE).expect("bundle");
        let time = TimeUniverse::new(&[&policy], &Budget::unlimited()).expect("time");
        // No memory at all: the first rule's first cube is refused.
        let r = Model::new(&policy, &time, &Budget::new(u64::MAX, 0)).expect_err("over");
        assert_eq!(
            (r.at.as_str(), r.what.as_str()),
            ("puzzle.yaml:9:5", "rule `c01h0`")
        );
        assert_eq!(r.over.limit, Limit::Memory);
        // Enough for the rules' cubes but not for the SVID-lifetime requirement's: the segment.
        let probe = Budget::unlimited();
        let m = Model::new(&policy, &time, &probe).expect("model");
        let rules_only =
            probe.used().0 - m.lifetime_cubes.len() as u64 * new_cube(&m.lifetime_cubes[0].1);
        let r = Model::new(
            &policy,
            &time,
            &Budget::new(rules_only, u64::MAX / (1 << 20)),
        )
        .expect_err("over");
        assert_eq!(
            (r.at.as_str(), r.what.as_str()),
            ("puzzle.yaml:5:3", "segment `s`")
        );
    }

    #[test]
    fn work_limit_refuses_once_passed_and_stays_refused() {
        let b = Budget::new(10, 1);
        assert!(b.work(10).is_ok());
        let over = b.work(1).expect_err("over");
        assert_eq!(over.limit, Limit::Work);
        assert!(over.to_string().contains("10 units"), "{over}");
        assert!(over.to_string().contains("--max-analysis-work"), "{over}");
        assert!(b.work(0).is_err(), "a spent budget stays spent");
    }

    #[test]
    fn memory_limit_counts_kept_cubes() {
        let b = Budget::new(u64::MAX, 1);
        let c = Cube::any();
        let per = cube_bytes(&c);
        assert!(per >= std::mem::size_of::<Cube>() as u64);
        let fit = (1024 * 1024) / per;
        for _ in 0..fit {
            b.keep(&c).expect("within");
        }
        let over = b.keep(&c).expect_err("over");
        assert_eq!(over.limit, Limit::Memory);
        assert!(over.to_string().contains("1 MiB"), "{over}");
        assert_eq!(b.used().1, per * (fit + 1));
    }
}
