//! Rule statistics: the hits of every rule and break-glass entry of the bundle in force
//! (`wardgate_rule_hits_total`, `wardgate_break_glass_uses_total`, `/v1/rules`), kept across
//! reloads for as long as a rule keeps its name and kind.
//!
//! A check finds its rule's statistic in the current snapshot and increments atomics; only a
//! check that names a rule the snapshot does not know yet (between a policy being stored and
//! [`Telemetry::bundle_swapped`]) takes the rule book's mutex. The two metrics are not kept as
//! Prometheus children (each would hold its own copy of the rule name, its label pairs and the
//! metric's description): [`RuleSeries`] renders one series per statistic of the book when the
//! registry is gathered, from the same atomics, and `/metrics` skips even that:
//! [`RuleBook::write_text`] writes the series straight into the exposition text, so a scrape of
//! a large bundle allocates no message, label pair or string per rule. Rule names are the
//! policy's own strings, shared, never copied. This module never labels a series with anything but a rule name from the
//! bundle and a fixed kind.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fnv::FnvHashMap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Registry, TextEncoder};
use serde::Serialize;

use super::metrics::{self, MetricsError};
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
    hits: AtomicU64,
    /// Unix milliseconds of the latest hit (by the checks' own time); `i64::MIN` = never.
    last_hit_ms: AtomicI64,
}

impl RuleStat {
    fn new(kind: RuleKind) -> Arc<RuleStat> {
        Arc::new(RuleStat {
            kind,
            hits: AtomicU64::new(0),
            last_hit_ms: AtomicI64::new(i64::MIN),
        })
    }

    fn hit(&self, at_ms: i64) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.last_hit_ms.fetch_max(at_ms, Ordering::Relaxed);
    }
}

/// Every rule statistic by name: the bundle in force's (resolved at each swap) and any a check
/// met mid-swap. What a swap reuses, what the slow path finds, and what a scrape renders.
#[derive(Debug)]
pub(super) struct RuleBook {
    stats: Mutex<FnvHashMap<Arc<str>, Arc<RuleStat>>>,
    hits: Desc,
    break_glass_uses: Desc,
}

impl RuleBook {
    /// An empty book, its two metrics registered with `registry` (rendered by [`RuleSeries`]).
    pub(super) fn register(registry: &Registry) -> Result<Arc<RuleBook>, MetricsError> {
        let book = Arc::new(RuleBook {
            stats: Mutex::default(),
            hits: metrics::desc(
                "wardgate_rule_hits_total",
                "Checks decided by each rule of the bundle in force, by rule name and action.",
                &["rule", "action"],
            )?,
            break_glass_uses: metrics::desc(
                "wardgate_break_glass_uses_total",
                "Checks allowed by each break-glass entry of the bundle in force.",
                &["rule"],
            )?,
        });
        metrics::register_boxed(registry, Box::new(RuleSeries(Arc::clone(&book))))?;
        Ok(book)
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, FnvHashMap<Arc<str>, Arc<RuleStat>>> {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The collector of `wardgate_rule_hits_total` and `wardgate_break_glass_uses_total`: one
/// counter per statistic of the [`RuleBook`], labelled as a counter vector would label it. It
/// serves whoever gathers the registry itself; `/metrics` skips it (see [`WrittenDirectly`]) and
/// writes the same series with [`RuleBook::write_text`].
#[derive(Debug)]
struct RuleSeries(Arc<RuleBook>);

thread_local! {
    /// Set while `/metrics` gathers the registry on this thread: [`RuleSeries`] then collects
    /// nothing, and the registry drops its two (empty) families.
    static WRITING_DIRECTLY: Cell<bool> = const { Cell::new(false) };
}

/// While alive, a gather on this thread leaves the per-rule series out (the caller writes them
/// with [`RuleBook::write_text`]).
pub(super) struct WrittenDirectly(());

impl WrittenDirectly {
    pub(super) fn enter() -> WrittenDirectly {
        WRITING_DIRECTLY.with(|flag| flag.set(true));
        WrittenDirectly(())
    }
}

impl Drop for WrittenDirectly {
    fn drop(&mut self) {
        WRITING_DIRECTLY.with(|flag| flag.set(false));
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn family(desc: &Desc, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(MetricType::COUNTER);
    family.set_metric(metrics);
    family
}

impl Collector for RuleSeries {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.hits, &self.0.break_glass_uses]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if WRITING_DIRECTLY.with(Cell::get) {
            return Vec::new();
        }
        let (mut hits, mut uses) = (Vec::new(), Vec::new());
        for (name, stat) in self.0.handles() {
            let mut counter = Counter::default();
            counter.set_value(stat.hits.load(Ordering::Relaxed) as f64);
            // Label pairs sorted by label name, as the registry's own vectors write them.
            let (labels, into) = match stat.kind {
                RuleKind::BreakGlass => (vec![label("rule", &name)], &mut uses),
                RuleKind::Allow | RuleKind::Deny => (
                    vec![label("action", stat.kind.as_str()), label("rule", &name)],
                    &mut hits,
                ),
            };
            let mut metric = Metric::from_label(labels);
            metric.set_counter(counter);
            into.push(metric);
        }
        // The registry drops a family without series and sorts the series of the others.
        vec![
            family(&self.0.hits, hits),
            family(&self.0.break_glass_uses, uses),
        ]
    }
}

/// `text` with backslash, newline and (in a label value) double quote escaped, as the
/// Prometheus text format requires.
fn push_escaped(out: &mut String, text: &str, double_quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if double_quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a counter family.
fn push_header(out: &mut String, desc: &Desc) {
    out.push_str("# HELP ");
    out.push_str(&desc.fq_name);
    out.push(' ');
    push_escaped(out, &desc.help, false);
    out.push_str("\n# TYPE ");
    out.push_str(&desc.fq_name);
    out.push_str(" counter\n");
}

impl RuleBook {
    /// Every statistic with its name, handles only (a check mid-swap may wait for the lock).
    fn handles(&self) -> Vec<Handle> {
        self.stats()
            .iter()
            .map(|(name, stat)| (Arc::clone(name), Arc::clone(stat)))
            .collect()
    }

    /// Write `families` (gathered with [`WrittenDirectly`] in force) in the text format to
    /// `out`, with `wardgate_rule_hits_total` and `wardgate_break_glass_uses_total` written in
    /// their place straight from the statistics: the same lines, in the same order, that
    /// encoding [`RuleSeries`]'s families would give, without a message per series.
    pub(super) fn write_text(
        &self,
        families: &[MetricFamily],
        out: &mut String,
    ) -> prometheus::Result<()> {
        let mut stats = self.handles();
        // Series in the registry's order: by label values, the action before the rule name.
        stats.sort_unstable_by(|(a_name, a), (b_name, b)| {
            let group = |s: &RuleStat| (s.kind == RuleKind::BreakGlass, s.kind.as_str());
            group(a).cmp(&group(b)).then_with(|| a_name.cmp(b_name))
        });
        let split = stats.partition_point(|(_, s)| s.kind != RuleKind::BreakGlass);
        let (hits, uses) = stats.split_at(split);
        out.reserve(stats.iter().map(|(name, _)| name.len() + 64).sum::<usize>());
        let mut ours: [(&Desc, &[Handle]); 2] =
            [(&self.hits, hits), (&self.break_glass_uses, uses)];
        ours.sort_by(|a, b| a.0.fq_name.cmp(&b.0.fq_name));
        let mut ours = ours
            .iter()
            .filter(|(_, series)| !series.is_empty())
            .peekable();
        let encoder = TextEncoder::new();
        for family in families {
            while let Some((desc, series)) =
                ours.next_if(|(d, _)| d.fq_name.as_str() < family.name())
            {
                write_family(desc, series, out);
            }
            encoder.encode_utf8(std::slice::from_ref(family), out)?;
        }
        for (desc, series) in ours {
            write_family(desc, series, out);
        }
        Ok(())
    }
}

/// A rule's name and statistic, as a scrape takes them from the book.
type Handle = (Arc<str>, Arc<RuleStat>);

/// One counter family of per-rule series, in the text format.
fn write_family(desc: &Desc, series: &[Handle], out: &mut String) {
    push_header(out, desc);
    for (name, stat) in series {
        out.push_str(&desc.fq_name);
        out.push('{');
        if stat.kind != RuleKind::BreakGlass {
            out.push_str("action=\"");
            out.push_str(stat.kind.as_str());
            out.push_str("\",");
        }
        out.push_str("rule=\"");
        push_escaped(out, name, true);
        // The value as the registry's encoder writes a counter: an f64, shortest form.
        let _ = writeln!(out, "\"}} {}", stat.hits.load(Ordering::Relaxed) as f64);
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
            let mut stats = self.rule_book.stats();
            match stats.get(rule) {
                Some(stat) if stat.kind == kind => Arc::clone(stat),
                _ => {
                    let stat = RuleStat::new(kind);
                    stats.insert(rule.into(), Arc::clone(&stat));
                    stat
                }
            }
        };
        stat.hit(at);
    }

    /// The statistics of `policy`'s rules, by name and in bundle order, reusing those of rules
    /// that stay; the book then holds exactly these (the series of rules that are gone are no
    /// longer rendered).
    pub(super) fn resolve_rules(
        &self,
        policy: &Policy,
    ) -> (FnvHashMap<Arc<str>, Arc<RuleStat>>, Vec<RuleEntry>) {
        let mut rule_list = Vec::new();
        let mut rules = FnvHashMap::default();
        let mut stats = self.rule_book.stats();
        for info in policy.rules() {
            let kind = RuleKind::of_rule(&info);
            let stat = match stats.get(info.name) {
                Some(stat) if stat.kind == kind => Arc::clone(stat),
                _ => RuleStat::new(kind),
            };
            let name = info.shared_name();
            rules.insert(Arc::clone(&name), Arc::clone(&stat));
            rule_list.push(RuleEntry {
                name,
                kind,
                file: info.shared_file(),
                line: info.line,
                stat,
            });
        }
        stats.clone_from(&rules);
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
                    hits: r.stat.hits.load(Ordering::Relaxed),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry's own encoding of everything, rule series included (the reference), and
    /// `/metrics`'s (the same registry gathered without them, the rule series written directly).
    fn both(registry: &Registry, book: &RuleBook) -> (String, String) {
        let reference = TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        let families = {
            let _direct = WrittenDirectly::enter();
            registry.gather()
        };
        let mut direct = String::new();
        book.write_text(&families, &mut direct).expect("write");
        (reference, direct)
    }

    fn add(book: &RuleBook, name: &str, kind: RuleKind, hits: u64) {
        let stat = RuleStat::new(kind);
        stat.hits.store(hits, Ordering::Relaxed);
        book.stats().insert(name.into(), stat);
    }

    #[test]
    fn direct_text_matches_the_registry_encoding_byte_for_byte() {
        let registry = Registry::new();
        let book = RuleBook::register(&registry).expect("register");
        // Families sorting before, between and after the two rule families.
        for name in ["a_first", "wardgate_c_between", "zz_last"] {
            metrics::counter(&registry, name, "A \\ help\nline.")
                .expect("counter")
                .inc();
        }
        let (reference, direct) = both(&registry, &book);
        assert_eq!(
            direct, reference,
            "no rules: neither rule family is written"
        );
        assert!(!direct.contains("wardgate_rule_hits_total"));

        add(&book, "plain", RuleKind::Allow, 3);
        add(&book, "b", RuleKind::Deny, 1 << 60);
        add(&book, "a\"quote\\back\nline", RuleKind::Allow, 0);
        add(&book, "Zed", RuleKind::Deny, 7);
        add(&book, "ünï", RuleKind::Allow, 1);
        let (reference, direct) = both(&registry, &book);
        assert_eq!(direct, reference, "hits, no break-glass family");
        assert!(!direct.contains("wardgate_break_glass_uses_total"));

        add(&book, "glass \"2\"", RuleKind::BreakGlass, 2);
        add(&book, "glass1", RuleKind::BreakGlass, 0);
        let (reference, direct) = both(&registry, &book);
        assert_eq!(direct, reference);
        assert!(direct.contains(
            "wardgate_rule_hits_total{action=\"allow\",rule=\"a\\\"quote\\\\back\\nline\"} 0\n"
        ));
        assert!(direct.contains("wardgate_break_glass_uses_total{rule=\"glass \\\"2\\\"\"} 2\n"));
    }

    #[test]
    fn the_registry_still_gathers_rule_series_outside_a_direct_write() {
        let registry = Registry::new();
        let book = RuleBook::register(&registry).expect("register");
        add(&book, "r", RuleKind::Allow, 4);
        {
            let _direct = WrittenDirectly::enter();
            assert!(registry.gather().is_empty());
        }
        let families = registry.gather();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].name(), "wardgate_rule_hits_total");
    }
}
