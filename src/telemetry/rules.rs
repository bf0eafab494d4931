//! Rule statistics: the hits of every rule and break-glass entry of the bundle in force
//! (`wardgate_rule_hits_total`, `wardgate_break_glass_uses_total`, `/v1/rules`), kept across
//! reloads for as long as a rule keeps its name and kind.
//!
//! A check finds its rule's statistic in the current snapshot and increments atomics; only a
//! check that names a rule the snapshot does not know yet (between a policy being stored and
//! [`Telemetry::bundle_swapped`]) takes the registry's mutex. This module never labels a series
//! with anything but a rule name from the bundle and a fixed kind.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use fnv::FnvHashMap;
use prometheus::IntCounter;
use serde::Serialize;

use super::{BundleInfo, Snapshot, Telemetry};
use crate::policy::{Action, Decision, Policy, Reason, RuleInfo, Verdict};

/// How a rule is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// An allow rule.
    Allow,
    /// A deny rule.
    Deny,
    /// A break-glass entry.
    BreakGlass,
}

impl RuleKind {
    /// `allow`, `deny` or `break_glass`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Allow => "allow",
            RuleKind::Deny => "deny",
            RuleKind::BreakGlass => "break_glass",
        }
    }

    fn of_rule(info: &RuleInfo<'_>) -> RuleKind {
        match (info.break_glass, info.action) {
            (true, _) => RuleKind::BreakGlass,
            (false, Action::Allow) => RuleKind::Allow,
            (false, Action::Deny) => RuleKind::Deny,
        }
    }

    fn of_decision(decision: &Decision<'_>) -> Option<RuleKind> {
        match (decision.reason, decision.verdict) {
            (Reason::BreakGlass, _) => Some(RuleKind::BreakGlass),
            (Reason::Rule, Verdict::Allow) => Some(RuleKind::Allow),
            (Reason::Rule, Verdict::Deny) => Some(RuleKind::Deny),
            _ => None,
        }
    }
}

impl Serialize for RuleKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Hits of one rule, kept across reloads for as long as a bundle has a rule of that name and
/// kind.
#[derive(Debug)]
pub(super) struct RuleStat {
    kind: RuleKind,
    /// `wardgate_rule_hits_total{rule,action}` or `wardgate_break_glass_uses_total{rule}`.
    hits: IntCounter,
    /// Unix milliseconds of the latest hit (by the checks' own time); `i64::MIN` = never.
    last_hit_ms: AtomicI64,
}

impl RuleStat {
    fn hit(&self, at_ms: i64) {
        self.hits.inc();
        self.last_hit_ms.fetch_max(at_ms, Ordering::Relaxed);
    }
}

/// One rule of the bundle in force, as `/v1/rules` lists it.
#[derive(Debug)]
pub(super) struct RuleEntry {
    /// The policy's own string (shared, not copied), like `file`.
    name: Arc<str>,
    kind: RuleKind,
    file: Arc<str>,
    line: u64,
    stat: Arc<RuleStat>,
}

/// One rule with its use, as `/v1/rules` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleUsage {
    /// Rule name.
    pub name: String,
    /// `allow`, `deny` or `break_glass`.
    pub kind: RuleKind,
    /// Bundle file it is defined in.
    pub file: String,
    /// Line of its definition.
    pub line: u64,
    /// Checks it decided since this process started (kept across reloads while the rule
    /// exists).
    pub hits: u64,
    /// The latest of those checks (RFC 3339), `None` if it never decided one.
    pub last_hit: Option<String>,
}

impl Telemetry {
    pub(super) fn count_rule(
        &self,
        snapshot: Option<&Snapshot>,
        decision: &Decision<'_>,
        rule: &str,
        time: jiff::Timestamp,
    ) {
        let Some(kind) = RuleKind::of_decision(decision) else {
            return;
        };
        let at = time.as_millisecond();
        if let Some(stat) = snapshot
            .and_then(|s| s.rules.get(rule))
            .filter(|stat| stat.kind == kind)
        {
            stat.hit(at);
            return;
        }
        // Only between a policy being stored and `bundle_swapped` being called.
        let stat = {
            let mut registry = self
                .rule_registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match registry.get(rule) {
                Some(stat) if stat.kind == kind => Arc::clone(stat),
                _ => {
                    let stat = self.new_rule_stat(rule, kind);
                    registry.insert(rule.into(), Arc::clone(&stat));
                    stat
                }
            }
        };
        stat.hit(at);
    }

    fn new_rule_stat(&self, name: &str, kind: RuleKind) -> Arc<RuleStat> {
        let hits = match kind {
            RuleKind::BreakGlass => self.break_glass_uses.with_label_values(&[name]),
            RuleKind::Allow | RuleKind::Deny => {
                self.rule_hits.with_label_values(&[name, kind.as_str()])
            }
        };
        Arc::new(RuleStat {
            kind,
            hits,
            last_hit_ms: AtomicI64::new(i64::MIN),
        })
    }

    fn remove_rule_series(&self, name: &str, kind: RuleKind) {
        let _ = match kind {
            RuleKind::BreakGlass => self.break_glass_uses.remove_label_values(&[name]),
            RuleKind::Allow | RuleKind::Deny => {
                self.rule_hits.remove_label_values(&[name, kind.as_str()])
            }
        };
    }

    /// The statistics of `policy`'s rules, by name and in bundle order, reusing those of rules
    /// that stay and removing the series of rules that are gone.
    pub(super) fn resolve_rules(
        &self,
        policy: &Policy,
    ) -> (FnvHashMap<Arc<str>, Arc<RuleStat>>, Vec<RuleEntry>) {
        let mut rule_list = Vec::new();
        let mut rules = FnvHashMap::default();
        let mut registry = self
            .rule_registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = FnvHashMap::default();
        for info in policy.rules() {
            let kind = RuleKind::of_rule(&info);
            let stat = match registry.get(info.name) {
                Some(stat) if stat.kind == kind => Arc::clone(stat),
                _ => self.new_rule_stat(info.name, kind),
            };
            let name = info.shared_name();
            next.insert(Arc::clone(&name), Arc::clone(&stat));
            rules.insert(Arc::clone(&name), Arc::clone(&stat));
            rule_list.push(RuleEntry {
                name,
                kind,
                file: info.shared_file(),
                line: info.line,
                stat,
            });
        }
        for (name, stat) in registry.iter() {
            let stays = next.get(name).is_some_and(|s| Arc::ptr_eq(s, stat));
            if !stays {
                self.remove_rule_series(name, stat.kind);
            }
        }
        *registry = next;
        (rules, rule_list)
    }

    /// Every rule of the bundle in force, in bundle order then break-glass entries, with its
    /// hits; `None` before the first bundle.
    pub fn rules(&self) -> Option<(BundleInfo, Vec<RuleUsage>)> {
        let snapshot = self.snapshot.load_full()?;
        let rules = snapshot
            .rule_list
            .iter()
            .map(|r| {
                let last = r.stat.last_hit_ms.load(Ordering::Relaxed);
                RuleUsage {
                    name: r.name.to_string(),
                    kind: r.kind,
                    file: r.file.to_string(),
                    line: r.line,
                    hits: r.stat.hits.get(),
                    last_hit: (last != i64::MIN)
                        .then(|| jiff::Timestamp::from_millisecond(last).ok())
                        .flatten()
                        .map(|t| t.to_string()),
                }
            })
            .collect();
        Some((snapshot.info.clone(), rules))
    }
}
