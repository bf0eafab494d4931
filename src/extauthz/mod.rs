//! The Envoy adapter: `envoy.service.auth.v3.Authorization/Check` answered from the policy in
//! force, split by direction into request, evaluation and response.
//!
//! One Check passes [`AuthzService::respond`] in five steps: translate (`request`: the
//! `CheckRequest` borrowed into a [`policy::Request`](crate::policy::Request)), decide
//! ([`Policy::decide_stated`] under one `arc-swap` guard of the policy), shadow (the candidate
//! bundle's view, compared and counted, never answered), record (debug line, the audited
//! break-glass warning, metrics and the decision log through [`Telemetry`], the trace span
//! through [`Tracing`]), render
//! (`response`: the `CheckResponse`). The forwarded-certificate decoding cache is `certs`;
//! the gRPC method itself, whose codec turns an undecodable CheckRequest into a denial rather
//! than an error, is `wire` ([`CheckServer`]). In audit mode (`audit`) the same five steps run;
//! only the render step answers a denial with an allow that says `would-deny` upstream, and the
//! record step marks the decision not enforced.
//! [`AuthzConfig`] holds what a Check needs beyond the policy; the listener, health and drain
//! settings belong to the gRPC server ([`crate::grpc::ServerConfig`]).
//!
//! This module owns that order and the wiring between the steps. It must never decide anything
//! itself (every reason, a request it cannot read included, comes from `decide`), never answer
//! a Check with a gRPC error (that would leave the outcome to Envoy's `failure_mode_allow`),
//! never panic or unwrap on anything that came over the network, never block or await while
//! holding the policy guard, and never put a rule name in a denial a client can see.

mod audit;
mod certs;
mod request;
mod response;
#[cfg(test)]
pub(crate) mod tests;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};

use crate::policy::{Decided, Decision, Policy, PolicyHandle, Reason, Request};
use crate::shadow::Shadow;
use crate::telemetry::{CheckEvent, Telemetry};
use crate::tracing_otel::Tracing;
use crate::trust::TrustHandle;

pub use audit::{export_mode, Audit, Mode};
pub use certs::MAX_FORWARDED_CERTIFICATE;
pub use response::{AUDIT_HEADER, BREAK_GLASS_HEADER, HEADER_PREFIX, REASON_HEADER, RULE_HEADER};
pub use wire::{CheckServer, MAX_CHECK_REQUEST_BYTES};

/// What the adapter needs for a Check beyond the policy: the settings that do not come from
/// the bundle.
#[derive(Debug, Clone, Default)]
pub struct AuthzConfig {
    /// Destination principal to use when Envoy sends none in
    /// `attributes.destination.principal` (deployments where Envoy's own certificate carries no
    /// URI SAN). Envoy's value wins when present.
    pub destination_principal: Option<String>,
    /// Where every decided Check is recorded (metrics, decision log); `None` records nothing.
    pub telemetry: Option<Arc<Telemetry>>,
    /// With `Some`, a forwarded peer certificate must also be signed by a CA in the trust
    /// bundle of the trust domain of the principal's SPIFFE ID (`serve --verify-chain`); a
    /// certificate that is not is denied `bad_certificate`. Envoy checks the chain against all
    /// the CAs it trusts at once; this adds the SPIFFE rule that an SVID is verified against its
    /// own trust domain, so one federated CA cannot mint another domain's identities.
    pub verify_chain: Option<TrustHandle>,
    /// A shadow bundle evaluated beside the enforced one on every check (`serve
    /// --shadow-bundle`); disagreements are counted and logged, responses never change.
    pub shadow: Option<Arc<Shadow>>,
    /// With `Some`, audit mode (`serve --audit`): every Check is decided, counted and logged as
    /// usual, marked not enforced, and answered allow; a would-be denial reaches the upstream
    /// with `x-wardgate-audit: would-deny <reason>` and is counted here. `None` enforces.
    pub audit: Option<Arc<Audit>>,
    /// OpenTelemetry spans (`serve --otlp-endpoint`): one per check, child of the caller's.
    pub tracing: Option<Arc<Tracing>>,
}

impl AuthzConfig {
    /// Whether decisions are enforced or only audited.
    pub fn mode(&self) -> Mode {
        if self.audit.is_some() {
            Mode::Audit
        } else {
            Mode::Enforce
        }
    }
}

/// The `Authorization` service: answers Envoy's Checks from the policy in force.
///
/// Cheap to clone (two `Arc`s). Construct it in-process to drive decisions without a socket,
/// through [`Authorization::check`] or [`AuthzService::respond`].
#[derive(Clone)]
pub struct AuthzService {
    policy: PolicyHandle,
    config: Arc<AuthzConfig>,
}

impl fmt::Debug for AuthzService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let guard = self.policy.load();
        f.debug_struct("AuthzService")
            .field("policy_revision", &guard.as_ref().map(|p| p.revision()))
            .field("config", &self.config)
            .finish()
    }
}

impl AuthzService {
    /// A service reading decisions from `policy`.
    pub fn new(policy: PolicyHandle, config: AuthzConfig) -> Self {
        AuthzService {
            policy,
            config: Arc::new(config),
        }
    }

    /// Decide one Check and render Envoy's answer. Synchronous and infallible: whatever the
    /// request holds, the answer is an allow or a denial with a reason.
    pub fn respond(&self, check: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        // Translate: borrow the question from the CheckRequest.
        let mut certificate = request::CertificateSlot::default();
        let check = request::translate(check, &self.config, &mut certificate);

        // Decide, under one guard of the policy in force; nothing from here on awaits.
        let guard = self.policy.load();
        let policy: Option<&Policy> = guard.as_deref();
        let decided = policy.map_or(Decided::NO_POLICY, |p| p.decide_stated(&check.request));

        // Shadow: the candidate bundle judges the same request; the answer stays ours.
        if let (Some(shadow), Some(_)) = (&self.config.shadow, policy) {
            shadow.compare(&check.request, &decided.decision);
        }
        let elapsed = started.elapsed();
        let revision = policy.map(Policy::revision);

        // Record, then render.
        let mode = self.config.mode();
        if let Some(audit) = &self.config.audit {
            audit.observe(decided.decision.verdict, decided.decision.reason);
        }
        self.record(&check, &decided, guard.as_ref(), revision, elapsed, mode);
        if let Some(t) = &self.config.tracing {
            t.check_span(check.client_headers(), &decided.decision, revision, elapsed);
        }
        response::render(
            &decided.decision,
            revision,
            elapsed,
            check.client_headers(),
            mode,
        )
    }

    /// Record one decided Check: the audited break-glass warning, a debug line, and the
    /// metrics and decision log when telemetry is on.
    fn record(
        &self,
        check: &request::Translated<'_>,
        decided: &Decided<'_, '_>,
        policy: Option<&Arc<Policy>>,
        revision: Option<u64>,
        elapsed: Duration,
        mode: Mode,
    ) {
        let (request, decision) = (&check.request, &decided.decision);
        if decision.reason == Reason::BreakGlass {
            log_break_glass(request, decision, decided.break_glass_reason);
        }
        tracing::debug!(
            decision = decision.verdict.as_str(),
            reason = decision.reason.as_str(),
            rule = decision.rule,
            source = request.source,
            destination = request.destination,
            enforced = mode.enforces(),
            "check"
        );
        if let Some(telemetry) = &self.config.telemetry {
            telemetry.record_check(&CheckEvent {
                request,
                decision,
                policy,
                revision,
                elapsed,
                // Only the decision log reads it: no header lookup when it is off.
                request_id: if telemetry.decision_log_enabled() {
                    check.request_id()
                } else {
                    None
                },
                break_glass_reason: decided.break_glass_reason,
                enforced: mode.enforces(),
            });
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.respond(request.get_ref())))
    }
}

/// The facts of a forwarded certificate (URL-encoded PEM) as a Check decodes it, through the
/// per-thread cache; `None` for a text over [`MAX_FORWARDED_CERTIFICATE`], refused without
/// being decoded. For the fuzz targets (`crate::fuzzing`).
pub(crate) fn cached_certificate_facts(
    text: &str,
) -> Option<Result<crate::identity::CertificateFacts, crate::identity::CertError>> {
    let decoded = certs::cached_certificate(text).ok()?;
    Some(match &*decoded {
        Ok(cert) => Ok(cert.facts.clone()),
        Err(e) => Err(e.clone()),
    })
}

/// A break-glass allow is rare and audited: log it at warning level with the stated reason
/// (the only header value wardgate ever logs).
fn log_break_glass(request: &Request<'_>, decision: &Decision<'_>, stated: Option<&str>) {
    let stated = stated.unwrap_or_default();
    // Every segment redacted: the decision-log line of the same check shows what the bundle
    // lets a log show.
    let path = crate::policy::logging::LogView::path_shape(request.path);
    tracing::warn!(
        rule = decision.rule,
        source = request.source,
        destination = request.destination,
        method = request.method,
        path = %path,
        break_glass_reason = stated,
        "break-glass allow"
    );
}
