//! Telemetry: the Prometheus metrics and the decision-log writer (DESIGN §6).
//!
//! One [`Telemetry`] value, shared behind an `Arc`, owns a private Prometheus [`Registry`] and
//! the decision-log queue. The server calls [`Telemetry::record_check`] once per Check; the
//! reloader calls [`Telemetry::bundle_swapped`] and [`Telemetry::reload_attempt`]; the admin
//! listener renders [`Telemetry::render_metrics`] and reads [`Telemetry::bundle`] and
//! [`Telemetry::rules`].
//!
//! # The check path
//!
//! Recording a check takes no lock that other checks contend on. Everything a check touches is
//! resolved when a bundle is swapped in and published as one immutable [`Snapshot`] through
//! `arc-swap`: segment name → index maps, a dense table of pre-resolved `wardgate_checks_total`
//! counters indexed by (decision and reason, source segment, destination segment), and the
//! per-rule statistics (hit counter and last-hit time, both atomics). A check loads the snapshot,
//! does two small hash lookups keyed by names that borrow from the policy, and increments
//! atomics. The latency histogram is lock-free in the `prometheus` crate. A decision-log entry is
//! handed to a bounded queue with `try_send`; when the queue is full the entry is dropped and
//! counted, never waited for.
//!
//! Only during the microseconds between the reloader storing a new policy and calling
//! [`Telemetry::bundle_swapped`] can a check name a rule or segment the snapshot does not know
//! yet; it then takes a slow path (a mutex held for one map lookup, or the `prometheus` crate's
//! own label lookup) so that nothing is lost.
//!
//! # Labels
//!
//! Label values come only from the bundle (segment and rule names, the bundle digest and
//! source) and from fixed sets in the code (decision, reason, reload result), never from request
//! data, so the number of series is bounded by the bundle. Where a decision has no segment (an
//! unauthenticated caller, no policy, an identity outside every segment) the label is
//! [`NO_SEGMENT`]. Combinations are registered at zero when a bundle is swapped in (up to
//! [`PREREGISTER_LIMIT`] series), so that `rate()` and `increase()` see the first event.

mod log_writer;

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use fnv::FnvHashMap;
use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde::Serialize;

pub use log_writer::{DecisionLogConfig, DecisionLogTarget, DecisionLogTargetError};

use crate::policy::{Action, Decision, Policy, Reason, Verdict};

/// Label value of `source_segment` / `destination_segment` where a decision has no segment.
/// Segment names start with `[a-z0-9]`, so it can never clash with one.
pub const NO_SEGMENT: &str = "-";

/// Most `wardgate_checks_total` series registered at zero when a bundle is swapped in. Beyond
/// that (bundles with more than about ten segments) series appear on first use.
pub const PREREGISTER_LIMIT: usize = 1024;

/// Upper bounds of the check-latency histogram buckets, in seconds: 1 µs to 100 ms.
pub const LATENCY_BUCKETS: [f64; 16] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1,
];

/// The results a reload attempt can end in (`wardgate_reload_attempts_total{result}`): the
/// labels of [`crate::reload::Outcome`]. YAML and validation errors are both `invalid`.
pub const RELOAD_RESULTS: [&str; 7] = [
    "ok",
    "unchanged",
    "invalid",
    "signature",
    "rollback",
    "too_large",
    "fetch_error",
];

/// How long `serve` waits, after its listeners have stopped, for the decision log to be written
/// and flushed.
pub const DECISION_LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Every (decision, reason) pair a check can end in.
const OUTCOMES: [(Verdict, Reason); 9] = [
    (Verdict::Allow, Reason::Rule),
    (Verdict::Allow, Reason::BreakGlass),
    (Verdict::Deny, Reason::NoPolicy),
    (Verdict::Deny, Reason::Unauthenticated),
    (Verdict::Deny, Reason::BadPath),
    (Verdict::Deny, Reason::BadCertificate),
    (Verdict::Deny, Reason::SvidLifetime),
    (Verdict::Deny, Reason::Rule),
    (Verdict::Deny, Reason::DefaultDeny),
];

/// Outcomes that never carry a segment (decided before the source is placed in one).
fn unsegmented_only(outcome: (Verdict, Reason)) -> bool {
    matches!(outcome.1, Reason::NoPolicy | Reason::Unauthenticated)
}

fn outcome_index(verdict: Verdict, reason: Reason) -> Option<usize> {
    OUTCOMES
        .iter()
        .position(|&(v, r)| v == verdict && r == reason)
}

/// One decided Check, as the ext_authz adapter hands it over: the request as the policy judged
/// it and the decision, by reference. Every string borrows from the `CheckRequest` or the
/// policy; nothing is copied unless the decision log takes the entry.
#[derive(Debug, Clone, Copy)]
pub struct CheckEvent<'a> {
    /// The request as judged: principals (the destination reported or pinned), method, raw
    /// `:path` (the decision log cuts off query and fragment), host and the instant judged at.
    pub request: &'a crate::policy::Request<'a>,
    /// The decision.
    pub decision: &'a Decision<'a>,
    /// Revision of the bundle that decided (`None` without a policy).
    pub revision: Option<u64>,
    /// Time spent deciding.
    pub elapsed: Duration,
    /// Envoy's request id.
    pub request_id: Option<&'a str>,
    /// The stated break-glass reason, on break-glass allows only.
    pub break_glass_reason: Option<&'a str>,
}

/// Settings of a [`Telemetry`].
#[derive(Debug, Default)]
pub struct TelemetryConfig {
    /// Where decision-log entries go; `None` turns the decision log off.
    pub decision_log: Option<DecisionLogConfig>,
}

/// How a rule is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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

    fn of_decision(decision: &Decision<'_>) -> Option<RuleKind> {
        match (decision.reason, decision.verdict) {
            (Reason::BreakGlass, _) => Some(RuleKind::BreakGlass),
            (Reason::Rule, Verdict::Allow) => Some(RuleKind::Allow),
            (Reason::Rule, Verdict::Deny) => Some(RuleKind::Deny),
            _ => None,
        }
    }
}

/// Hits of one rule, kept across reloads for as long as a bundle has a rule of that name and
/// kind.
#[derive(Debug)]
struct RuleStat {
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
struct RuleEntry {
    name: Box<str>,
    kind: RuleKind,
    file: Box<str>,
    line: u64,
    stat: Arc<RuleStat>,
}

/// What [`Telemetry::bundle_swapped`] recorded about the bundle in force (`/v1/bundle`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BundleInfo {
    /// The bundle's `revision`.
    pub revision: u64,
    /// `sha256:<hex>` over the bundle's files.
    pub digest: String,
    /// Where it came from (a URL without credentials or query).
    pub source: String,
    /// When it was swapped in (RFC 3339, UTC).
    pub loaded_at: String,
    /// Number of rules, break-glass entries not counted.
    pub rule_count: usize,
    /// Number of break-glass entries.
    pub break_glass_count: usize,
    /// Number of segments.
    pub segment_count: usize,
    /// Time spent parsing, validating and compiling it, in milliseconds.
    pub compile_ms: f64,
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

/// Everything a check needs, resolved for one bundle.
struct Snapshot {
    info: BundleInfo,
    /// `[NO_SEGMENT, segment names in bundle order...]`.
    segment_names: Vec<Box<str>>,
    /// Segment name → index into `segment_names` (≥ 1).
    segments: FnvHashMap<Box<str>, usize>,
    /// `wardgate_checks_total` handles, by `(outcome * width + source) * width + destination`,
    /// where `width = segment_names.len()`. Empty when that table would be unreasonably large.
    cells: Box<[OnceLock<IntCounter>]>,
    rules: FnvHashMap<Box<str>, Arc<RuleStat>>,
    rule_list: Vec<RuleEntry>,
}

/// Largest dense counter table; beyond it checks use the `prometheus` crate's label lookup.
const MAX_CELLS: usize = 1 << 16;

impl Snapshot {
    fn width(&self) -> usize {
        self.segment_names.len()
    }

    fn segment_index(&self, name: Option<&str>) -> Option<usize> {
        match name {
            None => Some(0),
            Some(name) => self.segments.get(name).copied(),
        }
    }

    fn cell(
        &self,
        outcome: usize,
        source: usize,
        destination: usize,
    ) -> Option<&OnceLock<IntCounter>> {
        let width = self.width();
        self.cells
            .get((outcome * width + source) * width + destination)
    }
}

/// The metrics and the decision log of one wardgate process. See the module documentation.
pub struct Telemetry {
    registry: Registry,
    checks: IntCounterVec,
    /// `wardgate_checks_total` for checks that carry no segment, by outcome.
    unsegmented: Vec<IntCounter>,
    check_duration: Histogram,
    rule_hits: IntCounterVec,
    break_glass_uses: IntCounterVec,
    bundle_revision: IntGauge,
    bundle_info: IntGaugeVec,
    bundle_rules: IntGauge,
    bundle_segments: IntGauge,
    bundle_loaded: Gauge,
    bundle_compile: Gauge,
    reload_attempts: IntCounterVec,
    reload_last_success: Gauge,
    reload_failures: IntGauge,
    ready: IntGauge,
    svid_expiry: OnceLock<Gauge>,
    log: log_writer::DecisionLog,
    snapshot: ArcSwapOption<Snapshot>,
    /// Every rule statistic by name: the slow path during a swap, and reuse across swaps.
    rule_registry: Mutex<FnvHashMap<Box<str>, Arc<RuleStat>>>,
    started: jiff::Timestamp,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("bundle", &self.bundle())
            .field("decision_log", &self.log)
            .finish_non_exhaustive()
    }
}

/// Register `collector` with `registry`. Names and labels are fixed in this file, so a failure
/// is a programming error that the unit tests catch; in production it is logged, and the
/// metric still counts, it is just not exported.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    if let Err(error) = registry.register(Box::new(collector.clone())) {
        tracing::error!(%error, "cannot register a metric");
    }
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, vec)
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, gauge)
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

/// Remove credentials, query and fragment from a URL-shaped source, so that `/v1/bundle` and
/// the `wardgate_bundle_info` metric never show a token.
fn redact_source(source: &str) -> String {
    let Some(scheme_end) = source.find("://") else {
        return source.to_owned();
    };
    let rest = &source[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path = &rest[authority_end..];
    let path = crate::decision_log::loggable_path(path);
    format!("{}://{host}{path}", &source[..scheme_end])
}

fn timestamp_seconds(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1e3
}

/// Parse `--decision-log-sample-allows`: a number from 0 to 1.
pub fn parse_sample_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

impl Telemetry {
    /// Register every metric, and start the decision-log writer when `config` has one.
    pub fn new(config: TelemetryConfig) -> Arc<Self> {
        let registry = Registry::new();
        let r = &registry;

        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "wardgate_build_info",
                    "Always 1; the version label names the running build.",
                ),
                &["version"],
            )
            .unwrap_or_else(|e| panic!("wardgate_build_info: {e}")),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let checks = counter_vec(
            r,
            "wardgate_checks_total",
            "Checks decided, by decision, reason, source segment and destination segment.",
            &[
                "decision",
                "reason",
                "source_segment",
                "destination_segment",
            ],
        );
        let unsegmented = OUTCOMES
            .iter()
            .map(|(v, reason)| {
                checks.with_label_values(&[v.as_str(), reason.as_str(), NO_SEGMENT, NO_SEGMENT])
            })
            .collect();
        let check_duration = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "wardgate_check_duration_seconds",
                    "Time wardgate spends deciding one Check (identity, certificate, path, rules), excluding gRPC transport.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap_or_else(|e| panic!("wardgate_check_duration_seconds: {e}")),
        );
        let rule_hits = counter_vec(
            r,
            "wardgate_rule_hits_total",
            "Checks decided by each rule of the bundle in force, by rule name and action.",
            &["rule", "action"],
        );
        let break_glass_uses = counter_vec(
            r,
            "wardgate_break_glass_uses_total",
            "Checks allowed by each break-glass entry of the bundle in force.",
            &["rule"],
        );
        let bundle_revision = int_gauge(
            r,
            "wardgate_bundle_revision",
            "Revision of the bundle in force (absent until one is).",
        );
        let bundle_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "wardgate_bundle_info",
                    "Always 1; labels name the digest and source of the bundle in force.",
                ),
                &["digest", "source"],
            )
            .unwrap_or_else(|e| panic!("wardgate_bundle_info: {e}")),
        );
        let bundle_rules = int_gauge(
            r,
            "wardgate_bundle_rules",
            "Rules in the bundle in force (break-glass entries not counted).",
        );
        let bundle_segments = int_gauge(
            r,
            "wardgate_bundle_segments",
            "Segments in the bundle in force.",
        );
        let bundle_loaded = register(
            r,
            gauge(
                "wardgate_bundle_loaded_timestamp_seconds",
                "Unix time the bundle in force was swapped in (last successful load).",
            ),
        );
        let bundle_compile = register(
            r,
            gauge(
                "wardgate_bundle_compile_duration_seconds",
                "Time spent parsing, validating and compiling the bundle in force.",
            ),
        );
        let reload_attempts = counter_vec(
            r,
            "wardgate_reload_attempts_total",
            "Bundle reload attempts, by result.",
            &["result"],
        );
        for result in RELOAD_RESULTS {
            reload_attempts.with_label_values(&[result]);
        }
        let reload_last_success = register(
            r,
            gauge(
                "wardgate_reload_last_success_timestamp_seconds",
                "Unix time of the latest reload attempt that ended ok or unchanged (0: none yet).",
            ),
        );
        let reload_failures = int_gauge(
            r,
            "wardgate_reload_consecutive_failures",
            "Reload attempts refused or failed in a row since the latest ok or unchanged one.",
        );
        let ready = int_gauge(
            r,
            "wardgate_ready",
            "1 when a valid bundle is in force (what /readyz reports), else 0.",
        );
        let log = log_writer::DecisionLog::new(r, config.decision_log);

        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(error) = registry.register(Box::new(process)) {
                tracing::error!(%error, "cannot register the process collector");
            }
        }

        Arc::new(Telemetry {
            registry,
            checks,
            unsegmented,
            check_duration,
            rule_hits,
            break_glass_uses,
            bundle_revision,
            bundle_info,
            bundle_rules,
            bundle_segments,
            bundle_loaded,
            bundle_compile,
            reload_attempts,
            reload_last_success,
            reload_failures,
            ready,
            svid_expiry: OnceLock::new(),
            log,
            snapshot: ArcSwapOption::empty(),
            rule_registry: Mutex::new(FnvHashMap::default()),
            started: jiff::Timestamp::now(),
        })
    }
}

impl Telemetry {
    /// Telemetry as `serve`'s flags describe it: open the decision-log `target` (fails when a
    /// file cannot be opened for appending) with a queue of `queue` entries, logging
    /// `sample_allows` of allow decisions.
    pub fn from_flags(
        target: &DecisionLogTarget,
        queue: usize,
        sample_allows: f64,
    ) -> std::io::Result<Arc<Self>> {
        let decision_log = DecisionLogConfig::open(target, queue, sample_allows)?;
        match &decision_log {
            None => tracing::info!("decision log off"),
            Some(log) => tracing::info!(
                decision_log = %log.description,
                queue = log.queue,
                sample_allows = log.sample_allows,
                "writing the decision log (one JSON object per line)"
            ),
        }
        Ok(Telemetry::new(TelemetryConfig { decision_log }))
    }

    /// Record one decided Check: the counters, the latency histogram, the deciding rule's hits
    /// and, where the sampling says so, a decision-log entry. Never blocks, never fails.
    pub fn record_check(&self, event: &CheckEvent<'_>) {
        let decision = event.decision;
        self.check_duration.observe(event.elapsed.as_secs_f64());
        let snapshot = self.snapshot.load();
        let snapshot = snapshot.as_deref();
        self.count_check(snapshot, decision);
        if let Some(rule) = decision.rule {
            self.count_rule(snapshot, decision, rule, event.request.time);
        }
        self.log.offer(event);
    }

    fn count_check(&self, snapshot: Option<&Snapshot>, decision: &Decision<'_>) {
        let outcome = outcome_index(decision.verdict, decision.reason);
        if let Some(outcome) = outcome {
            if decision.source_segment.is_none() && decision.destination_segment.is_none() {
                if let Some(counter) = self.unsegmented.get(outcome) {
                    counter.inc();
                    return;
                }
            }
            if let Some(snapshot) = snapshot {
                let source = snapshot.segment_index(decision.source_segment);
                let destination = snapshot.segment_index(decision.destination_segment);
                if let (Some(s), Some(d)) = (source, destination) {
                    if let Some(cell) = snapshot.cell(outcome, s, d) {
                        cell.get_or_init(|| {
                            self.checks.with_label_values(&[
                                decision.verdict.as_str(),
                                decision.reason.as_str(),
                                &snapshot.segment_names[s],
                                &snapshot.segment_names[d],
                            ])
                        })
                        .inc();
                        return;
                    }
                }
            }
        }
        // A segment the snapshot does not know (mid-swap), a bundle too large for the dense
        // table, or a reason added later: the crate's own label lookup.
        self.checks
            .with_label_values(&[
                decision.verdict.as_str(),
                decision.reason.as_str(),
                decision.source_segment.unwrap_or(NO_SEGMENT),
                decision.destination_segment.unwrap_or(NO_SEGMENT),
            ])
            .inc();
    }

    fn count_rule(
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

    /// A new bundle is in force: publish its facts (`wardgate_bundle_*`, `/v1/bundle`) and
    /// resolve everything checks against it will count. Hit counts of rules that keep their
    /// name and kind carry over; series of rules and segments that are gone are removed.
    ///
    /// Call it right after storing the policy in the handle (checks that already see the new
    /// policy in between take the slow path and are still counted).
    pub fn bundle_swapped(&self, policy: &Policy, source: &str, compile_time: Duration) {
        let now = jiff::Timestamp::now();
        let previous = self.snapshot.load_full();
        let source = redact_source(source);

        // Rules, in bundle order, reusing the statistics of rules that stay.
        let mut rule_list = Vec::new();
        let mut rules = FnvHashMap::default();
        {
            let mut registry = self
                .rule_registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut next = FnvHashMap::default();
            for info in policy.rules() {
                let kind = match (info.break_glass, info.action) {
                    (true, _) => RuleKind::BreakGlass,
                    (false, Action::Allow) => RuleKind::Allow,
                    (false, Action::Deny) => RuleKind::Deny,
                };
                let stat = match registry.get(info.name) {
                    Some(stat) if stat.kind == kind => Arc::clone(stat),
                    _ => self.new_rule_stat(info.name, kind),
                };
                next.insert(Box::<str>::from(info.name), Arc::clone(&stat));
                rules.insert(Box::<str>::from(info.name), Arc::clone(&stat));
                rule_list.push(RuleEntry {
                    name: info.name.into(),
                    kind,
                    file: info.file.into(),
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
        }

        // Segments and the dense table of check counters.
        let mut segment_names: Vec<Box<str>> = vec![NO_SEGMENT.into()];
        segment_names.extend(policy.segment_names().map(Box::<str>::from));
        let segments: FnvHashMap<Box<str>, usize> = segment_names
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, name)| (name.clone(), i))
            .collect();
        let width = segment_names.len();
        let size = OUTCOMES.len() * width * width;
        let cells: Box<[OnceLock<IntCounter>]> = if size <= MAX_CELLS {
            (0..size).map(|_| OnceLock::new()).collect()
        } else {
            Box::new([])
        };
        let possible = 2 + (OUTCOMES.len() - 2) * width * width;
        if possible <= PREREGISTER_LIMIT {
            for (o, &(verdict, reason)) in OUTCOMES.iter().enumerate() {
                for s in 0..width {
                    for d in 0..width {
                        if unsegmented_only((verdict, reason)) && (s, d) != (0, 0) {
                            continue;
                        }
                        let counter = self.checks.with_label_values(&[
                            verdict.as_str(),
                            reason.as_str(),
                            &segment_names[s],
                            &segment_names[d],
                        ]);
                        if let Some(cell) = cells.get((o * width + s) * width + d) {
                            let _ = cell.set(counter);
                        }
                    }
                }
            }
        }
        if let Some(old) = &previous {
            for gone in old
                .segment_names
                .iter()
                .skip(1)
                .filter(|name| !segments.contains_key(*name))
            {
                for (verdict, reason) in OUTCOMES {
                    for other in old.segment_names.iter() {
                        let (v, r) = (verdict.as_str(), reason.as_str());
                        let _ = self.checks.remove_label_values(&[v, r, gone, other]);
                        let _ = self.checks.remove_label_values(&[v, r, other, gone]);
                    }
                }
            }
        }

        // Bundle facts.
        let info = BundleInfo {
            revision: policy.revision(),
            digest: policy.digest().to_owned(),
            source,
            loaded_at: now.to_string(),
            rule_count: policy.rule_count(),
            break_glass_count: policy.break_glass_names().count(),
            segment_count: width - 1,
            compile_ms: compile_time.as_secs_f64() * 1e3,
        };
        if let Some(old) = &previous {
            if (&old.info.digest, &old.info.source) != (&info.digest, &info.source) {
                let _ = self
                    .bundle_info
                    .remove_label_values(&[&old.info.digest, &old.info.source]);
            }
        }
        self.bundle_info
            .with_label_values(&[&info.digest, &info.source])
            .set(1);
        self.bundle_revision
            .set(i64::try_from(info.revision).unwrap_or(i64::MAX));
        self.bundle_rules
            .set(i64::try_from(info.rule_count).unwrap_or(i64::MAX));
        self.bundle_segments
            .set(i64::try_from(info.segment_count).unwrap_or(i64::MAX));
        self.bundle_loaded.set(timestamp_seconds(now));
        self.bundle_compile.set(compile_time.as_secs_f64());

        self.snapshot.store(Some(Arc::new(Snapshot {
            info,
            segment_names,
            segments,
            cells,
            rules,
            rule_list,
        })));
    }

    /// One reload attempt ended. `result` is one of [`RELOAD_RESULTS`].
    pub fn reload_attempt(&self, result: &'static str) {
        self.reload_attempts.with_label_values(&[result]).inc();
        if matches!(result, "ok" | "unchanged") {
            self.reload_last_success
                .set(timestamp_seconds(jiff::Timestamp::now()));
            self.reload_failures.set(0);
        } else {
            self.reload_failures.inc();
        }
    }

    /// wardgate's own SVID now expires at `not_after`. The gauge
    /// `wardgate_svid_expiry_timestamp_seconds` is exported from the first call on (a process
    /// without an SVID of its own exports none, so no expiry alert can fire for it).
    pub fn own_svid_expiry(&self, not_after: jiff::Timestamp) {
        let gauge = self.svid_expiry.get_or_init(|| {
            register(
                &self.registry,
                gauge(
                    "wardgate_svid_expiry_timestamp_seconds",
                    "Unix time wardgate's own X.509 SVID expires.",
                ),
            )
        });
        gauge.set(timestamp_seconds(not_after));
    }

    /// The Prometheus text exposition of every metric. `ready` is what `/readyz` reports.
    pub fn render_metrics(&self, ready: bool) -> Result<String, prometheus::Error> {
        self.ready.set(i64::from(ready));
        self.log.refresh_gauges();
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }

    /// Whether decisions are written to a decision log (callers can skip gathering what only
    /// the log reads).
    pub fn decision_log_enabled(&self) -> bool {
        self.log.enabled()
    }

    /// The registry, for embedding wardgate's metrics elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The bundle in force as [`Telemetry::bundle_swapped`] recorded it.
    pub fn bundle(&self) -> Option<BundleInfo> {
        self.snapshot.load().as_ref().map(|s| s.info.clone())
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

    /// When this process started counting (the origin of every hit count).
    pub fn started(&self) -> jiff::Timestamp {
        self.started
    }

    /// Stop the decision log: write what is queued, flush, and stop the writer, waiting at
    /// most `timeout`. Returns whether everything queued was written; entries offered after
    /// this are dropped and counted.
    pub async fn close_decision_log(&self, timeout: Duration) -> bool {
        self.log.close(timeout).await
    }
}

/// The reloader reports every attempt and every swap here.
impl crate::reload::ReloadObserver for Telemetry {
    fn swapped(&self, policy: &Policy, source: &str, compile_time: Duration) {
        self.bundle_swapped(policy, source, compile_time);
    }

    fn attempted(&self, outcome: crate::reload::Outcome) {
        self.reload_attempt(outcome.as_str());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::mpsc as std_mpsc;

    use super::*;
    use crate::decision_log::DecisionRecord;
    use crate::policy::Request;

    const BUNDLE: &str = r#"
version: 1
revision: 3
trust_domains: [hospital.example, partner-lab.example]
segments:
  clinical:
    members: ["spiffe://hospital.example/ns/clinical/**"]
  vendor:
    members: ["spiffe://partner-lab.example/**"]
rules:
  - name: vendor-never-reaches-clinical
    action: deny
    from: [vendor]
    to: [clinical]
  - name: ehr-reads-lab-results
    from: ["spiffe://hospital.example/ns/clinical/sa/ehr"]
    to: ["spiffe://hospital.example/ns/clinical/sa/lab"]
    methods: [GET]
    paths: ["/results/**"]
break_glass:
  header: x-break-glass-reason
  allow:
    - name: er-override
      from: [clinical]
      to: [clinical]
"#;

    const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";
    const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";
    const IMAGING: &str = "spiffe://hospital.example/ns/clinical/sa/imaging";
    const VENDOR: &str = "spiffe://partner-lab.example/ns/vendor/sa/reflab";

    /// A sink the test can read, optionally blocked until the test opens a gate per write.
    #[derive(Clone, Default)]
    struct Sink {
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Gated {
        gate: std_mpsc::Receiver<()>,
        inner: Sink,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.gate.recv();
            self.inner.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn telemetry_with(sink: Box<dyn Write + Send>, queue: usize, sample: f64) -> Arc<Telemetry> {
        Telemetry::new(TelemetryConfig {
            decision_log: Some(DecisionLogConfig {
                sink,
                description: "test".into(),
                queue,
                sample_allows: sample,
            }),
        })
    }

    fn policy() -> Policy {
        Policy::from_yaml_str("test.yaml", BUNDLE).unwrap()
    }

    /// Decide and record one request; returns the decision's reason.
    fn run(
        telemetry: &Telemetry,
        policy: Option<&Policy>,
        source: &str,
        destination: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> &'static str {
        let headers: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut request = Request::new("GET", path);
        request.source = Some(source);
        request.destination = Some(destination);
        request.host = "lab.clinical.svc";
        request.headers = &headers;
        request.time = jiff::Timestamp::now();
        let decision = policy.map_or(Decision::NO_POLICY, |p| p.decide(&request));
        telemetry.record_check(&CheckEvent {
            request: &request,
            decision: &decision,
            revision: policy.map(Policy::revision),
            elapsed: Duration::from_micros(3),
            request_id: Some("req-1"),
            break_glass_reason: headers.get("x-break-glass-reason").map(String::as_str),
        });
        decision.reason.as_str()
    }

    /// The value of one sample, by metric name and exact label set.
    fn sample(telemetry: &Telemetry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = telemetry.registry().gather();
        let family = families.iter().find(|f| f.name() == name)?;
        family
            .get_metric()
            .iter()
            .find(|m| {
                let have: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                have.len() == labels.len() && labels.iter().all(|l| have.contains(l))
            })
            .map(|m| match family.get_field_type() {
                prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                _ => m.get_histogram().get_sample_count() as f64,
            })
    }

    fn checks(t: &Telemetry, decision: &str, reason: &str, src: &str, dst: &str) -> Option<f64> {
        sample(
            t,
            "wardgate_checks_total",
            &[
                ("decision", decision),
                ("reason", reason),
                ("source_segment", src),
                ("destination_segment", dst),
            ],
        )
    }

    fn lines(sink: &Sink) -> Vec<DecisionRecord> {
        let text = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn flush(telemetry: &Telemetry) {
        assert!(telemetry.close_decision_log(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn counts_checks_rules_and_latency_by_label() {
        let sink = Sink::default();
        let t = telemetry_with(Box::new(sink.clone()), 64, 1.0);
        let p = policy();
        // Before any bundle: no_policy, unsegmented, pre-registered.
        assert_eq!(checks(&t, "deny", "no_policy", "-", "-"), Some(0.0));
        assert_eq!(run(&t, None, EHR, LAB, "/results/1", &[]), "no_policy");
        t.bundle_swapped(&p, "test.yaml", Duration::from_millis(2));
        // Pre-registered at zero for every segment pair.
        assert_eq!(checks(&t, "deny", "rule", "vendor", "clinical"), Some(0.0));
        assert_eq!(checks(&t, "allow", "break_glass", "-", "vendor"), Some(0.0));
        assert_eq!(checks(&t, "deny", "unauthenticated", "vendor", "-"), None);

        for _ in 0..3 {
            assert_eq!(run(&t, Some(&p), EHR, LAB, "/results/1", &[]), "rule");
        }
        assert_eq!(run(&t, Some(&p), VENDOR, LAB, "/results/1", &[]), "rule");
        assert_eq!(run(&t, Some(&p), EHR, LAB, "/admin", &[]), "default_deny");
        assert_eq!(
            run(&t, Some(&p), "not a spiffe id", LAB, "/", &[]),
            "unauthenticated"
        );
        let bg = [("x-break-glass-reason", "cardiac arrest, bed 4")];
        assert_eq!(
            run(&t, Some(&p), IMAGING, LAB, "/results/1", &bg),
            "break_glass"
        );

        assert_eq!(checks(&t, "deny", "no_policy", "-", "-"), Some(1.0));
        assert_eq!(
            checks(&t, "allow", "rule", "clinical", "clinical"),
            Some(3.0)
        );
        assert_eq!(checks(&t, "deny", "rule", "vendor", "clinical"), Some(1.0));
        assert_eq!(
            checks(&t, "deny", "default_deny", "clinical", "clinical"),
            Some(1.0)
        );
        assert_eq!(checks(&t, "deny", "unauthenticated", "-", "-"), Some(1.0));
        assert_eq!(
            checks(&t, "allow", "break_glass", "clinical", "clinical"),
            Some(1.0)
        );
        let hits = |rule, action| {
            sample(
                &t,
                "wardgate_rule_hits_total",
                &[("rule", rule), ("action", action)],
            )
        };
        assert_eq!(hits("ehr-reads-lab-results", "allow"), Some(3.0));
        assert_eq!(hits("vendor-never-reaches-clinical", "deny"), Some(1.0));
        assert_eq!(
            sample(
                &t,
                "wardgate_break_glass_uses_total",
                &[("rule", "er-override")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, "wardgate_check_duration_seconds", &[]),
            Some(8.0)
        );
        let (_, rules) = t.rules().unwrap();
        let ehr = rules
            .iter()
            .find(|r| r.name == "ehr-reads-lab-results")
            .unwrap();
        assert_eq!((ehr.hits, ehr.kind, ehr.line), (3, RuleKind::Allow, 15));
        assert!(ehr.last_hit.is_some());
        let unused = rules
            .iter()
            .find(|r| r.name == "vendor-never-reaches-clinical")
            .unwrap();
        assert_eq!(unused.hits, 1);

        flush(&t).await;
        let records = lines(&sink);
        assert_eq!(records.len(), 8);
        let bg_record = &records[7];
        assert_eq!(bg_record.reason, "break_glass");
        assert_eq!(bg_record.rule.as_deref(), Some("er-override"));
        assert_eq!(
            bg_record.break_glass_reason.as_deref(),
            Some("cardiac arrest, bed 4")
        );
        assert_eq!(bg_record.revision, Some(3));
        assert_eq!(bg_record.request_id.as_deref(), Some("req-1"));
        assert_eq!(bg_record.latency_us, 3);
        assert!(records[..7].iter().all(|r| r.break_glass_reason.is_none()));
        assert_eq!(records[0].reason, "no_policy");
        assert_eq!(records[0].revision, None);
        assert_eq!(
            sample(&t, "wardgate_decision_log_written_total", &[]),
            Some(8.0)
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let (open, gate) = std_mpsc::channel();
        let sink = Sink::default();
        let t = telemetry_with(
            Box::new(Gated {
                gate,
                inner: sink.clone(),
            }),
            2,
            1.0,
        );
        let p = policy();
        t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
        let started = std::time::Instant::now();
        for _ in 0..50 {
            run(&t, Some(&p), VENDOR, LAB, "/x", &[]);
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        // The writer took what was queued when it woke (it is now blocked writing those), the
        // queue holds at most two more: everything else was dropped, not waited for.
        let dropped = sample(&t, "wardgate_decision_log_dropped_total", &[]).unwrap();
        assert!(dropped >= 40.0, "dropped {dropped}");
        t.render_metrics(true).unwrap();
        let depth = sample(&t, "wardgate_decision_log_queue_depth", &[]).unwrap();
        assert!(depth <= 2.0, "depth {depth}");
        assert_eq!(checks(&t, "deny", "rule", "vendor", "clinical"), Some(50.0));
        // Unblock the sink: what was queued is written, in order, and the log closes.
        for _ in 0..100 {
            let _ = open.send(());
        }
        flush(&t).await;
        assert_eq!(lines(&sink).len() as f64, 50.0 - dropped);
        // After close, entries are dropped and counted.
        run(&t, Some(&p), VENDOR, LAB, "/x", &[]);
        assert_eq!(
            sample(&t, "wardgate_decision_log_dropped_total", &[]),
            Some(dropped + 1.0)
        );
    }

    #[tokio::test]
    async fn allows_are_sampled_denials_never() {
        let sink = Sink::default();
        let t = telemetry_with(Box::new(sink.clone()), 1024, 0.25);
        let p = policy();
        t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
        for _ in 0..100 {
            run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
            run(&t, Some(&p), VENDOR, LAB, "/results/1", &[]);
        }
        flush(&t).await;
        let records = lines(&sink);
        let allows = records.iter().filter(|r| r.decision == "allow").count();
        let denials = records.iter().filter(|r| r.decision == "deny").count();
        assert_eq!((allows, denials), (25, 100));
        assert_eq!(
            sample(&t, "wardgate_decision_log_sampled_out_total", &[]),
            Some(75.0)
        );
    }

    #[test]
    fn a_swap_keeps_hits_of_rules_that_stay_and_removes_what_is_gone() {
        let t = Telemetry::new(TelemetryConfig::default());
        let p = policy();
        t.bundle_swapped(
            &p,
            "https://user:secret@bundles.example/b.yaml?token=x",
            Duration::ZERO,
        );
        run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
        let info = t.bundle().unwrap();
        assert_eq!(info.source, "https://bundles.example/b.yaml");
        assert_eq!(
            sample(
                &t,
                "wardgate_bundle_info",
                &[
                    ("digest", p.digest()),
                    ("source", "https://bundles.example/b.yaml")
                ]
            ),
            Some(1.0)
        );

        // Revision 4: the vendor segment and its deny rule are gone; ehr-reads-lab-results stays.
        let next_yaml = BUNDLE
            .replace("revision: 3", "revision: 4")
            .replace(
                "  vendor:\n    members: [\"spiffe://partner-lab.example/**\"]\n",
                "",
            )
            .replace(
                "  - name: vendor-never-reaches-clinical\n    action: deny\n    from: [vendor]\n    to: [clinical]\n",
                "",
            );
        let next = Policy::from_yaml_str("test.yaml", &next_yaml).unwrap();
        t.bundle_swapped(&next, "test.yaml", Duration::ZERO);
        run(&t, Some(&next), EHR, LAB, "/results/1", &[]);
        let hits = |rule, action| {
            sample(
                &t,
                "wardgate_rule_hits_total",
                &[("rule", rule), ("action", action)],
            )
        };
        assert_eq!(hits("ehr-reads-lab-results", "allow"), Some(2.0));
        assert_eq!(hits("vendor-never-reaches-clinical", "deny"), None);
        assert_eq!(checks(&t, "deny", "rule", "vendor", "clinical"), None);
        assert_eq!(
            checks(&t, "allow", "rule", "clinical", "clinical"),
            Some(2.0)
        );
        assert_eq!(sample(&t, "wardgate_bundle_revision", &[]), Some(4.0));
        assert_eq!(
            sample(
                &t,
                "wardgate_bundle_info",
                &[
                    ("digest", p.digest()),
                    ("source", "https://bundles.example/b.yaml")
                ]
            ),
            None
        );
        let (info, rules) = t.rules().unwrap();
        assert_eq!(info.revision, 4);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].hits, 2);
    }

    #[test]
    fn checks_against_a_policy_not_yet_announced_are_still_counted() {
        let t = Telemetry::new(TelemetryConfig::default());
        let p = policy();
        // The reloader stored `p` but has not called bundle_swapped yet.
        run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
        assert_eq!(
            checks(&t, "allow", "rule", "clinical", "clinical"),
            Some(1.0)
        );
        t.bundle_swapped(&p, "test.yaml", Duration::ZERO);
        run(&t, Some(&p), EHR, LAB, "/results/1", &[]);
        assert_eq!(
            checks(&t, "allow", "rule", "clinical", "clinical"),
            Some(2.0)
        );
        let (_, rules) = t.rules().unwrap();
        assert_eq!(rules[1].hits, 2, "{rules:?}");
    }

    #[test]
    fn reload_attempts_track_failures_in_a_row() {
        let t = Telemetry::new(TelemetryConfig::default());
        for result in RELOAD_RESULTS {
            assert_eq!(
                sample(&t, "wardgate_reload_attempts_total", &[("result", result)]),
                Some(0.0)
            );
        }
        t.reload_attempt("fetch_error");
        t.reload_attempt("invalid");
        assert_eq!(
            sample(&t, "wardgate_reload_consecutive_failures", &[]),
            Some(2.0)
        );
        assert_eq!(
            sample(&t, "wardgate_reload_last_success_timestamp_seconds", &[]),
            Some(0.0)
        );
        t.reload_attempt("unchanged");
        assert_eq!(
            sample(&t, "wardgate_reload_consecutive_failures", &[]),
            Some(0.0)
        );
        assert!(sample(&t, "wardgate_reload_last_success_timestamp_seconds", &[]).unwrap() > 1e9);
        assert_eq!(
            sample(
                &t,
                "wardgate_reload_attempts_total",
                &[("result", "invalid")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn svid_expiry_is_exported_only_once_known() {
        let t = Telemetry::new(TelemetryConfig::default());
        let text = t.render_metrics(false).unwrap();
        assert!(!text.contains("wardgate_svid_expiry_timestamp_seconds"));
        assert!(text.contains("wardgate_ready 0"));
        t.own_svid_expiry(jiff::Timestamp::from_second(2_000_000_000).unwrap());
        assert_eq!(
            sample(&t, "wardgate_svid_expiry_timestamp_seconds", &[]),
            Some(2e9)
        );
    }

    #[test]
    fn sources_lose_credentials_and_queries() {
        assert_eq!(
            redact_source("/etc/wardgate/bundle"),
            "/etc/wardgate/bundle"
        );
        assert_eq!(
            redact_source("https://u:p@h.example:8443/b?sig=1#x"),
            "https://h.example:8443/b"
        );
        assert_eq!(redact_source("http://h.example?x"), "http://h.example");
    }

    #[test]
    fn sample_rates_parse() {
        assert_eq!(parse_sample_rate("0.5"), Ok(0.5));
        assert_eq!(parse_sample_rate("1"), Ok(1.0));
        assert!(parse_sample_rate("1.5").is_err());
        assert!(parse_sample_rate("-0.1").is_err());
        assert!(parse_sample_rate("NaN").is_err());
    }
}

#[cfg(test)]
mod reload_labels {
    #[test]
    fn reload_results_are_exactly_the_reload_outcomes() {
        let outcomes: Vec<&str> = crate::reload::Outcome::ALL
            .iter()
            .map(|o| o.as_str())
            .collect();
        assert_eq!(super::RELOAD_RESULTS.to_vec(), outcomes);
    }
}
