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

/// Default `--max-analysis-work`: about a second of analysis on the build machine (release),
/// a few hundred times what the shipped hospital bundle needs.
pub(crate) const DEFAULT_MAX_WORK: u64 = 40_000_000;

/// Default `--max-analysis-memory`, in MiB: the estimated size of the sets an analysis keeps
/// or holds at any one time.
pub(crate) const DEFAULT_MAX_MEMORY_MIB: u64 = 128;

/// Work units charged for one set test (overlap or subset of two cubes).
pub(crate) const TEST: u64 = 1;
/// Work units charged for asking one schedule about one instant (a time-zone conversion).
pub(crate) const SCHEDULE_TEST: u64 = 4;
/// Work units charged for one cube created (a clone, an intersection, a piece of a difference).
pub(crate) const NEW_CUBE: u64 = 8;
/// Bytes of a new cube that cost one more unit to create (long token lists cost more).
pub(crate) const TEST_BYTES: u64 = 1024;
/// Tokens of a cube that cost one more unit to test it against another.
pub(crate) const TEST_TOKENS: u64 = 32;

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

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: analysing {} {}", self.at, self.what, self.over)
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
    pub(crate) peak: Cell<u64>, // TEMP
}

impl Drop for Budget { fn drop(&mut self) { if std::env::var_os("WG_STATS").is_some() { eprintln!("STATS work={} bytes_now={} peak_held={}", self.work.get(), self.bytes.get(), self.peak.get().max(self.bytes.get())); } } } // TEMP

impl Budget {
    /// A budget of `max_work` units and `max_memory_mib` MiB of kept sets.
    pub(crate) fn new(max_work: u64, max_memory_mib: u64) -> Budget {
        Budget {
            max_work,
            max_bytes: max_memory_mib.saturating_mul(1024 * 1024),
            work: Cell::new(0),
            bytes: Cell::new(0),
            peak: Cell::new(0),
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
        if std::env::var_os("WG_STATS").is_some() && self.bytes.get() > self.peak.get() { self.peak.set(self.bytes.get()); }
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
    }

    /// Charge one cube created and kept until the analysis ends.
    pub(crate) fn keep(&self, c: &Cube) -> Result<(), OverBudget> {
        let size = cube_bytes(c);
        self.work(new_cube(size))?;
        self.keep_bytes(size)
    }

    /// Work units so far, and the bytes of sets kept or held now.
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
    let pat = |p: &Pat| p.segs.iter().map(|t| 1 + tok(t)).sum::<u64>() + p.td.as_ref().map_or(0, tok);
    pat(&c.src)
        + pat(&c.dst)
        + pat(&c.path)
        + tok(&c.method)
        + tok(&c.host)
        + c.headers.values().map(|t| 1 + tok(t)).sum::<u64>()
}

/// Work units for creating a cube of `size` bytes (see [`cube_bytes`]).
pub(crate) fn new_cube(size: u64) -> u64 {
    NEW_CUBE + size / TEST_BYTES
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
        + headers
}

#[cfg(test)]
mod tests {
    use super::*;

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
