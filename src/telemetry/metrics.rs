//! Metric registration: the one way any module of wardgate puts a Prometheus metric on a
//! registry, with one error policy.
//!
//! Every metric is created and registered while the process starts, through the functions
//! here. A failure (a name Prometheus refuses, two metrics of one name, a label clash) comes back
//! as a [`MetricsError`] naming the metric; callers pass it up, and start-up stops with it rather
//! than running with a metric silently missing. A metric that should appear only once its value
//! is known (wardgate's own SVID expiry, the Workload API connection) is registered at start-up
//! too, wrapped in [`Dormant`], and exported from its first use on.
//!
//! This module never decides what a metric means or when it changes, and is never called on the
//! check path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// A metric could not be created or registered: a defect of the code that defines it, reported
/// at start-up.
#[derive(Debug, thiserror::Error)]
#[error("cannot register metric `{name}`: {source}")]
pub struct MetricsError {
    /// The metric's name.
    pub name: String,
    /// What Prometheus refused.
    #[source]
    pub source: prometheus::Error,
}

/// Register `collector` with `registry` and hand it back.
pub fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, MetricsError> {
    register_boxed(registry, Box::new(collector.clone()))?;
    Ok(collector)
}

/// Register a collector the caller keeps no handle to (the process collector).
pub fn register_boxed(
    registry: &Registry,
    collector: Box<dyn Collector>,
) -> Result<(), MetricsError> {
    let name = collector
        .desc()
        .first()
        .map(|d| d.fq_name.clone())
        .unwrap_or_default();
    registry
        .register(collector)
        .map_err(|source| MetricsError { name, source })
}

fn created<M>(name: &str, metric: prometheus::Result<M>) -> Result<M, MetricsError> {
    metric.map_err(|source| MetricsError {
        name: name.to_owned(),
        source,
    })
}

/// A registered counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    register(registry, created(name, IntCounter::new(name, help))?)
}

/// A registered counter with `labels`.
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let vec = created(name, IntCounterVec::new(Opts::new(name, help), labels))?;
    register(registry, vec)
}

/// The description of a metric a custom collector renders (its name, help and label names).
pub fn desc(name: &str, help: &str, labels: &[&str]) -> Result<Desc, MetricsError> {
    let labels = labels.iter().map(|l| (*l).to_owned()).collect();
    created(
        name,
        Desc::new(name.to_owned(), help.to_owned(), labels, Default::default()),
    )
}

/// A registered integer gauge.
pub fn int_gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    register(registry, unregistered_int_gauge(name, help)?)
}

/// An integer gauge, not yet registered (to wrap in [`Dormant`] first).
pub fn unregistered_int_gauge(name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    created(name, IntGauge::new(name, help))
}

/// A registered integer gauge with `labels`.
pub fn int_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let vec = created(name, IntGaugeVec::new(Opts::new(name, help), labels))?;
    register(registry, vec)
}

/// A gauge, not yet registered (to wrap in [`Dormant`] or a custom collector first).
pub fn unregistered_gauge(name: &str, help: &str) -> Result<Gauge, MetricsError> {
    created(name, Gauge::new(name, help))
}

/// A registered gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> Result<Gauge, MetricsError> {
    register(registry, unregistered_gauge(name, help)?)
}

/// A registered histogram with `buckets` (upper bounds).
pub fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, MetricsError> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, created(name, Histogram::with_opts(opts))?)
}

/// A metric registered at start-up but absent from every scrape until its first
/// [`Dormant::wake`]: for values that do not exist in every process (an alert on a metric that
/// is never set would fire on a meaningless zero).
#[derive(Debug, Clone)]
pub struct Dormant<M> {
    metric: M,
    awake: Arc<AtomicBool>,
}

impl<M: Collector + Clone + 'static> Dormant<M> {
    /// Register `metric` with `registry`, not exported yet.
    pub fn register(registry: &Registry, metric: M) -> Result<Self, MetricsError> {
        register(
            registry,
            Dormant {
                metric,
                awake: Arc::new(AtomicBool::new(false)),
            },
        )
    }

    /// The metric, exported from now on.
    pub fn wake(&self) -> &M {
        self.awake.store(true, Ordering::Relaxed);
        &self.metric
    }

    /// The metric if it has been woken, without waking it.
    pub fn get(&self) -> Option<&M> {
        self.awake.load(Ordering::Relaxed).then_some(&self.metric)
    }
}

impl<M: Collector> Collector for Dormant<M> {
    fn desc(&self) -> Vec<&Desc> {
        self.metric.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if self.awake.load(Ordering::Relaxed) {
            self.metric.collect()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn names(registry: &Registry) -> Vec<String> {
        registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    }

    #[test]
    fn a_clash_or_a_bad_name_is_an_error_naming_the_metric() {
        let registry = Registry::new();
        counter(&registry, "wardgate_test_total", "first").unwrap();
        let err = counter(&registry, "wardgate_test_total", "second").unwrap_err();
        assert_eq!(err.name, "wardgate_test_total");
        assert!(
            err.to_string()
                .starts_with("cannot register metric `wardgate_test_total`: "),
            "{err}"
        );
        let err = int_gauge(&registry, "not a name", "bad").unwrap_err();
        assert_eq!(err.name, "not a name");
        let err = counter_vec(&registry, "wardgate_labels", "bad", &["a b"]).unwrap_err();
        assert_eq!(err.name, "wardgate_labels");
    }

    #[test]
    fn a_dormant_metric_appears_only_once_woken() {
        let registry = Registry::new();
        let dormant = Dormant::register(
            &registry,
            unregistered_gauge("wardgate_late", "late").unwrap(),
        )
        .unwrap();
        assert!(!names(&registry).contains(&"wardgate_late".to_owned()));
        // Registered all the same: the name is taken from the start.
        assert!(gauge(&registry, "wardgate_late", "again").is_err());
        dormant.wake().set(4.0);
        assert!(names(&registry).contains(&"wardgate_late".to_owned()));
    }
}
