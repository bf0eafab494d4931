//! A read-only view of a compiled [`Policy`] for the analysis tooling (`crate::tooling`).
//!
//! The tooling reasons about what a bundle means (who can reach what, what a change grants), so
//! it needs the rules, segments and trust domains exactly as `decide` sees them, but never the
//! indexes that make `decide` fast. This module is the one narrow door: it exposes the rule
//! list, break-glass entries, segments, trust domains and pattern/schedule parts, and nothing of
//! the tries or pair indexes, so those can change freely. It must never mutate a policy or
//! decide anything itself.

use super::model::{Action, Endpoint, Policy, Rule};
use super::pattern::Pattern;
pub(crate) use super::pattern::Seg;
pub(crate) use super::schedule::Schedule;

/// One `from` / `to` entry of a rule.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EndpointView<'p> {
    /// A segment, by index into [`Policy::view_segments`].
    Segment(usize),
    /// A SPIFFE ID pattern.
    Pattern(&'p Pattern),
}

/// A rule or break-glass entry as compiled.
#[derive(Debug, Clone)]
pub(crate) struct RuleView<'p> {
    pub(crate) name: &'p str,
    pub(crate) action: Action,
    pub(crate) break_glass: bool,
    pub(crate) from: Vec<EndpointView<'p>>,
    /// `None`: any destination, including an unknown one.
    pub(crate) to: Option<Vec<EndpointView<'p>>>,
    /// Upper-case methods; `None` = any.
    pub(crate) methods: Option<&'p [Box<str>]>,
    pub(crate) paths: Option<&'p [Pattern]>,
    /// Lower-case hosts; `None` = any.
    pub(crate) hosts: Option<&'p [Box<str>]>,
    pub(crate) schedule: Option<&'p Schedule>,
    /// Lower-case header name and its allowed values.
    pub(crate) headers: &'p [(Box<str>, Vec<Box<str>>)],
    pub(crate) file: &'p str,
    pub(crate) line: u64,
    pub(crate) column: u64,
}

/// A segment as compiled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentView<'p> {
    pub(crate) name: &'p str,
    pub(crate) members: &'p [Pattern],
    pub(crate) max_svid_lifetime: Option<jiff::SignedDuration>,
    /// Where the segment's name is written.
    pub(crate) file: &'p str,
    pub(crate) line: u64,
    pub(crate) column: u64,
}

fn endpoints(list: &[Endpoint]) -> Vec<EndpointView<'_>> {
    list.iter()
        .map(|e| match e {
            Endpoint::Segment(s) => EndpointView::Segment(*s as usize),
            Endpoint::Pattern(p) => EndpointView::Pattern(p),
        })
        .collect()
}

fn view(rule: &Rule, break_glass: bool) -> RuleView<'_> {
    RuleView {
        name: &rule.name,
        action: rule.action,
        break_glass,
        from: endpoints(&rule.from),
        to: rule.to.as_deref().map(endpoints),
        methods: rule.methods.as_deref(),
        paths: rule.paths.as_deref(),
        hosts: rule.hosts.as_deref(),
        schedule: rule.schedule.as_ref(),
        headers: &rule.headers,
        file: &rule.file,
        line: rule.line,
        column: rule.column,
    }
}

impl Policy {
    /// The rules in bundle order (not break-glass entries).
    pub(crate) fn view_rules(&self) -> impl Iterator<Item = RuleView<'_>> {
        self.rules.iter().map(|r| view(r, false))
    }

    /// The break-glass entries in bundle order.
    pub(crate) fn view_break_glass(&self) -> impl Iterator<Item = RuleView<'_>> {
        self.break_glass.iter().map(|r| view(r, true))
    }

    /// The segments in bundle order; [`EndpointView::Segment`] indexes this list.
    pub(crate) fn view_segments(&self) -> Vec<SegmentView<'_>> {
        self.segments
            .iter()
            .map(|s| SegmentView {
                name: &s.name,
                members: &s.members,
                max_svid_lifetime: s.max_svid_lifetime,
                file: &s.site.0,
                line: s.site.1,
                column: s.site.2,
            })
            .collect()
    }
}
