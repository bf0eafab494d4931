//! Shadow bundles: a candidate bundle evaluated beside the enforced one on every check, so a
//! platform team sees what it would change before enforcing it.
//!
//! The shadow policy lives in its own handle, loaded and reloaded like the enforced one
//! (`serve --shadow-bundle SOURCE`, same flags). For each check the server hands over the request
//! and the enforced decision; this module decides again with the shadow policy and, when the two
//! verdicts differ, counts the disagreement by (enforced decision, shadow decision, shadow rule)
//! and logs one line naming the request (no header values). It never changes a response.
//!
//! The shadow evaluation runs inline, right after the enforced decision: one `decide` costs
//! less than a microsecond, which is less than handing the borrowed request to another task
//! would (that needs an owned copy of it). Its measured cost is in docs/performance.md.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Registry};

use crate::policy::PolicyHandle;
use crate::policy::{Decision, Policy, Reason, Request, Verdict};
use crate::reload::{Outcome, ReloadObserver};
use crate::telemetry::metrics::{self, MetricsError};

/// Label used when the shadow decision names no rule (default deny and the like).
pub const NO_RULE: &str = "none";

/// What the shadow bundle decided for a check where its verdict differs from the enforced one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The shadow bundle's verdict (the opposite of the enforced one).
    pub verdict: Verdict,
    /// Why the shadow bundle decided so.
    pub reason: Reason,
    /// The shadow rule (or break-glass entry) that decided, where one did.
    pub rule: Option<String>,
}

/// The shadow policy and its metrics.
#[derive(Debug)]
pub struct Shadow {
    handle: PolicyHandle,
    disagreements: IntCounterVec,
    revision: IntGauge,
    reloads: IntCounterVec,
}

impl Shadow {
    /// A shadow evaluator reading `handle`, registering its metrics in `registry` (when given;
    /// without one they are counted but exported nowhere):
    /// `wardgate_shadow_disagreements_total{enforced,shadow,shadow_rule}`,
    /// `wardgate_shadow_bundle_revision`, `wardgate_shadow_reload_attempts_total{result}`.
    pub fn new(
        handle: PolicyHandle,
        registry: Option<&Registry>,
    ) -> Result<Arc<Self>, MetricsError> {
        let unexported;
        let r = match registry {
            Some(r) => r,
            None => {
                unexported = Registry::new();
                &unexported
            }
        };
        let disagreements = metrics::counter_vec(
            r,
            "wardgate_shadow_disagreements_total",
            "Checks the shadow bundle decides differently from the enforced one, by enforced decision, shadow decision and the shadow rule that decided (none: no rule).",
            &["enforced", "shadow", "shadow_rule"],
        )?;
        let revision = metrics::int_gauge(
            r,
            "wardgate_shadow_bundle_revision",
            "Revision of the shadow bundle in force (0: none).",
        )?;
        let reloads = metrics::counter_vec(
            r,
            "wardgate_shadow_reload_attempts_total",
            "Shadow bundle reload attempts, by result.",
            &["result"],
        )?;
        for outcome in Outcome::ALL {
            reloads.with_label_values(&[outcome.as_str()]);
        }
        Ok(Arc::new(Shadow {
            handle,
            disagreements,
            revision,
            reloads,
        }))
    }

    /// The handle the shadow reloader stores into.
    pub fn handle(&self) -> &PolicyHandle {
        &self.handle
    }

    /// Decide `request` with the shadow policy (if one is loaded) and record a disagreement with
    /// `enforced`. Returns what the shadow bundle decided when the verdicts differ.
    pub fn compare(&self, request: &Request<'_>, enforced: &Decision<'_>) -> Option<Disagreement> {
        let guard = self.handle.load();
        let shadow_policy: &Policy = guard.as_deref()?;
        let shadow = shadow_policy.decide(request);
        if shadow.verdict == enforced.verdict {
            return None;
        }
        let rule = shadow.rule.unwrap_or(NO_RULE);
        self.disagreements
            .with_label_values(&[enforced.verdict.as_str(), shadow.verdict.as_str(), rule])
            .inc();
        tracing::info!(
            source = request.source,
            destination = request.destination,
            method = request.method,
            path = %crate::policy::logging::LogView::path_shape(request.path),
            enforced = enforced.verdict.as_str(),
            enforced_reason = enforced.reason.as_str(),
            enforced_rule = enforced.rule,
            shadow = shadow.verdict.as_str(),
            shadow_reason = shadow.reason.as_str(),
            shadow_rule = shadow.rule,
            shadow_revision = shadow_policy.revision(),
            "shadow bundle disagrees"
        );
        Some(Disagreement {
            verdict: shadow.verdict,
            reason: shadow.reason,
            rule: shadow.rule.map(str::to_string),
        })
    }
}

impl ReloadObserver for Shadow {
    fn swapped(&self, policy: &Policy, _source: &str, _compile_time: Duration) {
        self.revision
            .set(i64::try_from(policy.revision()).unwrap_or(i64::MAX));
    }

    fn attempted(&self, outcome: Outcome) {
        self.reloads.with_label_values(&[outcome.as_str()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwapOption;

    fn policy(methods: &str) -> Policy {
        Policy::from_yaml_str(
            "t.yaml",
            &format!(
                "version: 1\nrevision: 1\ntrust_domains: [td]\nrules:\n  - name: r\n    from: [\"spiffe://td/a\"]\n    methods: {methods}\n"
            ),
        )
        .expect("policy")
    }

    #[test]
    fn counts_only_disagreements_and_names_the_shadow_rule() {
        let registry = Registry::new();
        let shadow =
            Shadow::new(Arc::new(ArcSwapOption::empty()), Some(&registry)).expect("shadow");
        let enforced_policy = policy("[GET, POST]");
        let mut req = Request::new("POST", "/x");
        req.source = Some("spiffe://td/a");

        // No shadow loaded: nothing to compare.
        let enforced = enforced_policy.decide(&req);
        assert_eq!(shadow.compare(&req, &enforced), None);

        shadow.handle().store(Some(Arc::new(policy("[GET]"))));
        assert_eq!(
            shadow.compare(&req, &enforced),
            Some(Disagreement {
                verdict: Verdict::Deny,
                reason: Reason::DefaultDeny,
                rule: None,
            })
        );
        let get = Request {
            method: "GET",
            ..req
        };
        assert_eq!(shadow.compare(&get, &enforced_policy.decide(&get)), None);
        let n = shadow
            .disagreements
            .with_label_values(&["allow", "deny", NO_RULE])
            .get();
        assert_eq!(n, 1);
    }
}
