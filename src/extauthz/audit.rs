//! Audit mode (`serve --audit`): every Check is decided, counted and logged exactly as when
//! enforcing, and every answer to Envoy is an allow.
//!
//! This module owns what makes the mode visible in metrics: [`Mode`] (with its one spelling,
//! `enforce` or `audit`), the `wardgate_mode{mode}` gauge every `serve` exports, and
//! `wardgate_audit_would_deny_total{reason}`, the denials audit mode let through. The answer
//! itself (an allow carrying `x-wardgate-audit: would-deny <reason>` upstream) is rendered by
//! `response`. It must never change a decision: the decision log, `wardgate_checks_total` and
//! the rule hits record the verdict as decided, so a log collected in audit mode replays and
//! learns like any other.

use prometheus::{IntCounter, IntCounterVec, Registry};

use crate::policy::{Reason, Verdict};
use crate::telemetry::metrics::{self, MetricsError};

/// Whether the decisions are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Envoy is told the decision: denials are denied.
    #[default]
    Enforce,
    /// Envoy is told to allow every request; would-be denials are marked upstream and counted.
    Audit,
}

impl Mode {
    /// The mode's name in metrics, logs and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }

    /// Whether decisions reach Envoy as decided.
    pub fn enforces(self) -> bool {
        self == Mode::Enforce
    }
}

/// Export `wardgate_mode{mode="enforce"|"audit"} 1` into `registry`, so a dashboard or an alert
/// can tell an auditing sidecar from an enforcing one.
pub fn export_mode(registry: &Registry, mode: Mode) -> Result<(), MetricsError> {
    let gauge = metrics::int_gauge_vec(
        registry,
        "wardgate_mode",
        "Always 1; the mode label says whether decisions are enforced (enforce) or only \
         recorded while every request is allowed (audit, serve --audit).",
        &["mode"],
    )?;
    gauge.with_label_values(&[mode.as_str()]).set(1);
    Ok(())
}

/// The audit-mode counters of one process.
#[derive(Debug)]
pub struct Audit {
    /// Every reason a denial can carry, registered at zero so that `increase()` sees the first
    /// would-be denial.
    would_deny: Vec<(Reason, IntCounter)>,
    by_reason: IntCounterVec,
}

impl Audit {
    /// Register `wardgate_audit_would_deny_total` into `registry` (a private registry when
    /// `None`, for tests and embedding).
    pub fn new(registry: Option<&Registry>) -> Result<Audit, MetricsError> {
        let private = Registry::new();
        let by_reason = metrics::counter_vec(
            registry.unwrap_or(&private),
            "wardgate_audit_would_deny_total",
            "Checks decided deny but answered allow because serve runs with --audit, by reason.",
            &["reason"],
        )?;
        let would_deny = Reason::ALL
            .into_iter()
            .filter(|&r| r != Reason::BreakGlass)
            .map(|r| (r, by_reason.with_label_values(&[r.as_str()])))
            .collect();
        Ok(Audit {
            would_deny,
            by_reason,
        })
    }

    /// Count one decided Check if it would have been denied.
    pub(super) fn observe(&self, verdict: Verdict, reason: Reason) {
        if verdict != Verdict::Deny {
            return;
        }
        match self.would_deny.iter().find(|(r, _)| *r == reason) {
            Some((_, counter)) => counter.inc(),
            None => self.by_reason.with_label_values(&[reason.as_str()]).inc(),
        }
    }

    /// Would-be denials counted so far for `reason`.
    pub fn would_deny(&self, reason: Reason) -> u64 {
        self.by_reason.with_label_values(&[reason.as_str()]).get()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use arc_swap::ArcSwapOption;
    use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse, OkHttpResponse};
    use envoy_types::pb::google::protobuf::value::Kind;

    use super::*;
    use crate::extauthz::tests::{check, status_code, EHR, LAB, POLICY, VENDOR};
    use crate::extauthz::{AuthzConfig, AuthzService, AUDIT_HEADER, REASON_HEADER, RULE_HEADER};
    use crate::policy::{Policy, PolicyHandle};

    fn service(audit: Option<Arc<Audit>>, policy: Option<&str>) -> AuthzService {
        let handle: PolicyHandle = Arc::new(ArcSwapOption::empty());
        if let Some(text) = policy {
            handle.store(Some(Arc::new(
                Policy::from_yaml_str("t.yaml", text).unwrap(),
            )));
        }
        AuthzService::new(
            handle,
            AuthzConfig {
                audit,
                ..AuthzConfig::default()
            },
        )
    }

    fn ok(response: &CheckResponse) -> &OkHttpResponse {
        assert_eq!(status_code(response), tonic::Code::Ok as i32);
        match response.http_response.as_ref() {
            Some(HttpResponse::OkResponse(ok)) => ok,
            other => panic!("expected an OK response, got {other:?}"),
        }
    }

    fn headers(ok: &OkHttpResponse) -> Vec<(String, String)> {
        ok.headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    }

    fn meta(response: &CheckResponse, key: &str) -> Kind {
        response.dynamic_metadata.as_ref().unwrap().fields[key]
            .kind
            .clone()
            .unwrap()
    }

    #[test]
    fn a_denial_is_answered_allow_and_marked_upstream_in_audit_mode() {
        let audit = Arc::new(Audit::new(None).unwrap());
        let svc = service(Some(Arc::clone(&audit)), Some(POLICY));
        let mut forged = check(VENDOR, LAB, "GET", "/results/1");
        if let Some(http) = forged
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.headers
                .insert("x-wardgate-audit".into(), "allowed by the client".into());
            http.headers
                .insert("x-wardgate-rule".into(), "forged".into());
        }
        let response = svc.respond(&forged);
        let answer = ok(&response);
        assert_eq!(
            headers(answer),
            vec![(AUDIT_HEADER.to_owned(), "would-deny rule".to_owned())],
            "no rule name, no reason header: only the audit mark"
        );
        // The client's forged rule header goes; its forged audit header is overwritten.
        assert_eq!(answer.headers_to_remove, vec!["x-wardgate-rule".to_owned()]);
        // The access log sees the verdict as decided, and that it was not enforced.
        assert_eq!(
            meta(&response, "decision"),
            Kind::StringValue("deny".into())
        );
        assert_eq!(meta(&response, "enforced"), Kind::BoolValue(false));
        assert_eq!(audit.would_deny(Reason::Rule), 1);

        // Default deny and no policy at all are marked with their own reasons.
        svc.respond(&check(EHR, LAB, "DELETE", "/results/1"));
        assert_eq!(audit.would_deny(Reason::DefaultDeny), 1);
        let response =
            service(Some(Arc::clone(&audit)), None).respond(&check(EHR, LAB, "GET", "/"));
        assert_eq!(
            headers(ok(&response)),
            vec![(AUDIT_HEADER.to_owned(), "would-deny no_policy".to_owned())]
        );
        assert_eq!(audit.would_deny(Reason::NoPolicy), 1);
    }

    #[test]
    fn an_allow_is_unchanged_in_audit_mode_and_enforce_mode_still_denies() {
        let audit = Arc::new(Audit::new(None).unwrap());
        let response = service(Some(Arc::clone(&audit)), Some(POLICY)).respond(&check(
            EHR,
            LAB,
            "GET",
            "/results/1",
        ));
        assert_eq!(
            headers(ok(&response)),
            vec![(RULE_HEADER.to_owned(), "ehr-reads-lab-results".to_owned())]
        );
        assert_eq!(meta(&response, "enforced"), Kind::BoolValue(false));
        assert!(Reason::ALL.iter().all(|&r| audit.would_deny(r) == 0));

        let enforced =
            service(None, Some(POLICY)).respond(&check(VENDOR, LAB, "GET", "/results/1"));
        assert_eq!(status_code(&enforced), tonic::Code::PermissionDenied as i32);
        let Some(HttpResponse::DeniedResponse(denied)) = &enforced.http_response else {
            panic!("{enforced:?}");
        };
        assert!(denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .any(|h| h.key == REASON_HEADER));
        assert_eq!(meta(&enforced, "enforced"), Kind::BoolValue(true));
    }

    #[test]
    fn the_mode_and_the_would_be_denials_are_exported() {
        let registry = Registry::new();
        export_mode(&registry, Mode::Audit).unwrap();
        let audit = Audit::new(Some(&registry)).unwrap();
        audit.observe(Verdict::Deny, Reason::BadPath);
        audit.observe(Verdict::Allow, Reason::Rule);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("wardgate_mode{mode=\"audit\"} 1"), "{text}");
        assert!(
            text.contains("wardgate_audit_would_deny_total{reason=\"bad_path\"} 1"),
            "{text}"
        );
        // Every denial reason is there from the start, at zero; break_glass never denies.
        assert!(
            text.contains("wardgate_audit_would_deny_total{reason=\"default_deny\"} 0"),
            "{text}"
        );
        assert!(!text.contains("reason=\"break_glass\""), "{text}");
    }
}
