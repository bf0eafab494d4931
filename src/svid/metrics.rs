//! Prometheus metrics of wardgate's own identity, fed through the [`SvidObserver`] hook:
//!
//! * `wardgate_svid_expiry_seconds`: seconds until the SVID in force expires, computed when
//!   scraped (negative once expired; absent while wardgate has no SVID of its own);
//! * `wardgate_svid_rotations_total`: SVIDs that replaced an earlier one;
//! * `wardgate_workload_api_connected`: 1 while the Workload API connection is up, else 0
//!   (exported only with the Workload API backend).
//!
//! They are registered on the [`Telemetry`] registry at start-up (through
//! `telemetry::metrics`, so a failure stops start-up), and `/metrics` shows them with the rest;
//! [`Telemetry::own_svid_expiry`] (the expiry as a Unix timestamp) is fed from here too.
//! This module only counts: it must never change the identity or block the caller.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounter, IntGauge, Registry};

use super::{Svid, SvidObserver};
use crate::telemetry::metrics::{self, Dormant, MetricsError};
use crate::telemetry::Telemetry;

/// No SVID: the expiry gauge is not exported.
const NO_SVID: i64 = i64::MIN;

/// The SVID metrics; see the module documentation.
pub struct SvidMetrics {
    telemetry: Option<Arc<Telemetry>>,
    expiry: Arc<ExpiryGauge>,
    rotations: IntCounter,
    /// Exported from the first report of the Workload API backend on.
    connected: Dormant<IntGauge>,
}

impl std::fmt::Debug for SvidMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidMetrics")
            .field("rotations", &self.rotations.get())
            .field("connected", &self.connected.get().map(IntGauge::get))
            .finish_non_exhaustive()
    }
}

impl SvidMetrics {
    /// Register on the telemetry's registry (and feed its SVID expiry timestamp).
    pub fn for_telemetry(telemetry: &Arc<Telemetry>) -> Result<Arc<SvidMetrics>, MetricsError> {
        SvidMetrics::build(telemetry.registry(), Some(Arc::clone(telemetry)))
    }

    /// Register on `registry` alone.
    pub fn register(registry: &Registry) -> Result<Arc<SvidMetrics>, MetricsError> {
        SvidMetrics::build(registry, None)
    }

    fn build(
        registry: &Registry,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Result<Arc<SvidMetrics>, MetricsError> {
        let expiry = Arc::new(ExpiryGauge {
            gauge: metrics::unregistered_gauge(
                "wardgate_svid_expiry_seconds",
                "Seconds until wardgate's own X.509 SVID expires (negative once expired).",
            )?,
            not_after_ms: AtomicI64::new(NO_SVID),
        });
        metrics::register(registry, SharedExpiry(Arc::clone(&expiry)))?;
        let rotations = metrics::counter(
            registry,
            "wardgate_svid_rotations_total",
            "Times wardgate's own X.509 SVID was replaced by a new one.",
        )?;
        let connected = Dormant::register(
            registry,
            metrics::unregistered_int_gauge(
                "wardgate_workload_api_connected",
                "1 while wardgate's SPIFFE Workload API connection is up, else 0.",
            )?,
        )?;
        Ok(Arc::new(SvidMetrics {
            telemetry,
            expiry,
            rotations,
            connected,
        }))
    }
}

impl SvidObserver for SvidMetrics {
    fn svid_changed(&self, svid: &Svid, rotated: bool) {
        self.expiry
            .not_after_ms
            .store(svid.not_after().as_millisecond(), Ordering::Relaxed);
        if rotated {
            self.rotations.inc();
        }
        if let Some(telemetry) = &self.telemetry {
            telemetry.own_svid_expiry(svid.not_after());
        }
    }

    fn svid_withdrawn(&self) {
        self.expiry.not_after_ms.store(NO_SVID, Ordering::Relaxed);
    }

    fn workload_api_connected(&self, connected: bool) {
        self.connected.wake().set(i64::from(connected));
    }
}

/// A gauge whose value is computed at scrape time from the expiry instant.
struct ExpiryGauge {
    gauge: Gauge,
    not_after_ms: AtomicI64,
}

#[derive(Clone)]
struct SharedExpiry(Arc<ExpiryGauge>);

impl Collector for SharedExpiry {
    fn desc(&self) -> Vec<&Desc> {
        self.0.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let not_after_ms = self.0.not_after_ms.load(Ordering::Relaxed);
        if not_after_ms == NO_SVID {
            return Vec::new();
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        // Millisecond differences fit an f64 exactly for any realistic validity.
        self.0
            .gauge
            .set(not_after_ms.saturating_sub(now_ms) as f64 / 1e3);
        self.0.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::svid::test_pki::TestCa;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    fn value(registry: &Registry, name: &str) -> Option<f64> {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .and_then(|f| {
                let m = f.get_metric().first()?;
                Some(match f.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                })
            })
    }

    #[test]
    fn expiry_rotations_and_connection_state() {
        let registry = Registry::new();
        let metrics = SvidMetrics::register(&registry).unwrap();
        assert_eq!(value(&registry, "wardgate_svid_expiry_seconds"), None);
        assert_eq!(value(&registry, "wardgate_workload_api_connected"), None);

        let ca = TestCa::new("ca");
        let leaf = ca.leaf(&["spiffe://hospital.example/wardgate"], 3600);
        let svid = Svid::new(
            vec![CertificateDer::from(leaf.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
        )
        .unwrap();
        metrics.svid_changed(&svid, false);
        let expiry = value(&registry, "wardgate_svid_expiry_seconds").unwrap();
        assert!((3500.0..=3600.0).contains(&expiry), "{expiry}");
        assert_eq!(value(&registry, "wardgate_svid_rotations_total"), Some(0.0));
        metrics.svid_changed(&svid, true);
        assert_eq!(value(&registry, "wardgate_svid_rotations_total"), Some(1.0));

        metrics.workload_api_connected(true);
        assert_eq!(
            value(&registry, "wardgate_workload_api_connected"),
            Some(1.0)
        );
        metrics.workload_api_connected(false);
        assert_eq!(
            value(&registry, "wardgate_workload_api_connected"),
            Some(0.0)
        );

        metrics.svid_withdrawn();
        assert_eq!(value(&registry, "wardgate_svid_expiry_seconds"), None);
    }
}
