//! The compile budget: the work and memory a bundle may make compilation spend.
//!
//! Compilation is linear in the bundle for everything but one step, yet even linear costs need
//! a ceiling when the bundle comes from a network source: a bundle names how many members,
//! patterns and rule entries there are, and the index grows with them. This module owns counting
//! that cost, in units of work (a member or pattern segment read, a trie node created or visited
//! while checking segment members for overlaps, an index entry filed) and in an estimate of the
//! bytes the tries and the index hold, and refusing once either passes its limit. The one step
//! that is not linear, finding overlapping segment members, can still visit much of the member
//! trie per member on hostile input; it draws its visits from the same work budget.
//!
//! It never decides what a bundle means and never does I/O; `compile` names the rule or segment
//! being compiled when the budget runs out. The flags that set the limits are
//! `--max-compile-work` and `--max-compile-memory` (see README.md, "Validation limits").

use std::fmt;

/// Default `--max-compile-work`, in units: about 20 times what a 100,000-rule bundle of the
/// benches' shape or 100,000 segment members need (about a million units each), and the
/// refusal of a hostile bundle comes within seconds (docs/performance.md, "Worst-case bundles").
pub const DEFAULT_MAX_COMPILE_WORK: u64 = 20_000_000;

/// Default `--max-compile-memory`, in MiB: the estimated size of the identity tries and the rule
/// index (a 100,000-rule bundle of the benches' shape needs about 30).
pub const DEFAULT_MAX_COMPILE_MEMORY_MIB: u64 = 1024;

/// Estimated bytes of one trie node (its children, payload lists and bookkeeping).
pub(crate) const TRIE_NODE_BYTES: u64 = 96;
/// Estimated bytes of one index entry (a position in a bucket, its share of the bucket's key).
pub(crate) const INDEX_ENTRY_BYTES: u64 = 16;

/// The limits of one compilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Units of work (see the module documentation).
    pub max_work: u64,
    /// Estimated MiB of tries and index.
    pub max_memory_mib: u64,
}

impl Default for CompileLimits {
    /// The defaults of the command-line flags.
    fn default() -> Self {
        CompileLimits {
            max_work: DEFAULT_MAX_COMPILE_WORK,
            max_memory_mib: DEFAULT_MAX_COMPILE_MEMORY_MIB,
        }
    }
}

impl CompileLimits {
    /// No limit: for bundles that are small by construction (tests) or trusted.
    pub fn unlimited() -> Self {
        CompileLimits {
            max_work: u64::MAX,
            max_memory_mib: u64::MAX / (1024 * 1024),
        }
    }
}

/// Which limit ran out, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverBudget {
    /// `--max-compile-work`, in units.
    Work(u64),
    /// `--max-compile-memory`, in MiB.
    Memory(u64),
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverBudget::Work(max) => write!(
                f,
                "exceeds the compile work budget of {max} units (raise it with --max-compile-work)"
            ),
            OverBudget::Memory(max) => write!(
                f,
                "exceeds the compile memory budget of {max} MiB (estimated; raise it with --max-compile-memory)"
            ),
        }
    }
}

/// Work done and memory held so far, against the limits of one compilation.
#[derive(Debug)]
pub(crate) struct Meter {
    limits: CompileLimits,
    work: u64,
}

impl Meter {
    pub(crate) fn new(limits: CompileLimits) -> Meter {
        Meter { limits, work: 0 }
    }

    /// Work units left (what a bounded search may still spend).
    pub(crate) fn left(&self) -> u64 {
        self.limits.max_work.saturating_sub(self.work)
    }

    /// Charge `units` of work.
    pub(crate) fn work(&mut self, units: u64) -> Result<(), OverBudget> {
        self.work = self.work.saturating_add(units);
        if self.work > self.limits.max_work {
            return Err(OverBudget::Work(self.limits.max_work));
        }
        Ok(())
    }

    /// Check that `bytes` (the estimate of what is held now) fits.
    pub(crate) fn holds(&self, bytes: u64) -> Result<(), OverBudget> {
        if bytes > self.limits.max_memory_mib.saturating_mul(1024 * 1024) {
            return Err(OverBudget::Memory(self.limits.max_memory_mib));
        }
        Ok(())
    }
}
