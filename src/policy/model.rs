//! The compiled policy model: the plain data a bundle means, as `eval` reads it.
//!
//! [`Policy`] holds the bundle's header facts, its segments, its rules and break-glass entries
//! in bundle order, and the [`RuleIndex`] that finds the rules a request can meet. Everything
//! here is built once by `compile` and never changes afterwards; the accessors below are the
//! public, read-only face of a policy. This module never parses, validates or decides: building
//! is `compile`'s job, judging a request is `eval`'s, and the layout of the index is `index`'s.

use std::sync::Arc;

use super::index::RuleIndex;
use super::pattern::Pattern;
use super::schedule::Schedule;

/// An immutable, compiled rule bundle. Build it with [`Policy::from_path`] or
/// [`Policy::from_yaml_str`]; ask it with [`Policy::decide`].
#[derive(Debug)]
pub struct Policy {
    pub(crate) revision: u64,
    pub(crate) digest: String,
    pub(crate) trust_domains: Vec<Box<str>>,
    pub(crate) segments: Vec<Segment>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) break_glass: Vec<Rule>,
    pub(crate) break_glass_header: Option<Box<str>>,
    /// Which rules (by position in `rules` or `break_glass`) can apply to which identities.
    pub(crate) index: RuleIndex,
    /// What the decision log may show of a request (the bundle's `logging` section).
    pub(crate) logging: super::logging::LogRules,
}

/// A segment: a named zone of workloads.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) name: Box<str>,
    pub(crate) members: Vec<Pattern>,
    pub(crate) max_svid_lifetime: Option<jiff::SignedDuration>,
    /// Where the segment is defined: file, line, column of its name.
    pub(crate) site: (Box<str>, u64, u64),
}

/// Allow or deny, as a rule states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The rule grants.
    Allow,
    /// The rule refuses; deny rules are hard boundaries.
    Deny,
}

/// A rule as listed by [`Policy::rules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo<'p> {
    /// Rule name.
    pub name: &'p str,
    /// Allow or deny.
    pub action: Action,
    /// Whether this is a break-glass entry.
    pub break_glass: bool,
    /// Bundle file it is defined in.
    pub file: &'p str,
    /// Line of its definition.
    pub line: u64,
    /// The policy's own strings behind `name` and `file`, for holders that outlive a borrow.
    shared: (&'p Arc<str>, &'p Arc<str>),
}

impl RuleInfo<'_> {
    /// The rule's name as the policy holds it: a handle to the same string, not a copy.
    pub fn shared_name(&self) -> Arc<str> {
        Arc::clone(self.shared.0)
    }

    /// The name of the rule's file as the policy holds it (one string per file of the bundle,
    /// shared by its rules).
    pub fn shared_file(&self) -> Arc<str> {
        Arc::clone(self.shared.1)
    }
}

/// A `from` or `to` entry.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// A segment, by its position in [`Policy::segments`].
    Segment(u32),
    Pattern(Pattern),
}

/// A compiled rule or break-glass entry.
#[derive(Debug)]
pub(crate) struct Rule {
    /// Shared with whoever keeps per-rule state across this policy's life (telemetry).
    pub(crate) name: Arc<str>,
    pub(crate) action: Action,
    pub(crate) from: Vec<Endpoint>,
    pub(crate) to: Option<Vec<Endpoint>>,
    /// Upper-case methods. Rules listing the same methods share one list, like `paths`.
    pub(crate) methods: Option<Arc<[Box<str>]>>,
    pub(crate) paths: Option<Arc<[Pattern]>>,
    /// Lower-case hosts without port.
    pub(crate) hosts: Option<Vec<Box<str>>>,
    pub(crate) schedule: Option<Schedule>,
    /// Lower-case header name, allowed exact values.
    pub(crate) headers: Vec<(Box<str>, Vec<Box<str>>)>,
    /// One string per bundle file, shared by its rules.
    pub(crate) file: Arc<str>,
    pub(crate) line: u64,
    pub(crate) column: u64,
}

impl Policy {
    /// The bundle's `revision`.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `sha256:<hex>` identifying the bundle: of a single file's bytes (what `sha256sum`
    /// prints), or of a directory's file names and contents (see `digest`, README "Bundle
    /// digest").
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Number of rules (not counting break-glass entries).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Names of the rules, in bundle order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    /// Every rule in bundle order, then every break-glass entry, with where it is defined.
    pub fn rules(&self) -> impl Iterator<Item = RuleInfo<'_>> {
        let rules = self.rules.iter().map(|r| (r, false));
        let bg = self.break_glass.iter().map(|r| (r, true));
        rules.chain(bg).map(|(r, break_glass)| RuleInfo {
            name: &r.name,
            action: r.action,
            break_glass,
            file: &r.file,
            line: r.line,
            shared: (&r.name, &r.file),
        })
    }

    /// Names of the break-glass entries, in bundle order.
    pub fn break_glass_names(&self) -> impl Iterator<Item = &str> {
        self.break_glass.iter().map(|r| &*r.name)
    }

    /// Names of the segments, in bundle order.
    pub fn segment_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(|s| &*s.name)
    }

    /// The trust domains the bundle accepts.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.trust_domains.iter().map(|t| &**t)
    }

    /// The header that carries a break-glass reason, if the bundle enables break-glass.
    pub fn break_glass_header(&self) -> Option<&str> {
        self.break_glass_header.as_deref()
    }
}
