//! OpenTelemetry tracing (`serve --otlp-endpoint`): one span per check, joined to the caller's
//! trace, and one span per bundle reload that changed something, exported over OTLP/gRPC.
//!
//! A check's span is the child of the span named by the W3C `traceparent` header in the
//! CheckRequest (Envoy forwards the client's headers), else of a B3 context (`b3` single header,
//! else `x-b3-traceid`/`x-b3-spanid`), else a new root; the caller's sampling flag is followed.
//! It carries the decision, reason, rule, source and destination segments, bundle revision and
//! evaluation time, and starts and ends when the check did. Reload spans come from a
//! [`ReloadObserver`] wrapped around the one `app` gives the reloader: a swap (outcome, new
//! revision, compile time) or a refusal (outcome, revision still in force), with the source
//! shown through [`redact_url`]. Unchanged polls make no span.
//!
//! This module owns the tracer, the export queue and the two metrics that count it
//! (`wardgate_trace_spans_dropped_total`, `wardgate_trace_export_failures_total`). Exporting
//! never waits on a check: a finished span is handed to the SDK's batch processor (its own
//! thread) through a gate of [`OtlpConfig::queue`] spans; a span that finds the gate full is
//! dropped and counted. It must never put a request path, a header value or a principal into a
//! span (the decision log's redaction rules decide what may leave the process: see the README's
//! decision-log section), never block or fail a check, and never change a decision.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, Registry};

use crate::policy::{Decision, Policy};
use crate::reload::{redact_url, Outcome, ReloadObserver};
use crate::telemetry::metrics::{self, MetricsError};

/// Default capacity of the export queue (`--otlp-queue`).
pub const DEFAULT_QUEUE: usize = 2048;

/// How long the exporter may take to deliver what is queued when `serve` stops.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// Span names and attribute keys: one spelling, used by the README and the tests.
pub mod names {
    /// The span of one check.
    pub const CHECK_SPAN: &str = "wardgate.check";
    /// The span of one bundle reload that swapped or refused.
    pub const RELOAD_SPAN: &str = "wardgate.bundle_reload";
    /// `allow` or `deny`.
    pub const DECISION: &str = "wardgate.decision";
    /// The reason (`rule`, `default_deny`, ...).
    pub const REASON: &str = "wardgate.reason";
    /// The deciding rule, where one decided.
    pub const RULE: &str = "wardgate.rule";
    /// The source's segment, where it has one.
    pub const SOURCE_SEGMENT: &str = "wardgate.source_segment";
    /// The destination's segment, where it has one.
    pub const DESTINATION_SEGMENT: &str = "wardgate.destination_segment";
    /// Revision of the bundle that decided (a check), went into force (a swap) or stayed in
    /// force (a refusal).
    pub const REVISION: &str = "wardgate.bundle_revision";
    /// Time spent deciding, microseconds (a double).
    pub const EVALUATION_US: &str = "wardgate.evaluation_us";
    /// The reload outcome (`ok`, `invalid`, `signature`, `rollback`, ...).
    pub const OUTCOME: &str = "wardgate.reload.outcome";
    /// Which bundle: `bundle` (enforced) or `shadow bundle`.
    pub const BUNDLE: &str = "wardgate.reload.bundle";
    /// The bundle source, redacted (no credentials, no query).
    pub const SOURCE: &str = "wardgate.reload.source";
    /// Compile time of a swapped bundle, milliseconds.
    pub const COMPILE_MS: &str = "wardgate.reload.compile_ms";
}

/// Where and how to export spans: checked by `cli` into the serve plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, `http://host:port`.
    pub endpoint: String,
    /// Spans finished but not yet handed to the exporter; beyond it spans are dropped and
    /// counted.
    pub queue: usize,
}

/// Why an `--otlp-endpoint` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Not a URL at all.
    #[error("not a URL such as http://127.0.0.1:4317")]
    NotUrl,
    /// `https://` (or anything but `http://`).
    #[error(
        "only http:// is supported: export to a collector on the same host or pod \
         (an OpenTelemetry Collector agent), which forwards over TLS"
    )]
    NotHttp,
    /// No port.
    #[error("name the port (OTLP/gRPC listens on 4317 by default)")]
    NoPort,
    /// User-info, a path, a query or a fragment.
    #[error("give only http://host:port: no credentials, path or query")]
    Extra,
}

impl OtlpConfig {
    /// Check `endpoint` (`http://host:port`, an optional trailing `/`) and keep `queue`.
    pub fn new(endpoint: &str, queue: usize) -> Result<OtlpConfig, EndpointError> {
        if endpoint.contains('#') {
            return Err(EndpointError::Extra);
        }
        let uri: tonic::transport::Uri = endpoint.parse().map_err(|_| EndpointError::NotUrl)?;
        if uri.scheme_str() != Some("http") {
            return Err(EndpointError::NotHttp);
        }
        let authority = uri.authority().ok_or(EndpointError::NotUrl)?;
        if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") {
            return Err(EndpointError::Extra);
        }
        if uri.query().is_some() {
            return Err(EndpointError::Extra);
        }
        if authority.port_u16().is_none() {
            return Err(EndpointError::NoPort);
        }
        Ok(OtlpConfig {
            endpoint: format!("http://{authority}"),
            queue: queue.max(1),
        })
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TracingError {
    /// A metric could not be registered.
    #[error("tracing metrics: {0}")]
    Metrics(MetricsError),
    /// The OTLP exporter could not be built.
    #[error("--otlp-endpoint: {0}")]
    Exporter(String),
}

/// The tracer and its export pipeline. Shared by the check path and the reload observers.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    dropped: IntCounter,
    endpoint: String,
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing")
            .field("endpoint", &self.endpoint)
            .field("dropped", &self.dropped.get())
            .finish_non_exhaustive()
    }
}

impl Tracing {
    /// Build the exporter (connecting lazily: a collector that is down is not an error), the
    /// bounded queue and the tracer, and register the metrics on `registry`. Must run inside
    /// the Tokio runtime that will carry the exporter's connection.
    pub fn start(config: &OtlpConfig, registry: &Registry) -> Result<Arc<Tracing>, TracingError> {
        let dropped = metrics::counter(
            registry,
            "wardgate_trace_spans_dropped_total",
            "Trace spans dropped because the export queue (--otlp-queue) was full",
        )
        .map_err(TracingError::Metrics)?;
        let failures = metrics::counter(
            registry,
            "wardgate_trace_export_failures_total",
            "OTLP span export requests that failed (after the exporter's retries)",
        )
        .map_err(TracingError::Metrics)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .build()
            .map_err(|e| TracingError::Exporter(e.to_string()))?;
        let pending = Arc::new(AtomicUsize::new(0));
        let exporter = CountedExporter {
            inner: exporter,
            pending: Arc::clone(&pending),
            failures,
            failing: AtomicBool::new(false),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.queue)
            .with_scheduled_delay(Duration::from_secs(1))
            .build();
        let queue = BoundedQueue {
            inner: BatchSpanProcessor::new(exporter, batch),
            pending,
            capacity: config.queue,
            dropped: dropped.clone(),
        };
        // The standard variables (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) may name the
        // service; otherwise it is `wardgate`, not the SDK's `unknown_service`.
        let named = Resource::builder()
            .build()
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if !named {
            resource = resource.with_service_name("wardgate");
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("wardgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing::info!(endpoint = %config.endpoint, queue = config.queue, "exporting trace spans over OTLP/gRPC");
        Ok(Arc::new(Tracing {
            provider,
            tracer,
            dropped,
            endpoint: config.endpoint.clone(),
        }))
    }

    /// Record one decided check as a span that started `elapsed` ago and ends now, child of the
    /// caller's span found in `headers` (the client's headers from the CheckRequest).
    pub fn check_span(
        &self,
        headers: Option<&HashMap<String, String>>,
        decision: &Decision<'_>,
        revision: Option<u64>,
        elapsed: Duration,
    ) {
        let parent = headers.map_or_else(Context::new, caller_context);
        let end = SystemTime::now();
        let mut attributes = Vec::with_capacity(7);
        attributes.push(KeyValue::new(names::DECISION, decision.verdict.as_str()));
        attributes.push(KeyValue::new(names::REASON, decision.reason.as_str()));
        let named = [
            (names::RULE, decision.rule),
            (names::SOURCE_SEGMENT, decision.source_segment),
            (names::DESTINATION_SEGMENT, decision.destination_segment),
        ];
        for (key, value) in named {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, Value::from(value.to_owned())));
            }
        }
        if let Some(revision) = revision {
            attributes.push(KeyValue::new(names::REVISION, signed(revision)));
        }
        attributes.push(KeyValue::new(
            names::EVALUATION_US,
            elapsed.as_secs_f64() * 1e6,
        ));
        // PATH: deliberately absent. The request path may name a patient; it may join a span
        // only in the form the decision log's path policy allows (see the README's
        // decision-log section), once that redacted form is offered to this module.
        self.tracer
            .span_builder(names::CHECK_SPAN)
            .with_kind(SpanKind::Server)
            .with_start_time(end.checked_sub(elapsed).unwrap_or(end))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent)
            .end_with_timestamp(end);
    }

    /// A reload span: `outcome` of `bundle`'s source, with the revision it concerns.
    fn reload_span(
        &self,
        bundle: &'static str,
        source: &str,
        outcome: Outcome,
        revision: Option<u64>,
        compile_time: Option<Duration>,
    ) {
        let end = SystemTime::now();
        let start = compile_time.and_then(|t| end.checked_sub(t)).unwrap_or(end);
        let mut attributes = vec![
            KeyValue::new(names::OUTCOME, outcome.as_str()),
            KeyValue::new(names::BUNDLE, bundle),
            KeyValue::new(names::SOURCE, redact_url(source)),
        ];
        if let Some(revision) = revision {
            attributes.push(KeyValue::new(names::REVISION, signed(revision)));
        }
        if let Some(t) = compile_time {
            attributes.push(KeyValue::new(names::COMPILE_MS, t.as_secs_f64() * 1e3));
        }
        let status = if outcome.is_refusal() {
            Status::error(outcome.as_str())
        } else {
            Status::Ok
        };
        let mut span = self
            .tracer
            .span_builder(names::RELOAD_SPAN)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &Context::new());
        span.set_status(status);
        span.end_with_timestamp(end);
    }

    /// `inner`, also reporting swaps and refusals of `bundle` (from `source`) as spans.
    pub fn observe_reloads(
        self: &Arc<Self>,
        inner: Arc<dyn ReloadObserver>,
        bundle: &'static str,
        source: &str,
    ) -> Arc<dyn ReloadObserver> {
        Arc::new(ReloadSpans {
            inner,
            tracing: Arc::clone(self),
            bundle,
            source: redact_url(source),
            in_force: AtomicU64::new(NONE_IN_FORCE),
        })
    }

    /// Spans dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Wait for `stopped`, then hand what is queued to the exporter and close it (bounded by a
    /// few seconds: a collector that is down does not hold up the exit).
    pub async fn shut_down_when(self: Arc<Self>, stopped: impl std::future::Future<Output = ()>) {
        stopped.await;
        let provider = self.provider.clone();
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH))
                .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(endpoint = %self.endpoint, "trace spans not all delivered at exit: {e}");
        }
    }
}

/// `u64` as an OTLP integer attribute (which is signed).
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The caller's span context: W3C trace context first, then B3 (single header, then multi).
/// Whatever the headers hold, the result is a usable context (a new root when none is valid).
fn caller_context(headers: &HashMap<String, String>) -> Context {
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(headers);
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    match b3_context(headers) {
        Some(remote) => Context::new().with_remote_span_context(remote),
        None => Context::new(),
    }
}

/// A B3 context (openzipkin/b3-propagation): `b3: {trace}-{span}[-{sampled}[-{parent}]]`, else
/// `x-b3-traceid` + `x-b3-spanid` with `x-b3-sampled` / `x-b3-flags`. A missing sampling state
/// leaves the decision to the receiver, here: sampled.
fn b3_context(headers: &HashMap<String, String>) -> Option<SpanContext> {
    let (trace, span, sampled) = match headers.get("b3") {
        Some(single) => {
            let mut parts = single.split('-');
            let trace = parts.next()?;
            let span = parts.next()?;
            let sampled = parts.next();
            if parts.nth(1).is_some() {
                return None;
            }
            (trace, span, sampled)
        }
        None => {
            let debug = headers.get("x-b3-flags").map(String::as_str) == Some("1");
            let sampled = if debug {
                Some("1")
            } else {
                headers.get("x-b3-sampled").map(String::as_str)
            };
            (
                headers.get("x-b3-traceid")?.as_str(),
                headers.get("x-b3-spanid")?.as_str(),
                sampled,
            )
        }
    };
    let trace_id = hex_id(trace, &[16, 32]).map(TraceId::from)?;
    let span_id = hex_id(span, &[16]).and_then(|n| u64::try_from(n).ok())?;
    let flags = match sampled {
        None | Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        Some("0" | "false") => TraceFlags::default(),
        Some(_) => return None,
    };
    let context = SpanContext::new(
        trace_id,
        SpanId::from(span_id),
        flags,
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// A hex id of one of `lengths` digits (lower or upper case, nothing else).
fn hex_id(text: &str, lengths: &[usize]) -> Option<u128> {
    if !lengths.contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

/// No revision recorded as in force yet.
const NONE_IN_FORCE: u64 = u64::MAX;

/// A reload observer that forwards everything to `inner`, then makes the span.
struct ReloadSpans {
    inner: Arc<dyn ReloadObserver>,
    tracing: Arc<Tracing>,
    bundle: &'static str,
    source: String,
    /// The revision this reloader last put in force ([`NONE_IN_FORCE`] before the first).
    in_force: AtomicU64,
}

impl ReloadObserver for ReloadSpans {
    fn swapped(&self, policy: &Policy, source: &str, compile_time: Duration) {
        self.inner.swapped(policy, source, compile_time);
        self.in_force.store(policy.revision(), Ordering::Relaxed);
        self.tracing.reload_span(
            self.bundle,
            source,
            Outcome::Swapped,
            Some(policy.revision()),
            Some(compile_time),
        );
    }

    fn attempted(&self, outcome: Outcome) {
        self.inner.attempted(outcome);
        if outcome.is_refusal() {
            let in_force = self.in_force.load(Ordering::Relaxed);
            let revision = (in_force != NONE_IN_FORCE).then_some(in_force);
            self.tracing
                .reload_span(self.bundle, &self.source, outcome, revision, None);
        }
    }
}

/// The export queue's gate: at most `capacity` spans finished and not yet handed to the
/// exporter. The SDK's batch processor (sized the same) never meets a full channel behind it,
/// so every span lost to a full queue is dropped here, where it is counted.
#[derive(Debug)]
struct BoundedQueue {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    capacity: usize,
    dropped: IntCounter,
}

impl SpanProcessor for BoundedQueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, releasing the gate for each batch it takes and counting failed exports
/// (logged once when failures start and once when they stop).
#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    failures: IntCounter,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.pending.fetch_sub(batch.len(), Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) => {
                self.failures.inc();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("cannot export trace spans (checks are unaffected; spans are dropped while this lasts): {e}");
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace span export recovered");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parent(pairs: &[(&str, &str)]) -> Option<(String, String, bool)> {
        let cx = caller_context(&headers(pairs));
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            (
                sc.trace_id().to_string(),
                sc.span_id().to_string(),
                sc.is_sampled(),
            )
        })
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn the_w3c_parent_wins_and_b3_is_the_fallback() {
        let w3c = format!("00-{TRACE}-{SPAN}-01");
        assert_eq!(
            parent(&[("traceparent", &w3c), ("b3", "1-2-1")]),
            Some((TRACE.into(), SPAN.into(), true))
        );
        let unsampled = format!("00-{TRACE}-{SPAN}-00");
        assert!(!parent(&[("traceparent", &unsampled)]).unwrap().2);
        // A broken traceparent does not hide a valid B3 context.
        let b3 = format!("{TRACE}-{SPAN}-1");
        assert_eq!(
            parent(&[("traceparent", "00-zz-zz-01"), ("b3", &b3)]),
            Some((TRACE.into(), SPAN.into(), true))
        );
    }

    #[test]
    fn b3_single_and_multi_headers_are_read_with_their_sampling_state() {
        let short = "a3ce929d0e0e4736";
        assert_eq!(
            parent(&[("b3", &format!("{short}-{SPAN}"))]),
            Some((format!("0000000000000000{short}"), SPAN.into(), true))
        );
        assert_eq!(
            parent(&[("b3", &format!("{TRACE}-{SPAN}-0-05e3ac9a4f6e3b90"))]).unwrap(),
            (TRACE.into(), SPAN.into(), false)
        );
        assert_eq!(
            parent(&[
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
                ("x-b3-sampled", "0"),
                ("x-b3-flags", "1"),
            ]),
            Some((TRACE.into(), SPAN.into(), true))
        );
        for bad in [
            "0",
            "1",
            &format!("{TRACE}-{SPAN}-x"),
            &format!("{TRACE}-{SPAN}-1-{SPAN}-9"),
            &format!("{TRACE}-0000000000000000-1"),
            &format!("00000000000000000000000000000000-{SPAN}"),
            &format!("+{}-{SPAN}", &TRACE[1..]),
            &format!("{TRACE}0-{SPAN}"),
        ] {
            assert_eq!(parent(&[("b3", bad)]), None, "{bad}");
        }
        assert_eq!(parent(&[("x-b3-traceid", TRACE)]), None);
        assert_eq!(parent(&[]), None);
    }

    #[test]
    fn only_a_plain_http_host_and_port_is_an_endpoint() {
        let ok = OtlpConfig::new("http://127.0.0.1:4317/", 0).unwrap();
        assert_eq!(ok.endpoint, "http://127.0.0.1:4317");
        assert_eq!(ok.queue, 1);
        assert_eq!(
            OtlpConfig::new("http://collector.observability:4317", 10)
                .unwrap()
                .endpoint,
            "http://collector.observability:4317"
        );
        for (bad, why) in [
            ("collector:4317", EndpointError::NotHttp),
            ("https://collector:4317", EndpointError::NotHttp),
            ("http://collector", EndpointError::NoPort),
            ("http://u:p@collector:4317", EndpointError::Extra),
            ("http://collector:4317/v1/traces", EndpointError::Extra),
            ("http://collector:4317?x=1", EndpointError::Extra),
            ("http://collector:4317#x", EndpointError::Extra),
            ("http://", EndpointError::NotUrl),
            ("", EndpointError::NotUrl),
        ] {
            assert_eq!(OtlpConfig::new(bad, 1), Err(why), "{bad}");
        }
    }
}
