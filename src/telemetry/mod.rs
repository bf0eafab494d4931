//! Telemetry: the Prometheus metrics and the decision-log writer.
//!
//! One [`Telemetry`] value, shared behind an `Arc`, owns a private Prometheus [`Registry`] and
//! the decision-log queue. The server calls [`Telemetry::record_check`] once per Check; the
//! reloader calls [`Telemetry::bundle_swapped`] and [`Telemetry::reload_attempt`]; the admin
//! listener renders [`Telemetry::render_metrics`] and reads [`Telemetry::bundle`] and
//! [`Telemetry::rules`]. Every metric of the process, this module's and those of `shadow` and
//! `svid`, is registered through [`metrics`] at start-up; a registration failure is returned
//! to `serve`, which stops.
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
pub mod metrics;
mod redact;
mod rules;
pub mod throttle;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use fnv::FnvHashMap;
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use serde::Serialize;

pub use log_writer::{DecisionLogConfig, DecisionLogTarget, DecisionLogTargetError};
pub use metrics::MetricsError;
pub use redact::{KeyError, PathLogging, Redaction, RequestIdKey, MIN_KEY_BYTES};
pub use rules::{RuleKind, RuleUsage};

use crate::policy::{Decision, Policy, Reason, Verdict};
use crate::reload::Outcome;
use metrics::Dormant;
use rules::{RuleBook, RuleEntry, RuleStat};

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
    /// The policy that decided (`None` without one): the decision log redacts the path by the
    /// deciding rule's pattern and the bundle's `logging` section.
    pub policy: Option<&'a Arc<Policy>>,
    /// Revision of the bundle that decided (`None` without a policy).
    pub revision: Option<u64>,
    /// Time spent deciding.
    pub elapsed: Duration,
    /// Envoy's request id.
    pub request_id: Option<&'a str>,
    /// The stated break-glass reason, on break-glass allows only.
    pub break_glass_reason: Option<&'a str>,
    /// Whether Envoy was told the decision (`false` in audit mode, where every answer is allow).
    pub enforced: bool,
}

/// Settings of a [`Telemetry`].
#[derive(Debug, Default)]
pub struct TelemetryConfig {
    /// Where decision-log entries go; `None` turns the decision log off.
    pub decision_log: Option<DecisionLogConfig>,
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
    rules: FnvHashMap<Arc<str>, Arc<RuleStat>>,
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
    svid_expiry: Dormant<Gauge>,
    log: log_writer::DecisionLog,
    snapshot: ArcSwapOption<Snapshot>,
    /// Every rule statistic by name: the slow path during a swap, reuse across swaps, and the
    /// per-rule series.
    rule_book: Arc<RuleBook>,
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
    /// Register every metric, and start the decision-log writer when `config` has one. Fails
    /// only if a metric cannot be registered (a defect, reported at start-up).
    pub fn new(config: TelemetryConfig) -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new();
        let r = &registry;

        let build_info = metrics::int_gauge_vec(
            r,
            "wardgate_build_info",
            "Always 1; the version label names the running build.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let checks = metrics::counter_vec(
            r,
            "wardgate_checks_total",
            "Checks decided, by decision, reason, source segment and destination segment.",
            &[
                "decision",
                "reason",
                "source_segment",
                "destination_segment",
            ],
        )?;
        let unsegmented = OUTCOMES
            .iter()
            .map(|(v, reason)| {
                checks.with_label_values(&[v.as_str(), reason.as_str(), NO_SEGMENT, NO_SEGMENT])
            })
            .collect();
        let check_duration = metrics::histogram(
            r,
            "wardgate_check_duration_seconds",
            "Time wardgate spends deciding one Check (identity, certificate, path, rules), excluding gRPC transport.",
            &LATENCY_BUCKETS,
        )?;
        let rule_book = RuleBook::register(r)?;
        let bundle_revision = metrics::int_gauge(
            r,
            "wardgate_bundle_revision",
            "Revision of the bundle in force (absent until one is).",
        )?;
        let bundle_info = metrics::int_gauge_vec(
            r,
            "wardgate_bundle_info",
            "Always 1; labels name the digest and source of the bundle in force.",
            &["digest", "source"],
        )?;
        let bundle_rules = metrics::int_gauge(
            r,
            "wardgate_bundle_rules",
            "Rules in the bundle in force (break-glass entries not counted).",
        )?;
        let bundle_segments = metrics::int_gauge(
            r,
            "wardgate_bundle_segments",
            "Segments in the bundle in force.",
        )?;
        let bundle_loaded = metrics::gauge(
            r,
            "wardgate_bundle_loaded_timestamp_seconds",
            "Unix time the bundle in force was swapped in (last successful load).",
        )?;
        let bundle_compile = metrics::gauge(
            r,
            "wardgate_bundle_compile_duration_seconds",
            "Time spent parsing, validating and compiling the bundle in force.",
        )?;
        let reload_attempts = metrics::counter_vec(
            r,
            "wardgate_reload_attempts_total",
            "Bundle reload attempts, by result.",
            &["result"],
        )?;
        for outcome in Outcome::ALL {
            reload_attempts.with_label_values(&[outcome.as_str()]);
        }
        let reload_last_success = metrics::gauge(
            r,
            "wardgate_reload_last_success_timestamp_seconds",
            "Unix time of the latest reload attempt that ended ok or unchanged (0: none yet).",
        )?;
        let reload_failures = metrics::int_gauge(
            r,
            "wardgate_reload_consecutive_failures",
            "Reload attempts refused or failed in a row since the latest ok or unchanged one.",
        )?;
        let ready = metrics::int_gauge(
            r,
            "wardgate_ready",
            "1 when a valid bundle is in force (what /readyz reports), else 0.",
        )?;
        // Exported from the first SVID on: a process without an SVID of its own exports none,
        // so no expiry alert can fire for it.
        let svid_expiry = Dormant::register(
            r,
            metrics::unregistered_gauge(
                "wardgate_svid_expiry_timestamp_seconds",
                "Unix time wardgate's own X.509 SVID expires.",
            )?,
        )?;
        let log = log_writer::DecisionLog::new(r, config.decision_log)?;

        #[cfg(target_os = "linux")]
        metrics::register_boxed(
            r,
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        )?;

        Ok(Arc::new(Telemetry {
            registry,
            checks,
            unsegmented,
            check_duration,
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
            svid_expiry,
            log,
            snapshot: ArcSwapOption::empty(),
            rule_book,
            started: jiff::Timestamp::now(),
        }))
    }
}

/// Why [`Telemetry::from_flags`] could not start telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The decision-log file cannot be opened for appending.
    #[error("{0}")]
    DecisionLog(#[source] std::io::Error),
    /// A metric cannot be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

impl Telemetry {
    /// Telemetry as `serve`'s flags describe it: open the decision-log `target` (fails when a
    /// file cannot be opened for appending) with a queue of `queue` entries, logging
    /// `sample_allows` of allow decisions.
    pub fn from_flags(
        target: &DecisionLogTarget,
        queue: usize,
        sample_allows: f64,
        redaction: Redaction,
    ) -> Result<Arc<Self>, TelemetryError> {
        let decision_log = DecisionLogConfig::open(target, queue, sample_allows, redaction)
            .map_err(TelemetryError::DecisionLog)?;
        match &decision_log {
            None => tracing::info!("decision log off"),
            Some(log) => {
                tracing::info!(
                    decision_log = %log.description,
                    queue = log.queue,
                    sample_allows = log.sample_allows,
                    paths = %log.redaction.paths,
                    "writing the decision log (one JSON object per line)"
                );
                if log.redaction.paths == PathLogging::Full {
                    tracing::warn!(
                        decision_log = %log.description,
                        "--decision-log-paths full: THE DECISION LOG HOLDS REQUEST PATHS AS SENT, \
                         WHICH MAY IDENTIFY PATIENTS; treat it as protected health information \
                         and turn this off after debugging"
                    );
                }
            }
        }
        Ok(Telemetry::new(TelemetryConfig { decision_log })?)
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

    /// A new bundle is in force: publish its facts (`wardgate_bundle_*`, `/v1/bundle`) and
    /// resolve everything checks against it will count. Hit counts of rules that keep their
    /// name and kind carry over; series of rules and segments that are gone are removed.
    ///
    /// Call it right after storing the policy in the handle (checks that already see the new
    /// policy in between take the slow path and are still counted).
    pub fn bundle_swapped(&self, policy: &Policy, source: &str, compile_time: Duration) {
        let now = jiff::Timestamp::now();
        let previous = self.snapshot.load_full();
        let source = crate::reload::redact_url(source);
        let (rules, rule_list) = self.resolve_rules(policy);

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

    /// One reload attempt ended (`wardgate_reload_attempts_total{result}` is labelled with
    /// [`Outcome::as_str`]).
    pub fn reload_attempt(&self, outcome: Outcome) {
        self.reload_attempts
            .with_label_values(&[outcome.as_str()])
            .inc();
        if matches!(outcome, Outcome::Swapped | Outcome::Unchanged) {
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
        self.svid_expiry.wake().set(timestamp_seconds(not_after));
    }

    /// The Prometheus text exposition of every metric. `ready` is what `/readyz` reports.
    pub fn render_metrics(&self, ready: bool) -> Result<String, prometheus::Error> {
        self.ready.set(i64::from(ready));
        self.log.refresh_gauges();
        let families = {
            let _direct = rules::WrittenDirectly::enter();
            self.registry.gather()
        };
        let mut text = String::new();
        self.rule_book.write_text(&families, &mut text)?;
        Ok(text)
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

    fn attempted(&self, outcome: Outcome) {
        self.reload_attempt(outcome);
    }
}

#[cfg(test)]
mod tests;
